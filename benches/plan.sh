#!/usr/bin/env bash
# Times `attrsync plan` at 100,000 and 1,000,000 users (100 files): against an empty snapshot
# and against one that already holds every user (no changes), with the parse cache cold (the
# first run after a clone) and warm, and after one file was edited. Beside each size it prints
# how long `cat` takes to read the same files: the floor. Wall time and peak RSS per run.
# Needs GNU time (/usr/bin/time; `apt-get install time`).
#
#   bash benches/plan.sh                       # both sizes, 100 files
#   bash benches/plan.sh 100000                # one size
#   FILES=10000 bash benches/plan.sh 1000000   # the same users in 10,000 files
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin attrsync --example gen_users
bin=$PWD/target/release/attrsync
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
measure() { # label, then the command
  local label=$1; shift
  /usr/bin/time -f "  $label: %e s wall, %M KiB peak RSS" "$@" >/dev/null
}
files=${FILES:-100}
for n in ${@:-100000 1000000}; do
  repo=$work/repo-$n
  ./target/release/examples/gen_users --users "$n" --files "$files" "$repo" 2>/dev/null
  size=$(du -sh "$repo/users" | cut -f1)
  echo "== $n users in $files files ($size of YAML)"
  measure "cat of the user files (the floor)" sh -c "cat $repo/users/*.yaml >/dev/null"
  rm -rf "$repo/.attrsync-cache"
  measure "plan, empty snapshot, cold cache" "$bin" --dir "$repo" plan --format json
  measure "plan, empty snapshot, warm cache" "$bin" --dir "$repo" plan --format json
  measure "plan, empty snapshot, warm cache, text" "$bin" --dir "$repo" plan
  "$bin" --dir "$repo" state import "$repo/snapshot.jsonl" >/dev/null
  rm -rf "$repo/.attrsync-cache"
  measure "plan, snapshot holds all, cold cache" "$bin" --dir "$repo" plan
  for run in 1 2 3; do
    measure "plan, snapshot holds all, warm cache ($run)" "$bin" --dir "$repo" plan
  done
  # One file of 100 edited: 1 % of the users change city.
  # (A glob, not `ls | head`: with pipefail, ls would die of SIGPIPE on 10,000 names.)
  first=$(cd "$repo/users" && set -- *.yaml && echo "$1")
  sed -i 's/city: \([A-Za-z]*\)/city: \1x/' "$repo/users/$first"
  measure "plan, one file edited (1 %% of users changed), warm cache" "$bin" --dir "$repo" plan
done
