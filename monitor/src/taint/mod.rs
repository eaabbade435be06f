//! Taint tracking: following confidential data across files, processes and
//! sockets in several VMs, from outside the guests (docs/taint.md).
//!
//! fsd reports which files a guest process opens, reads and writes, and
//! which of them are confidential under its policy; hooks in the guest
//! kernel report forks, exits, execs and socket traffic. From these the
//! engine keeps, per VM (keyed by SMBIOS UUID), tables of tainted files,
//! processes, UNIX sockets and INET flows, each entry with the event that
//! tainted it, and raises an alert when a tainted process sends to a
//! destination outside the host's VMs.
//!
//! | concern | module |
//! |---|---|
//! | bounded tables: capacity, eviction order | [`tables`] |
//! | the propagation rules, applied to batches of events | [`engine`] |
//! | the same event by event: what taints what | [`rules`] (private) |
//! | state that survives a restart: snapshot and journal | [`journal`] |
//! | what the journal cannot tell about itself: clean stop, boot, VMs kept | [`manifest`] |
//! | what a restart may have missed, and what shows it missed nothing | [`restart`] |
//! | leak alerts: audit log, watchers, the freeze hook | [`alert`] |
//! | the graph in Graphviz's DOT language, SVG through `dot` | [`graph`] |
//! | all of it together, as the daemon serves it | [`service`] |

pub mod alert;
pub mod engine;
pub mod graph;
pub mod journal;
pub mod manifest;
pub mod restart;
mod rules;
pub mod service;
pub mod tables;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use engine::{Effects, Engine, EngineConfig, FreezeOrder, Input, Record, VmId};
pub use service::TaintService;

/// How much taint state the monitor keeps. A guest decides how many
/// processes, files and sockets it makes; these bound what that costs the
/// host (docs/taint.md, "Bounds").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// VMs with taint state; events of one more VM are refused.
    pub vms: usize,
    /// Tainted files per VM.
    pub files: usize,
    /// Tainted processes per VM.
    pub processes: usize,
    /// Processes in a VM's process view (pid -> task, start time).
    pub known_processes: usize,
    /// Tainted UNIX sockets per VM, tainted INET flows per VM, and tainted
    /// flows between VMs host-wide (each).
    pub sockets: usize,
    /// Derived files remembered per VM (for fsd catching up).
    pub derived: usize,
    /// (process, destination) pairs already alerted, per VM.
    pub alerts: usize,
    /// Longest chain shown in an alert.
    pub chain: usize,
}

impl Default for Limits {
    /// At most about 31 MiB per VM ([`Limits::max_bytes_per_vm`]).
    fn default() -> Self {
        Limits {
            vms: 32,
            files: 8192,
            processes: 8192,
            known_processes: 16384,
            sockets: 4096,
            derived: 2048,
            alerts: 1024,
            chain: 64,
        }
    }
}

impl Limits {
    /// The most one VM's tables take with every table full (names at their
    /// longest), by the engine's per-entry figures.
    pub fn max_bytes_per_vm(&self) -> u64 {
        use engine::{DERIVED_BYTES, ENTRY_BYTES, SMALL_BYTES};
        let entries = (self.files + self.processes + 2 * self.sockets) as u64;
        let small = (self.known_processes + self.alerts) as u64;
        let derived = self.derived as u64 * (DERIVED_BYTES + engine::MAX_NAME as u64 + 3);
        entries * ENTRY_BYTES + small * SMALL_BYTES + derived
    }

    /// The most taint tracking takes: every VM at its bound, and the
    /// host-wide index of flows between VMs full.
    pub fn max_bytes(&self) -> u64 {
        self.vms as u64 * self.max_bytes_per_vm() + self.sockets as u64 * engine::ENTRY_BYTES
    }
}

/// The `taint` section of the monitor's configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaintConfig {
    /// Where the state is kept across restarts (snapshot and journal);
    /// none: in memory only.
    pub state_dir: Option<PathBuf>,
    /// When journal lines reach the disk.
    pub journal_sync: JournalSync,
    /// Leak alerts and freeze outcomes, one JSON line each.
    pub audit_log: Option<PathBuf>,
    /// Freeze a process that leaks (it stays parked until `monitor thaw`).
    pub freeze_on_leak: bool,
    pub limits: Limits,
}

/// When journal lines reach the disk (docs/taint.md, "Persistence"). A
/// monitor that crashes loses nothing either way: what it wrote is in the
/// kernel's page cache. The choice matters when the host goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalSync {
    /// Within about a second, synced by a thread of their own: a batch
    /// costs no disk flush; a host crash can lose the last second's
    /// batches, and the restart after it marks every VM as incomplete.
    #[default]
    Interval,
    /// Before each batch is answered: a host crash loses nothing that was
    /// answered; each batch waits for a disk flush.
    Batch,
}

/// What can go wrong in taint tracking.
#[derive(Debug, thiserror::Error)]
pub enum TaintError {
    /// Events of one VM more than [`Limits::vms`] allows.
    #[error("taint state is kept for at most {0} VMs")]
    TooManyVms(usize),
    /// The state directory, snapshot or journal could not be used.
    #[error("taint state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The snapshot is not JSON of the expected shape.
    #[error("taint snapshot {path}: {source}")]
    SnapshotFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The manifest is not JSON of the expected shape.
    #[error("taint manifest {path}: {source}")]
    ManifestFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The thread that syncs the journal could not be started.
    #[error("starting the thread that syncs the taint journal: {0}")]
    SyncThread(#[source] std::io::Error),
    /// The monitor is stopping: batches are no longer taken in (their
    /// producers count them as lost).
    #[error("the monitor is stopping; taint events are not taken any more")]
    Closed,
    /// The snapshot was written in another format.
    #[error("taint snapshot format {0} is not understood")]
    SnapshotVersion(u32),
    /// State or output could not be encoded as JSON.
    #[error("encoding taint state: {0}")]
    Encode(#[source] serde_json::Error),
    /// The audit log could not be opened or written.
    #[error("taint audit log {path}: {source}")]
    AuditLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Graphviz's `dot` could not be run.
    #[error("running Graphviz dot (apt-get install graphviz): {0}")]
    Graphviz(#[source] std::io::Error),
    /// `dot` failed.
    #[error("Graphviz dot failed ({status}): {stderr}")]
    GraphvizFailed {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

#[cfg(test)]
mod tests;
