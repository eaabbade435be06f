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
#   qemu10/root/usr/bin/qemu-system-x86_64            QEMU 10 from bookworm-backports
#                                                     (unpacked beside the system's 7.2)
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

# libvirtd looks up its compiled-in QEMU user and group at start; Debian
# creates them in libvirt-daemon-system, which needs systemd. The libvirt
# test runs QEMU as root (its own qemu.conf), but they must exist.
if [ "$(id -u)" -eq 0 ] && command -v libvirtd >/dev/null; then
    for g in kvm libvirt-qemu; do
        getent group "$g" >/dev/null || groupadd --system "$g"
    done
    getent passwd libvirt-qemu >/dev/null \
        || useradd --system --gid kvm --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
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

# --- 5. QEMU 10 beside the system QEMU (for TCG plugins) ----------------------
# Debian 12's QEMU 7.2 has plugin API v1, which cannot read registers or guest
# memory; the taint hooks (taint-plugin/) need API v4 (QEMU >= 9.2). Debian's
# bookworm-backports carries QEMU 10.0. Its packages are downloaded and
# unpacked into the cache (never installed), so the system QEMU stays 7.2:
#   qemu10/debs/*.deb                       qemu-system-{x86,common,data}, seabios
#   qemu10/root/usr/bin/qemu-system-x86_64  the binary
#   qemu10/root/usr/share/{qemu,seabios}    its firmware (QEMU's -L)
#   qemu10/root/usr/lib/x86_64-linux-gnu/qemu  its modules (QEMU_MODULE_DIR)
# The suite is added to apt's sources like Debian's own file; backports are
# NotAutomatic, so nothing on the system upgrades to them by itself.
q10=$cache/qemu10
q10_bin=$q10/root/usr/bin/qemu-system-x86_64
q10_pkgs=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
q10_ok() {
    [ -x "$q10_bin" ] || return 1
    ! ldd "$q10_bin" 2>/dev/null | grep -q 'not found' || return 1
    QEMU_MODULE_DIR=$q10/root/usr/lib/x86_64-linux-gnu/qemu "$q10_bin" --version 2>/dev/null \
        | grep -q '^QEMU emulator version \(9\.[2-9]\|[1-9][0-9]\)'
}
# The mirror the system already uses for bookworm (deb822 or one-line form).
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm([ \n]|$)/ {
                  for (i = 1; i <= NF; i++) if ($i == "URIs:") { print $(i+1); exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    echo http://deb.debian.org/debian
}
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if q10_ok; then
    say "QEMU 10 present: $("$q10_bin" --version | head -n1)"
elif [ "$codename" != bookworm ]; then
    say "skipping QEMU 10: only Debian 12 (bookworm-backports) is handled here;" \
        "set FSD_QEMU10 to a QEMU >= 9.2 binary for the plugin tests"
else
    bpo_file=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! apt-cache policy 2>/dev/null | grep -q ' bookworm-backports/main '; then
        if [ ! -f "$bpo_file" ]; then
            mirror=$(debian_mirror)
            say "adding bookworm-backports ($mirror) in $bpo_file"
            printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                "$mirror" | "${sudo_cmd[@]}" tee "$bpo_file.tmp" >/dev/null \
                && "${sudo_cmd[@]}" mv "$bpo_file.tmp" "$bpo_file" || die "cannot write $bpo_file"
        fi
        apt_updated=0
        apt_update_once
    fi
    rm -rf "$q10/debs.tmp" "$q10/root.tmp"
    mkdir -p "$q10/debs.tmp"
    say "downloading ${q10_pkgs[*]} from bookworm-backports"
    (cd "$q10/debs.tmp" && apt-get download -qq -o APT::Sandbox::User=root \
        "${q10_pkgs[@]/%//bookworm-backports}" </dev/null) || die "apt-get download of QEMU 10 failed"
    for deb in "$q10"/debs.tmp/*.deb; do
        dpkg -x "$deb" "$q10/root.tmp" || die "dpkg -x $deb failed"
    done
    # The libraries the binaries link against come from bookworm itself:
    # install those of the packages' dependencies that are missing.
    libs=()
    for p in qemu-system-x86 qemu-system-common; do
        while read -r dep; do
            case "$dep" in qemu-*|seabios|ipxe-qemu|'') continue ;; esac
            dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok installed' || libs+=("$dep")
        done < <(apt-cache show "$p/bookworm-backports" 2>/dev/null | sed -n 's/^Depends: //p' | head -n1 \
                 | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g')
    done
    if [ "${#libs[@]}" -gt 0 ]; then
        say "apt-get install ${libs[*]} (libraries QEMU 10 links against)"
        "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${libs[@]}" </dev/null \
            || die "apt-get install failed for: ${libs[*]}"
    fi
    missing_libs=$(ldd "$q10/root.tmp/usr/bin/qemu-system-x86_64" | grep 'not found' || true)
    [ -z "$missing_libs" ] || die "QEMU 10 needs libraries this system lacks: $missing_libs"
    rm -rf "$q10/root" "$q10/debs"
    mv "$q10/root.tmp" "$q10/root"
    mv "$q10/debs.tmp" "$q10/debs"
    q10_ok || die "the unpacked QEMU 10 at $q10_bin does not run"
    say "QEMU 10 unpacked: $("$q10_bin" --version | head -n1)"
fi

say "done; guest kernel $release, cache $cache"
