//! Telling the monitor what to flush when a grant ends.
//!
//! When a grant ends, the guest may still hold protected content in its page
//! cache. fsd knows which protected inodes the guest read under the grant
//! and hands their host inode numbers to the monitor, which finds and
//! flushes the guest's cached pages (docs/monitor.md, `flush`). fsd never
//! waits for this on a request path: ends are queued (bounded; a full queue
//! drops the oldest intent with an error in the log) and a thread of its own
//! talks to the monitor, one JSON line per request and per reply:
//!
//! ```text
//! -> {"op":"flush","vm":"vm1","inos":[1234,5678]}
//! <- {"ok":true,...}
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{error, info, warn};
use serde::Serialize;

use crate::broker::{Broker, Resource};

/// Flush requests waiting for the monitor at most.
pub const QUEUE: usize = 64;

#[derive(Debug, Serialize)]
struct Flush<'a> {
    op: &'static str,
    vm: &'a str,
    inos: &'a [u64],
}

/// The sending side, cheap to clone into callbacks.
#[derive(Clone)]
pub struct MonitorLink {
    tx: SyncSender<(String, Vec<u64>)>,
}

impl MonitorLink {
    /// Starts the thread that talks to the monitor through `broker`.
    pub fn start(broker: Arc<Broker>) -> std::io::Result<MonitorLink> {
        let (tx, rx) = sync_channel(QUEUE);
        thread::Builder::new()
            .name("fsd-monitor".into())
            .spawn(move || run(broker, rx))?;
        Ok(MonitorLink { tx })
    }

    /// Queues a flush of `inos` (host inode numbers) in `vm`.
    pub fn flush(&self, vm: &str, inos: Vec<u64>) {
        if inos.is_empty() {
            return;
        }
        match self.tx.try_send((vm.to_owned(), inos)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                error!("monitor queue full: a flush request was dropped")
            }
            Err(TrySendError::Disconnected(_)) => error!("monitor link is gone"),
        }
    }
}

fn send_one(broker: &Broker, vm: &str, inos: &[u64]) -> std::io::Result<String> {
    let stream = UnixStream::from(broker.open(Resource::Monitor)?);
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(&Flush {
        op: "flush",
        vm,
        inos,
    })
    .map_err(std::io::Error::other)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    Ok(reply.trim().to_owned())
}

/// Pages the monitor found but could not drop (mapped, dirty, locked or
/// under writeback in the guest), as its `flush` reply counts them.
fn left_behind(reply: &serde_json::Value) -> u64 {
    let n = |k: &str| {
        reply
            .get("flush")
            .and_then(|f| f.get(k))
            .or_else(|| reply.get(k))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    n("still_cached").max(n("busy"))
}

fn run(broker: Arc<Broker>, rx: Receiver<(String, Vec<u64>)>) {
    for (vm, inos) in rx {
        match send_one(&broker, &vm, &inos) {
            Ok(reply) => match serde_json::from_str::<serde_json::Value>(&reply) {
                Ok(v) if v["ok"] == true && left_behind(&v) == 0 => {
                    info!("monitor flushed {} inodes of {vm}: {reply}", inos.len())
                }
                Ok(v) if v["ok"] == true => warn!(
                    "monitor flushed {vm} but {} pages of protected content stay in the guest \
                     (mapped or in use there): {reply}",
                    left_behind(&v)
                ),
                _ => warn!("monitor could not flush {vm}: {reply}"),
            },
            Err(e) => warn!("monitor unreachable, {vm} not flushed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Paths;
    use std::os::unix::net::UnixListener;

    #[test]
    fn flush_requests_reach_the_monitor() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("monitor.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let broker = Arc::new(Broker::Direct(Paths {
            monitor: Some(sock),
            ..Paths::default()
        }));
        let link = MonitorLink::start(broker).unwrap();
        link.flush("vm1", vec![]); // nothing read: nothing sent
        link.flush("vm1", vec![11, 22]);
        let (conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "flush", "vm": "vm1", "inos": [11, 22]})
        );
        (&conn).write_all(b"{\"ok\":true}\n").unwrap();
    }

    #[test]
    fn pages_left_in_the_guest_are_counted() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            left_behind(&v(r#"{"ok":true,"flush":{"still_cached":0,"busy":0}}"#)),
            0
        );
        assert_eq!(
            left_behind(&v(r#"{"ok":true,"flush":{"still_cached":3,"busy":1}}"#)),
            3
        );
        assert_eq!(left_behind(&v(r#"{"ok":true,"busy":2}"#)), 2);
    }
}
