//! What taint tracking reports: tainted entries and how each got tainted,
//! leak alerts with their chain, per-VM status, the graph, files derived
//! from a policy rule, answers to "is this tainted", and the notices of the
//! watch stream.
//!
//! Every tainted entry records its **origin**: the entry it got its taint
//! from, the event that carried it and when. Following origins from any
//! entry leads back to a source (a confidential file), so the path the data
//! took can be shown: in a leak alert as its chain, on the command line as
//! a graph. VMs are named by their SMBIOS UUID, which two VMs do not share
//! even where their pids and inode numbers coincide.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::report::hex_addr;
use crate::taint::Transport;

/// Something in one VM that can carry taint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Subject {
    /// A host file, by device and inode (what fsd serves).
    File { dev: u64, ino: u64 },
    /// A process, by its leader's `task_struct` and start time (survives
    /// pid reuse). A start time of 0 means "not known yet" (the process
    /// was seen in a process list, not by a hook).
    Process {
        #[serde(with = "hex_addr")]
        task: u64,
        start_time: u64,
    },
    /// A process known only by the pid fsd got from a FUSE header, which
    /// the monitor's own process view did not confirm.
    UnverifiedProcess { pid: u32 },
    /// A UNIX socket address (a path, or `@name`): every conversation on
    /// that address.
    Unix { name: String },
    /// One UNIX conversation, by the kernel addresses of its two `struct
    /// sock`s (lower first).
    UnixPair {
        #[serde(with = "hex_addr")]
        a: u64,
        #[serde(with = "hex_addr")]
        b: u64,
    },
    /// An INET flow, by its two endpoints (lower first): the same flow as
    /// seen from the sending and from the receiving side. (Boxed: the two
    /// addresses would make every subject, in every table, three times as
    /// large.)
    Flow(Box<Flow>),
}

/// An INET flow's identity; on the wire, its fields sit in the subject.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub transport: Transport,
    pub a: SocketAddr,
    pub b: SocketAddr,
}

impl Subject {
    /// What kind of table holds it.
    pub fn kind(&self) -> SubjectKind {
        match self {
            Subject::File { .. } => SubjectKind::File,
            Subject::Process { .. } | Subject::UnverifiedProcess { .. } => SubjectKind::Process,
            Subject::Unix { .. } | Subject::UnixPair { .. } => SubjectKind::Unix,
            Subject::Flow(_) => SubjectKind::Inet,
        }
    }

    /// A flow's subject: the endpoints in a canonical order.
    pub fn flow(transport: Transport, x: SocketAddr, y: SocketAddr) -> Subject {
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        Subject::Flow(Box::new(Flow { transport, a, b }))
    }

    /// A UNIX conversation's subject: the two socks in a canonical order.
    pub fn unix_pair(x: u64, y: u64) -> Subject {
        Subject::UnixPair {
            a: x.min(y),
            b: x.max(y),
        }
    }
}

/// The four tables of one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    File,
    Process,
    Unix,
    Inet,
}

/// The event that carried taint into an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carrier {
    /// A confidential file: where taint starts.
    Source,
    /// A process opened a tainted file for reading.
    Open,
    /// A process read a tainted file.
    Read,
    /// A tainted process wrote a file.
    Write,
    /// A tainted process forked.
    Fork,
    /// A tainted process sent on a socket.
    Send,
    /// A process received from a tainted socket.
    Recv,
    /// A process found tainted under its pid alone was later identified
    /// by a hook (its taint moved to its real identity).
    Identified,
}

/// How an entry got tainted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The entry the taint came from; `None` for a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Subject>,
    /// The VM of `from` when it is another VM than the entry's (a flow
    /// between two VMs of this host), by UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_vm: Option<String>,
    /// The event.
    pub by: Carrier,
    /// When the monitor saw it, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The engine's event counter then: orders events within a millisecond.
    pub seq: u64,
}

/// One tainted entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaintedEntry {
    pub subject: Subject,
    /// A file's path (relative to its share), a process's `comm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A process's pid (the last one seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The policy rule (path pattern) of the source this taint comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub origin: Origin,
    /// False when the taint rests on a guest-written pid that the monitor
    /// could not match with a process it knows (see
    /// [`Subject::UnverifiedProcess`]), or on an entry that did.
    pub verified: bool,
    /// A process that exited, kept so that paths through it can be shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

/// An entry and its VM (UUID): a link of a chain, a node of a graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEntry {
    pub vm: String,
    pub entry: TaintedEntry,
}

/// A tainted process sent data to an INET destination outside the host's
/// VMs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakAlert {
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The VM's SMBIOS UUID and its name in the monitor's configuration.
    pub vm: String,
    pub vm_name: String,
    /// The sending process: pid, name (`comm`) and identity.
    pub pid: u32,
    pub name: String,
    #[serde(with = "hex_addr")]
    pub task: u64,
    pub start_time: u64,
    pub transport: Transport,
    pub local: SocketAddr,
    pub destination: SocketAddr,
    /// From the sending process back to the source, one entry per hop.
    pub chain: Vec<VmEntry>,
    /// False when the chain breaks off before a source (an entry on the
    /// way was evicted at a bound).
    pub chain_complete: bool,
    /// Whether the monitor was asked to freeze the process
    /// (`freeze_on_leak`); the outcome follows as a
    /// [`TaintNotice::Freeze`].
    pub freeze: bool,
}

/// A file written by a tainted process: it holds data of the source under
/// `rule`, so fsd may label it with that rule (`inherit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedFile {
    pub dev: u64,
    pub ino: u64,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Position in the VM's list of derived files (for `taint_derived`'s
    /// `after`).
    pub seq: u64,
}

/// Taint tracking of one VM, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmTaintStatus {
    /// SMBIOS UUID.
    pub vm: String,
    /// Name in the monitor's configuration (the last one used).
    pub name: String,
    /// Tainted entries, per table.
    pub files: u64,
    pub processes: u64,
    /// Of `processes`, those known only by a guest-written pid.
    pub unverified: u64,
    pub unix_sockets: u64,
    pub inet_flows: u64,
    /// Processes in the monitor's process view (from hook events).
    pub known_processes: u64,
    /// Events taken in, from fsd and from hooks.
    pub file_events: u64,
    pub guest_events: u64,
    /// Events refused as impossible (a fork to pid 0, an event for
    /// another VM in the batch, ...).
    pub rejected: u64,
    /// Events their producers reported as lost before reaching the monitor
    /// (fsd's queue full or the monitor down; the plugin's ring full).
    pub fsd_dropped: u64,
    pub hooks_dropped: u64,
    /// Entries pushed out of a full table (oldest first, ended processes
    /// before live ones).
    pub evicted: u64,
    pub alerts: u64,
    /// Whether the tables can be trusted to hold every taint: false once
    /// anything was dropped or evicted, while no hook events arrive (no
    /// process or socket tracking beyond fsd's view), and after a restart
    /// of the monitor until its producers show that it missed nothing (for
    /// good when that cannot be shown, or its journal was damaged).
    pub complete: bool,
    /// Why not, for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
}

/// Taint tracking as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaintStatus {
    pub vms: Vec<VmTaintStatus>,
    /// Estimated memory of all tables, bytes.
    pub approx_bytes: u64,
    /// Whether the state is persisted (a state directory is set).
    pub persistent: bool,
}

/// What `taint_query` asks about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    /// A process by pid, and by its leader `task_struct` when the asker
    /// knows it (then a reused pid cannot be mistaken for it).
    Process {
        pid: u32,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::report::opt_hex_addr"
        )]
        task: Option<u64>,
    },
    /// A flow by its endpoints as the guest sees them.
    Flow {
        transport: Transport,
        local: SocketAddr,
        peer: SocketAddr,
    },
}

/// A line of the watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TaintNotice {
    /// An entry became tainted.
    Tainted { vm: String, entry: TaintedEntry },
    /// A leak.
    Leak { alert: LeakAlert },
    /// The outcome of a freeze asked for by a leak alert.
    Freeze {
        vm: String,
        pid: u32,
        ok: bool,
        message: String,
    },
    /// This watcher fell behind and missed notices.
    Lagged { missed: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_and_pairs_are_the_same_from_both_ends() {
        let x: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let y: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            Subject::flow(Transport::Tcp, x, y),
            Subject::flow(Transport::Tcp, y, x)
        );
        assert_ne!(
            Subject::flow(Transport::Tcp, x, y),
            Subject::flow(Transport::Udp, x, y)
        );
        assert_eq!(Subject::unix_pair(9, 3), Subject::unix_pair(3, 9));
    }

    #[test]
    fn subjects_on_the_wire() {
        let s = Subject::Process {
            task: 0xffff_8880_0300_0000,
            start_time: 5,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(
            j,
            r#"{"type":"process","task":"0xffff888003000000","start_time":5}"#
        );
        assert_eq!(serde_json::from_str::<Subject>(&j).unwrap(), s);
        let f = Subject::flow(
            Transport::Udp,
            "10.0.0.2:53".parse().unwrap(),
            "10.0.0.1:5353".parse().unwrap(),
        );
        let j = serde_json::to_string(&f).unwrap();
        assert_eq!(
            j,
            r#"{"type":"flow","transport":"udp","a":"10.0.0.1:5353","b":"10.0.0.2:53"}"#
        );
        assert_eq!(serde_json::from_str::<Subject>(&j).unwrap(), f);
        assert!(std::mem::size_of::<Subject>() <= 32);
        let q = Query::Process {
            pid: 3,
            task: Some(0x10),
        };
        let j = serde_json::to_string(&q).unwrap();
        assert_eq!(j, r#"{"type":"process","pid":3,"task":"0x10"}"#);
        assert_eq!(serde_json::from_str::<Query>(&j).unwrap(), q);
        let q: Query = serde_json::from_str(r#"{"type":"process","pid":3}"#).unwrap();
        assert_eq!(q, Query::Process { pid: 3, task: None });
    }
}
