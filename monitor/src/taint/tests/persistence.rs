//! State across restarts: the journal and the snapshot bring back all that
//! clients can ask; a damaged journal loads what came before the damage and
//! fails closed; a restart leaves each VM incomplete until its producers
//! show that they missed nothing while the monitor was down.

use std::path::{Path, PathBuf};

use monitor_client::taint::PluginSeq;
use monitor_client::taint_report::{DerivedFile, TaintedEntry, VmEntry, VmTaintStatus};

use super::super::journal::{Restored, DAMAGED, JOURNAL, SNAPSHOT};
use super::*;

fn config(dir: &Path) -> TaintConfig {
    TaintConfig {
        state_dir: Some(dir.join("state")),
        ..TaintConfig::default()
    }
}

fn open(dir: &Path) -> (TaintService, Restored) {
    let (svc, restored) = TaintService::open(&config(dir), HashSet::new()).unwrap();
    (svc, restored.expect("a state directory is set"))
}

fn journal(dir: &Path) -> PathBuf {
    dir.join("state").join(JOURNAL)
}

fn seq(instance: &str, first: u64, last: u64) -> Option<PluginSeq> {
    Some(PluginSeq {
        instance: instance.into(),
        first,
        last,
        ended: false,
    })
}

fn guest(svc: &TaintService, v: &VmId, events: Vec<GuestEvent>, seq: Option<PluginSeq>) {
    svc.ingest(
        v.clone(),
        Input::Guest {
            events,
            dropped: 0,
            seq,
        },
    )
    .unwrap();
}

fn files(svc: &TaintService, v: &VmId, events: Vec<FileEvent>, dropped: u64) {
    svc.ingest(v.clone(), Input::Files { events, dropped })
        .unwrap();
}

const PLUGIN: &str = "boot/4242/777";

/// `cat` reads a source, writes a copy and forks; the child sends to a
/// neighbour over UNIX and INET sockets, and outside (an alert); the
/// neighbour receives. The plugin's numbers run 1..=4; fsd lost one event.
fn workload(svc: &TaintService, v: &VmId) -> (P, P, P) {
    let cat = P::new(100, "cat");
    let child = P::new(101, "cat");
    let server = P::new(300, "server");
    guest(svc, v, vec![cat.exec(v), server.exec(v)], seq(PLUGIN, 1, 2));
    files(
        svc,
        v,
        vec![
            fe(100, 10, FileAccess::Read, Some(RULE)),
            fe(100, 20, FileAccess::Write, None),
        ],
        1,
    );
    let pair = SocketInfo::Unix {
        local: None,
        peer: None,
        sock: Some(0x1000),
        peer_sock: Some(0x2000),
    };
    guest(
        svc,
        v,
        vec![
            cat.fork(v, &child),
            child.unix(v, true, pair.clone()),
            child.inet(v, true, Transport::Tcp, "10.0.2.15:40000", "1.1.1.1:443"),
            server.unix(v, false, pair),
        ],
        seq(PLUGIN, 3, 4),
    );
    (cat, child, server)
}

/// All a client can ask about VM `v`: status (less whether it is
/// complete), the graph, what a filter's queries answer for `pids`, the
/// derived files.
#[derive(Debug, PartialEq)]
struct View {
    status: VmTaintStatus,
    graph: Vec<VmEntry>,
    answers: Vec<Option<TaintedEntry>>,
    derived: Vec<DerivedFile>,
}

fn view(svc: &TaintService, v: &VmId, procs: &[P]) -> View {
    let mut status = svc.status(Some(&v.uuid)).vms.remove(0);
    status.complete = true;
    status.incomplete.clear();
    let answers = procs
        .iter()
        .flat_map(|p| {
            [
                Query::Process {
                    pid: p.pid,
                    task: None,
                },
                Query::Process {
                    pid: p.pid,
                    task: Some(p.task),
                },
            ]
        })
        .chain([Query::Flow {
            transport: Transport::Tcp,
            local: "10.0.2.15:40000".parse().unwrap(),
            peer: "1.1.1.1:443".parse().unwrap(),
        }])
        .map(|q| svc.query(&v.uuid, &q).0)
        .collect();
    View {
        status,
        graph: svc.graph(&v.uuid),
        answers,
        derived: svc.derived_after(&v.uuid, 0, 100).0,
    }
}

fn incomplete(svc: &TaintService, v: &VmId) -> Vec<String> {
    let s = svc.status(Some(&v.uuid)).vms.remove(0);
    assert_eq!(s.complete, s.incomplete.is_empty());
    let (_, complete) = svc.query(
        &v.uuid,
        &Query::Process {
            pid: 100,
            task: None,
        },
    );
    assert_eq!(complete, s.complete, "queries say what the status says");
    s.incomplete
}

fn has(reasons: &[String], part: &str) -> bool {
    reasons.iter().any(|r| r.contains(part))
}

#[test]
fn what_clients_ask_survives_a_restart_and_the_producers_settle_it() {
    let dir = tempfile::tempdir().unwrap();
    let v = vm(1);
    let (before, procs) = {
        let (svc, restored) = open(dir.path());
        assert_eq!((restored.replayed, restored.vms), (0, 0));
        let (cat, child, server) = workload(&svc, &v);
        let procs = [cat, child, server, P::new(999, "nobody")];
        let before = view(&svc, &v, &procs);
        assert!(
            before.answers[..6].iter().all(Option::is_some),
            "{before:?}"
        );
        assert!(before.answers[6..8].iter().all(Option::is_none));
        assert!(before.answers[8].is_some(), "the flow outside");
        assert_eq!((before.status.alerts, before.derived.len()), (1, 1));
        // fsd's lost event is the only reason for incompleteness.
        assert_eq!(incomplete(&svc, &v).len(), 1);
        (before, procs)
    };
    let (svc, restored) = open(dir.path());
    assert_eq!(
        (restored.from_snapshot, restored.replayed, restored.vms),
        (false, 3, 1)
    );
    assert!(restored.damage.is_none() && !restored.stale_journal);
    assert_eq!(view(&svc, &v, &procs), before);
    assert!(svc.status(None).persistent);
    // Both producers are unproven: the VM is incomplete.
    let why = incomplete(&svc, &v);
    assert!(has(&why, "fsd has not reported since"), "{why:?}");
    assert!(has(&why, "hooks have not shown since"), "{why:?}");
    // fsd reports the same count of lost events: it lost nothing more.
    files(&svc, &v, vec![], 1);
    assert!(!has(&incomplete(&svc, &v), "fsd has not"));
    // A batch of hook events without numbers shows nothing.
    guest(&svc, &v, vec![], None);
    assert!(has(&incomplete(&svc, &v), "hooks have not shown"));
    // The plugin's numbering goes on right after the last one kept.
    guest(&svc, &v, vec![], seq(PLUGIN, 5, 4));
    assert_eq!(incomplete(&svc, &v).len(), 1, "as before the restart");
    assert_eq!(view(&svc, &v, &procs), before);
    // The marks and their settling are journaled too; a snapshot, more
    // batches and a restart bring the same back.
    svc.snapshot().unwrap();
    guest(
        &svc,
        &v,
        vec![P::new(400, "sh").exec(&v)],
        seq(PLUGIN, 5, 5),
    );
    let before = view(&svc, &v, &procs);
    drop(svc);
    let (svc, restored) = open(dir.path());
    assert_eq!(
        (restored.from_snapshot, restored.replayed),
        (true, 1),
        "{restored:?}"
    );
    assert_eq!(view(&svc, &v, &procs), before);
}

#[test]
fn a_restart_is_settled_by_the_numbers_the_producers_give() {
    let mut t = T::new();
    let restart = |t: &mut T, v: &VmId, lost: Vec<super::super::restart::Lost>| {
        t.quiet(v, Input::Restarted { lost });
    };
    let why = |t: &T, v: &VmId| t.e.status(Some(&v.uuid)).vms[0].incomplete.clone();
    let numbered = |t: &mut T, v: &VmId, seq: Option<PluginSeq>, dropped: u64| {
        let cat = P::new(100, "cat");
        t.quiet(
            v,
            Input::Guest {
                events: vec![cat.exec(v)],
                dropped,
                seq,
            },
        );
    };
    let fsd = |t: &mut T, v: &VmId, dropped: u64| {
        t.quiet(
            v,
            Input::Files {
                events: vec![],
                dropped,
            },
        );
    };
    // A gap in the same plugin's numbers is counted as lost; an fsd whose
    // count began again is lost for good.
    let a = vm(1);
    numbered(&mut t, &a, seq("a", 1, 5), 0);
    fsd(&mut t, &a, 3);
    restart(&mut t, &a, vec![]);
    numbered(&mut t, &a, seq("a", 9, 9), 0);
    assert_eq!(t.e.status(Some(&a.uuid)).vms[0].hooks_dropped, 3);
    fsd(&mut t, &a, 2);
    let w = why(&t, &a);
    assert!(has(&w, "hooks lost 3 events"), "{w:?}");
    assert!(has(&w, "fsd started afresh"), "{w:?}");
    assert!(!has(&w, "has not reported") && !has(&w, "have not shown"));
    // A new plugin without the old one's goodbye: lost for good.
    restart(&mut t, &a, vec![]);
    numbered(&mut t, &a, seq("b", 1, 1), 0);
    assert!(has(&why(&t, &a), "hook plugin (its QEMU) started afresh"));
    // After a goodbye, a new plugin from its first number misses nothing;
    // one that made events before the monitor came loses those.
    let b = vm(2);
    numbered(
        &mut t,
        &b,
        Some(PluginSeq {
            instance: "a".into(),
            first: 1,
            last: 4,
            ended: true,
        }),
        0,
    );
    restart(&mut t, &b, vec![]);
    numbered(&mut t, &b, seq("b", 1, 1), 0);
    assert!(
        t.e.status(Some(&b.uuid)).vms[0].complete,
        "{:?}",
        why(&t, &b)
    );
    numbered(&mut t, &b, seq("b", 2, 2), 0);
    restart(&mut t, &b, vec![]);
    numbered(&mut t, &b, seq("b", 3, 3), 0);
    assert!(t.e.status(Some(&b.uuid)).vms[0].complete);
    // The hook feed counts its losses from 0 again after a restart: a
    // count below the last one kept is no new loss, nor a reason to
    // forget one.
    numbered(&mut t, &b, seq("b", 4, 4), 7);
    restart(&mut t, &b, vec![]);
    numbered(&mut t, &b, seq("b", 5, 5), 0);
    assert_eq!(t.e.status(Some(&b.uuid)).vms[0].hooks_dropped, 7);
    // Hook events without numbers before the restart: nothing can show
    // what was missed.
    let c = vm(3);
    numbered(&mut t, &c, None, 0);
    restart(&mut t, &c, vec![]);
    numbered(&mut t, &c, seq("a", 1, 1), 0);
    assert!(has(&why(&t, &c), "without the plugin's numbers"));
    // A cause found at the restart stays, whatever the producers show.
    let d = vm(4);
    numbered(&mut t, &d, seq("a", 1, 1), 0);
    restart(
        &mut t,
        &d,
        vec![super::super::restart::Lost::JournalDamaged],
    );
    numbered(&mut t, &d, seq("a", 2, 2), 0);
    let w = why(&t, &d);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(has(&w, "journal was found damaged"));
    // A VM no producer reported for is marked for none.
    let e = vm(5);
    t.quiet(
        &e,
        Input::Processes {
            processes: Vec::new(),
        },
    );
    restart(&mut t, &e, vec![]);
    let w = why(&t, &e);
    assert!(!has(&w, "restarted"), "{w:?}");
}

#[test]
fn a_damaged_journal_loads_what_came_before_and_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let v = vm(1);
    let cat = P::new(100, "cat");
    {
        let (svc, _) = open(dir.path());
        guest(&svc, &v, vec![cat.exec(&v)], seq(PLUGIN, 1, 1));
        files(&svc, &v, vec![fe(100, 10, FileAccess::Read, Some(RULE))], 0);
        files(&svc, &v, vec![fe(100, 20, FileAccess::Write, None)], 0);
        files(&svc, &v, vec![fe(100, 30, FileAccess::Write, None)], 0);
    }
    // The generation line, three batches, then the write of file 20
    // garbled in the middle of the file: file 30, after it, is not loaded
    // either (what came after a gap cannot be trusted to be all).
    let path = journal(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 5, "{text}");
    lines[3] = lines[3].replace("\"ino\":20", "\"ino\":2\u{0}");
    let garbled = lines.join("\n") + "\n";
    std::fs::write(&path, &garbled).unwrap();
    let (svc, restored) = open(dir.path());
    let damage = restored.damage.clone().expect("damage found");
    assert_eq!((damage.line, restored.replayed), (4, 2), "{restored:?}");
    assert!(damage.what.contains("not a journal record"), "{damage:?}");
    assert_eq!(std::fs::read_to_string(&damage.kept).unwrap(), garbled);
    assert_eq!(damage.kept, dir.path().join("state").join(DAMAGED));
    let tainted = |svc: &TaintService, ino| {
        svc.graph(&v.uuid)
            .iter()
            .any(|n| n.entry.subject == file(ino))
    };
    assert!(tainted(&svc, 10) && !tainted(&svc, 20) && !tainted(&svc, 30));
    assert!(svc
        .query(
            &v.uuid,
            &Query::Process {
                pid: 100,
                task: None
            }
        )
        .0
        .is_some());
    // Incomplete for good: the producers showing continuity does not
    // change that.
    files(&svc, &v, vec![], 0);
    guest(&svc, &v, vec![], seq(PLUGIN, 2, 1));
    let why = incomplete(&svc, &v);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(has(&why, "journal was found damaged"), "{why:?}");
    let before = view(&svc, &v, &[cat]);
    drop(svc);
    // The state was rewritten: a clean journal follows a new snapshot, and
    // the mark stays across the next restart.
    let (svc, restored) = open(dir.path());
    assert!(restored.damage.is_none() && restored.from_snapshot);
    assert_eq!(view(&svc, &v, &[cat]), before);
    assert!(has(&incomplete(&svc, &v), "journal was found damaged"));
    drop(svc);
    // A last line cut short (a crash in the middle of a write).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(journal(dir.path()))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"at_ms\":1,\"vm\":{\"uu").unwrap();
    drop(f);
    let (svc, restored) = open(dir.path());
    let damage = restored.damage.expect("a torn line is damage");
    assert!(damage.what.contains("cut short"), "{damage:?}");
    assert_eq!(view(&svc, &v, &[cat]), before);
}

#[test]
fn a_journal_already_in_the_snapshot_is_not_replayed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let v = vm(1);
    let cat = P::new(100, "cat");
    let (svc, _) = open(dir.path());
    guest(&svc, &v, vec![cat.exec(&v)], seq(PLUGIN, 1, 1));
    files(&svc, &v, vec![fe(100, 10, FileAccess::Read, Some(RULE))], 0);
    let old = std::fs::read(journal(dir.path())).unwrap();
    svc.snapshot().unwrap();
    let before = view(&svc, &v, &[cat]);
    drop(svc);
    // A crash after the snapshot's rename, before the journal was emptied.
    std::fs::write(journal(dir.path()), &old).unwrap();
    let (svc, restored) = open(dir.path());
    assert!(restored.stale_journal && restored.from_snapshot);
    assert_eq!(restored.replayed, 0);
    assert_eq!(view(&svc, &v, &[cat]), before, "no event counted twice");
    files(&svc, &v, vec![fe(100, 20, FileAccess::Write, None)], 0);
    drop(svc);
    // A journal that continues a snapshot that is gone: damage.
    std::fs::remove_file(dir.path().join("state").join(SNAPSHOT)).unwrap();
    let (svc, restored) = open(dir.path());
    let damage = restored.damage.expect("a journal without its snapshot");
    assert!(
        damage.what.contains("snapshot that is not there"),
        "{damage:?}"
    );
    assert!(has(&incomplete(&svc, &v), "journal was found damaged"));
}

#[test]
fn a_snapshot_keeps_the_forks_a_late_read_reaches_back_to() {
    let mut t = T::new();
    let v = vm(1);
    let sh = P::new(100, "sh");
    let curl = P::new(101, "curl");
    t.guest(&v, vec![sh.exec(&v), sh.fork(&v, &curl)]);
    // The monitor restarts from a snapshot before fsd's report of sh's
    // read arrives, within the window: the fork is still taken back.
    let snap = serde_json::to_vec(&t.e.snapshot()).unwrap();
    t.e = Engine::restore(
        EngineConfig::default(),
        serde_json::from_slice(&snap).unwrap(),
    )
    .unwrap();
    t.files(&v, vec![fe(100, 10, FileAccess::Read, Some(RULE))]);
    assert!(t.tainted(&v, &curl.subject()));
}

#[test]
fn a_lowered_bound_evicts_at_the_restart_and_says_so() {
    let mut t = T::new();
    let (a, b, c) = (vm(1), vm(2), vm(3));
    for v in [&a, &b, &c] {
        case1(&mut t, v);
    }
    // b is the VM heard of last; the one before it, a.
    t.files(&a, vec![]);
    t.files(&b, vec![]);
    let snap = serde_json::to_value(t.e.snapshot()).unwrap();
    assert_eq!(snap["version"], 2);
    let limits = Limits {
        vms: 2,
        files: 1,
        ..Limits::default()
    };
    let back = Engine::restore(
        EngineConfig {
            limits,
            ..EngineConfig::default()
        },
        serde_json::from_value(snap.clone()).unwrap(),
    )
    .unwrap();
    assert!(back.vm(&c.uuid).is_none(), "the VM heard of longest ago");
    let s = back.status(Some(&a.uuid)).vms.remove(0);
    assert_eq!((s.files, s.evicted), (1, 1), "{s:?}");
    assert!(!s.complete && s.incomplete.iter().any(|r| r.contains("evicted")));
    assert_eq!(
        back.query(
            &c.uuid,
            &Query::Process {
                pid: 100,
                task: None
            }
        ),
        (None, false),
        "a VM left out is one nothing is known of"
    );
    // Version 1 (before restart marks) is read; a later one is refused.
    let mut v1 = snap.clone();
    v1["version"] = 1.into();
    for vm in v1["vms"].as_array_mut().unwrap() {
        let vm = vm.as_object_mut().unwrap();
        for k in ["continuity", "recent", "last_at_ms"] {
            vm.remove(k);
        }
    }
    assert!(Engine::restore(EngineConfig::default(), serde_json::from_value(v1).unwrap()).is_ok());
    let mut v3 = snap;
    v3["version"] = 3.into();
    assert!(matches!(
        Engine::restore(EngineConfig::default(), serde_json::from_value(v3).unwrap()),
        Err(super::super::TaintError::SnapshotVersion(3))
    ));
}

#[test]
fn a_clean_stop_a_host_crash_and_state_gone_missing() {
    use super::super::manifest::{Manifest, MANIFEST};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let v = vm(1);
    let cat = P::new(100, "cat");
    let (svc, _) = open(dir.path());
    guest(&svc, &v, vec![cat.exec(&v)], seq(PLUGIN, 1, 1));
    files(&svc, &v, vec![fe(100, 10, FileAccess::Read, Some(RULE))], 0);
    let m = Manifest::read(&state).unwrap().unwrap();
    assert!(!m.clean && !m.synced && m.boot_id.is_some());
    assert_eq!(m.vms, vec![v.clone()], "a new VM is recorded at once");
    // A clean stop: later batches are refused, queries still answered.
    svc.close().unwrap();
    assert!(matches!(
        svc.ingest(
            v.clone(),
            Input::Files {
                events: vec![],
                dropped: 0
            }
        ),
        Err(super::super::TaintError::Closed)
    ));
    let before = view(&svc, &v, &[cat]);
    drop(svc);
    assert!(Manifest::read(&state).unwrap().unwrap().clean);
    let (svc, restored) = open(dir.path());
    assert!(!restored.host_crashed && restored.from_snapshot);
    assert_eq!(restored.replayed, 0, "all in the snapshot");
    assert_eq!(view(&svc, &v, &[cat]), before);
    drop(svc);
    // Killed, and the host booted since: the last unsynced lines may be
    // gone.
    let mut m = Manifest::read(&state).unwrap().unwrap();
    assert!(!m.clean);
    m.boot_id = Some("another boot".into());
    m.write(&state).unwrap();
    let (svc, restored) = open(dir.path());
    assert!(restored.host_crashed);
    assert!(has(&incomplete(&svc, &v), "the host went down"));
    drop(svc);
    // The same with every line synced: nothing answered was lost.
    let synced = TaintConfig {
        journal_sync: super::super::JournalSync::Batch,
        ..config(dir.path())
    };
    let v2 = vm(2);
    {
        let (svc, _) = TaintService::open(&synced, HashSet::new()).unwrap();
        guest(&svc, &v2, vec![cat.exec(&v2)], seq(PLUGIN, 1, 1));
    }
    let mut m = Manifest::read(&state).unwrap().unwrap();
    assert!(m.synced);
    m.boot_id = Some("yet another boot".into());
    m.write(&state).unwrap();
    let (svc, restored) = TaintService::open(&synced, HashSet::new()).unwrap();
    assert!(!restored.unwrap().host_crashed);
    guest(&svc, &v2, vec![], seq(PLUGIN, 2, 1));
    assert!(svc.status(Some(&v2.uuid)).vms[0].complete);
    drop(svc);
    // The snapshot and journal gone, the manifest left: the VMs it names
    // come back empty and incomplete, not as VMs never seen.
    for f in [SNAPSHOT, JOURNAL] {
        std::fs::remove_file(state.join(f)).unwrap();
    }
    assert!(state.join(MANIFEST).exists());
    let (svc, restored) = open(dir.path());
    assert_eq!(restored.missing, 2);
    for v in [&v, &v2] {
        assert!(has(&incomplete(&svc, v), "not found at a restart"));
        assert_eq!(svc.status(Some(&v.uuid)).vms[0].files, 0);
    }
}
