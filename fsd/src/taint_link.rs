//! File events for the monitor's taint tracking, off the request path.
//!
//! fsd sees which guest process (by the FUSE header's pid, a hint) opens,
//! reads and writes which host file, and which files are confidential under
//! its policy. The monitor needs exactly that to follow confidential data
//! (docs/taint.md). A FUSE request must never wait for it, nor fail because
//! of it, so:
//!
//! * a request hands a small fixed-size event ([`TapEvent`], no allocation)
//!   to a bounded queue with `try_send`; a full queue drops the event and
//!   counts it;
//! * a thread of its own drains the queue in batches (up to [`BATCH`]
//!   events, or what came within [`LINGER`]), drops duplicates within a
//!   batch, adds the path of each source and each written file and the rule
//!   of each source, and sends the batch to the monitor on one connection;
//! * when the monitor is unreachable the batch is dropped and counted, and
//!   connecting is retried with a growing pause (up to [`MAX_BACKOFF`]);
//!   events keep being drained and counted meanwhile, so the queue never
//!   stays full;
//! * every batch carries the count of events dropped since fsd started, so
//!   the monitor can say that its tracking of this VM is incomplete.
//!
//! The monitor's answer lists files the batch made *derived* from a rule
//! (written by a tainted process). fsd labels those whose rule inherits,
//! through [`FsView`], as it does for what it sees itself
//! ([`crate::policy::inherit`]).

use std::collections::HashSet;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use monitor_client::taint::{FileAccess, FileEvent};
use monitor_client::taint_report::DerivedFile;
use monitor_client::{Client, ClientError};

use crate::broker::{Broker, Resource};
use crate::policy::labels::InodeKey;

/// Events waiting for the sender thread at most.
pub const QUEUE: usize = 8192;
/// Events per batch at most.
pub const BATCH: usize = 512;
/// How long a batch waits to fill up.
pub const LINGER: Duration = Duration::from_millis(50);
/// Longest pause between attempts to reach the monitor.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one batch may take to be answered.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often drops are reported when no event comes at all.
const IDLE_REPORT: Duration = Duration::from_secs(5);
/// Inodes whose path was sent already, remembered at most.
const NAMED: usize = 65536;

/// "No rule" in a [`TapEvent`].
pub const NO_RULE: u32 = u32::MAX;

/// One file access as a request hands it over: plain data, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapEvent {
    /// From the FUSE header (guest-written).
    pub pid: u32,
    /// fsd's node id, to find the file again for its path or a label.
    pub node: u64,
    pub key: InodeKey,
    pub access: FileAccess,
    /// Index of the rule labelling the file, or [`NO_RULE`].
    pub rule: u32,
}

/// What the sender thread needs from the file system: names and labels.
pub trait FsView: Send + Sync {
    /// The current path of `node` relative to the share, if it still names
    /// the inode `key`.
    fn path(&self, node: u64, key: InodeKey) -> Option<String>;
    /// The pattern of `rule` if its files are taint sources.
    fn source_rule(&self, rule: u32) -> Option<String>;
    /// The monitor found `node` (inode `key`) derived from the rule with
    /// this pattern: label it if the rule inherits and it has no label.
    fn derived(&self, node: u64, key: InodeKey, rule: &str);
}

/// The requests' end: cheap to clone, never blocks.
#[derive(Clone)]
pub struct TaintTap {
    tx: SyncSender<TapEvent>,
    dropped: Arc<AtomicU64>,
}

impl TaintTap {
    /// Hands one event over, or counts it as dropped.
    #[inline]
    pub fn record(&self, ev: TapEvent) {
        if self.tx.try_send(ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped since start (queue full, monitor unreachable).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Where the file system's view is given to the sender once it exists (it
/// is set before the first request is served; events sent without it would
/// lack paths and rules).
pub type ViewCell = Arc<OnceLock<Arc<dyn FsView>>>;

/// Where the sender sends: a new connection each time one is needed.
pub type Connector = Box<dyn Fn() -> std::io::Result<UnixStream> + Send>;

/// Starts the sender thread for VM `vm` (as the monitor's configuration
/// names it); the file system gives its view through the returned cell.
pub fn start(vm: String, connect: Connector) -> std::io::Result<(TaintTap, ViewCell)> {
    let (tx, rx) = sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let view = Arc::new(OnceLock::new());
    let sender = Sender {
        vm,
        connect,
        rx,
        dropped: dropped.clone(),
        view: view.clone(),
        client: None,
        retry_at: None,
        backoff: Duration::from_secs(1),
        named: HashSet::new(),
        reported: 0,
    };
    thread::Builder::new()
        .name("fsd-taint".into())
        .spawn(move || sender.run())?;
    Ok((TaintTap { tx, dropped }, view))
}

/// A connector through the broker (which opens the monitor's socket for a
/// sandboxed fsd).
pub fn via_broker(broker: Arc<Broker>) -> Connector {
    Box::new(move || broker.open(Resource::Monitor).map(UnixStream::from))
}

struct Sender {
    vm: String,
    connect: Connector,
    rx: Receiver<TapEvent>,
    dropped: Arc<AtomicU64>,
    view: ViewCell,
    client: Option<Client>,
    /// While the monitor is unreachable: when to try again.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Inodes whose path the monitor has.
    named: HashSet<InodeKey>,
    /// The drop count the monitor last heard.
    reported: u64,
}

impl Sender {
    fn run(mut self) {
        let mut batch: Vec<TapEvent> = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            match self.rx.recv_timeout(IDLE_REPORT) {
                Ok(ev) => batch.push(ev),
                Err(RecvTimeoutError::Timeout) => {
                    // Nothing to send; the monitor still hears of drops.
                    if self.dropped.load(Ordering::Relaxed) != self.reported {
                        self.send(&batch);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let deadline = Instant::now() + LINGER;
            while batch.len() < BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            self.send(&batch);
        }
    }

    /// The batch as the monitor reads it: duplicates dropped, paths and
    /// rules added where they matter.
    fn events(&mut self, batch: &[TapEvent]) -> Vec<FileEvent> {
        let view = self.view.get().cloned();
        let mut seen = HashSet::with_capacity(batch.len());
        let mut out = Vec::with_capacity(batch.len());
        for ev in batch {
            if !seen.insert((ev.pid, ev.key, ev.access)) {
                continue;
            }
            let rule = match (&view, ev.rule) {
                (Some(v), r) if r != NO_RULE => v.source_rule(r),
                _ => None,
            };
            // Paths for the files that can end up in the monitor's tables.
            let wanted = rule.is_some() || ev.access == FileAccess::Write;
            let path = match &view {
                Some(v) if wanted && !self.named.contains(&ev.key) => {
                    let p = v.path(ev.node, ev.key);
                    if p.is_some() {
                        if self.named.len() >= NAMED {
                            self.named.clear();
                        }
                        self.named.insert(ev.key);
                    }
                    p
                }
                _ => None,
            };
            out.push(FileEvent {
                pid: ev.pid,
                dev: ev.key.0,
                ino: ev.key.1,
                access: ev.access,
                path,
                rule,
            });
        }
        out
    }

    fn send(&mut self, batch: &[TapEvent]) {
        let n = batch.len() as u64;
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let events = self.events(batch);
        let dropped = self.dropped.load(Ordering::Relaxed);
        match self.call(events, dropped) {
            Ok(derived) => {
                if self.retry_at.take().is_some() {
                    info!("the monitor takes taint events again");
                }
                self.backoff = Duration::from_secs(1);
                self.reported = dropped;
                self.label(batch, &derived);
            }
            Err(e) => {
                self.client = None;
                self.dropped.fetch_add(n, Ordering::Relaxed);
                if self.retry_at.is_none() {
                    let why = if e.is_unreachable() {
                        "monitor unreachable"
                    } else {
                        "monitor refused them"
                    };
                    warn!(
                        "{why}: taint events of {} are dropped (and counted) until it takes \
                         them again: {e}",
                        self.vm
                    );
                }
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn call(
        &mut self,
        events: Vec<FileEvent>,
        dropped: u64,
    ) -> Result<Vec<DerivedFile>, ClientError> {
        if self.client.is_none() {
            let stream = (self.connect)().map_err(ClientError::Io)?;
            self.client = Some(Client::from_stream(stream));
        }
        let client = self.client.as_mut().expect("connected above");
        let (_, derived) = client.file_events(&self.vm, events, dropped, SEND_TIMEOUT)?;
        Ok(derived)
    }

    /// Labels the files the monitor found derived (it names them by inode;
    /// the batch gives their node).
    fn label(&self, batch: &[TapEvent], derived: &[DerivedFile]) {
        let Some(view) = self.view.get() else {
            return;
        };
        for d in derived {
            let key = (d.dev, d.ino);
            if let Some(ev) = batch.iter().find(|e| e.key == key) {
                view.derived(ev.node, key, &d.rule);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_client::protocol::{to_line, Op, Reply, ReplyBody, Request};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::Mutex;

    #[derive(Default)]
    struct View {
        labelled: Mutex<Vec<(u64, InodeKey, String)>>,
    }

    impl FsView for View {
        fn path(&self, node: u64, _: InodeKey) -> Option<String> {
            Some(format!("node{node}"))
        }
        fn source_rule(&self, rule: u32) -> Option<String> {
            (rule == 0).then(|| "secret/**".into())
        }
        fn derived(&self, node: u64, key: InodeKey, rule: &str) {
            self.labelled.lock().unwrap().push((node, key, rule.into()));
        }
    }

    fn ev(pid: u32, node: u64, access: FileAccess, rule: u32) -> TapEvent {
        TapEvent {
            pid,
            node,
            key: (9, node + 1000),
            access,
            rule,
        }
    }

    /// Reads one request and answers `accepted`, with every written file
    /// derived.
    fn answer(reader: &mut BufReader<UnixStream>) -> Option<(String, Vec<FileEvent>, u64)> {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let req = Request::from_line(&line).unwrap();
        let Op::FileEvents {
            vm,
            events,
            dropped,
        } = req.op
        else {
            panic!("{:?}", req.op)
        };
        let derived = events
            .iter()
            .filter(|e| e.access == FileAccess::Write)
            .map(|e| DerivedFile {
                dev: e.dev,
                ino: e.ino,
                rule: "secret/**".into(),
                path: e.path.clone(),
                seq: 1,
            })
            .collect();
        let reply = Reply::new(
            req.id,
            ReplyBody::Accepted {
                count: events.len() as u64,
                derived,
            },
        );
        reader
            .get_ref()
            .write_all(&to_line(&reply).unwrap())
            .unwrap();
        Some((vm, events, dropped))
    }

    #[test]
    fn batches_reach_the_monitor_with_paths_rules_and_labels() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("m.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let s = sock.clone();
        let (tap, cell) = start("vm1".into(), Box::new(move || UnixStream::connect(&s))).unwrap();
        let view = Arc::new(View::default());
        let _ = cell.set(view.clone());
        tap.record(ev(7, 1, FileAccess::Open, 0));
        tap.record(ev(7, 1, FileAccess::Open, 0));
        tap.record(ev(7, 1, FileAccess::Read, 0));
        tap.record(ev(7, 2, FileAccess::Write, NO_RULE));
        tap.record(ev(8, 3, FileAccess::Read, NO_RULE));
        let (conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn);
        let mut got = Vec::new();
        while got.len() < 4 {
            let (vm, events, dropped) = answer(&mut r).unwrap();
            assert_eq!((vm.as_str(), dropped), ("vm1", 0));
            got.extend(events);
        }
        assert_eq!(got.len(), 4, "the duplicate open is dropped: {got:?}");
        assert_eq!(got[0].rule.as_deref(), Some("secret/**"));
        assert_eq!(got[0].path.as_deref(), Some("node1"));
        assert_eq!(got[1].path, None, "named once");
        assert_eq!(
            got[2].path.as_deref(),
            Some("node2"),
            "a written file is named"
        );
        assert_eq!((got[3].path.as_ref(), got[3].rule.as_ref()), (None, None));
        // The derived file was labelled through the view.
        for _ in 0..100 {
            if !view.labelled.lock().unwrap().is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            *view.labelled.lock().unwrap(),
            vec![(2, (9, 1002), "secret/**".to_string())]
        );
        assert_eq!(tap.dropped(), 0);
    }

    #[test]
    fn a_full_queue_or_an_absent_monitor_drops_and_counts_never_blocks() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("m.sock");
        let s = sock.clone();
        let (tap, _cell) = start("vm1".into(), Box::new(move || UnixStream::connect(&s))).unwrap();
        // No monitor: far more events than the queue holds, all at once.
        let start = Instant::now();
        for i in 0..(QUEUE as u64 * 4) {
            tap.record(ev(1, i, FileAccess::Read, NO_RULE));
        }
        let took = start.elapsed();
        println!(
            "{} events handed over in {took:?} with no monitor",
            QUEUE * 4
        );
        // Every event is either dropped at once or counted when its batch
        // fails: in the end all are counted.
        for _ in 0..500 {
            if tap.dropped() == QUEUE as u64 * 4 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tap.dropped(), QUEUE as u64 * 4);
        // The monitor comes up: after the back-off, the count reaches it
        // even with no new event... or with the next one.
        let listener = UnixListener::bind(&sock).unwrap();
        thread::sleep(Duration::from_millis(1100));
        tap.record(ev(1, 1, FileAccess::Read, NO_RULE));
        let (conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn);
        let (_, _, dropped) = answer(&mut r).unwrap();
        assert!(dropped >= QUEUE as u64 * 4, "{dropped}");
    }

    /// What handing one event over costs a request, with a monitor that
    /// answers every batch and with none (every event dropped). Prints,
    /// asserts nothing:
    /// `cargo test -p fsd --release --lib record_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn record_cost() {
        const N: u64 = 2_000_000;
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("m.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let monitor = thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(conn);
            let mut n = 0u64;
            while let Some((_, events, _)) = answer(&mut r) {
                n += events.len() as u64;
            }
            n
        });
        let s = sock.clone();
        let (tap, _cell) = start("vm1".into(), Box::new(move || UnixStream::connect(&s))).unwrap();
        let t0 = Instant::now();
        for i in 0..N {
            tap.record(ev(1 + (i % 64) as u32, i % 4096, FileAccess::Read, NO_RULE));
        }
        let per = t0.elapsed().as_nanos() as f64 / N as f64;
        thread::sleep(Duration::from_millis(500));
        println!(
            "with a monitor: {per:.0} ns per event handed over; {} of {N} dropped at the queue",
            tap.dropped()
        );
        drop(tap);
        drop(_cell);
        let got = monitor.join().unwrap();
        println!("the monitor received {got} events (duplicates within a batch merged)");
        let s = t.path().join("none.sock");
        let (tap, _cell) = start("vm1".into(), Box::new(move || UnixStream::connect(&s))).unwrap();
        let t0 = Instant::now();
        for i in 0..N {
            tap.record(ev(1, i % 4096, FileAccess::Read, NO_RULE));
        }
        let per = t0.elapsed().as_nanos() as f64 / N as f64;
        println!("without a monitor: {per:.0} ns per event handed over (all counted as dropped)");
    }
}
