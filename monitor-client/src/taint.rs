//! Messages for the next uses of the protocol: file events from fsd for
//! taint tracking, and socket-ownership lookups for a packet filter.
//!
//! They are defined and tested here so that their shape is settled with
//! the rest of the protocol. The monitor serves the ownership lookups
//! (`socket_owner`, and `socket_owners` for a batch); file events are
//! answered `unsupported` until taint tracking lands (docs/monitor.md).
//! Everything a guest wrote (the FUSE header's pid) is marked as such; the
//! monitor checks it against its own view of the guest before relying on it.

use serde::{Deserialize, Serialize};

/// One file access fsd served to a guest (ARCHITECTURE.md §2: "file event
/// (vm, pid, op, inode) -> monitor"). fsd sends them in batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEvent {
    /// The calling thread's pid from the FUSE header: written by the guest
    /// kernel, a hint to be checked, never proof.
    pub pid: u32,
    /// Host device of the file (`st_dev`).
    pub dev: u64,
    /// Host inode number of the file (`st_ino`).
    pub ino: u64,
    /// What was done to it.
    pub access: FileAccess,
}

/// Kinds of file access that move data or names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAccess {
    Open,
    Read,
    Write,
    Create,
    Remove,
    Rename,
    Link,
}

/// Transport protocol of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Udp,
}

/// The guest process that owns a socket, as the monitor read it from the
/// guest kernel's task and socket structures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOwner {
    pub pid: u32,
    /// `task->comm`.
    pub name: String,
    /// `real_cred->uid`.
    pub uid: u32,
    /// Path of the executable (`mm->exe_file`), when the process has one
    /// and its path could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Guest address of the process's `task_struct`: with the pid, the key
    /// that tells a process from a later one that reuses its pid (0 when
    /// unknown).
    #[serde(default)]
    pub task: u64,
}

/// One socket to find, by what a packet of its flow shows: the guest-side
/// address and port, and the peer when it is known (it tells apart sockets
/// that share a local port, such as a listener and its accepted sockets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketQuery {
    pub transport: Transport,
    /// The guest's end of the flow.
    pub local: std::net::SocketAddr,
    /// The other end, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<std::net::SocketAddr>,
}
