//! Telling the monitor what to flush when a grant ends.
//!
//! When a grant ends, the guest may still hold protected content in its page
//! cache. fsd knows which protected inodes the guest read under the grant
//! and hands their host inode numbers to the monitor, which finds and
//! flushes the guest's cached pages (docs/monitor.md, `flush`). fsd never
//! waits for this on a request path: ends are queued (bounded; when the
//! queue is full the new request is dropped with an error in the log) and a
//! thread of its own talks to the monitor, one connection per flush, in the
//! protocol of the `monitor-client` crate. The monitor's report says how
//! many pages it could not drop; fsd warns when there are any.

use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{error, info, warn};
use monitor_client::report::FlushReport;
use monitor_client::{Client, ClientError};

use crate::broker::{Broker, Resource};

/// Flush requests waiting for the monitor at most.
pub const QUEUE: usize = 64;

/// Longest fsd waits for one flush: the monitor waits for the guest to
/// reach a safe point (up to 30 s per injected call) before it works.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

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

/// One flush on a fresh connection from `broker`.
fn flush_one(broker: &Broker, vm: &str, inos: &[u64]) -> Result<FlushReport, ClientError> {
    let stream = broker.open(Resource::Monitor).map_err(ClientError::Io)?;
    Client::from_stream(UnixStream::from(stream)).flush(vm, inos, FLUSH_TIMEOUT)
}

/// The report as one JSON object, for the log (tools and tests read it back
/// as a [`FlushReport`]).
fn as_json(report: &FlushReport) -> String {
    serde_json::to_string(report).unwrap_or_else(|e| format!("(report not encodable: {e})"))
}

fn run(broker: Arc<Broker>, rx: Receiver<(String, Vec<u64>)>) {
    for (vm, inos) in rx {
        match flush_one(&broker, &vm, &inos) {
            Ok(report) if report.pages_left() == 0 => info!(
                "monitor flushed {} inodes of {vm}: {}",
                inos.len(),
                as_json(&report)
            ),
            Ok(report) => warn!(
                "monitor flushed {vm} but {} pages of protected content stay in the guest \
                 (mapped or in use there): {}",
                report.pages_left(),
                as_json(&report)
            ),
            Err(e) if e.is_unreachable() => warn!("monitor unreachable, {vm} not flushed: {e}"),
            Err(e) => warn!("monitor could not flush {vm}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Paths;
    use monitor_client::protocol::{to_line, Op, Reply, ReplyBody, Request};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    fn broker(sock: PathBuf) -> Broker {
        Broker::Direct(Paths {
            monitor: Some(sock),
            ..Paths::default()
        })
    }

    /// Reads one request from `conn` and answers it with `report`.
    fn answer(conn: &UnixStream, report: FlushReport) -> Request {
        let mut line = Vec::new();
        BufReader::new(conn).read_until(b'\n', &mut line).unwrap();
        let req = Request::from_line(&line).unwrap();
        let reply = Reply::new(req.id, ReplyBody::Flushed { report });
        (&*conn).write_all(&to_line(&reply).unwrap()).unwrap();
        req
    }

    #[test]
    fn flush_requests_reach_the_monitor() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("monitor.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let link = MonitorLink::start(Arc::new(broker(sock))).unwrap();
        link.flush("vm1", vec![]); // nothing read: nothing sent
        link.flush("vm1", vec![11, 22]);
        let (conn, _) = listener.accept().unwrap();
        let req = answer(&conn, FlushReport::default());
        assert_eq!(
            req.op,
            Op::Flush {
                vm: "vm1".into(),
                inos: vec![11, 22]
            }
        );
    }

    #[test]
    fn the_monitors_report_comes_back_typed() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("monitor.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let monitor = thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            answer(
                &conn,
                FlushReport {
                    inodes: 1,
                    pages_before: 8,
                    still_cached: 3,
                    busy: 2,
                    zeroed_late: 1,
                    ..FlushReport::default()
                },
            );
        });
        let report = flush_one(&broker(sock.clone()), "vm1", &[7]).unwrap();
        assert_eq!(report.pages_left(), 4);
        monitor.join().unwrap();
        // With no monitor there, the flush fails as unreachable.
        std::fs::remove_file(&sock).unwrap();
        assert!(flush_one(&broker(sock), "vm1", &[7])
            .unwrap_err()
            .is_unreachable());
    }
}
