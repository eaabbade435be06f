//! The monitor daemon restarted under its clients keeps its taint tables.
//!
//! The real `monitor daemon` binary, with a state directory, fed as its
//! producers feed it: file events as fsd's taint link sends them (the VM's
//! name, the events, fsd's count of lost events), guest kernel events as
//! the hook feed does (with the plugin's numbers). It is stopped with
//! SIGTERM, and separately killed with SIGKILL, and started again on the
//! same state directory; what its clients ask (fsd's derived files, a
//! packet filter's `taint_query`, `monitor taint status` and `taint graph`)
//! must answer the same, and the VMs must say that their tracking is
//! incomplete until the producers show that they missed nothing. A journal
//! cut short or damaged must fail closed. No guest is booted: the VMs have
//! their UUIDs in the configuration, which is all taint tracking needs.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use monitor::taint::journal::{DAMAGED, JOURNAL, SNAPSHOT};
use monitor::taint::manifest::Manifest;
use monitor_client::taint::{
    FileAccess, FileEvent, GuestEvent, GuestEventKind, PluginSeq, SocketInfo, Transport,
};
use monitor_client::taint_report::{DerivedFile, Query, TaintStatus, TaintedEntry, VmEntry};
use monitor_client::Client;
use testrig::{Daemon, DaemonSpec};

const T: Duration = Duration::from_secs(10);
const WEB: &str = "6f1c3e2a-0000-4000-8000-00000000000a";
const DB: &str = "6f1c3e2a-0000-4000-8000-00000000000b";

/// A state directory, the configuration naming two VMs, and the daemon
/// when it runs.
struct Setup {
    dir: tempfile::TempDir,
    daemon: Option<Daemon>,
    starts: usize,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "vms": {
                "web": {"qmp": dir.path().join("none.qmp"), "mem": "/nonexistent", "vmlinux": "/nonexistent",
                        "uuid": WEB, "addrs": ["10.0.0.1"]},
                "db": {"qmp": dir.path().join("none2.qmp"), "mem": "/nonexistent", "vmlinux": "/nonexistent",
                       "uuid": DB, "addrs": ["10.0.0.2"]}
            },
            "taint": {"state_dir": dir.path().join("state")}
        });
        std::fs::write(dir.path().join("monitor.json"), config.to_string()).unwrap();
        Setup {
            dir,
            daemon: None,
            starts: 0,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("monitor.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts the daemon on the state directory; returns its log so far.
    fn start(&mut self) -> String {
        assert!(self.daemon.is_none());
        self.starts += 1;
        let spec = DaemonSpec::monitor(
            env!("CARGO_BIN_EXE_monitor"),
            &self.dir.path().join("monitor.json"),
            &self.dir.path().join("profiles"),
            &self.socket(),
            self.dir.path().join(format!("monitor-{}.log", self.starts)),
        );
        let d = Daemon::spawn_on_path(&spec, &self.socket()).expect("start monitor daemon");
        self.client().ping(T).unwrap();
        let log = d.log_text();
        self.daemon = Some(d);
        log
    }

    fn client(&self) -> Client {
        Client::connect(self.socket()).unwrap()
    }

    /// Sends `signal` and waits for the daemon to end; returns its exit
    /// status and log.
    fn stop(&mut self, signal: i32) -> (std::process::ExitStatus, String) {
        let mut d = self.daemon.take().expect("running");
        // SAFETY: a signal to the daemon this test started.
        assert_eq!(unsafe { libc::kill(d.pid() as i32, signal) }, 0);
        let status = d.wait_exit(T).expect("the daemon ends");
        (status, d.log_text())
    }

    /// Runs the `monitor` command line against the daemon.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap();
        assert!(out.status.success(), "monitor {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A guest process as the hooks name it.
#[derive(Clone, Copy)]
struct P {
    pid: u32,
    task: u64,
    start: u64,
    comm: &'static str,
}

const fn p(pid: u32, comm: &'static str) -> P {
    P {
        pid,
        task: 0xffff_8880_0000_0000 + pid as u64 * 0x4000,
        start: 1_000_000 + pid as u64,
        comm,
    }
}

const CAT: P = p(100, "cat");
const CHILD: P = p(101, "cat");
const SERVER: P = p(300, "server");
const NC: P = p(400, "nc");
const POSTGRES: P = p(500, "postgres");
const LATE: P = p(600, "reader");

impl P {
    fn ev(&self, vm: &str, kind: GuestEventKind) -> GuestEvent {
        GuestEvent {
            vm: vm.into(),
            kind,
            pid: self.pid,
            tgid: self.pid,
            task: self.task,
            start_time: self.start,
            comm: self.comm.into(),
        }
    }
    fn exec(&self, vm: &str) -> GuestEvent {
        self.ev(
            vm,
            GuestEventKind::Exec {
                filename: format!("/bin/{}", self.comm),
            },
        )
    }
}

fn pair() -> SocketInfo {
    SocketInfo::Unix {
        local: None,
        peer: None,
        sock: Some(0xffff_8880_0400_0000),
        peer_sock: Some(0xffff_8880_0400_0400),
    }
}

fn tcp(local: &str, peer: &str) -> SocketInfo {
    SocketInfo::Inet {
        transport: Transport::Tcp,
        local: local.parse().unwrap(),
        peer: Some(peer.parse().unwrap()),
    }
}

/// A file access as fsd reports it.
fn fe(pid: u32, ino: u64, access: FileAccess, source: bool) -> FileEvent {
    FileEvent {
        pid,
        dev: 2051,
        ino,
        access,
        path: Some(format!("share/f{ino}")),
        rule: source.then(|| "secret/**".to_string()),
    }
}

/// What a plugin's batch accounts for.
fn seq(vm: &str, first: u64, last: u64) -> Option<PluginSeq> {
    Some(PluginSeq {
        instance: format!("test-qemu-{vm}"),
        first,
        last,
        ended: false,
    })
}

/// The hooks of VM `vm` report `events`, numbered from `first`.
fn hooks(c: &mut Client, vm: &str, first: u64, events: Vec<GuestEvent>) {
    let last = first + events.len() as u64 - 1;
    let n = events.len() as u64;
    let got = c
        .numbered_guest_events(vm, events, 0, seq(vm, first, last), T)
        .unwrap();
    assert_eq!(got, n);
}

/// fsd of VM `vm` reports `events`, with its count of lost ones.
fn fsd(c: &mut Client, vm: &str, events: Vec<FileEvent>, dropped: u64) -> Vec<DerivedFile> {
    c.file_events(vm, events, dropped, T).unwrap().1
}

/// `cat` in web reads a secret and writes a copy, forks; the child sends
/// to `server` over a socketpair, to db's postgres over TCP, and outside
/// (a leak); postgres in db receives. `nc` reads only public files. The
/// web plugin's numbers run to 8, db's to 1.
fn record(c: &mut Client) {
    hooks(
        c,
        "web",
        1,
        vec![CAT.exec("web"), SERVER.exec("web"), NC.exec("web")],
    );
    let derived = fsd(
        c,
        "web",
        vec![
            fe(CAT.pid, 1, FileAccess::Open, true),
            fe(CAT.pid, 1, FileAccess::Read, true),
            fe(CAT.pid, 2, FileAccess::Write, false),
            fe(NC.pid, 3, FileAccess::Read, false),
        ],
        0,
    );
    assert_eq!(derived.len(), 1, "the copy is derived from the secret");
    let fork = GuestEventKind::Fork {
        child_pid: CHILD.pid,
        child_tgid: CHILD.pid,
        child_task: CHILD.task,
        child_start_time: CHILD.start,
    };
    let send = |socket| GuestEventKind::Send { socket };
    let recv = |socket| GuestEventKind::Recv { socket };
    hooks(
        c,
        "web",
        4,
        vec![
            CAT.ev("web", fork),
            CHILD.ev("web", send(pair())),
            SERVER.ev("web", recv(pair())),
            CHILD.ev("web", send(tcp("10.0.0.1:40000", "10.0.0.2:5432"))),
            CHILD.ev("web", send(tcp("10.0.0.1:40001", "1.1.1.1:443"))),
        ],
    );
    hooks(
        c,
        "db",
        1,
        vec![POSTGRES.ev("db", recv(tcp("10.0.0.2:5432", "10.0.0.1:40000")))],
    );
}

/// Everything the clients ask, with the status as far as the tables go
/// (whether tracking is complete, and the counts of events taken in,
/// compared apart).
#[derive(Debug, PartialEq)]
struct View {
    status: TaintStatus,
    answers: Vec<Option<TaintedEntry>>,
    graphs: Vec<(String, Vec<VmEntry>)>,
    derived: Vec<DerivedFile>,
    dot: String,
}

const PROCS: [(&str, P); 6] = [
    ("web", CAT),
    ("web", CHILD),
    ("web", SERVER),
    ("web", NC),
    ("web", LATE),
    ("db", POSTGRES),
];

fn view(s: &Setup) -> View {
    let mut c = s.client();
    let mut status = c.taint_status(None, T).unwrap();
    for v in &mut status.vms {
        v.complete = true;
        v.incomplete.clear();
        v.file_events = 0;
        v.guest_events = 0;
    }
    let flow = |local: &str, peer: &str| Query::Flow {
        transport: Transport::Tcp,
        local: local.parse::<SocketAddr>().unwrap(),
        peer: peer.parse::<SocketAddr>().unwrap(),
    };
    let mut answers = Vec::new();
    for (vm, p) in PROCS {
        // A packet filter asks by pid and task, then by pid alone.
        for task in [Some(p.task), None] {
            let q = Query::Process { pid: p.pid, task };
            answers.push(c.taint_query(vm, q, T).unwrap().0);
        }
    }
    answers.push(
        c.taint_query("web", flow("10.0.0.1:40001", "1.1.1.1:443"), T)
            .unwrap()
            .0,
    );
    answers.push(
        c.taint_query("db", flow("10.0.0.2:5432", "10.0.0.1:40000"), T)
            .unwrap()
            .0,
    );
    let graphs = ["web", "db"]
        .iter()
        .map(|vm| c.taint_graph(vm, T).unwrap())
        .collect();
    View {
        status,
        answers,
        graphs,
        derived: c.taint_derived("web", 0, T).unwrap().0,
        dot: s.cli(&["taint", "graph", "--vm", "web", "--format", "dot"]),
    }
}

/// Why each VM's tracking is incomplete, checked against what a query
/// says.
fn incomplete(s: &Setup, vm: &str) -> Vec<String> {
    let mut c = s.client();
    let st = c.taint_status(Some(vm), T).unwrap().vms.remove(0);
    let q = Query::Process { pid: 1, task: None };
    let (_, complete) = c.taint_query(vm, q, T).unwrap();
    assert_eq!(complete, st.complete, "{st:?}");
    assert_eq!(st.complete, st.incomplete.is_empty());
    st.incomplete
}

fn has(why: &[String], part: &str) -> bool {
    why.iter().any(|w| w.contains(part))
}

fn tainted(v: &View, vm: &str, p: P) -> bool {
    let i = PROCS
        .iter()
        .position(|(n, q)| *n == vm && q.pid == p.pid)
        .unwrap();
    let (with_task, by_pid) = (&v.answers[2 * i], &v.answers[2 * i + 1]);
    assert_eq!(with_task.is_some(), by_pid.is_some(), "{vm} pid {}", p.pid);
    with_task.is_some()
}

fn manifest(s: &Setup) -> Manifest {
    Manifest::read(&s.state()).unwrap().expect("a manifest")
}

#[test]
fn taint_tables_survive_sigterm_and_sigkill_of_the_daemon() {
    let mut s = Setup::new();
    s.start();
    let mut c = s.client();
    record(&mut c);
    let before = view(&s);
    assert!(tainted(&before, "web", CAT) && tainted(&before, "web", CHILD));
    assert!(tainted(&before, "web", SERVER), "over the socketpair");
    assert!(tainted(&before, "db", POSTGRES), "over TCP from web");
    assert!(!tainted(&before, "web", NC) && !tainted(&before, "web", LATE));
    assert!(before.answers[12].is_some() && before.answers[13].is_some());
    assert_eq!(before.status.vms.iter().map(|v| v.alerts).sum::<u64>(), 1);
    assert_eq!(before.derived.len(), 1);
    assert!(before.dot.contains("share/f1") && before.dot.contains("share/f2"));
    assert!(incomplete(&s, "web").is_empty() && incomplete(&s, "db").is_empty());
    assert!(s.cli(&["taint", "status"]).contains("kept across restarts"));

    // ---- SIGTERM: a clean stop ------------------------------------------
    let (status, log) = s.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("taint state saved"), "{log}");
    assert!(manifest(&s).clean && s.state().join(SNAPSHOT).exists());
    let log = s.start();
    assert!(log.contains("from a snapshot, 0 journal batches"), "{log}");
    assert_eq!(view(&s), before);
    // Each VM waits for its producers to show that nothing was missed.
    let why = incomplete(&s, "web");
    assert!(has(&why, "fsd has not reported since"), "{why:?}");
    assert!(has(&why, "hooks have not shown since"), "{why:?}");
    assert!(has(&incomplete(&s, "db"), "hooks have not shown since"));
    assert!(s
        .cli(&["taint", "status"])
        .contains("the monitor restarted"));
    // fsd's next batch, with its count of lost events unchanged; the
    // plugins' next events, numbered right after the last ones kept.
    let mut c = s.client();
    fsd(
        &mut c,
        "web",
        vec![fe(NC.pid, 3, FileAccess::Read, false)],
        0,
    );
    hooks(&mut c, "web", 9, vec![NC.exec("web")]);
    hooks(&mut c, "db", 2, vec![POSTGRES.exec("db")]);
    assert!(incomplete(&s, "web").is_empty() && incomplete(&s, "db").is_empty());
    assert_eq!(view(&s), before);

    // ---- SIGKILL: nothing the kernel accepted is lost -------------------
    let derived = fsd(
        &mut c,
        "web",
        vec![fe(CHILD.pid, 4, FileAccess::Write, false)],
        0,
    );
    assert_eq!(derived.len(), 1);
    let before = view(&s);
    assert_eq!(before.derived.len(), 2);
    let (status, _) = s.stop(libc::SIGKILL);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!manifest(&s).clean);
    let log = s.start();
    assert!(!log.contains("the host booted since"), "{log}");
    assert_eq!(view(&s), before);
    // The web plugin made two events while the monitor was down (numbers
    // 10 and 11, never read): counted as lost. db's numbering continues.
    let mut c = s.client();
    fsd(&mut c, "web", vec![], 0);
    hooks(&mut c, "web", 12, vec![NC.exec("web")]);
    hooks(&mut c, "db", 3, vec![POSTGRES.exec("db")]);
    let why = incomplete(&s, "web");
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(has(&why, "hooks lost 2 events"), "{why:?}");
    assert!(incomplete(&s, "db").is_empty());
    // And that, too, survives a restart.
    let before = view(&s);
    let (status, _) = s.stop(libc::SIGTERM);
    assert!(status.success());
    s.start();
    let mut c = s.client();
    fsd(&mut c, "web", vec![], 0);
    hooks(&mut c, "web", 13, vec![NC.exec("web")]);
    let why = incomplete(&s, "web");
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(has(&why, "hooks lost 2 events"), "{why:?}");
    assert_eq!(view(&s), before);
}

#[test]
fn a_journal_cut_short_or_damaged_fails_closed() {
    let mut s = Setup::new();
    s.start();
    let mut c = s.client();
    record(&mut c);
    // The last batch: a process in web reads the secret.
    hooks(&mut c, "web", 9, vec![LATE.exec("web")]);
    fsd(
        &mut c,
        "web",
        vec![fe(LATE.pid, 1, FileAccess::Read, true)],
        0,
    );
    assert!(c
        .taint_query(
            "web",
            Query::Process {
                pid: LATE.pid,
                task: None
            },
            T
        )
        .unwrap()
        .0
        .is_some());
    let (status, _) = s.stop(libc::SIGKILL);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // A crash in the middle of writing that last line: it is cut short.
    let journal = s.state().join(JOURNAL);
    let len = std::fs::metadata(&journal).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);
    let log = s.start();
    assert!(log.contains("taint journal damaged"), "{log}");
    assert!(log.contains("cut short"), "{log}");
    assert!(s.state().join(DAMAGED).exists());
    let v = view(&s);
    // Everything before the damage is there ...
    assert!(tainted(&v, "web", CAT) && tainted(&v, "db", POSTGRES));
    assert_eq!(v.derived.len(), 1);
    // ... the last read is not, and nothing says the VMs are clean: both
    // are incomplete for good, whatever their producers show now.
    assert!(!tainted(&v, "web", LATE));
    let mut c = s.client();
    fsd(&mut c, "web", vec![], 0);
    hooks(&mut c, "web", 10, vec![NC.exec("web")]);
    hooks(&mut c, "db", 2, vec![POSTGRES.exec("db")]);
    for vm in ["web", "db"] {
        let why = incomplete(&s, vm);
        assert!(has(&why, "journal was found damaged"), "{vm}: {why:?}");
    }
    let status = s.cli(&["taint", "status"]);
    assert!(
        status.contains("INCOMPLETE") && status.contains("damaged"),
        "{status}"
    );
    // Garbage in the middle of the journal: what follows it is not loaded
    // either, and the mark stays across later restarts.
    hooks(&mut c, "web", 11, vec![NC.exec("web")]);
    fsd(
        &mut c,
        "web",
        vec![fe(NC.pid, 1, FileAccess::Read, true)],
        0,
    );
    let (_, _) = s.stop(libc::SIGKILL);
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    assert!(n >= 3, "{text}");
    lines[n - 2] = "\u{0}\u{0}\u{0}\u{0}";
    std::fs::write(&journal, lines.join("\n") + "\n").unwrap();
    let log = s.start();
    assert!(log.contains("not a journal record"), "{log}");
    let v = view(&s);
    assert!(
        !tainted(&v, "web", NC),
        "the batch after the damage is not loaded"
    );
    assert!(has(&incomplete(&s, "web"), "journal was found damaged"));
    let (status, _) = s.stop(libc::SIGTERM);
    assert!(status.success());
    s.start();
    assert_eq!(view(&s), v);
    assert!(has(&incomplete(&s, "db"), "journal was found damaged"));
}
