//! The feed against a fake plugin on a real socket: conversion, batching,
//! and what it counts when the plugin misbehaves.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;

use super::*;

fn event(line: &str) -> hooks::GuestEvent {
    match Message::parse(line).unwrap() {
        Message::Event(e) => *e,
        other => panic!("{other:?}"),
    }
}

const TASK: &str =
    r#""task":{"ptr":18446612682088992768,"pid":70,"tgid":70,"start_ns":4,"comm":"sh"}"#;

#[test]
fn plugin_events_in_the_engines_form() {
    let fork = event(&format!(
        r#"{{"ev":"fork","seq":1,"ns":1,"vcpu":0,"gen":1,"fn":"wake_up_new_task",{TASK},
        "child":{{"ptr":18446612682088988672,"pid":71,"tgid":71,"start_ns":5,"comm":"sh"}}}}"#
    ));
    let e = to_taint("web", &fork).unwrap();
    assert_eq!(
        (e.pid, e.tgid, e.task, e.start_time),
        (70, 70, 0xffff_8880_0121_5000, 4)
    );
    assert_eq!(
        e.kind,
        GuestEventKind::Fork {
            child_pid: 71,
            child_tgid: 71,
            child_task: 0xffff_8880_0121_4000,
            child_start_time: 5
        }
    );
    // A thread is named by its process's leader.
    let thread = event(
        r#"{"ev":"exit","seq":2,"ns":1,"vcpu":0,"gen":1,"fn":"do_exit","code":0,
        "task":{"ptr":99,"pid":72,"tgid":70,"start_ns":8,"comm":"w","leader":18446612682088992768,"leader_start_ns":4}}"#,
    );
    let e = to_taint("web", &thread).unwrap();
    assert_eq!(
        (e.pid, e.tgid, e.task, e.start_time),
        (72, 70, 0xffff_8880_0121_5000, 4)
    );
    // UNIX: the two socks; INET: the endpoints and the transport.
    let unix = event(&format!(
        r#"{{"ev":"send","seq":3,"ns":1,"vcpu":0,"gen":1,"fn":"__sock_sendmsg",{TASK},
        "sock":{{"ptr":5,"type":1,"family":1,"sk":7,"peer_sk":9}},"len":4}}"#
    ));
    assert_eq!(
        to_taint("web", &unix).unwrap().kind,
        GuestEventKind::Send {
            socket: SocketInfo::Unix {
                local: None,
                peer: None,
                sock: Some(7),
                peer_sock: Some(9)
            }
        }
    );
    let udp = event(&format!(
        r#"{{"ev":"recv","seq":4,"ns":1,"vcpu":0,"gen":1,"fn":"sock_recvmsg",{TASK},
        "sock":{{"ptr":5,"type":2,"family":2,"local":"10.0.2.15:4000","remote":"0.0.0.0:0","sk":7}}}}"#
    ));
    assert_eq!(
        to_taint("web", &udp).unwrap().kind,
        GuestEventKind::Recv {
            socket: SocketInfo::Inet {
                transport: Transport::Udp,
                local: "10.0.2.15:4000".parse().unwrap(),
                peer: None
            }
        }
    );
    // A dual-stack socket's IPv4 peer names the flow as the other end does.
    let v6 = event(&format!(
        r#"{{"ev":"recv","seq":4,"ns":1,"vcpu":0,"gen":1,"fn":"sock_recvmsg",{TASK},
        "sock":{{"ptr":5,"type":1,"family":10,"local":"[::ffff:127.0.0.1]:5555","remote":"[::ffff:127.0.0.1]:40110"}}}}"#
    ));
    assert_eq!(
        to_taint("web", &v6).unwrap().kind,
        GuestEventKind::Recv {
            socket: SocketInfo::Inet {
                transport: Transport::Tcp,
                local: "127.0.0.1:5555".parse().unwrap(),
                peer: Some("127.0.0.1:40110".parse().unwrap())
            }
        }
    );
    // What the engine does not take, and what could not be read.
    let read = event(&format!(
        r#"{{"ev":"read","seq":5,"ns":1,"vcpu":0,"gen":1,"fn":"vfs_read",{TASK},"file":{{"ptr":1}},"len":1}}"#
    ));
    assert_eq!(to_taint("web", &read), Err(Unusable::NotTracked));
    let idle = event(
        r#"{"ev":"fork","seq":5,"ns":1,"vcpu":0,"gen":1,"fn":"wake_up_new_task",
        "task":{"ptr":5,"pid":0,"tgid":0,"comm":"swapper/0"},"child":{"ptr":6,"pid":2,"tgid":2}}"#,
    );
    assert_eq!(to_taint("web", &idle), Err(Unusable::NotTracked));
    let netlink = event(&format!(
        r#"{{"ev":"send","seq":6,"ns":1,"vcpu":0,"gen":1,"fn":"__sock_sendmsg",{TASK},"sock":{{"ptr":5,"type":3,"family":16}}}}"#
    ));
    assert_eq!(to_taint("web", &netlink), Err(Unusable::OtherFamily));
    let faulted = event(
        r#"{"ev":"send","seq":7,"ns":1,"vcpu":0,"gen":1,"fn":"__sock_sendmsg","task":{"ptr":5},
        "sock":{"ptr":4},"faults":[{"what":"task","addr":5},{"what":"sock","addr":4}]}"#,
    );
    assert!(matches!(
        to_taint("web", &faulted),
        Err(Unusable::Unreadable(_))
    ));
}

/// A sink that keeps what it is given.
#[derive(Default)]
struct Kept {
    batches: Mutex<Vec<(Vec<GuestEvent>, u64)>>,
    seqs: Mutex<Vec<PluginSeq>>,
    plans: Mutex<usize>,
}

impl HookSink for Kept {
    fn plan(&self, _vm: &str) -> Result<HookPlan> {
        *self.plans.lock().unwrap() += 1;
        Ok(HookPlan {
            hooks: BTreeMap::from([("do_exit".to_string(), 0xffff_ffff_8100_0000)]),
            offsets: BTreeMap::from([("task_struct.pid".to_string(), 2416)]),
        })
    }
    fn deliver(
        &self,
        _vm: &str,
        events: Vec<GuestEvent>,
        lost: u64,
        seq: Option<PluginSeq>,
    ) -> Result<()> {
        self.batches.lock().unwrap().push((events, lost));
        self.seqs.lock().unwrap().extend(seq);
        Ok(())
    }
}

impl Kept {
    fn events(&self) -> usize {
        self.batches.lock().unwrap().iter().map(|b| b.0.len()).sum()
    }
    fn lost(&self) -> u64 {
        self.batches.lock().unwrap().last().map_or(0, |b| b.1)
    }
    /// The numbers delivered, as (first, last, ended), and whether every
    /// range continues the one before it.
    fn ranges(&self) -> (Vec<(u64, u64, bool)>, bool) {
        let seqs = self.seqs.lock().unwrap();
        let me = crate::host::process_instance(std::process::id()).unwrap();
        assert!(seqs.iter().all(|s| s.instance == me), "{seqs:?}");
        let ranges: Vec<_> = seqs.iter().map(|s| (s.first, s.last, s.ended)).collect();
        let continuous = ranges.windows(2).all(|w| w[1].0 == w[0].1 + 1);
        (ranges, continuous)
    }
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Accepts the feed, takes its hook table and answers as the plugin does.
fn accept_and_arm(l: &UnixListener, generation: u64) -> UnixStream {
    let (s, _) = l.accept().unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    let req: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(req["op"], "hooks");
    assert_eq!(req["hooks"]["do_exit"], 0xffff_ffff_8100_0000u64);
    writeln!(
        &s,
        r#"{{"reply":"accepted","generation":{generation},"hooks":1}}
{{"reply":"armed","generation":{generation},"hooks":1}}"#
    )
    .unwrap();
    s
}

fn exit_line(seq: u64, pid: u32) -> String {
    format!(
        r#"{{"ev":"exit","seq":{seq},"ns":1,"vcpu":0,"gen":1,"fn":"do_exit","code":0,"task":{{"ptr":18446612682088992768,"pid":{pid},"tgid":{pid},"start_ns":4,"comm":"sh"}}}}"#
    )
}

#[test]
fn a_plugin_that_sends_garbage_or_goes_away_is_counted_and_fed_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.sock");
    let sink = Arc::new(Kept::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut cfg = FeedConfig::new("web", path.clone());
    cfg.max_backoff = Duration::from_millis(200);
    // No plugin yet: the feed waits for it without failing.
    let feed = spawn(cfg, sink.clone(), stop.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(*sink.plans.lock().unwrap(), 0);
    let l = UnixListener::bind(&path).unwrap();
    let s = accept_and_arm(&l, 1);
    // Two events, a line that is no event, a gap of three, a line that is
    // not even JSON, an event whose task could not be read.
    let mut w = &s;
    writeln!(w, "{}", exit_line(1, 70)).unwrap();
    writeln!(w, "{}", exit_line(2, 71)).unwrap();
    writeln!(w, r#"{{"ev":"nonsense"}}"#).unwrap();
    writeln!(w, "{}", exit_line(6, 72)).unwrap();
    w.write_all(b"\xff\xfe not json\n").unwrap();
    writeln!(
        w,
        r#"{{"ev":"exit","seq":7,"ns":1,"vcpu":0,"gen":1,"fn":"do_exit","task":{{"ptr":5}},"faults":[{{"what":"task","addr":5}}]}}"#
    )
    .unwrap();
    wait("three events delivered", || sink.events() == 3);
    // 1 (no event) + 3 (seq 3..=5) + 1 (not JSON) + 1 (unreadable task).
    wait("six lost", || sink.lost() == 6);
    // The plugin goes away mid-line: one more lost, and the feed is back.
    w.write_all(b"{\"ev\":\"exit\",").unwrap();
    drop(s);
    let s = accept_and_arm(&l, 2);
    wait("the loss of the connection counted", || sink.lost() == 7);
    // A line longer than any event ends the connection too.
    let mut w = &s;
    let _ = w.write_all(&vec![b'x'; hooks::MAX_LINE + 10]);
    let s = accept_and_arm(&l, 3);
    wait("the overlong line counted", || sink.lost() == 8);
    // The same plugin's numbering goes on (no gap), and it says goodbye.
    let mut w = &s;
    writeln!(w, "{}", exit_line(8, 73)).unwrap();
    writeln!(
        w,
        r#"{{"reply":"bye","hits":9,"sent":9,"dropped_full":0,"dropped_down":0,"faulted":1,"armed_generation":3}}"#
    )
    .unwrap();
    wait("the last event", || sink.events() == 4);
    assert_eq!(sink.lost(), 8);
    assert_eq!(*sink.plans.lock().unwrap(), 3);
    // Every number 1..=8 is accounted for, by ranges that follow one
    // another (the gap 3..=5 inside one, counted in `lost`); the plugin is
    // this test process, and its goodbye ends the last range.
    wait("the goodbye delivered", || {
        sink.ranges().0.last().is_some_and(|r| r.2)
    });
    let (ranges, continuous) = sink.ranges();
    assert!(continuous, "{ranges:?}");
    assert_eq!(ranges.first().map(|r| r.0), Some(1), "{ranges:?}");
    assert_eq!(ranges.last().map(|r| r.1), Some(8), "{ranges:?}");
    stop.store(true, Ordering::Relaxed);
    feed.join().unwrap();
}

#[test]
fn events_of_no_use_still_move_the_numbers_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.sock");
    let sink = Arc::new(Kept::default());
    let stop = Arc::new(AtomicBool::new(false));
    let l = UnixListener::bind(&path).unwrap();
    let feed = spawn(
        FeedConfig::new("web", path.clone()),
        sink.clone(),
        stop.clone(),
    )
    .unwrap();
    let s = accept_and_arm(&l, 1);
    let mut w = &s;
    writeln!(w, "{}", exit_line(1, 70)).unwrap();
    wait("the event", || sink.events() == 1);
    // A netlink send: nothing for the engine, but its number is delivered
    // in a batch without events, soon.
    writeln!(
        w,
        r#"{{"ev":"send","seq":2,"ns":1,"vcpu":0,"gen":1,"fn":"__sock_sendmsg",{TASK},"sock":{{"ptr":5,"type":3,"family":16}}}}"#
    )
    .unwrap();
    wait("the number delivered", || {
        sink.ranges().0.last().is_some_and(|r| r.1 == 2)
    });
    let (ranges, continuous) = sink.ranges();
    assert!(continuous && ranges[0].0 == 1, "{ranges:?}");
    assert_eq!(sink.events(), 1);
    stop.store(true, Ordering::Relaxed);
    feed.join().unwrap();
}
