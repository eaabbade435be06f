//! The plugin in a real guest (one boot): Debian's 6.1 kernel under QEMU 10
//! with KASLR on. The monitor finds the slide, sends the hook addresses to
//! the plugin late (after boot), and the plugin reports what the guest's
//! script then does: forks and execs (by the shell and by busybox), a child
//! that exits with 7, sends and receives on a UNIX datagram socket and over
//! TCP loopback (a static probe, and busybox `nc`). Every pid, name, port
//! and exit code asserted is one the guest printed itself. A second,
//! deliberately wrong table then feeds the decoder pointers no kernel can
//! read: the reads are reported as faults and the guest runs on.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use monitor::hooks::{self, EventKind, GuestEvent, HookPlan, Message, PluginLink, Reply};

const SCRIPT: &str = r#"
read -r go <&3
hookprobe probe
sleep 60 &
S=$!
echo "SLEEP $S"
n=0
until [ "$(cat /proc/$S/comm 2>/dev/null)" = sleep ] || [ $n -ge 300 ]; do usleep 100000; n=$((n+1)); done
ps -o pid,comm | while read -r pid comm; do echo "PS $pid $comm"; done
kill $S
nc -l -p 5555 >/tmp/nc.out &
echo "NCSRV $!"
n=0
until grep -q ':15B3 [0-9A-F:]* 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null || [ $n -ge 300 ]; do usleep 100000; n=$((n+1)); done
echo hello-over-tcp | nc 127.0.0.1 5555 &
echo "NCCLI $!"
wait
echo "NCGOT $(cat /tmp/nc.out)"
echo PHASE1-DONE
read -r go <&3
hookprobe garbage
echo PHASE2-DONE
"#;

/// Reads plugin messages until `done` says so (checked when the socket is
/// quiet) or the plugin hangs up; events go to `events`.
fn collect(
    link: &mut PluginLink,
    events: &mut Vec<GuestEvent>,
    replies: &mut Vec<Reply>,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        assert!(Instant::now() < deadline, "no end after {limit:?}");
        match link.next(Duration::from_millis(300)) {
            Ok(Some(Message::Event(e))) => events.push(*e),
            Ok(Some(Message::Reply(r))) => replies.push(r),
            Ok(None) => {
                if done() {
                    return true;
                }
            }
            Err(hooks::LinkError::Closed) => return false,
            Err(e) => panic!("plugin link: {e}"),
        }
    }
}

fn pid(facts: &BTreeMap<String, String>, key: &str) -> i32 {
    facts
        .get(key)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.trim_start_matches("pid=").parse().ok())
        .unwrap_or_else(|| panic!("no {key} line in the guest output: {facts:#?}"))
}

fn find<'a>(
    events: &'a [GuestEvent],
    what: &str,
    f: impl Fn(&GuestEvent) -> bool,
) -> &'a GuestEvent {
    events.iter().find(|e| f(e)).unwrap_or_else(|| {
        let shown: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
        panic!(
            "no {what} among {} events:\n{}",
            events.len(),
            shown.join("\n")
        )
    })
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[test]
fn hooks_report_what_the_guest_did() {
    // Prerequisites first, so a machine without QEMU 10 skips before the
    // plugin is built.
    if common::require().is_none() {
        return;
    }
    let Some(so) = common::plugin() else { return };
    let Some(mut g) = common::boot(SCRIPT, Some(&so), &[]) else {
        return;
    };
    let sock = g.plugin_sock.clone().unwrap();
    let mut link = PluginLink::connect(&sock, Duration::from_secs(30)).expect("plugin socket");
    g.wait_ready();
    println!(
        "guest up in {:?} (QEMU 10, TCG, plugin loaded, no hooks)",
        g.booted_in
    );

    // The monitor: KASLR slide and addresses, then the plugin arms them.
    let t = Instant::now();
    let (slide, plan) = g.plan(hooks::PROCESS_AND_SOCKETS);
    println!("monitor: KASLR slide {slide:#x}, plan in {:?}", t.elapsed());
    for (f, a) in &plan.hooks {
        println!("  hook {f} at {a:#x}");
    }
    assert_ne!(
        slide, 0,
        "the guest runs with KASLR; a zero slide is suspicious"
    );
    let t = Instant::now();
    let generation = link.arm(&plan, Duration::from_secs(60)).expect("arm hooks");
    println!("armed generation {generation} in {:?}", t.elapsed());
    assert_eq!(generation, 1);

    let mut events = Vec::new();
    let mut replies = Vec::new();
    g.send("go");
    let t = Instant::now();
    let console_has = |g: &common::Guest, s: &str| g.vm.console().contains(s);
    assert!(
        collect(
            &mut link,
            &mut events,
            &mut replies,
            Duration::from_secs(300),
            || { console_has(&g, "PHASE1-DONE") }
        ),
        "the plugin hung up during phase 1:\n{}",
        g.vm.console()
    );
    println!("phase 1: {} events in {:?}", events.len(), t.elapsed());

    // Phase 2: the decoder of __sock_sendmsg(sock, msg) put on
    // __sys_sendto(fd, buf, ...): the guest's garbage buffer becomes `msg`.
    let sendto = common::kallsyms_addr(&g.spec.vmlinux, "__sys_sendto").wrapping_add(slide);
    let wrong = HookPlan {
        hooks: BTreeMap::from([(hooks::SEND.to_string(), sendto)]),
        offsets: plan.offsets.clone(),
    };
    assert_eq!(link.arm(&wrong, Duration::from_secs(60)).expect("arm"), 2);
    g.send("go");
    let closed = !collect(
        &mut link,
        &mut events,
        &mut replies,
        Duration::from_secs(300),
        || false,
    );
    assert!(closed);
    let transcript = g.wait_end(Duration::from_secs(60));
    let output = transcript.output().expect("script output").to_string();
    println!("--- guest output ---\n{output}--- end ---");
    assert_eq!(transcript.exit_code, Some(0), "{}", transcript.tail(30));

    let stats = replies
        .iter()
        .find_map(|r| match r {
            Reply::Bye(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a bye line with the counters");
    println!("plugin counters at exit: {stats:?}");
    assert_eq!(stats.dropped_full + stats.dropped_down, 0, "{stats:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence numbers have gaps (dropped events)"
    );

    let mut per_kind: BTreeMap<EventKind, usize> = BTreeMap::new();
    for e in &events {
        *per_kind.entry(e.ev).or_default() += 1;
    }
    println!("events by kind: {per_kind:?}");

    let facts = common::facts(&output);
    let phase1: Vec<GuestEvent> = events
        .iter()
        .filter(|e| e.generation == 1)
        .cloned()
        .collect();
    let phase2: Vec<GuestEvent> = events
        .iter()
        .filter(|e| e.generation == 2)
        .cloned()
        .collect();
    for e in &phase1 {
        assert!(e.faults.is_empty(), "phase 1 read fault: {e:?}");
    }

    // The static probe: the shell forks it and it execs, it forks a child
    // that exits with 7, sends on a UNIX datagram socket and over TCP.
    let shell = pid(&facts, "SHELL");
    let probe = pid(&facts, "PROBE");
    let child = common::fields(&format!("x {}", facts["CHILD"]));
    let child_pid: i32 = child["pid"].parse().unwrap();
    assert_eq!(child["ppid"], probe.to_string());

    let f = find(&phase1, "fork of the probe", |e| {
        e.ev == EventKind::Fork && e.child.as_ref().and_then(|c| c.pid) == Some(probe)
    });
    assert_eq!(f.task.tgid, Some(shell), "{f:?}");
    assert_eq!(f.child.as_ref().unwrap().ppid, Some(shell), "{f:?}");
    println!(
        "fork  {} ({}) -> {} ({})",
        shell,
        f.task.comm.as_deref().unwrap(),
        probe,
        f.child.as_ref().unwrap().comm.as_deref().unwrap()
    );
    let x = find(&phase1, "exec of the probe", |e| {
        e.ev == EventKind::Exec && e.task.pid == Some(probe)
    });
    assert_eq!(
        x.filename.as_deref().map(basename),
        Some("hookprobe"),
        "{x:?}"
    );
    println!("exec  {probe} {}", x.filename.as_deref().unwrap());

    let f = find(&phase1, "fork of the probe's child", |e| {
        e.ev == EventKind::Fork && e.child.as_ref().and_then(|c| c.pid) == Some(child_pid)
    });
    assert_eq!(f.task.pid, Some(probe), "{f:?}");
    let c = f.child.as_ref().unwrap();
    assert_eq!((c.tgid, c.ppid), (Some(child_pid), Some(probe)), "{f:?}");
    assert_eq!(c.comm.as_deref(), Some("hookprobe"), "{f:?}");
    assert!(c.start_ns.is_some() && c.ptr != 0, "{f:?}");
    println!("fork  {probe} -> {child_pid} hookprobe (task {:#x})", c.ptr);
    let x = find(&phase1, "exit of the probe's child", |e| {
        e.ev == EventKind::Exit && e.task.pid == Some(child_pid)
    });
    assert_eq!(x.code, Some(7 << 8), "{x:?}");
    assert_eq!(facts["CHILD_EXIT"], format!("pid={child_pid} status=0x700"));
    println!("exit  {child_pid} code {:#x}", x.code.unwrap());

    let s = find(&phase1, "the probe's UNIX send", |e| {
        e.ev == EventKind::Send
            && e.task.pid == Some(probe)
            && e.sock.as_ref().and_then(|s| s.family) == Some(1)
    });
    assert_eq!(s.sock.as_ref().unwrap().stype, Some(2), "datagram: {s:?}");
    assert_eq!(s.len, Some(10), "{s:?}");
    assert!(facts["UNIX"].contains("sent=10"));
    println!("send  {probe} AF_UNIX dgram 10 bytes");
    find(&phase1, "the probe's UNIX receive", |e| {
        e.ev == EventKind::Recv
            && e.task.pid == Some(probe)
            && e.sock.as_ref().and_then(|s| s.family) == Some(1)
    });
    let tcp = common::fields(&facts["TCP"]);
    let s = find(&phase1, "the probe's TCP send", |e| {
        e.ev == EventKind::Send
            && e.task.pid == Some(probe)
            && e.sock.as_ref().and_then(|s| s.family) == Some(2)
    });
    let sk = s.sock.as_ref().unwrap();
    assert_eq!(sk.local.as_deref(), Some(tcp["local"].as_str()), "{s:?}");
    assert_eq!(sk.remote.as_deref(), Some(tcp["remote"].as_str()), "{s:?}");
    assert_eq!((sk.stype, s.len), (Some(1), Some(9)), "{s:?}");
    println!(
        "send  {probe} TCP {} -> {} 9 bytes",
        tcp["local"], tcp["remote"]
    );
    let r = find(&phase1, "the probe's TCP receive", |e| {
        e.ev == EventKind::Recv
            && e.task.pid == Some(probe)
            && e.sock.as_ref().and_then(|s| s.family) == Some(2)
    });
    assert_eq!(
        r.sock.as_ref().unwrap().local.as_deref(),
        Some(tcp["remote"].as_str()),
        "the accepted socket's local end is the listener's address: {r:?}"
    );

    // busybox: `sleep 60 &` (killed once `ps` has seen it) is a fork of the shell (still named sh), an
    // exec, and a task that `ps` calls sleep. This busybox runs its applets
    // by exec of /proc/self/exe and renames itself (prctl) afterwards, so
    // the exec's file name is either the applet or /proc/self/exe, and the
    // name ps shows is the one its exit reports.
    let ps: BTreeMap<i32, String> = output
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("PS ")?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.to_string()))
        })
        .collect();
    let sleep = pid(&facts, "SLEEP");
    let ps_name = ps.get(&sleep).map(String::as_str);
    assert_eq!(ps_name, Some("sleep"), "ps: {ps:?}");
    let f = find(&phase1, "fork of sleep", |e| {
        e.ev == EventKind::Fork && e.child.as_ref().and_then(|c| c.pid) == Some(sleep)
    });
    assert_eq!(f.task.pid, Some(shell), "{f:?}");
    assert_eq!(
        f.task.comm.as_deref(),
        ps.get(&shell).map(String::as_str),
        "ps: {ps:?}"
    );
    assert_eq!(
        f.child.as_ref().unwrap().comm,
        f.task.comm,
        "a child is named like its parent until it execs"
    );
    let x = find(&phase1, "exec of sleep", |e| {
        e.ev == EventKind::Exec && e.task.pid == Some(sleep)
    });
    let file = x.filename.as_deref().unwrap();
    assert!(
        basename(file) == "sleep" || file == "/proc/self/exe",
        "{x:?}"
    );
    let x = find(&phase1, "exit of sleep", |e| {
        e.ev == EventKind::Exit && e.task.pid == Some(sleep)
    });
    assert_eq!(x.task.comm.as_deref(), ps_name, "{x:?}");
    println!(
        "fork  {shell} sh -> {sleep} sh; exec {file}; exit {sleep} {} (ps: {sleep} sleep)",
        x.task.comm.as_deref().unwrap()
    );

    // busybox nc over TCP loopback.
    let (srv, cli) = (pid(&facts, "NCSRV"), pid(&facts, "NCCLI"));
    assert_eq!(facts["NCGOT"], "hello-over-tcp");
    let s = find(&phase1, "nc's TCP send", |e| {
        e.ev == EventKind::Send && e.task.pid == Some(cli)
    });
    assert_eq!(
        s.sock.as_ref().unwrap().remote.as_deref(),
        Some("127.0.0.1:5555"),
        "{s:?}"
    );
    assert_eq!(s.len, Some(15), "{s:?}");
    let r = find(&phase1, "nc's TCP receive", |e| {
        e.ev == EventKind::Recv && e.task.pid == Some(srv)
    });
    // busybox nc listens on a dual-stack IPv6 socket.
    let local = r.sock.as_ref().unwrap().local.as_deref();
    assert!(
        matches!(local, Some("127.0.0.1:5555" | "[::ffff:127.0.0.1]:5555")),
        "{r:?}"
    );
    println!(
        "send  {cli} nc -> 127.0.0.1:5555 15 bytes; recv {srv} nc on {}",
        local.unwrap()
    );

    // Phase 2: garbage in, faults out, the guest unharmed.
    assert!(output.contains("PHASE2-DONE"));
    for buf in [0xffff_dead_beef_0000u64, 0x10] {
        assert!(
            output.contains(&format!("GARBAGE buf={buf:#x} result=-1 errno=14")),
            "{output}"
        );
        let e = find(&phase2, "a fault for the garbage buffer", |e| {
            e.faults
                .iter()
                .any(|f| f.what == "msghdr" && f.addr == buf + 32)
        });
        assert_eq!(e.task.comm.as_deref(), Some("hookprobe"), "{e:?}");
        assert!(
            e.faults.iter().any(|f| f.what == "sock"),
            "the fd is no pointer: {e:?}"
        );
        let f: Vec<String> = e
            .faults
            .iter()
            .map(|f| format!("{}@{:#x}", f.what, f.addr))
            .collect();
        println!("fault buf={buf:#x}: {}", f.join(", "));
    }
}
