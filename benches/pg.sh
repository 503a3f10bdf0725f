#!/usr/bin/env bash
# The shared-state (PostgreSQL) figures of README.md, on a throwaway cluster with the default
# durability settings (fsync and synchronous_commit on):
#   1. a no-change `plan` over 1,000,000 users with the snapshot in PostgreSQL, beside the
#      same plan with the snapshot in sled: wall time and peak RSS;
#   2. `apply` of 30,000 changed users with PostgreSQL commits, against `attrsync emulator`
#      with 30 ms latency and its 100 calls/s limit: calls/s sustained;
#   3. daemon failover after kill -9 of the active daemon, 10 times: the median.
# Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) and GNU time (/usr/bin/time).
#
#   bash benches/pg.sh              # everything
#   bash benches/pg.sh plan|apply|failover
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
cargo build --release --quiet --bin attrsync --example gen_users
bin=$PWD/target/release/attrsync
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
work=$(mktemp -d)
chmod 755 "$work"
pids=()
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  as_owner "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$work/pg"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_owner "$pgbin/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_owner "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$work/pg" start >/dev/null
# A new database; a unique name, since $(new_db) runs in a subshell.
new_db() {
  local name="bench_$(date +%s%N)"
  "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$name"
  echo "postgres://postgres@127.0.0.1:$port/$name?sslmode=disable"
}
echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (fsync on)"
export TIM_SECRET_KEY=de70de70de70de70de70de70de70de70de70de70de70de70de70de70de70de70

if [ "$what" = all ] || [ "$what" = plan ]; then
  repo=$work/plan-1m
  ./target/release/examples/gen_users --users 1000000 --files 100 "$repo" 2>/dev/null
  url=$(new_db)
  /usr/bin/time -f "== state import of 1,000,000 users into PostgreSQL: %e s wall, %M KiB peak RSS" \
    env ATTRSYNC_STATE="$url" "$bin" --dir "$repo" state import "$repo/snapshot.jsonl" >/dev/null
  "$bin" --dir "$repo" state import "$repo/snapshot.jsonl" >/dev/null
  for run in 1 2 3; do
    /usr/bin/time -f "== no-change plan, 1,000,000 users, PostgreSQL ($run): %e s wall, %M KiB peak RSS" \
      env ATTRSYNC_STATE="$url" "$bin" --dir "$repo" plan >/dev/null
    /usr/bin/time -f "== no-change plan, 1,000,000 users, sled ($run):       %e s wall, %M KiB peak RSS" \
      "$bin" --dir "$repo" plan >/dev/null
  done
fi

start_emulator() {
  env -u TIM_SECRET_KEY "$bin" emulator --listen 127.0.0.1:0 --latency 30 --attributes sex,city,tier >"$work/emulator.out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/emulator.out" ] && break; sleep 0.05; done
  head -n1 "$work/emulator.out"
}

if [ "$what" = all ] || [ "$what" = apply ]; then
  addr=$(start_emulator)
  repo=$work/apply-30k
  ./target/release/examples/gen_users --users 30000 --files 10 "$repo" 2>/dev/null
  sed -i "s|endpoint: embedded|endpoint: http://$addr|" "$repo/attrsync.yaml"
  url=$(new_db)
  ATTRSYNC_STATE="$url" "$bin" --dir "$repo" apply --auto-approve --format json | python3 -c '
import json, sys
r = json.load(sys.stdin)
s = r["elapsed_ms"] / 1000
print("== apply 30,000 changed users, PostgreSQL commits, 30 ms latency: %d created in %.2f s, %d calls = %.1f calls/s, %d throttled"
      % (r["created"], s, r["calls"], r["calls"] / s, r["throttled"]))'
fi

if [ "$what" = all ] || [ "$what" = failover ]; then
  addr=$(start_emulator)
  repo=$work/failover
  ./target/release/examples/gen_users --users 100 --files 1 "$repo" 2>/dev/null
  sed -i "s|endpoint: embedded|endpoint: http://$addr|" "$repo/attrsync.yaml"
  export ATTRSYNC_STATE=$(new_db)
  daemon_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  start_daemon() { # $1: port
    "$bin" --dir "$repo" -q watch --listen "127.0.0.1:$1" --interval 1h >/dev/null 2>&1 &
    pids+=($!)
    echo $!
  }
  readyz() { curl -s "http://127.0.0.1:$1/readyz" || true; }
  active_port=$(daemon_port); active=$(start_daemon "$active_port")
  until [ "$(readyz "$active_port")" = ready ]; do sleep 0.05; done
  times=()
  for run in $(seq 10); do
    standby_port=$(daemon_port); standby=$(start_daemon "$standby_port")
    until readyz "$standby_port" | grep -q '^standby'; do sleep 0.05; done
    kill -9 "$active"
    started=$(date +%s.%N)
    until [ "$(readyz "$standby_port")" = ready ]; do sleep 0.01; done
    ended=$(date +%s.%N)
    times+=("$(echo "$ended - $started" | bc)")
    echo "   failover $run: ${times[-1]} s"
    active=$standby; active_port=$standby_port
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "== daemon failover after kill -9, median of %d: %.2f s (min %.2f, max %.2f)\n", NR, (a[int((NR+1)/2)]+a[int(NR/2)+1])/2, a[1], a[NR]}'
fi
