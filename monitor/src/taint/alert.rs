//! Where alerts and notices go: the audit log, the watchers, and the
//! freeze hook.
//!
//! * The **audit log** gets one JSON line per leak alert and per freeze
//!   outcome, appended, so that a leak is on record even when nobody was
//!   watching.
//! * **Watchers** (`monitor taint watch`, a packet filter) each get a
//!   bounded queue of notices. The engine never waits for a watcher: when a
//!   queue is full the notice is counted as missed for that watcher, which
//!   is told how many it missed ([`TaintNotice::Lagged`]) before its next
//!   notice.
//! * The **freezer** is an interface ([`Freezer`]), so that the engine and
//!   its tests run without a VM; the daemon's freezer parks the process
//!   through `freeze.rs`, off the caller's thread.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monitor_client::taint_report::TaintNotice;
use serde::Serialize;

use super::engine::FreezeOrder;
use super::TaintError;

/// Freezes a leaking process. Called after the engine's lock is released;
/// an implementation must not block its caller for long (the daemon's
/// queues the order to a thread of its own).
pub trait Freezer: Send + Sync {
    fn freeze(&self, order: FreezeOrder);
}

/// No freezing (no VM to freeze in, or `freeze_on_leak` off).
pub struct NoFreezer;

impl Freezer for NoFreezer {
    fn freeze(&self, order: FreezeOrder) {
        log::warn!(
            "no freezer: pid {} of {} keeps running",
            order.pid,
            order.vm.name
        );
    }
}

/// Notices one watcher may have waiting.
pub const WATCH_QUEUE: usize = 4096;

struct Watcher {
    tx: SyncSender<TaintNotice>,
    missed: Arc<AtomicU64>,
}

/// Everyone watching.
#[derive(Default)]
pub struct Watchers {
    list: Mutex<Vec<Watcher>>,
}

/// One watcher's end.
pub struct Subscription {
    rx: Receiver<TaintNotice>,
    missed: Arc<AtomicU64>,
}

impl Watchers {
    /// A new watcher, which sees notices published from now on.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = sync_channel(WATCH_QUEUE);
        let missed = Arc::new(AtomicU64::new(0));
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Watcher {
                tx,
                missed: missed.clone(),
            });
        Subscription { rx, missed }
    }

    /// Hands `notices` to every watcher, never waiting: a full queue counts
    /// as missed, a watcher that went away is dropped.
    pub fn publish(&self, notices: &[TaintNotice]) {
        if notices.is_empty() {
            return;
        }
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| {
            for n in notices {
                match w.tx.try_send(n.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        w.missed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            true
        });
    }

    /// How many watchers there are.
    pub fn len(&self) -> usize {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Subscription {
    /// The next notice, waiting at most `timeout`; `None` when nothing came
    /// (or the publisher is gone). Missed notices are reported first.
    pub fn next(&self, timeout: Duration) -> Option<TaintNotice> {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Some(TaintNotice::Lagged { missed });
        }
        self.rx.recv_timeout(timeout).ok()
    }
}

/// The alert log.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    notice: &'a TaintNotice,
}

impl AuditLog {
    /// Opens (creates, mode 0600) `path` for appending.
    pub fn open(path: &Path) -> Result<AuditLog, TaintError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| TaintError::AuditLog {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Appends one notice as a line, with the time.
    pub fn write(&self, notice: &TaintNotice) -> Result<(), TaintError> {
        let mut line = serde_json::to_vec(&Line {
            time: rfc3339(SystemTime::now()),
            notice,
        })
        .map_err(TaintError::Encode)?;
        line.push(b'\n');
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&line)
            .map_err(|source| TaintError::AuditLog {
                path: self.path.clone(),
                source,
            })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as fsd's audit log writes times.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_watcher_is_told_what_it_missed() {
        let w = Watchers::default();
        let sub = w.subscribe();
        let notices: Vec<TaintNotice> = (0..WATCH_QUEUE as u64 + 10)
            .map(|missed| TaintNotice::Lagged { missed })
            .collect();
        w.publish(&notices);
        assert_eq!(
            sub.next(Duration::ZERO),
            Some(TaintNotice::Lagged { missed: 10 })
        );
        assert_eq!(
            sub.next(Duration::ZERO),
            Some(TaintNotice::Lagged { missed: 0 })
        );
        drop(sub);
        w.publish(&notices[..1]);
        assert!(w.is_empty(), "a watcher that left is dropped");
    }

    #[test]
    fn alert_lines_carry_the_time() {
        let t = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&t.path().join("a.log")).unwrap();
        log.write(&TaintNotice::Freeze {
            vm: "u".into(),
            pid: 4,
            ok: true,
            message: "frozen".into(),
        })
        .unwrap();
        let text = std::fs::read_to_string(t.path().join("a.log")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "freeze");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
