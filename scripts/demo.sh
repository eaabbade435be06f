#!/usr/bin/env bash
# The project's main demo: a diskless VM whose root filesystem is served by
# fsd over virtio-fs (vhost-user), with a short scripted tour. One directory
# of it is protected: reading it makes fsd ask authd, whose trusted dialog
# asks alice (password "demo-password") at the host. With --shell and a
# $DISPLAY of your own, you answer the dialog; otherwise it is drawn on a
# private Xvfb and a scripted person types the password.
#
# While the guest runs, the host looks in from outside with the monitor:
# the VM's identity, its processes, a runaway process frozen and thawed
# while the guest stays responsive, and the end of alice's grant flushing
# what the guest had cached (guest RAM searched before and after).
#
# The guest's network goes through the packet filter (netfilter) to passt:
# a clean process fetches a page from a web server on the host, and the
# same fetch by a process that has just read alice's diary is blocked (the
# filter asks the monitor, which fsd told who read it). And a setuid
# program is delegated: root in the guest may not write the share's
# etc/shadow, but pwchange, run on alice's behalf in a second guest (the
# helper VM, booted in the background), changes her line of it. Her
# grant has ended by then, so the dialog asks her again. Last, fsd is
# replaced under the running guest twice: a live handover (SIGUSR2) and a
# crash (SIGKILL, with --crash-recovery), while the guest reads in a loop.
#
#   scripts/demo.sh            set up, boot, run the tour, power off
#   scripts/demo.sh --shell    same, but an interactive console (Ctrl-A X quits);
#                              eth0 goes through the filter, no helper VM
#   scripts/demo.sh --no-deps  skip scripts/install-deps.sh
#
# The demo is a list of steps (STEPS below); each is a function step_<name>,
# timed; the times are printed at the end. Guest and host take turns: the
# guest's tour prints "@@host NAME ..." and waits on its second serial port
# until the host's step NAME has run and said "go".
#
# Environment: FSD_DEMO_DIR (work directory, default a fresh temporary one,
# kept when set), FSD_DEMO_OUT (where the dialog's screenshot and the logs
# are kept, default target/demo), FSD_SANDBOX (fsd's --sandbox; default
# namespace as root, none otherwise), CARGO_TARGET_DIR (honoured).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shell=0
deps=1
for arg in "$@"; do
    case $arg in
        --shell) shell=1 ;;
        --no-deps) deps=0 ;;
        -h | --help) sed -n '2,36p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "demo: unknown argument $arg" >&2; exit 64 ;;
    esac
done

STEPS=(deps build rootfs authd monitor fsd filter helper person guest look freeze taint connect revoke delegate rejuvenate finish host_view)

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
out=${FSD_DEMO_OUT:-$target/demo}
mkdir -p "$out"
mem=/dev/shm/fsd-demo-$$.ram
uuid=5e1f0000-de30-4000-8000-000000000001
# A marker that only alice's ledger holds: found in guest RAM while the
# guest caches the ledger, gone after the grant ends.
marker=ledger-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
if [ "$(id -u)" -eq 0 ]; then sandbox=${FSD_SANDBOX:-namespace}; else sandbox=${FSD_SANDBOX:-none}; fi
pids=()

banner() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }

# Waits up to 10 s for the daemon just started (the last of $pids) to
# create its socket $1; otherwise shows its log $2 and stops the demo.
await_socket() {
    local i
    for i in $(seq 1 100); do
        [ -S "$1" ] && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    cat "$2" >&2
    die "no socket $1 (log above: $2)"
}

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
    rm -f "$mem"
    if [ -z "${FSD_DEMO_DIR:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

step_deps() {
    [ "$deps" -eq 1 ] || return 0
    banner "Installing prerequisites (scripts/install-deps.sh)"
    "$repo/scripts/install-deps.sh"
}

step_build() {
    banner "Building fsd, authd, the monitor, the packet filter, the delegation broker and the guest rig"
    (cd "$repo" && cargo build -q -p fsd -p authd -p monitor -p testrig -p netfilter -p delegate \
        --bin fsd --bin authd --bin authd-dialog --bin monitor --bin fsd-rig --bin netfilter --bin delegate)
    echo "the guests' static helpers (pwchange, the delegation client and agent):"
    tools=$("$bin/fsd-rig" guest-tools)
    echo "  $tools"
}

step_rootfs() {
    banner "Making a busybox root filesystem in $root"
    local tour=$work/tour.sh
    cat >"$tour" <<'TOUR'
# The helper VM boots the same root: it only serves delegated programs.
if grep -qsx org.fsd.delegate.agent /sys/class/virtio-ports/*/name; then
    mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666 devpts /dev/pts
    [ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
    exec /usr/sbin/delegate-agent
fi
exec 3</dev/ttyS1 && stty -F /dev/ttyS1 -echo 2>/dev/null
run() { echo "guest# $*"; sh -c "$*"; echo; }
host() { echo "@@host $*"; read -r _ <&3; }
ticks() { cut -d' ' -f14 "/proc/$1/stat"; }
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
run "cat /home/alice/secret/ledger.txt > /dev/null && echo 'the ledger is in the page cache now (cache = flush), nothing printed'"
run "cp /home/alice/secret/diary.txt /root/diary-copy.txt && echo 'a copy outside the protected directory'"
host look
sh -c 'while :; do :; done' &
runaway=$!
echo "guest: a runaway busy loop runs as pid $runaway"
sleep 1
host freeze "$runaway"
a=$(ticks "$runaway"); sleep 2; b=$(ticks "$runaway")
echo "guest: while frozen, the runaway used $((b - a)) ticks of CPU in 2 s; the guest itself answers: $(cat /proc/loadavg)"
run "kill -CONT $runaway; grep State /proc/$runaway/status"
host thaw "$runaway"
a=$(ticks "$runaway"); sleep 2; b=$(ticks "$runaway")
echo "guest: thawed, the runaway used $((b - a)) ticks in 2 s"
kill "$runaway"
echo "guest# ip addr add 192.0.2.15/24 dev eth0; ip route add default via 192.0.2.1    (eth0's frames go through the host's packet filter to passt)"
ip link set eth0 up && ip addr add 192.0.2.15/24 dev eth0 && ip route add default via 192.0.2.1
url=http://192.0.2.1:$(cat /etc/rig/http-port)/
run "wget -q -O - $url"
echo "guest# sh -c 'read -r line </home/alice/secret/diary.txt && exec wget -q -O - $url'    (the same fetch by a process that has read alice's diary; before the exec it waits for the host's turn)"
if sh -c "read -r line </home/alice/secret/diary.txt && echo \"@@host taint \$\$\" && read -r _ <&3 && exec wget -q -O - $url"; then
    echo "guest: fetched"
else
    echo "guest: no page (wget's status $?)"
fi
host connect
host revoke
host delegate
echo "guest# id -u; echo 'alice::0:0:::::' >> /etc/shadow    (the administrator's file, written by root in the VM)"
id -u
sh -c "echo 'alice::0:0:::::' >>/etc/shadow" || echo "guest: refused (EACCES), root or not"
echo
echo "guest# ls -l /usr/bin/pwchange    (setuid root on the host; fsd shows the VM the delegation client there)"
ls -l /usr/bin/pwchange
echo
echo "guest# echo n3w-secret | pwchange --stdin    (fsd shows the delegation client as pwchange: the host asks alice, a helper VM runs the real program)"
echo n3w-secret | /usr/bin/pwchange --stdin; echo "guest: pwchange exited with status $?"
host shadow
( n=0; bad=0; while [ ! -e /tmp/stop-reading ]; do n=$((n+1)); cat /root/hello.txt >/dev/null || bad=$((bad+1)); done; echo "$n $bad" >/tmp/reads ) &
reader=$!
host rejuvenate
touch /tmp/stop-reading; wait "$reader"
read -r n bad </tmp/reads
echo "guest: $n reads of /root/hello.txt while fsd was replaced twice; $bad failed"
echo "guest: the tour is over"
TOUR
    if [ "$shell" -eq 1 ]; then
        "$bin/fsd-rig" rootfs "$root"
    else
        "$bin/fsd-rig" rootfs "$root" --script "$tour"
    fi
    # alice's uid in the guests, the administrator's shadow file, and the
    # delegated program; the client fsd shows in its place; the helper's agent.
    echo "alice:x:1000:1000:Alice:/home/alice:/bin/sh" >>"$root/etc/passwd"
    printf '%s\n' 'root:$old$root:19000:0:99999:7:::' 'alice:$old$alice:19000:0:99999:7:::' >"$root/etc/shadow"
    chmod 640 "$root/etc/shadow"
    mkdir -p "$root/usr/libexec/fsd"
    install -m 4755 "$tools/pwchange" "$root/usr/bin/pwchange"
    install -m 755 "$tools/delegate-client" "$root/usr/libexec/fsd/delegate-client"
    install -m 755 "$tools/delegate-agent" "$root/usr/sbin/delegate-agent"
    mkdir -p "$root/home/alice/secret"
    echo "Dear diary: only alice may read this, and only after typing her password at the host." \
        >"$root/home/alice/secret/diary.txt"
    local i
    for i in $(seq 1 2048); do printf '%s line %05d: 100.00 EUR\n' "$marker" "$i"; done \
        >"$root/home/alice/secret/ledger.txt"
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
    await_socket "$adir/authd.sock" "$work/authd.log"
    cat >"$work/policy.toml" <<TOML
version = 1

[delegation]
client = "usr/libexec/fsd/delegate-client"

[[principal]]
name = "alice"
uid = 1000

[[principal]]
name = "admin"

[[vm]]
name = "demo"
principal = "alice"

[[rule]]
path = "home/alice/secret/**"
owner = "alice"
without_grant = "ask"
cache = "flush"
grant_secs = 300

# The administrator's files: no one in the VM may touch them, guest root
# included; pwchange is run for alice in the helper VM instead.
[[rule]]
path = "etc/shadow"
owner = "admin"
without_grant = "deny"

[[rule]]
path = "usr/bin/pwchange"
owner = "admin"
without_grant = "deny"

[[delegate]]
program = "usr/bin/pwchange"
helper = "helper1"
run_as_uid = 0
max_secs = 120
TOML
    echo "alice enrolled (seal: \"purple owl at dawn\" on purple); dialog on display $display"
    echo "policy: home/alice/secret/** belongs to alice; without a grant fsd asks authd;"
    echo "        the guest may cache it while the grant lasts, and is flushed when it ends;"
    echo "        etc/shadow is the administrator's; usr/bin/pwchange is delegated to helper VM helper1"
}

# The monitor: a daemon that fsd asks to flush the guest's page cache when a
# grant ends, and the same monitor as a command for the tour's looks. Each
# has a QMP socket of its own (QEMU serves one client per socket); both
# read guest RAM from the file that backs it.
step_monitor() {
    banner "Starting the monitor daemon (guest RAM, QMP and gdbstub of the VM)"
    local vmlinux
    vmlinux=$("$bin/fsd-rig" paths | awk '$1 == "vmlinux" {print $2}')
    [ -n "$vmlinux" ] || die "no decompressed guest kernel (vmlinux); run scripts/install-deps.sh"
    local q
    for q in daemon cli; do
        cat >"$work/monitor-$q.json" <<JSON
{"vms": {"demo": {"qmp": "$work/qmp-$q.sock", "gdb": "$work/gdb.sock", "mem": "$mem", "vmlinux": "$vmlinux"}}}
JSON
    done
    "$bin/monitor" --config "$work/monitor-daemon.json" --profile-cache "$work/profiles" \
        daemon --socket "$work/monitor.sock" >"$work/monitor.log" 2>&1 &
    pids+=($!)
    await_socket "$work/monitor.sock" "$work/monitor.log"
    echo "monitor daemon on $work/monitor.sock; guest RAM will be $mem"
}
mon() { "$bin/monitor" --config "$work/monitor-cli.json" --profile-cache "$work/profiles" "$1" --vm demo "${@:2}"; }

# Plays the person at the screen when nobody is there: waits for each real
# dialog, waits past its focus delay, types alice's password, presses Enter,
# keeps a screenshot of the dialog (dialog.png, then dialog-2.png, ...) and
# waits for it to close before looking for the next.
dialog_window() {
    xdotool search --onlyvisible --name '^authd: host authentication$' 2>/dev/null | head -n 1 || true
}
step_person() {
    [ "${scripted_person:-0}" -eq 1 ] || return 0
    (
        export DISPLAY=$dialog_display
        n=0
        while :; do
            win=$(dialog_window)
            if [ -z "$win" ]; then sleep 0.2; continue; fi
            n=$((n + 1))
            shot=$out/dialog.png
            [ "$n" -eq 1 ] || shot=$out/dialog-$n.png
            xdotool windowfocus --sync "$win"
            xwd -silent -id "$win" | /usr/bin/convert xwd:- "$shot" 2>/dev/null || true
            sleep 1.5
            xdotool type --delay 30 "$password"
            xdotool key Return
            echo "[host] the person at the screen typed alice's password into dialog $n (screenshot: $shot)"
            while [ "$(dialog_window)" = "$win" ]; do sleep 0.2; done
        done
    ) &
    pids+=($!)
}

step_fsd() {
    banner "Starting fsd: serving $root on $sock (sandbox: $sandbox)"
    rm -f "$sock"
    "$bin/fsd" --socket-path="$sock" --shared-dir="$root" --cache=auto --sandbox="$sandbox" \
        --policy="$work/policy.toml" --vm=demo --authd-socket="$work/authd/authd.sock" \
        --audit-log="$work/fsd-audit.jsonl" --monitor-socket="$work/monitor.sock" \
        --crash-recovery >"$work/fsd.log" 2>&1 &
    fsd_pid=$!
    pids+=($fsd_pid)
    await_socket "$sock" "$work/fsd.log"
}

# The guest's network: a web server on the host's loopback, passt (its
# gateway 192.0.2.1 stands for the host's 127.0.0.1), and the packet filter
# between QEMU and passt, asking the monitor who owns each new connection
# and whether that process is tainted.
gateway=192.0.2.1
step_filter() {
    banner "Starting a web server on the host, passt, and the packet filter between the guest and passt"
    mkdir -p "$work/www"
    echo "hello from the host's web server" >"$work/www/index.html"
    python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work/www" >"$work/http.log" 2>&1 &
    pids+=($!)
    local i port=
    for i in $(seq 1 100); do
        port=$(sed -n 's/^Serving HTTP on 127.0.0.1 port \([0-9]*\).*/\1/p' "$work/http.log")
        [ -n "$port" ] && break
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$port" ] || { cat "$work/http.log" >&2; die "the web server did not start"; }
    echo "$port" >"$root/etc/rig/http-port"
    # Started as root, passt runs as nobody before it binds: its socket's
    # directory must be reachable and writable for that user.
    chmod 711 "$work"
    mkdir -p "$work/passt"
    chmod 1777 "$work/passt"
    "${FSD_PASST:-passt}" --foreground --stderr --socket "$work/passt/passt.sock" --address 192.0.2.15 --netmask 24 \
        --gateway "$gateway" --no-dhcp-dns --no-dhcp-search >"$work/passt.log" 2>&1 &
    pids+=($!)
    await_socket "$work/passt/passt.sock" "$work/passt.log"
    cat >"$work/netfilter.toml" <<TOML
version = 1
vm = "demo"

[defaults]
action = "deny"
unknown_owner = "deny"
icmp = "deny"

[[rule]]
name = "tainted processes stay inside"
tainted = true
action = "deny"

[[rule]]
name = "the host's web server"
dest = "$gateway/32"
action = "allow"
TOML
    RUST_LOG=info "$bin/netfilter" run --policy "$work/netfilter.toml" --guest "$work/net.sock" \
        --passt "$work/passt/passt.sock" --monitor "$work/monitor.sock" \
        --audit "$work/netfilter-audit.jsonl" --control "$work/netfilter-control.sock" \
        >"$work/netfilter.log" 2>&1 &
    pids+=($!)
    await_socket "$work/net.sock" "$work/netfilter.log"
    echo "web server on 127.0.0.1:$port (the guest's http://$gateway:$port/)"
    echo "filter policy: tainted processes stay inside; the others may reach the host's web server, nothing else"
}

# Delegation: the broker between the guest's port and the helper VM's, the
# helper's own fsd (no policy: it runs the administrator's programs), and
# the helper VM, booted in the background while the tour runs; it starts
# the agent at boot (the tour script's first lines).
agent=org.fsd.delegate.agent
step_helper() {
    [ "$shell" -eq 0 ] || return 0
    banner "Starting the delegation broker and booting the helper VM in the background"
    "$bin/delegate" --policy="$work/policy.toml" --vm="demo=$work/demo.chan" \
        --helper="helper1=$work/helper1.chan" --authd-socket="$work/authd/authd.sock" \
        --audit-log="$work/delegate-audit.jsonl" >"$work/delegate.log" 2>&1 &
    pids+=($!)
    await_socket "$work/helper1.chan" "$work/delegate.log"
    await_socket "$work/demo.chan" "$work/delegate.log"
    rm -f "$work/fsd-helper.sock"
    "$bin/fsd" --socket-path="$work/fsd-helper.sock" --shared-dir="$root" --cache=auto \
        --sandbox="$sandbox" >"$work/fsd-helper.log" 2>&1 &
    pids+=($!)
    await_socket "$work/fsd-helper.sock" "$work/fsd-helper.log"
    "$bin/fsd-rig" boot-root --socket "$work/fsd-helper.sock" --tag "$tag" --timeout 1800 \
        --console-log "$work/helper-console.log" --serial-port "$agent=$work/helper1.chan" \
        >"$work/helper-rig.out" 2>&1 &
    helper=$!
    pids+=($helper)
    echo "broker: usr/bin/pwchange of VM demo runs in helper1; helper VM booting (QEMU pid $helper)"
}

step_guest() {
    if [ "$shell" -eq 1 ]; then
        banner "Booting the guest (QEMU TCG) with an interactive console; Ctrl-A X quits"
        "$bin/fsd-rig" boot-root --socket "$sock" --tag "$tag" --show-command --shell \
            --net-stream "$work/net.sock"
        return
    fi
    banner "Booting the guest (QEMU TCG, root on fsd) and running the tour"
    "$bin/fsd-rig" boot-root --socket "$sock" --tag "$tag" --show-command --timeout 900 \
        --console-log "$work/console.log" --qmp "$work/qmp-daemon.sock" --qmp "$work/qmp-cli.sock" \
        --gdb "$work/gdb.sock" --mem-file "$mem" --uuid "$uuid" --control "$work/ctl.sock" \
        --net-stream "$work/net.sock" --serial-port "org.fsd.delegate=$work/demo.chan" \
        >"$work/rig.out" 2>&1 &
    guest=$!
    pids+=($guest)
    local i
    for i in $(seq 1 100); do
        [ -s "$work/rig.out" ] && break
        sleep 0.1
    done
    head -n 1 "$work/rig.out"
    follow look
}

# Prints the tour's lines from the console as they come (not the kernel's),
# until the guest says "@@host $1 ..."; the rest of that line is in $said.
seen=0
begun=0
said=
follow() {
    local want=$1 line total i
    for i in $(seq 1 9000); do
        total=$(wc -l <"$work/console.log" 2>/dev/null || echo 0)
        while [ "$seen" -lt "$total" ]; do
            seen=$((seen + 1))
            line=$(sed -n "${seen}p" "$work/console.log" | tr -d '\r')
            case $line in
                @@RIG-BEGIN@@) begun=1 ;;
                "@@host $want"*) said=${line#"@@host $want"}; said=${said# }; return 0 ;;
                @@RIG-END*) [ "$want" = end ] && return 0; die "the tour ended before the host's turn \"$want\"" ;;
                \[*) ;;
                *) [ "$begun" -eq 1 ] && printf '  %s\n' "$line" ;;
            esac
        done
        kill -0 "$guest" 2>/dev/null || { cat "$work/rig.out" >&2; die "the guest stopped before \"$want\""; }
        sleep 0.1
    done
    die "no \"$want\" from the guest in 15 minutes"
}

# Lets the guest's tour go on.
go() {
    python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"go\n")' \
        "$work/ctl.sock"
}

# Occurrences of the ledger's marker in guest RAM.
copies() { "$bin/monitor" scan --mem "$mem" "$marker" 2>/dev/null | grep -c '^0x' || true; }

step_look() {
    [ "$shell" -eq 0 ] || return 0
    banner "The host looks into the running guest (monitor: no agent in the guest)"
    echo "host\$ monitor uuid --vm demo    (SMBIOS table in guest RAM, checked against QEMU)"
    mon uuid | sed 's/^/  /'
    echo "host\$ monitor ps --vm demo      (the guest kernel's task list, read from outside; kernel threads left out)"
    mon ps >"$work/ps.txt"
    grep -v ' \[' "$work/ps.txt" | sed 's/^/  /'
    echo "host\$ monitor taint status --vm demo    (who read confidential data: fsd reported each read)"
    "$bin/monitor" taint --socket "$work/monitor.sock" status --vm demo | sed 's/^/  /'
    "$bin/monitor" taint --socket "$work/monitor.sock" graph --vm demo --format svg -o "$out/taint.svg"
    echo "  (the spread as a picture: $out/taint.svg)"
    echo "host\$ monitor scan: copies of alice's ledger in guest RAM (its page cache)"
    echo "  $(copies) lines of the ledger found in guest RAM"
    go
    follow freeze
}

step_freeze() {
    [ "$shell" -eq 0 ] || return 0
    local pid=$said
    banner "A runaway process frozen from the host, then thawed"
    echo "host\$ monitor freeze --vm demo $pid"
    mon freeze "$pid" | sed 's/^/  /'
    go
    follow thaw
    echo "host\$ monitor thaw --vm demo $pid"
    mon thaw "$pid" | sed 's/^/  /'
    go
    follow taint
}

# fsd tells the monitor of each read asynchronously: the host waits until
# the reader of the diary is in the monitor's taint table before the guest
# lets it connect. (grep -c reads to the end: no SIGPIPE under pipefail.)
tainted() {
    "$bin/monitor" taint --socket "$work/monitor.sock" graph --vm demo --format dot 2>/dev/null |
        grep -Ec "pid $1([^0-9]|\$)" >/dev/null
}
step_taint() {
    [ "$shell" -eq 0 ] || return 0
    local pid=$said i t0=$SECONDS
    banner "The reader of alice's diary is tainted (fsd told the monitor)"
    for i in $(seq 1 600); do
        tainted "$pid" && break
        sleep 0.1
    done
    tainted "$pid" || die "pid $pid never became tainted in the monitor"
    echo "host\$ monitor taint graph --vm demo: pid $pid read home/alice/secret/diary.txt (known $((SECONDS - t0)) s after the guest asked)"
    go
    follow connect
}

step_connect() {
    [ "$shell" -eq 0 ] || return 0
    banner "The packet filter decided each connection by its process and taint"
    local audit=$work/netfilter-audit.jsonl i
    for i in $(seq 1 300); do
        grep -q '"tainted":true' "$audit" 2>/dev/null && break
        sleep 0.1
    done
    echo "host\$ grep decision netfilter-audit.jsonl    (the filter's audit log: process, uid, destination, taint, verdict)"
    grep '"event":"decision"' "$audit" | sed 's/^/  /'
    grep '"event":"decision"' "$audit" | grep -v '"tainted":true' | grep -c '"verdict":"allow"' >/dev/null ||
        die "the clean process's connection was not allowed"
    grep '"event":"decision"' "$audit" | grep '"tainted":true' | grep -c '"verdict":"deny"' >/dev/null ||
        die "no connection of a tainted process was blocked"
    go
    follow revoke
}

step_revoke() {
    [ "$shell" -eq 0 ] || return 0
    banner "alice's grant ends: fsd has the monitor flush what the guest cached"
    echo "  before: $(copies) lines of the ledger in guest RAM"
    echo "host\$ authd revoke --vm demo"
    "$bin/authd" revoke --socket "$work/authd/authd.sock" --vm demo | sed 's/^/  /'
    local i n t0=$SECONDS
    for i in $(seq 1 300); do
        n=$(copies)
        [ "$n" -eq 0 ] && break
        sleep 1
    done
    echo "  after:  $n lines of the ledger in guest RAM ($((SECONDS - t0)) s after the revoke)"
    grep -ho 'monitor flushed.*' "$work/fsd.log" 2>/dev/null | tail -n 1 | sed 's/^/  fsd log: /' || true
    [ "$n" -eq 0 ] || die "copies of the ledger are still in guest RAM"
    go
    follow delegate
}

# Waits up to 15 minutes for the helper VM's agent.
await_agent() {
    local i t0=$SECONDS
    for i in $(seq 1 9000); do
        grep -q 'delegate-agent: serving' "$work/helper-console.log" 2>/dev/null && break
        kill -0 "$helper" 2>/dev/null || { cat "$work/helper-rig.out" >&2; die "the helper VM stopped"; }
        sleep 0.1
    done
    grep -q 'delegate-agent: serving' "$work/helper-console.log" || die "the helper VM's agent did not start"
    echo "  the helper VM's agent is serving (waited $((SECONDS - t0)) s for it)"
}

step_delegate() {
    [ "$shell" -eq 0 ] || return 0
    banner "A setuid program, delegated: pwchange runs for alice in the helper VM"
    await_agent
    go
    follow shadow
    echo "host\$ cat $root/etc/shadow    (alice's line changed, and only hers)"
    sed 's/^/  /' "$root/etc/shadow"
    grep -qxF 'alice:$test$n3w-secret:19000:0:99999:7:::' "$root/etc/shadow" ||
        die "alice's line of etc/shadow did not change"
    grep -qxF 'root:$old$root:19000:0:99999:7:::' "$root/etc/shadow" || die "root's line of etc/shadow changed"
    echo "host\$ tail -n 1 delegate-audit.jsonl    (the broker's audit line)"
    grep '"event":"delegate"' "$work/delegate-audit.jsonl" | tail -n 1 | sed 's/^/  /'
    echo "  authd showed its dialog $(grep -c prompt_shown "$work/authd/audit.jsonl") times in this run: alice's grant had ended, so the broker's request asked her again"
    go
}

# Waits up to 60 s for a line of fsd's log with "$1 N ..." and prints N.
await_fsd_line() {
    local i n
    for i in $(seq 1 600); do
        n=$(grep -o "$1 [0-9]*" "$work/fsd.log" | sed -n "$2p" | grep -o '[0-9]*$' || true)
        [ -n "$n" ] && { echo "$n"; return 0; }
        sleep 0.1
    done
    die "no \"$1\" in fsd's log"
}

# The process that serves the guest: fsd itself, or its sandboxed child.
serving_daemon() {
    [ "$sandbox" = none ] && { echo "$1"; return; }
    local c
    for c in $(cat "/proc/$1/task/$1/children" 2>/dev/null); do
        grep -q '^fsd' "/proc/$c/comm" 2>/dev/null && { echo "$c"; return; }
    done
    echo "$1"
}

step_rejuvenate() {
    [ "$shell" -eq 0 ] || return 0
    follow rejuvenate
    banner "fsd replaced under the running guest: a live handover, then a crash"
    echo "host\$ kill -USR2 $fsd_pid    (fsd starts the binary on disk and hands its session over)"
    kill -USR2 "$fsd_pid"
    local new
    new=$(await_fsd_line "handover: done; pid" 1)
    pids+=("$new")
    grep -h 'handover: done' "$work/fsd.log" | sed 's/^/  fsd log: /'
    if ! grep -q 'the session is journaled' "$work/fsd.log"; then
        echo "  (no crash recovery here: fsd has no file handles without root; the SIGKILL is left out)"
        go
        return
    fi
    sleep 1
    local victim
    victim=$(serving_daemon "$new")
    echo "host\$ kill -KILL $victim    (the serving fsd dies; its supervisor keeps the session and starts a new fsd on it)"
    kill -KILL "$victim"
    new=$(await_fsd_line "crash recovery: done; pid" 1)
    pids+=("$new")
    grep -h 'crash recovery: \(fsd died\|serving\|done\)' "$work/fsd.log" | sed 's/^/  fsd log: /'
    go
}

step_finish() {
    [ "$shell" -eq 0 ] || return 0
    follow end
    local rc=0
    wait "$guest" || rc=$?
    [ "$rc" -eq 0 ] || { tail -n 30 "$work/console.log" >&2; die "the guest's tour failed (rc $rc)"; }
    grep -q 'while fsd was replaced twice; 0 failed' "$work/console.log" ||
        die "the guest saw failed reads while fsd was replaced"
    echo "(the guest powered off)"
}

step_host_view() {
    banner "What the host recorded"
    if [ -f "$root/root/diary-copy.txt" ]; then
        echo "The guest's copy of the diary inherited its protection (fsd's label database):"
        grep -h '"op":"inherit"' "$work/fsd-audit.jsonl" | sed 's/^/  /' || echo "  (no inherit line)"
    fi
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

times=()
for step in "${STEPS[@]}"; do
    t0=$(date +%s%N)
    "step_$step"
    times+=("$step $((($(date +%s%N) - t0) / 1000000))")
done
banner "Time per step"
for t in "${times[@]}"; do
    printf '  %-10s %7.1f s\n' "${t% *}" "$(awk "BEGIN {print ${t#* } / 1000}")"
done
cp -f "$work"/*.log "$work"/*.jsonl "$out"/ 2>/dev/null || true
echo "kept in $out: the dialogs' screenshots (dialog.png, dialog-2.png, when drawn on the private display), the taint graph (taint.svg), the daemons' logs and audit logs"
