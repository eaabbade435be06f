//! The control socket: `netfilter status` reads the connection table and
//! the counters as JSON, and the two measured optimisations (batching, the
//! connection table) can be switched at run time, so a benchmark compares
//! them on one running guest. One JSON request per line, one reply line.
//!
//! ```text
//! -> {"op":"status"}
//! <- {"vm":"web","switches":{...},"counters":{...},"table":{...},"flows":[...]}
//! -> {"op":"set","batching":false}
//! <- {"ok":true}
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use monitor_client::taint::{SocketOwner, Transport};
use serde::{Deserialize, Serialize};

use crate::conntrack::{FlowState, TableCounters, Verdict};
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::stats::{CounterValues, Latency};

/// Flows listed in a status reply at most (the most recently used).
pub const STATUS_FLOWS: usize = 256;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Set {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batching: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conntrack: Option<bool>,
        /// Forget the latency samples (between benchmark runs).
        #[serde(default)]
        reset_latencies: bool,
    },
}

/// The switches as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchValues {
    pub batching: bool,
    pub conntrack: bool,
}

/// The table's size and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatus {
    pub flows: usize,
    pub capacity: usize,
    pub embryonic: usize,
    pub established: usize,
    pub closing: usize,
    pub inserted: u64,
    pub evicted_embryonic: u64,
    pub evicted_settled: u64,
    pub expired: u64,
    pub reset: u64,
}

/// One flow in a status reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    pub transport: Transport,
    pub guest: SocketAddr,
    pub peer: SocketAddr,
    pub verdict: Verdict,
    pub state: FlowState,
    pub reason: String,
    pub owner: Option<SocketOwner>,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// Everything `netfilter status --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub vm: String,
    pub policy: String,
    pub switches: SwitchValues,
    pub counters: CounterValues,
    pub decision_latency: Latency,
    pub table: TableStatus,
    pub flows: Vec<FlowStatus>,
}

/// The status of a running filter.
pub fn status(shared: &Shared) -> Status {
    let table = shared.table();
    let (embryonic, established, closing) = table.by_state();
    let TableCounters {
        inserted,
        evicted_embryonic,
        evicted_settled,
        expired,
        reset,
    } = table.counters;
    let flows = table
        .snapshot(STATUS_FLOWS)
        .into_iter()
        .map(|(k, e)| FlowStatus {
            transport: k.transport,
            guest: k.guest,
            peer: k.peer,
            verdict: e.verdict,
            state: e.state,
            reason: e.reason,
            owner: e.owner,
            packets_out: e.packets_out,
            packets_in: e.packets_in,
            bytes_out: e.bytes_out,
            bytes_in: e.bytes_in,
        })
        .collect();
    Status {
        vm: shared.policy.vm.clone(),
        policy: shared.policy.source.display().to_string(),
        switches: SwitchValues {
            batching: shared.switches.batching(),
            conntrack: shared.switches.conntrack(),
        },
        counters: shared.stats.c.values(),
        decision_latency: shared.stats.latencies(),
        table: TableStatus {
            flows: table.len(),
            capacity: table.limits().max_flows,
            embryonic,
            established,
            closing,
            inserted,
            evicted_embryonic,
            evicted_settled,
            expired,
            reset,
        },
        flows,
    }
}

/// Answers one request.
fn answer(shared: &Shared, line: &str) -> serde_json::Value {
    match serde_json::from_str::<Request>(line) {
        Ok(Request::Status) => serde_json::to_value(status(shared)).expect("status serialises"),
        Ok(Request::Set {
            batching,
            conntrack,
            reset_latencies,
        }) => {
            if let Some(b) = batching {
                shared.switches.batching.store(b, Ordering::Relaxed);
            }
            if let Some(c) = conntrack {
                shared.switches.conntrack.store(c, Ordering::Relaxed);
                if !c {
                    shared.table().clear();
                }
            }
            if reset_latencies {
                shared.stats.reset_latencies();
            }
            serde_json::json!({"ok": true})
        }
        Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
    }
}

/// Serves the control socket, one thread per connection.
pub fn serve(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("netfilter-ctl".into())
            .spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    if line.len() > 64 * 1024 {
                        return;
                    }
                    let mut reply =
                        serde_json::to_vec(&answer(&shared, line.trim())).expect("json");
                    reply.push(b'\n');
                    if (&stream).write_all(&reply).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        if let Err(e) = spawned {
            log::error!("control connection: cannot start a thread: {e}");
        }
    }
}

/// Sends one request to a running filter and returns its reply.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| Error::io(format!("connect to {}", socket.display()), e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Error::io("set timeout", e))?;
    let mut line = serde_json::to_vec(req).map_err(Error::Control)?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| Error::io("send control request", e))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| Error::io("read control reply", e))?;
    serde_json::from_str(&reply).map_err(Error::Control)
}
