#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a bounded time, growing the kept
# corpus in fuzz/corpus/<target>/ (seeds are committed; new inputs found by a
# run can be committed too).
#
#   scripts/fuzz-smoke.sh              each target for ${FUZZ_SECS:-30} s
#   FUZZ_SECS=600 scripts/fuzz-smoke.sh
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address and friends) to
# rustc; the stable toolchain accepts them with RUSTC_BOOTSTRAP=1, which is
# how this script runs it. Installs cargo-fuzz with `cargo install` when it
# is missing; if that fails it prints SKIP (and fails under CI=true).
# Crashes are written to fuzz/artifacts/<target>/ and make the script fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

secs="${FUZZ_SECS:-30}"
target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    if ! cargo install cargo-fuzz --locked; then
        case "${CI:-}" in
            true|1|yes) echo "FAIL: cargo-fuzz could not be installed" >&2; exit 1 ;;
            *) echo "SKIP: cargo-fuzz could not be installed"; exit 0 ;;
        esac
    fi
fi
if [ "$(id -u)" != 0 ]; then
    echo "note: not root; fsd's passthrough cannot switch credentials, some paths stay unexercised"
fi

export RUSTC_BOOTSTRAP=1
# Keep the CARGO_TARGET_DIR of the main workspace out of the fuzz build: the
# fuzz crate builds with sanitizer flags that must not mix with it.
unset CARGO_TARGET_DIR

failed=()
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    echo "=== fuzzing $target for ${secs}s (corpus: fuzz/corpus/$target, $(ls "corpus/$target" | wc -l) inputs)"
    if ! cargo fuzz run --target-dir "$target_dir" "$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1; then
        failed+=("$target")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAIL: crashes in ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz smoke: no crashes"
