#!/usr/bin/env bash
# The project's main demo: a diskless VM whose root filesystem is served by
# fsd over virtio-fs (vhost-user), with a short scripted tour.
#
#   scripts/demo.sh            set up, boot, run the tour, power off
#   scripts/demo.sh --shell    same, but an interactive console (Ctrl-A X quits)
#   scripts/demo.sh --no-deps  skip scripts/install-deps.sh
#
# The demo is a list of steps (STEPS below); each is a function step_<name>.
# Later parts add theirs (e.g. authd before the guest boots, the monitor
# while it runs) by defining a function and inserting its name in STEPS.
#
# Environment: FSD_DEMO_DIR (work directory, default a fresh temporary one,
# kept when set), FSD_SANDBOX (fsd's --sandbox; default namespace as root,
# none otherwise), CARGO_TARGET_DIR (honoured).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shell=0
deps=1
for arg in "$@"; do
    case $arg in
        --shell) shell=1 ;;
        --no-deps) deps=0 ;;
        -h | --help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "demo: unknown argument $arg" >&2; exit 64 ;;
    esac
done

STEPS=(deps build rootfs fsd guest host_view)

target=${CARGO_TARGET_DIR:-$repo/target}
bin=$target/debug
if [ -n "${FSD_DEMO_DIR:-}" ]; then
    work=$FSD_DEMO_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/fsd-demo.XXXXXX)
fi
root=$work/root
sock=$work/fsd.sock
tag=rootfs
if [ "$(id -u)" -eq 0 ]; then sandbox=${FSD_SANDBOX:-namespace}; else sandbox=${FSD_SANDBOX:-none}; fi
pids=()

banner() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local pid i
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Give daemons 5 s to exit cleanly, then stop them for good.
    for i in $(seq 1 50); do
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && break; pid=; done
        [ -z "${pid:-}" ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -z "${FSD_DEMO_DIR:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

step_deps() {
    [ "$deps" -eq 1 ] || return 0
    banner "Installing prerequisites (scripts/install-deps.sh)"
    "$repo/scripts/install-deps.sh"
}

step_build() {
    banner "Building fsd and the guest rig"
    (cd "$repo" && cargo build -q -p fsd -p testrig --bin fsd --bin fsd-rig)
}

step_rootfs() {
    banner "Making a busybox root filesystem in $root"
    local tour=$work/tour.sh
    cat >"$tour" <<'TOUR'
run() { echo "guest# $*"; sh -c "$*"; echo; }
run uname -sr
run "mount | grep ' on / '"
run ls /
run "echo 'hello from the diskless guest' > /root/hello.txt"
run cat /root/hello.txt
run "df -h / | tail -n 1"
TOUR
    if [ "$shell" -eq 1 ]; then
        "$bin/fsd-rig" rootfs "$root"
    else
        "$bin/fsd-rig" rootfs "$root" --script "$tour"
    fi
    echo "$(find "$root" | wc -l) entries, $(du -sh "$root" | cut -f1)"
}

step_fsd() {
    banner "Starting fsd: serving $root on $sock (sandbox: $sandbox)"
    rm -f "$sock"
    "$bin/fsd" --socket-path="$sock" --shared-dir="$root" --cache=auto --sandbox="$sandbox" \
        >"$work/fsd.log" 2>&1 &
    pids+=($!)
    local i
    for i in $(seq 1 100); do
        [ -S "$sock" ] && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/fsd.log" >&2; die "fsd exited"; }
        sleep 0.1
    done
    die "fsd did not create $sock"
}

step_guest() {
    if [ "$shell" -eq 1 ]; then
        banner "Booting the guest (QEMU TCG) with an interactive console; Ctrl-A X quits"
        "$bin/fsd-rig" boot-root --socket "$sock" --tag "$tag" --show-command --shell
    else
        banner "Booting the guest (QEMU TCG, root on fsd) and running the tour"
        "$bin/fsd-rig" boot-root --socket "$sock" --tag "$tag" --show-command --console-log "$work/console.log" \
            || { echo "console log: $work/console.log" >&2; tail -n 30 "$work/fsd.log" >&2; die "guest failed"; }
    fi
}

step_host_view() {
    banner "The same file, seen on the host"
    if [ -f "$root/root/hello.txt" ]; then
        echo "host\$ cat $root/root/hello.txt"
        cat "$root/root/hello.txt"
    else
        echo "(the guest wrote no /root/hello.txt)"
    fi
}

for step in "${STEPS[@]}"; do
    "step_$step"
done
