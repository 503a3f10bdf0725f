#!/usr/bin/env bash
# Times `attrsync plan` at 100,000 and 1,000,000 users (100 files), against an empty snapshot
# and against a snapshot that already holds every user (no changes). Prints wall time and
# peak RSS per run. Needs GNU time (/usr/bin/time; `apt-get install time`).
#
#   bash benches/plan.sh            # both sizes
#   bash benches/plan.sh 100000     # one size
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin attrsync --example gen_users
bin=$PWD/target/release/attrsync
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for users in "${@:-100000 1000000}"; do
  for n in $users; do
    repo=$work/repo-$n
    ./target/release/examples/gen_users --users "$n" --files 100 "$repo" 2>/dev/null
    size=$(du -sh "$repo/users" | cut -f1)
    echo "== $n users in 100 files ($size of YAML)"
    /usr/bin/time -f "  plan, empty snapshot:        %e s wall, %M KiB peak RSS" \
      "$bin" --dir "$repo" plan --format json >/dev/null
    "$bin" --dir "$repo" state import "$repo/snapshot.jsonl" >/dev/null
    for run in 1 2 3; do
      /usr/bin/time -f "  plan, snapshot holds all ($run): %e s wall, %M KiB peak RSS" \
        "$bin" --dir "$repo" plan >/dev/null
    done
  done
done
