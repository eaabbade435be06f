//! The engine driven by synthetic events: every propagation rule, the
//! separation of VMs, pid reuse, bounds, persistence and garbage.

mod persistence;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use monitor_client::report::Process;
use monitor_client::taint::{
    FileAccess, FileEvent, GuestEvent, GuestEventKind, SocketInfo, Transport,
};
use monitor_client::taint_report::{Carrier, Query, Subject, TaintNotice};

use super::alert::Freezer;
use super::engine::{Engine, EngineConfig, FreezeOrder, Input, Record, VmId};
use super::{Limits, TaintConfig, TaintService};

const DEV: u64 = 2051;
const RULE: &str = "secret/**";

fn vm(n: u8) -> VmId {
    VmId {
        uuid: format!("6f1c3e2a-0000-4000-8000-0000000000{n:02x}"),
        name: format!("vm{n}"),
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

impl P {
    fn new(pid: u32, comm: &'static str) -> P {
        P {
            pid,
            task: 0xffff_8880_0000_0000 + u64::from(pid) * 0x4000,
            start: 1_000_000 + u64::from(pid),
            comm,
        }
    }

    fn subject(&self) -> Subject {
        Subject::Process {
            task: self.task,
            start_time: self.start,
        }
    }

    fn event(&self, vm: &VmId, kind: GuestEventKind) -> GuestEvent {
        GuestEvent {
            vm: vm.name.clone(),
            kind,
            pid: self.pid,
            tgid: self.pid,
            task: self.task,
            start_time: self.start,
            comm: self.comm.into(),
        }
    }

    fn exec(&self, vm: &VmId) -> GuestEvent {
        self.event(
            vm,
            GuestEventKind::Exec {
                filename: format!("/bin/{}", self.comm),
            },
        )
    }

    fn fork(&self, vm: &VmId, child: &P) -> GuestEvent {
        self.event(
            vm,
            GuestEventKind::Fork {
                child_pid: child.pid,
                child_tgid: child.pid,
                child_task: child.task,
                child_start_time: child.start,
            },
        )
    }

    fn exit(&self, vm: &VmId) -> GuestEvent {
        self.event(vm, GuestEventKind::Exit)
    }

    fn inet(&self, vm: &VmId, send: bool, t: Transport, local: &str, peer: &str) -> GuestEvent {
        let socket = SocketInfo::Inet {
            transport: t,
            local: local.parse().unwrap(),
            peer: Some(peer.parse().unwrap()),
        };
        self.event(
            vm,
            if send {
                GuestEventKind::Send { socket }
            } else {
                GuestEventKind::Recv { socket }
            },
        )
    }

    fn unix(&self, vm: &VmId, send: bool, socket: SocketInfo) -> GuestEvent {
        self.event(
            vm,
            if send {
                GuestEventKind::Send { socket }
            } else {
                GuestEventKind::Recv { socket }
            },
        )
    }
}

fn fe(pid: u32, ino: u64, access: FileAccess, rule: Option<&str>) -> FileEvent {
    FileEvent {
        pid,
        dev: DEV,
        ino,
        access,
        path: Some(format!("dir/f{ino}")),
        rule: rule.map(str::to_owned),
    }
}

fn file(ino: u64) -> Subject {
    Subject::File { dev: DEV, ino }
}

/// An engine and a clock.
struct T {
    e: Engine,
    now: u64,
}

impl T {
    fn new() -> T {
        T::with(EngineConfig::default())
    }

    fn with(config: EngineConfig) -> T {
        T {
            e: Engine::new(config),
            now: 1_700_000_000_000,
        }
    }

    fn rec(&mut self, vm: &VmId, input: Input) -> Record {
        self.now += 1;
        Record {
            at_ms: self.now,
            vm: vm.clone(),
            input,
        }
    }

    fn files(&mut self, vm: &VmId, events: Vec<FileEvent>) -> super::Effects {
        let r = self.rec(vm, Input::Files { events, dropped: 0 });
        self.e.apply(&r).unwrap()
    }

    fn guest(&mut self, vm: &VmId, events: Vec<GuestEvent>) -> super::Effects {
        let r = self.rec(
            vm,
            Input::Guest {
                events,
                dropped: 0,
                seq: None,
            },
        );
        self.e.apply(&r).unwrap()
    }

    /// As a daemon with nobody watching applies them.
    fn quiet(&mut self, vm: &VmId, input: Input) {
        let r = self.rec(vm, input);
        self.e.apply_with(&r, false).unwrap();
    }

    fn tainted(&self, vm: &VmId, s: &Subject) -> bool {
        self.e.vm(&vm.uuid).and_then(|v| v.entry(s)).is_some()
    }

    fn pid_tainted(&self, vm: &VmId, pid: u32) -> bool {
        self.e
            .query(&vm.uuid, &Query::Process { pid, task: None })
            .0
            .is_some()
    }
}

/// Case 1 in one VM: `cat` (100) reads a source and writes a copy, then
/// forks; `ls` (200) reads and writes public files.
fn case1(t: &mut T, v: &VmId) -> (P, P, P) {
    let cat = P::new(100, "cat");
    let child = P::new(101, "cat");
    let ls = P::new(200, "ls");
    t.guest(v, vec![cat.exec(v), ls.exec(v)]);
    let fx = t.files(
        v,
        vec![
            fe(100, 10, FileAccess::Open, Some(RULE)),
            fe(100, 10, FileAccess::Read, Some(RULE)),
            fe(100, 20, FileAccess::Write, None),
            fe(200, 30, FileAccess::Read, None),
            fe(200, 40, FileAccess::Write, None),
        ],
    );
    assert_eq!(fx.accepted, 5);
    assert_eq!(fx.derived.len(), 1);
    assert_eq!((fx.derived[0].ino, fx.derived[0].rule.as_str()), (20, RULE));
    t.guest(v, vec![cat.fork(v, &child)]);
    (cat, child, ls)
}

#[test]
fn case1_reader_copy_and_child_are_tainted_the_rest_is_clean() {
    let mut t = T::new();
    let v = vm(1);
    let (cat, child, ls) = case1(&mut t, &v);
    assert!(t.tainted(&v, &file(10)), "the source");
    assert!(t.tainted(&v, &cat.subject()), "the reader");
    assert!(t.tainted(&v, &file(20)), "what the reader wrote");
    assert!(t.tainted(&v, &child.subject()), "the reader's child");
    assert!(!t.tainted(&v, &ls.subject()), "an unrelated process");
    assert!(!t.tainted(&v, &file(30)) && !t.tainted(&v, &file(40)));
    // The copy's chain leads back to the source, hop by hop.
    let (chain, complete) = t.e.chain(&v.uuid, &file(20));
    assert!(complete);
    let hops: Vec<(Subject, Carrier)> = chain
        .iter()
        .map(|l| (l.entry.subject.clone(), l.entry.origin.by))
        .collect();
    assert_eq!(
        hops,
        vec![
            (file(20), Carrier::Write),
            (cat.subject(), Carrier::Open),
            (file(10), Carrier::Source)
        ]
    );
    let copy = t.e.vm(&v.uuid).unwrap().entry(&file(20)).unwrap();
    assert_eq!(copy.rule.as_deref(), Some(RULE));
    assert_eq!(copy.name.as_deref(), Some("dir/f20"));
    assert!(copy.verified);
    let kid = t.e.vm(&v.uuid).unwrap().entry(&child.subject()).unwrap();
    assert_eq!(kid.origin.by, Carrier::Fork);
    assert_eq!(kid.origin.from, Some(cat.subject()));
    // Derived files are there for fsd to catch up with.
    let (d, next) = t.e.derived_after(&v.uuid, 0, 100);
    assert_eq!((d.len(), next), (1, 1));
    assert!(t.e.derived_after(&v.uuid, next, 100).0.is_empty());
    let s = t.e.status(Some(&v.uuid)).vms.remove(0);
    assert_eq!((s.files, s.processes, s.unverified), (2, 2, 0));
    assert!(s.complete, "{:?}", s.incomplete);
}

#[test]
fn threads_outliving_their_leader_keep_the_taint() {
    let mut t = T::new();
    let v = vm(1);
    let (cat, _, _) = case1(&mut t, &v);
    // A second thread (tid 150), then the leader exits.
    let thread = P { pid: 150, ..cat };
    let mut spawn = cat.fork(&v, &thread);
    if let GuestEventKind::Fork { child_tgid, .. } = &mut spawn.kind {
        *child_tgid = cat.pid;
    }
    t.guest(&v, vec![spawn, cat.exit(&v)]);
    // The thread sends out: still the tainted process, still a leak.
    let mut send = cat.inet(&v, true, Transport::Tcp, "10.0.2.15:1", "8.8.8.8:53");
    send.pid = 150;
    let fx = t.guest(&v, vec![send]);
    assert_eq!(fx.alerts().count(), 1);
    // Its writes are tainted too, under its own tid.
    t.files(&v, vec![fe(150, 60, FileAccess::Write, None)]);
    assert!(t.tainted(&v, &file(60)));
}

#[test]
fn exec_keeps_taint() {
    let mut t = T::new();
    let v = vm(1);
    let (cat, _, _) = case1(&mut t, &v);
    let sh = P { comm: "sh", ..cat };
    t.guest(&v, vec![sh.exec(&v)]);
    let e = t.e.vm(&v.uuid).unwrap().entry(&cat.subject()).unwrap();
    assert_eq!(e.name.as_deref(), Some("sh"));
    assert!(t.pid_tainted(&v, 100));
}

#[test]
fn two_vms_with_the_same_pids_and_inodes_never_mix() {
    let mut t = T::new();
    let (a, b) = (vm(1), vm(2));
    case1(&mut t, &a);
    // VM b: the very same pids, task addresses and inode numbers, but
    // nothing there is confidential.
    let cat = P::new(100, "cat");
    t.guest(&b, vec![cat.exec(&b)]);
    t.files(
        &b,
        vec![
            fe(100, 10, FileAccess::Read, None),
            fe(100, 20, FileAccess::Write, None),
        ],
    );
    assert!(!t.tainted(&b, &file(10)) && !t.tainted(&b, &file(20)));
    assert!(!t.pid_tainted(&b, 100));
    assert!(t.pid_tainted(&a, 100));
    let s = t.e.status(Some(&b.uuid)).vms.remove(0);
    assert_eq!((s.files, s.processes), (0, 0));
    assert!(t.e.graph(&b.uuid).is_empty());
    // And the other way round: b's source does not taint a's reader.
    let other = P::new(300, "vi");
    t.guest(&a, vec![other.exec(&a)]);
    t.files(&b, vec![fe(300, 99, FileAccess::Read, Some(RULE))]);
    t.files(&a, vec![fe(300, 99, FileAccess::Read, None)]);
    assert!(!t.pid_tainted(&a, 300));
    assert!(t.pid_tainted(&b, 300), "unverified in b, but tainted");
}

#[test]
fn case2_unix_sockets_and_loopback_tcp_carry_taint_to_the_receiver() {
    let mut t = T::new();
    let v = vm(1);
    let (cat, _, _) = case1(&mut t, &v);
    let (server, client, web, bystander) = (
        P::new(400, "server"),
        P::new(401, "pair"),
        P::new(402, "web"),
        P::new(403, "idle"),
    );
    // cat sends to a named socket; the server receives on it.
    t.guest(
        &v,
        vec![
            cat.unix(
                &v,
                true,
                SocketInfo::Unix {
                    local: None,
                    peer: Some("/run/app.sock".into()),
                    sock: None,
                    peer_sock: None,
                },
            ),
            server.unix(
                &v,
                false,
                SocketInfo::Unix {
                    local: Some("/run/app.sock".into()),
                    peer: None,
                    sock: None,
                    peer_sock: None,
                },
            ),
        ],
    );
    assert!(t.tainted(
        &v,
        &Subject::Unix {
            name: "/run/app.sock".into()
        }
    ));
    assert!(t.tainted(&v, &server.subject()));
    // A socketpair: no names, followed by its two socks.
    let pair = |me: u64, peer: u64| SocketInfo::Unix {
        local: None,
        peer: None,
        sock: Some(me),
        peer_sock: Some(peer),
    };
    t.guest(
        &v,
        vec![
            cat.unix(&v, true, pair(0xa000, 0xb000)),
            client.unix(&v, false, pair(0xb000, 0xa000)),
            bystander.unix(&v, false, pair(0xc000, 0xd000)),
        ],
    );
    assert!(t.tainted(&v, &client.subject()));
    assert!(!t.tainted(&v, &bystander.subject()));
    // TCP over loopback inside the guest, seen from both ends.
    let fx = t.guest(
        &v,
        vec![
            cat.inet(
                &v,
                true,
                Transport::Tcp,
                "127.0.0.1:40000",
                "127.0.0.1:8080",
            ),
            web.inet(
                &v,
                false,
                Transport::Tcp,
                "127.0.0.1:8080",
                "127.0.0.1:40000",
            ),
            bystander.inet(
                &v,
                false,
                Transport::Tcp,
                "127.0.0.1:8080",
                "127.0.0.1:40001",
            ),
        ],
    );
    assert!(t.tainted(&v, &web.subject()));
    assert!(!t.tainted(&v, &bystander.subject()), "another connection");
    assert_eq!(fx.alerts().count(), 0, "loopback is inside");
    let w = t.e.vm(&v.uuid).unwrap().entry(&web.subject()).unwrap();
    assert_eq!(w.origin.by, Carrier::Recv);
    let (chain, complete) = t.e.chain(&v.uuid, &web.subject());
    assert!(complete);
    assert_eq!(chain.len(), 4, "web <- flow <- cat <- source");
    // The flow answers a filter's query from either end.
    let q = Query::Flow {
        transport: Transport::Tcp,
        local: "127.0.0.1:8080".parse().unwrap(),
        peer: "127.0.0.1:40000".parse().unwrap(),
    };
    assert!(t.e.query(&v.uuid, &q).0.is_some());
}

struct Recorder(Mutex<Vec<FreezeOrder>>);

impl Freezer for Recorder {
    fn freeze(&self, order: FreezeOrder) {
        self.0.lock().unwrap().push(order);
    }
}

#[test]
fn a_leak_raises_one_alert_with_its_chain_and_calls_the_freezer() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("taint-audit.log");
    let (svc, _) = TaintService::open(
        &TaintConfig {
            audit_log: Some(log.clone()),
            freeze_on_leak: true,
            ..TaintConfig::default()
        },
        HashSet::from(["10.0.0.2".parse().unwrap()]),
    )
    .unwrap();
    let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
    svc.set_freezer(recorder.clone());
    let watch = svc.watch();
    let (a, b) = (vm(1), vm(2));
    let curl = P::new(100, "curl");
    svc.ingest(
        a.clone(),
        Input::Guest {
            events: vec![curl.exec(&a)],
            dropped: 0,
            seq: None,
        },
    )
    .unwrap();
    svc.ingest(
        a.clone(),
        Input::Files {
            events: vec![fe(100, 10, FileAccess::Read, Some(RULE))],
            dropped: 0,
        },
    )
    .unwrap();
    let send = |peer: &str| Input::Guest {
        events: vec![curl.inet(&a, true, Transport::Tcp, "10.0.2.15:44312", peer)],
        dropped: 0,
        seq: None,
    };
    let fx = svc.ingest(a.clone(), send("93.184.216.34:443")).unwrap();
    let alerts: Vec<_> = fx.alerts().cloned().collect();
    assert_eq!(alerts.len(), 1);
    let al = &alerts[0];
    assert_eq!(
        (al.vm.as_str(), al.vm_name.as_str()),
        (a.uuid.as_str(), "vm1")
    );
    assert_eq!(
        (al.pid, al.name.as_str(), al.task),
        (100, "curl", curl.task)
    );
    assert_eq!(
        al.destination,
        "93.184.216.34:443".parse::<SocketAddr>().unwrap()
    );
    assert!(al.chain_complete && al.freeze);
    let hops: Vec<&Subject> = al.chain.iter().map(|l| &l.entry.subject).collect();
    assert_eq!(hops, vec![&curl.subject(), &file(10)]);
    assert_eq!(
        *recorder.0.lock().unwrap(),
        vec![FreezeOrder {
            vm: a.clone(),
            pid: 100,
            task: curl.task
        }]
    );
    // The same destination again: no second alert.
    let fx = svc.ingest(a.clone(), send("93.184.216.34:443")).unwrap();
    assert_eq!(fx.alerts().count(), 0);
    // Another VM of this host is inside: no alert, and the receiver there
    // is tainted, its origin in VM a.
    let fx = svc.ingest(a.clone(), send("10.0.0.2:80")).unwrap();
    assert_eq!(fx.alerts().count(), 0);
    let nginx = P::new(100, "nginx");
    svc.ingest(
        b.clone(),
        Input::Guest {
            events: vec![nginx.inet(&b, false, Transport::Tcp, "10.0.0.2:80", "10.0.2.15:44312")],
            dropped: 0,
            seq: None,
        },
    )
    .unwrap();
    let (entry, _) = svc.query(
        &b.uuid,
        &Query::Process {
            pid: 100,
            task: Some(nginx.task),
        },
    );
    let entry = entry.expect("the receiver in VM b is tainted");
    assert_eq!(entry.origin.from_vm.as_deref(), Some(a.uuid.as_str()));
    let (chain, complete) = svc.chain(&b.uuid, &nginx.subject());
    assert!(complete);
    assert_eq!(
        chain.iter().map(|l| l.vm.as_str()).collect::<Vec<_>>(),
        vec![
            b.uuid.as_str(),
            a.uuid.as_str(),
            a.uuid.as_str(),
            a.uuid.as_str()
        ]
    );
    // A graph of b shows a's part of the path.
    assert_eq!(svc.graph(&b.uuid).len(), 4);
    // The alert reached the watcher and the audit log.
    let mut leak = None;
    while let Some(n) = watch.next(std::time::Duration::ZERO) {
        if let TaintNotice::Leak { alert } = n {
            leak = Some(alert);
        }
    }
    assert_eq!(leak.as_ref(), Some(al));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 1);
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["event"], "leak");
    assert_eq!(line["alert"]["destination"], "93.184.216.34:443");
    assert_eq!(line["alert"]["chain"][1]["entry"]["rule"], RULE);
    svc.freeze_done(&a, 100, Ok("frozen".into()));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
}

#[test]
fn a_new_process_under_a_reused_pid_is_clean() {
    let mut t = T::new();
    let v = vm(1);
    let (cat, _, _) = case1(&mut t, &v);
    let parent = P::new(1, "init");
    // The tainted cat exits; pid 100 comes back as another process (even
    // in the same task_struct slot: only the start time differs).
    let reborn = P {
        start: cat.start + 5_000,
        comm: "date",
        ..cat
    };
    t.guest(&v, vec![cat.exit(&v), parent.fork(&v, &reborn)]);
    assert!(!t.pid_tainted(&v, 100));
    assert!(!t.tainted(&v, &reborn.subject()));
    t.files(&v, vec![fe(100, 50, FileAccess::Write, None)]);
    assert!(!t.tainted(&v, &file(50)), "its writes are clean");
    let old = t.e.vm(&v.uuid).unwrap().entry(&cat.subject()).unwrap();
    assert!(old.ended, "the old process is kept, as ended");
    // A pid reused without the exit being seen: the fork still tells.
    let vi = P::new(500, "vi");
    t.guest(&v, vec![vi.exec(&v)]);
    t.files(&v, vec![fe(500, 10, FileAccess::Read, None)]);
    assert!(t.pid_tainted(&v, 500));
    let vi2 = P {
        task: vi.task + 0x4000_0000,
        ..vi
    };
    t.guest(&v, vec![parent.fork(&v, &vi2)]);
    assert!(!t.pid_tainted(&v, 500));
    // And a query by task tells the two apart.
    let q = |task| Query::Process {
        pid: 500,
        task: Some(task),
    };
    assert!(t.e.query(&v.uuid, &q(vi.task)).0.is_none(), "ended");
    assert!(t.e.query(&v.uuid, &q(vi2.task)).0.is_none());
}

#[test]
fn a_first_read_that_arrives_before_its_fork_still_taints_the_child() {
    let mut t = T::new();
    let v = vm(1);
    let sh = P::new(1, "sh");
    t.guest(&v, vec![sh.exec(&v)]);
    // fsd's event of the child's read comes first: pid 600 is unknown.
    let child = P::new(600, "sh");
    t.files(&v, vec![fe(600, 10, FileAccess::Open, Some(RULE))]);
    assert!(t.tainted(&v, &Subject::UnverifiedProcess { pid: 600 }));
    // Then the hooks' fork of it: the taint is the child's.
    t.guest(&v, vec![sh.fork(&v, &child)]);
    let e = t.e.vm(&v.uuid).unwrap().entry(&child.subject()).unwrap();
    assert_eq!(e.origin.by, Carrier::Identified);
    assert_eq!(e.origin.from, Some(Subject::UnverifiedProcess { pid: 600 }));
    // A taint on a pid alone from long before is another process's.
    t.files(&v, vec![fe(700, 10, FileAccess::Read, Some(RULE))]);
    t.now += super::rules::REORDER_MS + 1;
    let late = P::new(700, "sh");
    t.guest(&v, vec![sh.fork(&v, &late)]);
    assert!(!t.tainted(&v, &late.subject()));
    assert!(!t.pid_tainted(&v, 700));
}

#[test]
fn a_read_that_arrives_after_its_fork_and_send_still_taints_them() {
    let mut t = T::new();
    let v = vm(1);
    // sh forks curl, which sends out, all applied while sh is clean ...
    let sh = P::new(100, "sh");
    let curl = P::new(101, "curl");
    t.guest(&v, vec![sh.exec(&v), sh.fork(&v, &curl)]);
    t.guest(
        &v,
        vec![curl.inet(
            &v,
            true,
            Transport::Tcp,
            "10.0.2.15:40000",
            "93.184.216.34:443",
        )],
    );
    assert!(!t.tainted(&v, &curl.subject()));
    // ... then fsd's report that sh had read the source just before.
    let fx = t.files(&v, vec![fe(100, 10, FileAccess::Read, Some(RULE))]);
    let e = t.e.vm(&v.uuid).unwrap().entry(&curl.subject()).unwrap();
    assert_eq!(e.origin.by, Carrier::Fork);
    let leak = fx.notices.iter().find_map(|n| match n {
        TaintNotice::Leak { alert } => Some(alert),
        _ => None,
    });
    let leak = leak.expect("the send is a leak after all");
    assert_eq!(leak.pid, 101);
    assert_eq!(leak.chain.len(), 3, "curl <- sh <- file");
    // fsd's report can even come after the reader's exit, when its pid
    // names no process any more: what that pid did is replayed.
    let sh2 = P::new(300, "sh");
    let nc = P::new(301, "nc");
    t.guest(
        &v,
        vec![
            sh2.exec(&v),
            sh2.fork(&v, &nc),
            sh2.exit(&v),
            nc.inet(
                &v,
                true,
                Transport::Tcp,
                "10.0.2.15:40001",
                "93.184.216.34:443",
            ),
        ],
    );
    let fx = t.files(&v, vec![fe(300, 10, FileAccess::Open, Some(RULE))]);
    assert!(t.tainted(&v, &nc.subject()));
    assert!(fx
        .notices
        .iter()
        .any(|n| matches!(n, TaintNotice::Leak { alert } if alert.pid == 301)));
    // Beyond the window a clean process's fork stays clean.
    let cat = P::new(200, "cat");
    let child = P::new(201, "cat");
    t.guest(&v, vec![cat.exec(&v), cat.fork(&v, &child)]);
    t.now += super::rules::REORDER_MS + 1;
    t.files(&v, vec![fe(200, 10, FileAccess::Read, Some(RULE))]);
    assert!(t.pid_tainted(&v, 200));
    assert!(!t.tainted(&v, &child.subject()));
}

#[test]
fn forged_and_garbage_events_are_counted_not_trusted() {
    let mut t = T::new();
    let v = vm(1);
    // A pid the monitor never saw reads a source: tainted, unverified.
    t.files(&v, vec![fe(4242, 10, FileAccess::Read, Some(RULE))]);
    let q = Query::Process {
        pid: 4242,
        task: None,
    };
    let e = t.e.query(&v.uuid, &q).0.unwrap();
    assert_eq!(e.subject, Subject::UnverifiedProcess { pid: 4242 });
    assert!(!e.verified);
    // What it writes is tainted too, and unverified.
    t.files(&v, vec![fe(4242, 11, FileAccess::Write, None)]);
    let f = t.e.vm(&v.uuid).unwrap().entry(&file(11)).unwrap();
    assert!(!f.verified);
    let s = t.e.status(Some(&v.uuid)).vms.remove(0);
    assert_eq!(s.unverified, 1);
    // pid 0 is nobody.
    t.files(&v, vec![fe(0, 10, FileAccess::Read, None)]);
    assert!(!t.pid_tainted(&v, 0));
    // Garbage from the hooks: no task, fork to pid 0, another VM's event,
    // a send without a destination, a UNIX socket without any name.
    let p = P::new(4242, "x");
    let mut no_task = p.exec(&v);
    no_task.task = 0;
    let mut elsewhere = p.exec(&v);
    elsewhere.vm = "vm9".into();
    // The VM by its UUID, in capitals: ours.
    let mut by_uuid = P::new(4243, "z").exec(&v);
    by_uuid.vm = v.uuid.to_uppercase();
    assert_eq!(t.guest(&v, vec![by_uuid]).accepted, 1);
    let fork0 = p.fork(
        &v,
        &P {
            pid: 0,
            ..P::new(1, "y")
        },
    );
    let nowhere = p.event(
        &v,
        GuestEventKind::Send {
            socket: SocketInfo::Inet {
                transport: Transport::Udp,
                local: "0.0.0.0:5353".parse().unwrap(),
                peer: None,
            },
        },
    );
    let nameless = p.unix(
        &v,
        true,
        SocketInfo::Unix {
            local: Some(String::new()),
            peer: None,
            sock: None,
            peer_sock: Some(7),
        },
    );
    let fx = t.guest(&v, vec![no_task, elsewhere, fork0, nowhere, nameless]);
    assert_eq!(fx.accepted, 5);
    let s = t.e.status(Some(&v.uuid)).vms.remove(0);
    assert_eq!(s.rejected, 5);
    // The hooks name pid 4242 at last: its taint moves to the real
    // process, and the path shows how.
    t.guest(&v, vec![p.exec(&v)]);
    let e = t.e.query(&v.uuid, &q).0.unwrap();
    assert_eq!(e.subject, p.subject());
    assert_eq!(e.origin.by, Carrier::Identified);
    let (chain, complete) = t.e.chain(&v.uuid, &p.subject());
    assert!(complete);
    assert_eq!(chain.len(), 3, "process <- pid 4242 <- source");
    // An absurd comm does not blow up memory.
    let long = P {
        comm: Box::leak("n".repeat(100_000).into_boxed_str()),
        ..P::new(9, "")
    };
    t.guest(&v, vec![long.exec(&v)]);
}

#[test]
fn a_process_list_confirms_and_ends_pids() {
    let mut t = T::new();
    let v = vm(1);
    let ps = |pid: u32, task: u64, name: &str| Process {
        pid,
        ppid: 1,
        uid: 0,
        state: 'S',
        name: name.into(),
        kernel_thread: false,
        task,
    };
    let r = t.rec(
        &v,
        Input::Processes {
            processes: vec![ps(70, 0xffff_8880_1000_0000, "cat")],
        },
    );
    t.e.apply(&r).unwrap();
    t.files(&v, vec![fe(70, 10, FileAccess::Read, Some(RULE))]);
    let e =
        t.e.query(
            &v.uuid,
            &Query::Process {
                pid: 70,
                task: None,
            },
        )
        .0
        .unwrap();
    assert!(e.verified, "pid 70 is in the monitor's own view");
    assert_eq!(e.name.as_deref(), Some("cat"));
    // A hook names it with its start time: the same process.
    let cat = P {
        pid: 70,
        task: 0xffff_8880_1000_0000,
        start: 777,
        comm: "cat",
    };
    t.guest(&v, vec![cat.exec(&v)]);
    assert!(t.pid_tainted(&v, 70));
    // Gone from the next list: ended.
    let r = t.rec(&v, Input::Processes { processes: vec![] });
    t.e.apply(&r).unwrap();
    assert!(!t.pid_tainted(&v, 70));
}

#[test]
fn drops_reported_by_producers_make_tracking_incomplete() {
    let mut t = T::new();
    let v = vm(1);
    let p = P::new(5, "sh");
    t.guest(&v, vec![p.exec(&v)]);
    assert!(t.e.status(None).vms[0].complete);
    for dropped in [5, 7, 2] {
        let r = t.rec(
            &v,
            Input::Files {
                events: vec![],
                dropped,
            },
        );
        t.e.apply(&r).unwrap();
    }
    let s = t.e.status(None).vms.remove(0);
    assert_eq!(
        s.fsd_dropped, 9,
        "5, then 2 more, then 2 after fsd restarted"
    );
    assert!(!s.complete);
    assert!(s.incomplete[0].contains("fsd lost 9"), "{:?}", s.incomplete);
    let (_, complete) = t.e.query(&v.uuid, &Query::Process { pid: 5, task: None });
    assert!(!complete, "a filter learns that 'clean' is not certain");
}

#[test]
fn a_million_forks_and_files_stay_within_the_bounds() {
    let limits = Limits::default();
    let mut t = T::with(EngineConfig {
        limits: limits.clone(),
        ..EngineConfig::default()
    });
    let v = vm(1);
    let (cat, _, _) = case1(&mut t, &v);
    const N: u32 = 1_000_000;
    const BATCH: u32 = 5_000;
    let mut i = 0;
    while i < N {
        // A fork bomb of the tainted process, and as many files written.
        let forks = (i..i + BATCH)
            .map(|k| {
                let child = P {
                    pid: 1000 + k,
                    task: 0xffff_9000_0000_0000 + u64::from(k) * 0x4000,
                    start: u64::from(k),
                    comm: "bomb",
                };
                cat.fork(&v, &child)
            })
            .collect();
        t.quiet(
            &v,
            Input::Guest {
                events: forks,
                dropped: 0,
                seq: None,
            },
        );
        let writes = (i..i + BATCH)
            .map(|k| fe(100, 1_000_000 + u64::from(k), FileAccess::Write, None))
            .collect();
        t.quiet(
            &v,
            Input::Files {
                events: writes,
                dropped: 0,
            },
        );
        i += BATCH;
    }
    let s = t.e.status(Some(&v.uuid)).vms.remove(0);
    assert_eq!(s.processes, limits.processes as u64);
    assert_eq!(s.files, limits.files as u64);
    assert_eq!(s.known_processes, limits.known_processes as u64);
    assert!(s.evicted >= u64::from(N) * 2 - (limits.processes + limits.files) as u64);
    assert!(!s.complete);
    assert!(
        s.incomplete.iter().any(|r| r.contains("evicted")),
        "{:?}",
        s.incomplete
    );
    let (d, _) = t.e.derived_after(&v.uuid, 0, usize::MAX);
    assert_eq!(d.len(), limits.derived);
    // Memory: the estimate stays under its bound for one VM.
    let per_vm_bound = limits.max_bytes_per_vm();
    let bytes = t.e.approx_bytes();
    println!(
        "after {N} forks and {N} files: {} processes, {} files, {} known, {} evicted, \
         about {} KiB (bound {} KiB per VM, {} MiB for {} VMs)",
        s.processes,
        s.files,
        s.known_processes,
        s.evicted,
        bytes / 1024,
        per_vm_bound / 1024,
        limits.max_bytes() >> 20,
        limits.vms
    );
    assert!(bytes <= per_vm_bound, "{bytes} > {per_vm_bound}");
    // The most recent children are still tainted; the tracker says the
    // oldest were let go.
    assert!(t.pid_tainted(&v, 1000 + N - 1));
    // A tainted source still taints new readers.
    let late = P::new(77, "late");
    t.guest(&v, vec![late.exec(&v)]);
    t.files(&v, vec![fe(77, 10, FileAccess::Read, Some(RULE))]);
    assert!(t.pid_tainted(&v, 77));
}

#[test]
fn more_vms_than_the_bound_are_refused() {
    let mut t = T::with(EngineConfig {
        limits: Limits {
            vms: 2,
            ..Limits::default()
        },
        ..EngineConfig::default()
    });
    t.files(&vm(1), vec![]);
    t.files(&vm(2), vec![]);
    let r = t.rec(
        &vm(3),
        Input::Files {
            events: vec![],
            dropped: 0,
        },
    );
    assert!(matches!(
        t.e.apply(&r),
        Err(super::TaintError::TooManyVms(2))
    ));
}

#[test]
fn snapshots_round_trip_exactly() {
    let mut t = T::new();
    let v = vm(1);
    case1(&mut t, &v);
    let json = serde_json::to_value(t.e.snapshot()).unwrap();
    let back = Engine::restore(
        EngineConfig::default(),
        serde_json::from_value(json.clone()).unwrap(),
    )
    .unwrap();
    assert_eq!(serde_json::to_value(back.snapshot()).unwrap(), json);
}
