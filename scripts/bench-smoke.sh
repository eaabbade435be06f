#!/usr/bin/env bash
# Checks that the fsd-vs-virtiofsd benchmark runs end to end (tiny counts,
# one repetition). It checks the harness, not speed; the measured table lives
# in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build -p fsd -p driver --bins
cargo run -q -p driver --bin fsbench -- --smoke
