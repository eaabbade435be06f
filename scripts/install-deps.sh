#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian 12 machine
# that has only the Rust toolchain, gcc and python3. Safe to run again: every
# step checks first and does nothing when its result is already present.
#
# Cache layout (FSD_CACHE, default ~/.cache/fsd); testrig reads the same paths:
#   guest/linux-image-<release>_<version>_amd64.deb   the downloaded package
#   guest/root/                                       its contents (dpkg -x):
#     boot/vmlinuz-<release>, boot/config-<release>,
#     lib/modules/<release>/kernel/...
#   guest/vmlinux                                     ELF kernel with .BTF,
#                                                     decompressed from vmlinuz
#   guest/release                                     the <release> string
#   virtiofsd/bin/virtiofsd                           reference daemon
#
# Runs unattended (CI as root, no stdin). Exits non-zero with a message naming
# the step that failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${FSD_CACHE:-$HOME/.cache/fsd}
guest=$cache/guest
export DEBIAN_FRONTEND=noninteractive

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: ERROR: %s\n' "$*" >&2; exit 1; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: cannot run apt-get"
    sudo_cmd=(sudo -n)
fi

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        "${sudo_cmd[@]}" apt-get update -qq </dev/null || die "apt-get update failed"
        apt_updated=1
    fi
}

# --- 1. Debian packages: union of scripts/apt/*.txt --------------------------
mapfile -t wanted < <(cat "$here"/apt/*.txt | sed -e 's/#.*//' -e 's/[[:space:]]//g' | grep -v '^$' | sort -u)
missing=()
for p in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    say "apt-get install ${missing[*]}"
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
        || die "apt-get install failed for: ${missing[*]}"
else
    say "Debian packages present (${#wanted[@]} listed in scripts/apt/*.txt)"
fi

# --- 2. Guest kernel: Debian's current linux-image ----------------------------
# The metapackage linux-image-amd64 depends on exactly one versioned image.
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^[[:space:]]*Depends:[[:space:]]*\(linux-image-[0-9][^[:space:]]*\).*/\1/p' | head -n1
}
pkg=$(kernel_pkg)
if [ -z "$pkg" ]; then
    apt_update_once
    pkg=$(kernel_pkg)
fi
[ -n "$pkg" ] || die "apt-cache cannot name the image behind linux-image-amd64"
release=${pkg#linux-image-}
mkdir -p "$guest"
if [ -f "$guest/root/boot/vmlinuz-$release" ] && [ -d "$guest/root/lib/modules/$release" ]; then
    say "guest kernel $release present in $guest/root"
else
    deb=$(ls "$guest"/"${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        say "downloading $pkg"
        (cd "$guest" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" </dev/null) || {
            apt_update_once
            (cd "$guest" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" </dev/null) || die "apt-get download $pkg failed"
        }
        deb=$(ls "$guest"/"${pkg}"_*.deb | head -n1)
    fi
    say "unpacking $(basename "$deb") into $guest/root"
    rm -rf "$guest/root.tmp"
    dpkg -x "$deb" "$guest/root.tmp" || die "dpkg -x $deb failed"
    # Keep other releases' files, replace only what this package ships.
    mkdir -p "$guest/root"
    cp -a "$guest/root.tmp/." "$guest/root/"
    rm -rf "$guest/root.tmp"
fi
printf '%s\n' "$release" >"$guest/release.tmp" && mv "$guest/release.tmp" "$guest/release"

# --- 3. vmlinux (ELF with .BTF) from vmlinuz ----------------------------------
# As the kernel's scripts/extract-vmlinux does: find the xz stream magic inside
# the bzImage and decompress from there (xz ignores trailing garbage with
# --single-stream), then check the result is an ELF file.
vmlinuz=$guest/root/boot/vmlinuz-$release
if [ -f "$guest/vmlinux" ] && [ "$guest/vmlinux" -nt "$vmlinuz" ]; then
    say "vmlinux present"
else
    say "extracting vmlinux from $(basename "$vmlinuz")"
    ok=0
    for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
        # xz stops after one stream; tail then dies of SIGPIPE, which is fine.
        if xz -dc --single-stream < <(tail -c +"$((off + 1))" "$vmlinuz") >"$guest/vmlinux.tmp" 2>/dev/null \
            && [ "$(head -c 4 "$guest/vmlinux.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
            ok=1
            break
        fi
    done
    [ "$ok" -eq 1 ] || { rm -f "$guest/vmlinux.tmp"; die "no xz-compressed ELF found in $vmlinuz"; }
    mv "$guest/vmlinux.tmp" "$guest/vmlinux"
fi

# --- 4. virtiofsd, the reference daemon ---------------------------------------
vfsd=$cache/virtiofsd/bin/virtiofsd
if [ -x "$vfsd" ]; then
    say "virtiofsd present: $("$vfsd" --version 2>/dev/null | head -n1)"
else
    command -v cargo >/dev/null || die "cargo not found (the Rust toolchain is required)"
    # A build into the same root would fight over cargo's locks; wait for it.
    while pgrep -f "cargo install .*--root $cache/virtiofsd" >/dev/null 2>&1; do
        say "another 'cargo install virtiofsd' into $cache/virtiofsd is running; waiting"
        sleep 20
    done
    if [ ! -x "$vfsd" ]; then
        say "cargo install virtiofsd (takes several minutes)"
        cargo install --locked virtiofsd --root "$cache/virtiofsd" </dev/null \
            || die "cargo install virtiofsd failed (needs libseccomp-dev and libcap-ng-dev)"
    fi
    [ -x "$vfsd" ] || die "virtiofsd was not installed at $vfsd"
fi

say "done; guest kernel $release, cache $cache"
