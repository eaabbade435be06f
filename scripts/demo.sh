#!/usr/bin/env bash
# The project's main demo: a diskless VM whose root filesystem is served by
# fsd over virtio-fs (vhost-user), with a short scripted tour. One directory
# of it is protected: reading it makes fsd ask authd, whose trusted dialog
# asks alice (password "demo-password") at the host. With --shell and a
# $DISPLAY of your own, you answer the dialog; otherwise it is drawn on a
# private Xvfb and a scripted person types the password.
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

STEPS=(deps build rootfs authd fsd person guest host_view)

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
    banner "Building fsd, authd and the guest rig"
    (cd "$repo" && cargo build -q -p fsd -p authd -p testrig --bin fsd --bin authd --bin authd-dialog --bin fsd-rig)
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
run "stat -f -c 'file system type %T, %b blocks of %S bytes' /"
run ls -l /home/alice/secret
echo "guest# cat /home/alice/secret/diary.txt    (protected: fsd asks authd, authd asks the person at the host)"
cat /home/alice/secret/diary.txt; echo
run "cat /home/alice/secret/diary.txt > /dev/null && echo 'read again within the grant: no second prompt'"
TOUR
    if [ "$shell" -eq 1 ]; then
        "$bin/fsd-rig" rootfs "$root"
    else
        "$bin/fsd-rig" rootfs "$root" --script "$tour"
    fi
    mkdir -p "$root/home/alice/secret"
    echo "Dear diary: only alice may read this, and only after typing her password at the host." \
        >"$root/home/alice/secret/diary.txt"
    echo "$(find "$root" | wc -l) entries, $(du -sh "$root" | cut -f1)"
}

# The person at the host: alice, with a password and a seal only the real
# dialog shows. Without a display of your own, the dialog goes to a private
# Xvfb and a scripted person (step_person) answers it.
password=demo-password
step_authd() {
    banner "Starting authd (credentials, trusted dialog, grants)"
    local adir=$work/authd display
    mkdir -p "$adir"
    if [ -n "${DISPLAY:-}" ] && [ "$shell" -eq 1 ]; then
        display=$DISPLAY
        scripted_person=0
    else
        local n=90
        while [ -e "/tmp/.X$n-lock" ] || [ -e "/tmp/.X11-unix/X$n" ]; do n=$((n + 1)); done
        Xvfb ":$n" -screen 0 1024x768x24 -nolisten tcp >"$work/xvfb.log" 2>&1 &
        pids+=($!)
        display=:$n
        local i
        for i in $(seq 1 100); do
            DISPLAY=$display xdotool getmouselocation >/dev/null 2>&1 && break
            sleep 0.1
        done
        scripted_person=1
    fi
    dialog_display=$display
    cat >"$adir/config.json" <<JSON
{"socket": "$adir/authd.sock", "state_dir": "$adir/state", "audit_log": "$adir/audit.jsonl",
 "allow_uids": [$(id -u)], "frontend": "dialog", "display": "$display",
 "prompt_timeout_secs": 60, "focus_delay_ms": 1000, "max_grant_secs": 300}
JSON
    printf '%s\n' "$password" | "$bin/authd" enroll alice --password-stdin \
        --seal-phrase "purple owl at dawn" --seal-color "#6a1b9a" --state-dir "$adir/state" >/dev/null
    "$bin/authd" --config "$adir/config.json" serve >"$work/authd.log" 2>&1 &
    pids+=($!)
    local i
    for i in $(seq 1 100); do
        [ -S "$adir/authd.sock" ] && break
        sleep 0.1
    done
    [ -S "$adir/authd.sock" ] || { cat "$work/authd.log" >&2; die "authd did not start"; }
    cat >"$work/policy.toml" <<TOML
version = 1

[[principal]]
name = "alice"

[[vm]]
name = "demo"
principal = "alice"

[[rule]]
path = "home/alice/secret/**"
owner = "alice"
without_grant = "ask"
cache = "direct"
grant_secs = 120
TOML
    echo "alice enrolled (seal: \"purple owl at dawn\" on purple); dialog on display $display"
    echo "policy: home/alice/secret/** belongs to alice; without a grant fsd asks authd"
}

# Plays the person at the screen when nobody is there: waits for the real
# dialog, waits past its focus delay, types alice's password, presses Enter,
# and keeps a screenshot of the dialog.
step_person() {
    [ "${scripted_person:-0}" -eq 1 ] || return 0
    (
        export DISPLAY=$dialog_display
        while :; do
            win=$(xdotool search --onlyvisible --name '^authd: host authentication$' 2>/dev/null | head -n 1 || true)
            [ -n "$win" ] && break
            sleep 0.2
        done
        xdotool windowfocus --sync "$win"
        xwd -silent -id "$win" | /usr/bin/convert xwd:- "$work/dialog.png" 2>/dev/null || true
        sleep 1.5
        xdotool type --delay 30 "$password"
        xdotool key Return
        echo "[host] the person at the screen typed alice's password into the dialog (screenshot: $work/dialog.png)"
    ) &
    pids+=($!)
}

step_fsd() {
    banner "Starting fsd: serving $root on $sock (sandbox: $sandbox)"
    rm -f "$sock"
    "$bin/fsd" --socket-path="$sock" --shared-dir="$root" --cache=auto --sandbox="$sandbox" \
        --policy="$work/policy.toml" --vm=demo --authd-socket="$work/authd/authd.sock" \
        --audit-log="$work/fsd-audit.jsonl" >"$work/fsd.log" 2>&1 &
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
    banner "What the host recorded"
    if [ -s "$work/fsd-audit.jsonl" ]; then
        echo "fsd's audit log (one line per decision on a protected file):"
        sed 's/^/  /' "$work/fsd-audit.jsonl"
    fi
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
