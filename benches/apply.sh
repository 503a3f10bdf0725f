#!/usr/bin/env bash
# The apply benchmarks of README.md, against `attrsync emulator` with 30 ms latency and its
# 100 calls/s limit:
#   1. 30,000 changed users: calls/s sustained and rate-limit (60007) answers;
#   2. a no-change apply over 100,000 users: wall time.
# Needs GNU time (/usr/bin/time; `apt-get install time`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin attrsync --example gen_users
bin=$PWD/target/release/attrsync
work=$(mktemp -d)
emulator_pid=
cleanup() { [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

env -u TIM_SECRET_KEY "$bin" emulator --listen 127.0.0.1:0 --latency 30 --attributes sex,city,tier >"$work/emulator.out" 2>/dev/null &
emulator_pid=$!
for _ in $(seq 100); do [ -s "$work/emulator.out" ] && break; sleep 0.05; done
addr=$(head -n1 "$work/emulator.out")
echo "emulator on $addr (30 ms latency, 100 calls/s per endpoint)"

repo=$work/apply-30k
./target/release/examples/gen_users --users 30000 --files 10 "$repo" 2>/dev/null
sed -i "s|endpoint: embedded|endpoint: http://$addr|" "$repo/attrsync.yaml"
# The emulator's public demo key (it uses it when its own TIM_SECRET_KEY is unset).
export TIM_SECRET_KEY=de70de70de70de70de70de70de70de70de70de70de70de70de70de70de70de70
report=$("$bin" --dir "$repo" apply --auto-approve --format json)
echo "$report" | python3 -c '
import json, sys
r = json.load(sys.stdin)
s = r["elapsed_ms"] / 1000
print("== apply 30,000 changed users: %d created in %.2f s, %d calls = %.1f calls/s, %.0f users/s, %d throttled, %d retries"
      % (r["created"], s, r["calls"], r["calls"] / s, r["created"] / s, r["throttled"], r["retries"]))'
curl -s "http://$addr/_emulator/state" | python3 -c '
import json, sys
c = json.load(sys.stdin)["calls"]["set_attr"]
print("   emulator saw set_attr: %d calls, %d answered 60007" % (c["total"], c["throttled"]))'

repo=$work/noop-100k
./target/release/examples/gen_users --users 100000 --files 100 "$repo" 2>/dev/null
sed -i "s|endpoint: embedded|endpoint: http://$addr|" "$repo/attrsync.yaml"
"$bin" --dir "$repo" state import "$repo/snapshot.jsonl" >/dev/null
for run in 1 2 3; do
  /usr/bin/time -f "== no-change apply, 100,000 users ($run): %e s wall, %M KiB peak RSS" \
    "$bin" --dir "$repo" apply --auto-approve >/dev/null
done
