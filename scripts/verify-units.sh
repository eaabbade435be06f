#!/usr/bin/env bash
# Checks the shipped systemd units (deploy/systemd) with systemd-analyze
# verify, against this tree's binaries: any warning (an unknown key, a
# misspelt option, a command that is not there) fails. No running systemd
# is needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v systemd-analyze >/dev/null || { echo "verify-units: systemd-analyze missing (Debian package systemd)" >&2; exit 1; }
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
for b in fsd authd monitor netfilter delegate; do
    [ -x "$bin/$b" ] || { echo "verify-units: $bin/$b not built" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in deploy/systemd/*.service; do
    name=$(basename "$unit")
    # A template is checked as one instance of it.
    case "$name" in *@.service) name=${name/@.service/@vm1.service} ;; esac
    sed "s|/usr/bin/|$bin/|g" "$unit" >"$work/$name"
done
out=$(cd "$work" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no ./*.service 2>&1) || {
    printf '%s\n' "$out" >&2
    echo "verify-units: systemd-analyze verify failed" >&2
    exit 1
}
if [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    echo "verify-units: systemd-analyze verify warned" >&2
    exit 1
fi
echo "verify-units: $(ls "$work" | wc -l) units pass systemd-analyze verify: $(ls "$work" | tr '\n' ' ')"
