//! The plugin's side of its link to the monitor: a bounded ring that vCPU
//! callbacks push into without ever waiting, and a Unix socket on which the
//! plugin listens, sends events as JSON lines and takes requests (new hooks,
//! counters).
//!
//! Threads: one accepts connections (the newest client replaces an older
//! one), one reads the current client's requests, one drains the ring into
//! the socket. A callback only does `try_send` on a bounded channel whose
//! receiver polls (so no waker lock is taken either); when the ring is full
//! the event is dropped and counted, and so is every event that finds no
//! client connected or is lost with a broken connection. Sequence numbers
//! are given at the hit, so the monitor sees drops as gaps too.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::{HookTable, Offsets, Request};
use crate::event::Event;

/// Longest request line accepted from the monitor.
pub const MAX_LINE: usize = 1 << 20;
/// How long a write to a client may take before the client is dropped (the
/// ring keeps filling meanwhile; callbacks never wait for this).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the drain thread looks at the ring when it was empty.
const POLL: Duration = Duration::from_millis(2);
/// Events written per batch.
const BATCH: usize = 1024;

/// Counters, readable at any time (`{"op":"stats"}`, and at exit).
#[derive(Debug, Default)]
pub struct Stats {
    /// Hook hits (events made).
    pub hits: AtomicU64,
    /// Events written to a client.
    pub sent: AtomicU64,
    /// Events dropped because the ring was full.
    pub dropped_full: AtomicU64,
    /// Events dropped because no client was connected or the write failed.
    pub dropped_down: AtomicU64,
    /// Events in which some guest read failed.
    pub faulted: AtomicU64,
    /// The hook table generation in force (0: the command line's).
    pub armed_generation: AtomicU64,
    /// Host time spent inside hook callbacks, ns (summed over vCPUs).
    pub callback_ns: AtomicU64,
}

impl Stats {
    fn json(&self, reply: &str) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "reply": reply,
            "hits": g(&self.hits),
            "sent": g(&self.sent),
            "dropped_full": g(&self.dropped_full),
            "dropped_down": g(&self.dropped_down),
            "faulted": g(&self.faulted),
            "armed_generation": g(&self.armed_generation),
            "callback_ns": g(&self.callback_ns),
        })
    }

    /// One line for QEMU's log at exit.
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let hits = g(&self.hits);
        format!(
            "taint-plugin: hits={hits} sent={} dropped_full={} dropped_down={} faulted={} generation={} ns_per_hit={}\n",
            g(&self.sent),
            g(&self.dropped_full),
            g(&self.dropped_down),
            g(&self.faulted),
            g(&self.armed_generation),
            g(&self.callback_ns).checked_div(hits).unwrap_or(0)
        )
    }
}

/// What the plugin does with a new hook table (arm it at a safe moment).
pub type OnHooks = Box<dyn Fn(HookTable) + Send + Sync>;

struct Shared {
    stats: Stats,
    seq: AtomicU64,
    generation: AtomicU64,
    /// The client events go to (the writer half).
    client: Mutex<Option<UnixStream>>,
    /// Replies waiting for the drain thread (which alone writes).
    replies: Mutex<VecDeque<String>>,
    closing: AtomicBool,
    on_hooks: OnHooks,
    path: PathBuf,
}

/// The running link: the ring's sending end and the threads behind it.
pub struct Channel {
    tx: SyncSender<Event>,
    shared: Arc<Shared>,
    drain: Mutex<Option<JoinHandle<()>>>,
}

impl Channel {
    /// Listens on `path` (a stale socket file there is replaced) and starts
    /// the threads. `ring` is the ring's capacity in events.
    pub fn start(path: &Path, ring: usize, on_hooks: OnHooks) -> std::io::Result<Channel> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let (tx, rx) = sync_channel(ring);
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            seq: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            client: Mutex::new(None),
            replies: Mutex::new(VecDeque::new()),
            closing: AtomicBool::new(false),
            on_hooks,
            path: path.to_path_buf(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("taint-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        let s = shared.clone();
        let drain = std::thread::Builder::new()
            .name("taint-drain".into())
            .spawn(move || drain_loop(rx, s))?;
        Ok(Channel {
            tx,
            shared,
            drain: Mutex::new(Some(drain)),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The next sequence number (taken at the hit, before the event is made).
    pub fn next_seq(&self) -> u64 {
        self.shared.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.shared.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds the host time one callback took.
    pub fn callback_took(&self, ns: u64) {
        self.shared
            .stats
            .callback_ns
            .fetch_add(ns, Ordering::Relaxed);
    }

    /// Puts an event into the ring, or drops and counts it. Never waits.
    pub fn push(&self, ev: Event) {
        if ev.faults[0].is_some() {
            self.shared.stats.faulted.fetch_add(1, Ordering::Relaxed);
        }
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared
                    .stats
                    .dropped_full
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared
                    .stats
                    .dropped_down
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues a reply line (e.g. `armed`) for the client.
    pub fn reply(&self, v: serde_json::Value) {
        queue_reply(&self.shared, v);
    }

    /// Records that `generation` is now in force and tells the client.
    pub fn armed(&self, generation: u64, hooks: usize) {
        self.shared
            .stats
            .armed_generation
            .store(generation, Ordering::Relaxed);
        self.reply(json!({"reply": "armed", "generation": generation, "hooks": hooks}));
    }

    /// At QEMU's exit: sends what the ring still holds and a last `bye` line
    /// with the counters, waiting at most `limit`; removes the socket file.
    pub fn finish(&self, limit: Duration) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let handle = self.drain.lock().ok().and_then(|mut d| d.take());
        if let Some(h) = handle {
            let deadline = Instant::now() + limit;
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        let _ = std::fs::remove_file(&self.shared.path);
    }
}

fn queue_reply(s: &Shared, v: serde_json::Value) {
    if let Ok(mut q) = s.replies.lock() {
        // Replies are few; a client that never reads loses the oldest.
        if q.len() >= 1024 {
            q.pop_front();
        }
        q.push_back(v.to_string());
    }
}

fn accept_loop(listener: UnixListener, s: Arc<Shared>) {
    for conn in listener.incoming() {
        if s.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let Ok(reader) = conn.try_clone() else {
            continue;
        };
        let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
        if let Ok(mut c) = s.client.lock() {
            if let Some(old) = c.replace(conn) {
                let _ = old.shutdown(std::net::Shutdown::Both);
            }
        }
        let s2 = s.clone();
        let _ = std::thread::Builder::new()
            .name("taint-requests".into())
            .spawn(move || request_loop(reader, s2));
    }
}

fn request_loop(stream: UnixStream, s: Arc<Shared>) {
    let mut r = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match r
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => {
                queue_reply(
                    &s,
                    json!({"reply": "error", "message": "request line too long"}),
                );
                return;
            }
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(text.trim()) {
            Ok(Request::Stats {}) => s.stats.json("stats"),
            Ok(Request::Hooks { hooks, offsets }) => {
                let generation = s.generation.fetch_add(1, Ordering::SeqCst) + 1;
                match Offsets::from_map(&offsets)
                    .and_then(|o| HookTable::new(generation, &hooks, o))
                {
                    Ok(table) => {
                        let n = table.hooks.len();
                        // `accepted` now; `armed` follows once the table is
                        // in force (the drain thread writes both, in order).
                        queue_reply(
                            &s,
                            json!({"reply": "accepted", "generation": generation, "hooks": n}),
                        );
                        (s.on_hooks)(table);
                        continue;
                    }
                    Err(e) => json!({"reply": "error", "message": e.to_string()}),
                }
            }
            Err(e) => json!({"reply": "error", "message": format!("bad request: {e}")}),
        };
        queue_reply(&s, reply);
    }
}

fn drain_loop(rx: Receiver<Event>, s: Arc<Shared>) {
    let mut out: Vec<u8> = Vec::with_capacity(256 * 1024);
    loop {
        let closing = s.closing.load(Ordering::SeqCst);
        out.clear();
        if let Ok(mut q) = s.replies.lock() {
            for r in q.drain(..) {
                out.extend_from_slice(r.as_bytes());
                out.push(b'\n');
            }
        }
        let mut n = 0u64;
        let mut empty = false;
        while n < BATCH as u64 {
            match rx.try_recv() {
                Ok(ev) => {
                    ev.write_line(&mut out);
                    n += 1;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {
                    empty = true;
                    break;
                }
            }
        }
        if closing && empty {
            out.extend_from_slice(s.stats.json("bye").to_string().as_bytes());
            out.push(b'\n');
        }
        if !out.is_empty() {
            send(&s, &out, n);
        }
        if closing && empty {
            if let Ok(mut c) = s.client.lock() {
                if let Some(c) = c.take() {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
            return;
        }
        if empty {
            std::thread::sleep(POLL);
        }
    }
}

/// Writes a batch holding `events` events to the client, counting them as
/// sent or (no client, write failed) dropped.
fn send(s: &Shared, bytes: &[u8], events: u64) {
    let mut guard = match s.client.lock() {
        Ok(g) => g,
        Err(_) => return,
    };
    let ok = match guard.as_mut() {
        Some(c) => c.write_all(bytes).is_ok(),
        None => false,
    };
    if ok {
        s.stats.sent.fetch_add(events, Ordering::Relaxed);
    } else {
        s.stats.dropped_down.fetch_add(events, Ordering::Relaxed);
        if let Some(c) = guard.take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Hook, Kind};
    use crate::event::{Detail, Task, MAX_FAULTS};
    use std::io::BufRead;

    fn event(seq: u64) -> Event {
        static HOOK: std::sync::OnceLock<Hook> = std::sync::OnceLock::new();
        let h = HOOK.get_or_init(|| Hook {
            name: "do_exit".into(),
            addr: 1,
            kind: Kind::Exit,
        });
        Event {
            seq,
            ns: 0,
            vcpu: 0,
            generation: 0,
            kind: Kind::Exit,
            function: &h.name,
            task: Task::default(),
            detail: Detail::Exit { code: 0 },
            faults: [None; MAX_FAULTS],
        }
    }

    fn lines(c: &UnixStream) -> impl Iterator<Item = serde_json::Value> + '_ {
        BufReader::new(c)
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
    }

    #[test]
    fn events_without_client_are_dropped_and_counted_then_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let ch = Channel::start(&path, 16, Box::new(|_| {})).unwrap();
        ch.push(event(1));
        // No client: the drain thread drops it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ch.stats().dropped_down.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        let c = UnixStream::connect(&path).unwrap();
        // Wait until the accept thread has taken the client.
        c.try_clone()
            .unwrap()
            .write_all(b"{\"op\":\"stats\"}\n")
            .unwrap();
        let mut it = lines(&c);
        let stats = it.next().unwrap();
        assert_eq!(stats["reply"], "stats");
        assert_eq!(stats["dropped_down"], 1);
        ch.push(event(2));
        let ev = it.next().unwrap();
        assert_eq!(
            (ev["ev"].as_str(), ev["seq"].as_u64()),
            (Some("exit"), Some(2))
        );
        drop(it);
        ch.finish(Duration::from_secs(5));
        let bye = lines(&c).next().unwrap();
        assert_eq!(bye["reply"], "bye");
        assert_eq!(bye["sent"], 1);
        assert!(!path.exists());
    }

    #[test]
    fn a_full_ring_drops_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let ch = Channel::start(&dir.path().join("t.sock"), 16, Box::new(|_| {})).unwrap();
        // The drain thread may take some meanwhile, but never fast enough
        // for all of these to fit.
        let t = Instant::now();
        for i in 0..100_000 {
            ch.push(event(i));
        }
        assert!(ch.stats().dropped_full.load(Ordering::Relaxed) > 0);
        println!("100000 pushes into a ring of 16: {:?}", t.elapsed());
        ch.finish(Duration::from_secs(5));
    }

    #[test]
    fn hook_requests_are_accepted_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let got: Arc<Mutex<Vec<HookTable>>> = Arc::default();
        let g2 = got.clone();
        let ch = Channel::start(&path, 16, Box::new(move |t| g2.lock().unwrap().push(t))).unwrap();
        let c = UnixStream::connect(&path).unwrap();
        let mut w = c.try_clone().unwrap();
        w.write_all(b"{\"op\":\"hooks\",\"hooks\":{\"do_exit\":4096},\"offsets\":{\"task_struct.pid\":8}}\n")
            .unwrap();
        w.write_all(b"{\"op\":\"hooks\",\"hooks\":{\"do_exit\":0}}\n")
            .unwrap();
        w.write_all(b"not json\n").unwrap();
        let mut it = lines(&c);
        let a = it.next().unwrap();
        assert_eq!(
            (a["reply"].as_str(), a["generation"].as_u64()),
            (Some("accepted"), Some(1))
        );
        let b = it.next().unwrap();
        assert_eq!(b["reply"], "error", "{b}");
        let e = it.next().unwrap();
        assert_eq!(e["reply"], "error");
        let t = got.lock().unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].generation, 1);
        assert_eq!(t[0].offsets.task_pid, Some(8));
        drop(it);
        ch.finish(Duration::from_secs(5));
    }
}
