#!/usr/bin/env bash
# The crash-safety benchmarks of README.md ("Crash safety"):
#   1. kill -9 of `attrsync apply` at random moments, 50 trials: no user whose snapshot value
#      differs from the server without being in doubt; every trial converges with one more
#      apply, including after the YAML is reverted;
#   2. the same under 80 % write faults (dropped answers, 502s, 91000s), 8 trials of 200 users
#      (each apply rides out minutes of retries): no lies;
#   3. snapshot damage (truncation, zeroed pages, flipped bits, deleted files, an older copy
#      put back): a clear error or an intact snapshot, never a silent rollback or a panic.
# Each exits non-zero if its condition fails.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin attrsync --example crash_bench --example damage_bench
./target/release/examples/crash_bench --trials "${TRIALS:-50}" --users 2000
./target/release/examples/crash_bench --trials 8 --users 200 --fail-rate 0.8 --seed 3
for seed in 1 2 3; do
  ./target/release/examples/damage_bench --users 5000 --seed "$seed"
done
