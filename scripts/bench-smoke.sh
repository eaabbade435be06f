#!/usr/bin/env bash
# Checks that the benchmarks run end to end: fsd against virtiofsd (tiny counts,
# one repetition), then the taint hooks' cost in a guest. It checks the
# harnesses, not speed; the measured tables live in docs/benchmarks.md and
# docs/taint.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build -p fsd -p driver --bins
cargo run -q -p driver --bin fsbench -- --smoke

# The taint hooks' cost harness (docs/taint.md, "Cost"): two small guests
# under QEMU 10 with tiny counts; prints its table, asserts no time.
HOOK_COST_N=500 HOOK_COST_FORKS=5 HOOK_COST_REPS=1 \
    cargo test -q -p taint-plugin --test hook_cost -- --ignored --nocapture
