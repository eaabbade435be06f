//! What flows into taint tracking: file events from fsd, process and socket
//! events from hooks in the guest kernel, and socket-ownership lookups for a
//! packet filter.
//!
//! Two producers feed the monitor's taint engine (docs/taint.md):
//!
//! * **fsd** sees every file request of its guest and reports the file
//!   accesses that move data ([`FileEvent`], in batches, off its request
//!   path). It names the file by host device and inode, the guest process
//!   by the pid of the FUSE header, and says when the file is a taint
//!   source under a policy rule.
//! * **hooks in the guest kernel** (a QEMU TCG plugin watching chosen kernel
//!   functions) report forks, exits, execs and socket traffic
//!   ([`GuestEvent`]). They name processes by pid *and* by the address and
//!   start time of their `task_struct`, which a reused pid does not share.
//!
//! Everything a guest wrote is a hint: the FUSE header's pid is written by
//! the guest kernel, and so is all memory the hooks read. The monitor checks
//! fsd's pids against the process view the hooks give it and marks what it
//! could not check as unverified.
//!
//! The packet filter asks the monitor which guest process owns a socket
//! (`socket_owner`, and `socket_owners` for a batch).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::report::hex_addr;

/// One file access fsd served to a guest (ARCHITECTURE.md §2: "file event
/// (vm, pid, op, inode) -> monitor"). fsd sends them in batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The file's path relative to the share root, when fsd looked it up
    /// (the first event of an inode in a batch); for people and graphs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Set when the file is a taint source: the path pattern of the policy
    /// rule that makes it confidential (a protected file, or one a rule
    /// marks `confidential = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Kinds of file access that move data or names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAccess {
    /// Opened for reading. The taint engine takes it as a read: after the
    /// open, the guest may read from its page cache without sending READs.
    Open,
    Read,
    Write,
    Create,
    Remove,
    Rename,
    Link,
}

impl FileAccess {
    /// Whether data flows from the file into the process.
    pub fn reads(self) -> bool {
        matches!(self, FileAccess::Open | FileAccess::Read)
    }

    /// Whether data flows from the process into the file.
    pub fn writes(self) -> bool {
        self == FileAccess::Write
    }
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

/// One event seen by a hook in the guest kernel: what a QEMU plugin (or
/// any other hook) emits, one JSON object per event.
///
/// ```json
/// {"vm":"web","kind":"fork","pid":731,"tgid":731,"task":"0xffff888003a3c000",
///  "start_time":81234567,"comm":"sh","child_pid":732,"child_tgid":732,
///  "child_task":"0xffff888003a3e000","child_start_time":81240011}
/// {"vm":"web","kind":"send","pid":732,"tgid":732,"task":"0xffff888003a3e000",
///  "start_time":81240011,"comm":"curl","socket":{"family":"inet","transport":"tcp",
///  "local":"10.0.2.15:44312","peer":"93.184.216.34:443"}}
/// ```
///
/// `task` and `start_time` identify the **process**: the `task_struct` of
/// the thread-group leader (`current->group_leader`) and its `start_time`
/// (nanoseconds since boot). `pid` is the acting thread's, `tgid` its
/// process's. A pid is reused once its process is gone; the pair (task,
/// start time) is not, so taint is keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestEvent {
    /// The VM, as the monitor's configuration names it, or its SMBIOS UUID.
    pub vm: String,
    /// What happened, with the fields of that kind.
    #[serde(flatten)]
    pub kind: GuestEventKind,
    /// The acting thread (`current->pid`).
    pub pid: u32,
    /// Its process (`current->tgid`).
    pub tgid: u32,
    /// The process's leader `task_struct` address.
    #[serde(with = "hex_addr")]
    pub task: u64,
    /// The leader's `start_time`.
    pub start_time: u64,
    /// `current->comm`.
    pub comm: String,
}

/// Which of a hook plugin's numbered events a batch of guest events
/// accounts for.
///
/// The plugin numbers every event at the hit, whether or not a monitor
/// reads it. A batch that says "events `first..=last` of plugin
/// `instance`" promises that each of them is in the batch, was of no use
/// to the engine, or is counted in the batch's `dropped`. That is what lets
/// a monitor that restarted show that it missed nothing while it was down:
/// the first batch after the restart continues the numbering where the
/// last batch it kept ended (docs/taint.md, "Persistence").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSeq {
    /// Which plugin: one QEMU process (its host boot, pid and start time).
    /// Numbers of different instances are not comparable.
    pub instance: String,
    /// The first number this batch accounts for.
    pub first: u64,
    /// The last; `first - 1` when the batch accounts for none (it only
    /// says that the plugin ended).
    pub last: u64,
    /// The plugin said goodbye after `last` (QEMU exits): every event it
    /// made is accounted for, and it makes no more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

/// The kinds of guest kernel event, with what each adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestEventKind {
    /// A new task (`wake_up_new_task(p)`: the child is `p`, the parent is
    /// current). A child with the parent's tgid is a new thread.
    Fork {
        child_pid: u32,
        child_tgid: u32,
        /// The child's `task_struct` (its own: a new process leads itself).
        #[serde(with = "hex_addr")]
        child_task: u64,
        child_start_time: u64,
    },
    /// A thread ended (`do_exit`); the process ends with its leader.
    Exit,
    /// A new program (`begin_new_exec`); the process keeps its taint.
    Exec { filename: String },
    /// Data sent on a socket (`sock_sendmsg`).
    Send { socket: SocketInfo },
    /// Data received from a socket (`sock_recvmsg`).
    Recv { socket: SocketInfo },
}

impl GuestEventKind {
    /// The kind's name on the wire, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            GuestEventKind::Fork { .. } => "fork",
            GuestEventKind::Exit => "exit",
            GuestEventKind::Exec { .. } => "exec",
            GuestEventKind::Send { .. } => "send",
            GuestEventKind::Recv { .. } => "recv",
        }
    }
}

/// The socket of a send or receive, as read from `struct sock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case", deny_unknown_fields)]
pub enum SocketInfo {
    /// `AF_UNIX`. Addresses are paths, or `@name` for the abstract
    /// namespace; `None` when unnamed. `sock` and `peer_sock` are the
    /// kernel addresses of this socket's and its peer's `struct sock`
    /// (`unix_peer(sk)`): when both are given, the conversation is told
    /// apart from every other on the same address (and a socketpair, which
    /// has no names, can be followed at all).
    Unix {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::report::opt_hex_addr"
        )]
        sock: Option<u64>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::report::opt_hex_addr"
        )]
        peer_sock: Option<u64>,
    },
    /// `AF_INET` and `AF_INET6`: `skc_rcv_saddr`:`inet_sport` and
    /// `skc_daddr`:`skc_dport`. For a datagram socket that is not
    /// connected, `peer` is the datagram's destination (send) or source
    /// (receive).
    Inet {
        transport: Transport,
        local: SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<SocketAddr>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_events_read_as_a_plugin_writes_them() {
        let fork = r#"{"vm":"web","kind":"fork","pid":731,"tgid":731,"task":"0xffff888003a3c000",
            "start_time":81234567,"comm":"sh","child_pid":732,"child_tgid":732,
            "child_task":"0xffff888003a3e000","child_start_time":81240011}"#;
        let e: GuestEvent = serde_json::from_str(fork).unwrap();
        assert_eq!(e.task, 0xffff_8880_03a3_c000);
        assert_eq!(
            e.kind,
            GuestEventKind::Fork {
                child_pid: 732,
                child_tgid: 732,
                child_task: 0xffff_8880_03a3_e000,
                child_start_time: 81_240_011
            }
        );
        let send = r#"{"vm":"web","kind":"send","pid":732,"tgid":732,"task":"0xffff888003a3e000",
            "start_time":81240011,"comm":"curl","socket":{"family":"inet","transport":"tcp",
            "local":"10.0.2.15:44312","peer":"93.184.216.34:443"}}"#;
        let e: GuestEvent = serde_json::from_str(send).unwrap();
        assert_eq!(e.kind.name(), "send");
        let back: GuestEvent = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let unix = GuestEvent {
            vm: "web".into(),
            kind: GuestEventKind::Recv {
                socket: SocketInfo::Unix {
                    local: Some("@bus".into()),
                    peer: None,
                    sock: Some(0xffff_8880_0000_1000),
                    peer_sock: Some(0xffff_8880_0000_2000),
                },
            },
            pid: 5,
            tgid: 5,
            task: 1,
            start_time: 2,
            comm: "x".into(),
        };
        let s = serde_json::to_string(&unix).unwrap();
        assert!(s.contains("\"sock\":\"0xffff888000001000\""), "{s}");
        assert!(!s.contains("\"peer\""), "absent fields are left out: {s}");
        assert_eq!(serde_json::from_str::<GuestEvent>(&s).unwrap(), unix);
        // A kind of the future, or a field no kind has, is refused.
        assert!(serde_json::from_str::<GuestEvent>(&fork.replace("fork", "clone3")).is_err());
        assert!(serde_json::from_str::<GuestEvent>(
            &send.replace("\"transport\"", "\"zone\":1,\"transport\"")
        )
        .is_err());
    }

    #[test]
    fn file_events_leave_out_what_they_lack() {
        let e = FileEvent {
            pid: 7,
            dev: 1,
            ino: 2,
            access: FileAccess::Open,
            path: None,
            rule: None,
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"pid":7,"dev":1,"ino":2,"access":"open"}"#);
        assert!(FileAccess::Open.reads() && FileAccess::Read.reads());
        assert!(FileAccess::Write.writes() && !FileAccess::Create.writes());
    }
}
