#!/usr/bin/env bash
# Runs every test of the project, after installing what they need.
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --no-deps  skip scripts/install-deps.sh (already done)
#
# On a fresh Debian 12 machine with only the Rust toolchain, gcc and python3
# this installs QEMU, busybox, the guest kernel, Xvfb and the reference
# virtiofsd (scripts/install-deps.sh), then checks formatting and lints,
# builds the workspace and runs the unit tests, the real-guest tests and the
# host-side guest driver suites. Tests that need something the machine lacks
# print "SKIP: <why>"; with CI=true they fail instead, since the install step
# must have provided it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s\n' "$*"; }

if [ "${1:-}" != "--no-deps" ]; then
    step "installing dependencies"
    scripts/install-deps.sh
fi

step "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building"
# The driver and rig tests run the fsd binary, so build every binary first.
cargo build --workspace --all-targets --locked

step "tests"
cargo test --workspace --locked --no-fail-fast -- --nocapture 2>&1 | tee target/test-output.log

# The guests above boot on Debian 12's QEMU 7.2 (the plugin tests on QEMU
# 10). The main guest tests of fsd run once more with every guest on QEMU
# 10 from bookworm-backports, so that both front-ends stay supported.
step "fsd's main guest tests on QEMU 10 (FSD_GUEST_QEMU=10)"
FSD_GUEST_QEMU=10 cargo test -p fsd --test guest --locked --no-fail-fast -- --nocapture \
    root:: posix:: locks:: policy_bypass:: multiqueue:: hostile_names:: 2>&1 | tee -a target/test-output.log
# The README's first command, as a user runs it (without the install step,
# done above): the whole tour must keep working.
step "scripts/demo.sh --no-deps"
if ! scripts/demo.sh --no-deps >target/demo-output.log 2>&1; then
    tail -n 60 target/demo-output.log
    echo "the demo failed (whole output: target/demo-output.log)"
    exit 1
fi
sed -n '/Time per step/,$p' target/demo-output.log

for extra in scripts/verify-units.sh scripts/fuzz-smoke.sh scripts/bench-smoke.sh; do
    if [ -x "$extra" ]; then
        step "$extra"
        "$extra"
    fi
done

# One closing line that counts every test binary's results together.
python3 - target/test-output.log <<'PY'
import re, sys
# A test that printed "SKIP: ..." returned early: count it as skipped, not
# passed (the Rust harness has no run-time skip of its own).
# A skip is printed on stdout and stderr; count adjacent duplicates once.
passed = failed = skipped = 0
last_skip = None
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
    if m:
        passed += int(m[1]); failed += int(m[2]); skipped += int(m[3])
    if line.startswith("SKIP:"):
        if line != last_skip:
            skipped += 1; passed -= 1
        last_skip = line
        continue
    last_skip = None
print(f"\nall tests: {passed} passed, {failed} failed, {skipped} skipped")
PY
