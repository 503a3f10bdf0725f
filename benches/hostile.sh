#!/usr/bin/env bash
# Hostile config input, timed: `attrsync validate` of one user file with 100,000 keys (and a
# duplicate at the end), and of one with 100,000 users in one flow mapping. Bounded work means
# these take about as long per key as an ordinary file. Needs GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin attrsync
bin=$PWD/target/release/attrsync
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/repo/users"
printf 'sdkappid: 1400000000\nidentifier: administrator\nregion: singapore\nattributes: [sex, city, tier]\n' >"$work/repo/attrsync.yaml"
python3 - "$work/repo/users" <<'PY'
import sys
d = sys.argv[1]
with open(f"{d}/keys.yaml", "w") as f:
    f.write("users:\n")
    for i in range(100_000):
        f.write(f"  u{i}: {{sex: female}}\n")
    f.write("  u5: {sex: male}\n")
PY
size=$(du -h "$work/repo/users/keys.yaml" | cut -f1)
for run in 1 2 3; do
  /usr/bin/time -f "== validate, one file of 100,000 keys and a duplicate ($size) ($run): %e s wall, %M KiB peak RSS" \
    "$bin" --dir "$work/repo" validate >/dev/null || true
done
