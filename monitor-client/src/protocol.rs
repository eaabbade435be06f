//! The envelope: what a request and a reply line look like.
//!
//! One JSON object per line in each direction, over a Unix stream socket.
//! Every request carries the protocol version `v` and an `id` chosen by the
//! caller, and names its operation in `op`; every reply carries `v`, the
//! same `id` and names its kind in `result`:
//!
//! ```text
//! -> {"v":1,"id":7,"op":"flush","vm":"web","inos":[1234,5678]}
//! <- {"v":1,"id":7,"result":"flushed","report":{"inodes":1,"pages_before":256,...}}
//! -> {"v":1,"id":8,"op":"freeze","vm":"web","pid":42}
//! <- {"v":1,"id":8,"result":"error","kind":"failed","message":"no process 42 in the guest"}
//! ```
//!
//! A request the daemon cannot read is refused with `kind` `bad_request`
//! and the request's `id` when one could be read, else id 0 (callers
//! number their requests from 1). Unknown operations and unknown fields are
//! refused: a new field or operation means a new message type here, so both
//! sides learn of it at once.

use serde::{Deserialize, Serialize};

use crate::report::{FlushReport, FreezeReport, Identity, Process};
use crate::taint::{FileEvent, GuestEvent, PluginSeq, SocketOwner, SocketQuery, Transport};
use crate::taint_report::{DerivedFile, Query, TaintNotice, TaintStatus, TaintedEntry, VmEntry};

/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;

/// Longest request line the daemon accepts; a longer one is refused and the
/// connection closed.
pub const MAX_REQUEST_LINE: usize = 1 << 20;

/// Longest reply line a client accepts (a process list of a large guest
/// stays well below it).
pub const MAX_REPLY_LINE: usize = 64 << 20;

/// A request line: the envelope around one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version; [`VERSION`].
    pub v: u32,
    /// Chosen by the caller, echoed in the reply; 0 is reserved for replies
    /// to requests whose id could not be read.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations of protocol version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Is the daemon there? Answered with [`ReplyBody::Pong`].
    Ping,
    /// The VM's SMBIOS UUID checked against QEMU's; [`ReplyBody::Identity`].
    Uuid { vm: String },
    /// The guest's process list; [`ReplyBody::Processes`].
    Ps { vm: String },
    /// Park a guest process from outside; [`ReplyBody::Frozen`].
    Freeze { vm: String, pid: u32 },
    /// Wake a process parked by `freeze`; [`ReplyBody::Thawed`].
    Thaw { vm: String, pid: u32 },
    /// Drop the guest's page cache of these host files (host inode numbers,
    /// as fsd serves them) and scrub the freed frames; [`ReplyBody::Flushed`].
    Flush { vm: String, inos: Vec<u64> },
    /// File accesses fsd served, for taint tracking; answered with
    /// [`ReplyBody::Accepted`], which lists the files these events made
    /// derived from a rule.
    FileEvents {
        vm: String,
        events: Vec<FileEvent>,
        /// Events fsd could not send since it started (queue full, monitor
        /// down): tracking of this VM is incomplete when not 0.
        #[serde(default)]
        dropped: u64,
    },
    /// Process and socket events from hooks in the guest kernel, all of
    /// VM `vm` (each event names it too); answered with
    /// [`ReplyBody::Accepted`].
    GuestEvents {
        vm: String,
        events: Vec<GuestEvent>,
        /// Events the hooks lost since they started (their ring was full).
        #[serde(default)]
        dropped: u64,
        /// The plugin's event numbers this batch accounts for, when the
        /// events come from a plugin that numbers them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<PluginSeq>,
    },
    /// Taint tracking counted, for one VM or all; [`ReplyBody::TaintStatus`].
    TaintStatus {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
    /// Is this process or flow tainted? For a packet filter;
    /// [`ReplyBody::TaintAnswer`].
    TaintQuery { vm: String, query: Query },
    /// Every tainted entry of the VM with its origin, and the entries of
    /// other VMs its origins lead to; [`ReplyBody::TaintGraph`].
    TaintGraph { vm: String },
    /// Files derived from a rule, after position `after` of the VM's list
    /// (fsd catching up after a restart); [`ReplyBody::Derived`].
    TaintDerived {
        vm: String,
        #[serde(default)]
        after: u64,
    },
    /// Turns the connection into a stream of taint notices: answered with
    /// [`ReplyBody::Watching`], then one [`ReplyBody::TaintNotice`] per
    /// notice, all with this request's id, until the client hangs up.
    TaintWatch,
    /// Which guest process owns the socket bound to `local`, for a packet
    /// filter; answered with [`ReplyBody::SocketOwner`].
    SocketOwner {
        vm: String,
        transport: Transport,
        local: std::net::SocketAddr,
    },
    /// The owners of several sockets at once, found with at most one walk
    /// of the guest's tasks; answered with [`ReplyBody::SocketOwners`], one
    /// entry per query, in order. A packet filter sends the new flows of a
    /// batch of frames in one request.
    SocketOwners {
        vm: String,
        sockets: Vec<SocketQuery>,
    },
}

impl Op {
    /// The operation's name on the wire, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::Uuid { .. } => "uuid",
            Op::Ps { .. } => "ps",
            Op::Freeze { .. } => "freeze",
            Op::Thaw { .. } => "thaw",
            Op::Flush { .. } => "flush",
            Op::FileEvents { .. } => "file_events",
            Op::GuestEvents { .. } => "guest_events",
            Op::TaintStatus { .. } => "taint_status",
            Op::TaintQuery { .. } => "taint_query",
            Op::TaintGraph { .. } => "taint_graph",
            Op::TaintDerived { .. } => "taint_derived",
            Op::TaintWatch => "taint_watch",
            Op::SocketOwner { .. } => "socket_owner",
            Op::SocketOwners { .. } => "socket_owners",
        }
    }

    /// The VM the operation is about (`None` for `ping`, `taint_watch` and
    /// a `taint_status` of all VMs).
    pub fn vm(&self) -> Option<&str> {
        match self {
            Op::Ping | Op::TaintWatch => None,
            Op::TaintStatus { vm } => vm.as_deref(),
            Op::Uuid { vm }
            | Op::Ps { vm }
            | Op::Freeze { vm, .. }
            | Op::Thaw { vm, .. }
            | Op::Flush { vm, .. }
            | Op::FileEvents { vm, .. }
            | Op::GuestEvents { vm, .. }
            | Op::TaintQuery { vm, .. }
            | Op::TaintGraph { vm }
            | Op::TaintDerived { vm, .. }
            | Op::SocketOwner { vm, .. }
            | Op::SocketOwners { vm, .. } => Some(vm),
        }
    }
}

/// A reply line: the envelope around one result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version; [`VERSION`].
    pub v: u32,
    /// The id of the request answered (0: its id could not be read).
    pub id: u64,
    /// What came of it.
    #[serde(flatten)]
    pub body: ReplyBody,
}

/// Results, one kind per operation, and the failure common to all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplyBody {
    /// To `ping`.
    Pong,
    /// To `uuid`.
    Identity { identity: Identity },
    /// To `ps`.
    Processes { processes: Vec<Process> },
    /// To `freeze`.
    Frozen { report: FreezeReport },
    /// To `thaw`.
    Thawed { report: FreezeReport },
    /// To `flush`.
    Flushed { report: FlushReport },
    /// To `file_events` and `guest_events`: how many events were taken
    /// in, and the files they made derived from a rule (for fsd's
    /// `inherit`).
    Accepted {
        count: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        derived: Vec<DerivedFile>,
    },
    /// To `taint_status`.
    TaintStatus { status: TaintStatus },
    /// To `taint_query`: the tainted entry, if it is tainted; `complete`
    /// false means the VM's tracking lost events or entries, so "not
    /// tainted" is not certain (a filter may then fail closed).
    TaintAnswer {
        tainted: Option<TaintedEntry>,
        complete: bool,
    },
    /// To `taint_graph`.
    TaintGraph { vm: String, nodes: Vec<VmEntry> },
    /// To `taint_derived`: the files, and the `after` to ask with next.
    Derived { files: Vec<DerivedFile>, next: u64 },
    /// To `taint_watch`: notices follow.
    Watching,
    /// One notice of a watch stream (id: the `taint_watch` request's).
    TaintNotice { notice: TaintNotice },
    /// To `socket_owner`: the owning process, `None` when no guest socket
    /// is bound there (or it closed before the lookup).
    SocketOwner { owner: Option<SocketOwner> },
    /// To `socket_owners`: one entry per query, `None` where no guest
    /// socket matched.
    SocketOwners { owners: Vec<Option<SocketOwner>> },
    /// The request was refused or the operation failed.
    Error { kind: FailureKind, message: String },
}

impl ReplyBody {
    /// The result's name on the wire, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            ReplyBody::Pong => "pong",
            ReplyBody::Identity { .. } => "identity",
            ReplyBody::Processes { .. } => "processes",
            ReplyBody::Frozen { .. } => "frozen",
            ReplyBody::Thawed { .. } => "thawed",
            ReplyBody::Flushed { .. } => "flushed",
            ReplyBody::Accepted { .. } => "accepted",
            ReplyBody::TaintStatus { .. } => "taint_status",
            ReplyBody::TaintAnswer { .. } => "taint_answer",
            ReplyBody::TaintGraph { .. } => "taint_graph",
            ReplyBody::Derived { .. } => "derived",
            ReplyBody::Watching => "watching",
            ReplyBody::TaintNotice { .. } => "taint_notice",
            ReplyBody::SocketOwner { .. } => "socket_owner",
            ReplyBody::SocketOwners { .. } => "socket_owners",
            ReplyBody::Error { .. } => "error",
        }
    }
}

/// Why a request got no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The line is not a request of this protocol: not JSON, an unknown
    /// operation or field, a missing field, or too long.
    BadRequest,
    /// The request's `v` is a version this daemon does not speak.
    UnsupportedVersion,
    /// The monitor's configuration names no such VM.
    UnknownVm,
    /// The protocol defines the operation but this daemon does not serve it.
    Unsupported,
    /// The operation was tried and failed: the VM is unreachable, a guest
    /// structure could not be read, no vCPU reached a safe point in time, …
    Failed,
    /// A kind added by a later version of the protocol.
    #[serde(other)]
    Other,
}

/// A request refused before it was run: what to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The request's id if it could be read, else 0.
    pub id: u64,
    pub kind: FailureKind,
    pub message: String,
}

impl Rejection {
    /// The reply that carries this refusal.
    pub fn into_reply(self) -> Reply {
        Reply::failure(self.id, self.kind, self.message)
    }
}

/// Just the envelope of a request, read leniently so that a refusal can
/// still name the request's id and the version it asked for.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    v: Option<u32>,
    #[serde(default)]
    id: Option<u64>,
}

impl Request {
    /// A request of this version.
    pub fn new(id: u64, op: Op) -> Request {
        Request { v: VERSION, id, op }
    }

    /// Reads one request line (without or with its newline) as the daemon
    /// receives it.
    pub fn from_line(line: &[u8]) -> Result<Request, Rejection> {
        let bad = |id: u64, why: &dyn std::fmt::Display| Rejection {
            id,
            kind: FailureKind::BadRequest,
            message: format!("bad request: {why}"),
        };
        let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| bad(0, &e))?;
        if !value.is_object() {
            return Err(bad(0, &"not a JSON object"));
        }
        let envelope = Envelope::deserialize(&value).map_err(|e| bad(0, &e))?;
        let id = envelope.id.unwrap_or(0);
        match envelope.v {
            Some(VERSION) => {}
            Some(v) => {
                return Err(Rejection {
                    id,
                    kind: FailureKind::UnsupportedVersion,
                    message: format!("unsupported protocol version {v}, this is {VERSION}"),
                })
            }
            None => {
                return Err(Rejection {
                    id,
                    kind: FailureKind::BadRequest,
                    message: format!("bad request: no protocol version (this is {VERSION})"),
                })
            }
        }
        Request::deserialize(value).map_err(|e| bad(id, &e))
    }
}

impl Reply {
    /// A reply of this version.
    pub fn new(id: u64, body: ReplyBody) -> Reply {
        Reply {
            v: VERSION,
            id,
            body,
        }
    }

    /// A failure reply of this version.
    pub fn failure(id: u64, kind: FailureKind, message: impl Into<String>) -> Reply {
        Reply::new(
            id,
            ReplyBody::Error {
                kind,
                message: message.into(),
            },
        )
    }
}

/// One message as a line: its JSON and a newline.
pub fn to_line<T: Serialize>(message: &T) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{FlushReport, FreezeReport, Identity, Process};
    use crate::taint::{
        FileAccess, FileEvent, GuestEvent, GuestEventKind, SocketInfo, SocketOwner, SocketQuery,
        Transport,
    };
    use crate::taint_report::{Carrier, LeakAlert, Origin, Subject, VmTaintStatus};

    fn entry() -> TaintedEntry {
        TaintedEntry {
            subject: Subject::Process {
                task: 0xffff_8880_0300_0000,
                start_time: 77,
            },
            name: Some("curl".into()),
            pid: Some(731),
            rule: Some("secret/**".into()),
            origin: Origin {
                from: Some(Subject::File { dev: 2051, ino: 99 }),
                from_vm: None,
                by: Carrier::Read,
                at_ms: 1_700_000_000_000,
                seq: 12,
            },
            verified: true,
            ended: false,
        }
    }

    fn every_op() -> Vec<Op> {
        vec![
            Op::Ping,
            Op::Uuid { vm: "web".into() },
            Op::Ps { vm: "web".into() },
            Op::Freeze {
                vm: "web".into(),
                pid: 42,
            },
            Op::Thaw {
                vm: "web".into(),
                pid: 42,
            },
            Op::Flush {
                vm: "web".into(),
                inos: vec![1234, u64::MAX],
            },
            Op::FileEvents {
                vm: "web".into(),
                events: vec![
                    FileEvent {
                        pid: 7,
                        dev: 0x803,
                        ino: 99,
                        access: FileAccess::Read,
                        path: Some("secret/a.txt".into()),
                        rule: Some("secret/**".into()),
                    },
                    FileEvent {
                        pid: 8,
                        dev: 0x803,
                        ino: 100,
                        access: FileAccess::Rename,
                        path: None,
                        rule: None,
                    },
                ],
                dropped: 3,
            },
            Op::GuestEvents {
                vm: "web".into(),
                events: vec![
                    GuestEvent {
                        vm: "web".into(),
                        kind: GuestEventKind::Fork {
                            child_pid: 9,
                            child_tgid: 9,
                            child_task: 0xffff_8880_0000_2000,
                            child_start_time: 44,
                        },
                        pid: 8,
                        tgid: 8,
                        task: 0xffff_8880_0000_1000,
                        start_time: 40,
                        comm: "sh".into(),
                    },
                    GuestEvent {
                        vm: "web".into(),
                        kind: GuestEventKind::Send {
                            socket: SocketInfo::Inet {
                                transport: Transport::Udp,
                                local: "10.0.2.15:5353".parse().unwrap(),
                                peer: None,
                            },
                        },
                        pid: 9,
                        tgid: 9,
                        task: 0xffff_8880_0000_2000,
                        start_time: 44,
                        comm: "dig".into(),
                    },
                ],
                dropped: 0,
                seq: Some(PluginSeq {
                    instance: "boot/1234/5678".into(),
                    first: 17,
                    last: 18,
                    ended: false,
                }),
            },
            Op::TaintStatus { vm: None },
            Op::TaintStatus {
                vm: Some("web".into()),
            },
            Op::TaintQuery {
                vm: "web".into(),
                query: Query::Process { pid: 9, task: None },
            },
            Op::TaintQuery {
                vm: "web".into(),
                query: Query::Flow {
                    transport: Transport::Tcp,
                    local: "10.0.2.15:44312".parse().unwrap(),
                    peer: "93.184.216.34:443".parse().unwrap(),
                },
            },
            Op::TaintGraph { vm: "web".into() },
            Op::TaintDerived {
                vm: "web".into(),
                after: 4,
            },
            Op::TaintWatch,
            Op::SocketOwner {
                vm: "web".into(),
                transport: Transport::Tcp,
                local: "10.0.2.15:44312".parse().unwrap(),
            },
            Op::SocketOwner {
                vm: "web".into(),
                transport: Transport::Udp,
                local: "[fe80::1]:53".parse().unwrap(),
            },
            Op::SocketOwners {
                vm: "web".into(),
                sockets: vec![
                    SocketQuery {
                        transport: Transport::Tcp,
                        local: "10.0.2.15:44312".parse().unwrap(),
                        remote: Some("10.0.2.2:80".parse().unwrap()),
                    },
                    SocketQuery {
                        transport: Transport::Udp,
                        local: "10.0.2.15:5353".parse().unwrap(),
                        remote: None,
                    },
                ],
            },
        ]
    }

    fn every_body() -> Vec<ReplyBody> {
        let freeze = FreezeReport {
            pid: 42,
            threads: 3,
            attempts: 1,
            woken: 2,
            wait_us: 380_000,
            work_us: 9_000,
        };
        vec![
            ReplyBody::Pong,
            ReplyBody::Identity {
                identity: Identity {
                    qmp_uuid: "6f1c3e2a-0000-4000-8000-000000000001".into(),
                    smbios_uuid: None,
                    tampered: true,
                },
            },
            ReplyBody::Processes {
                processes: vec![Process {
                    pid: 2,
                    ppid: 0,
                    uid: 0,
                    state: 'S',
                    name: "kthreadd".into(),
                    kernel_thread: true,
                    task: 0xffff_8880_0123_4000,
                }],
            },
            ReplyBody::Frozen {
                report: freeze.clone(),
            },
            ReplyBody::Thawed { report: freeze },
            ReplyBody::Flushed {
                report: FlushReport {
                    inodes: 1,
                    pages_before: 256,
                    invalidated: 250,
                    zeroed: 248,
                    restored: 1,
                    still_cached: 6,
                    busy: 2,
                    zeroed_late: 1,
                    wait_us: 266_144,
                    work_us: 72_160,
                },
            },
            ReplyBody::Accepted {
                count: 2,
                derived: vec![],
            },
            ReplyBody::Accepted {
                count: 1,
                derived: vec![DerivedFile {
                    dev: 2051,
                    ino: 7,
                    rule: "secret/**".into(),
                    path: Some("tmp/copy".into()),
                    seq: 1,
                }],
            },
            ReplyBody::TaintStatus {
                status: TaintStatus {
                    vms: vec![VmTaintStatus {
                        vm: "6f1c3e2a-0000-4000-8000-000000000001".into(),
                        name: "web".into(),
                        files: 2,
                        complete: false,
                        incomplete: vec!["fsd dropped 3 events".into()],
                        ..VmTaintStatus::default()
                    }],
                    approx_bytes: 4096,
                    persistent: true,
                },
            },
            ReplyBody::TaintAnswer {
                tainted: Some(entry()),
                complete: true,
            },
            ReplyBody::TaintAnswer {
                tainted: None,
                complete: false,
            },
            ReplyBody::TaintGraph {
                vm: "6f1c3e2a-0000-4000-8000-000000000001".into(),
                nodes: vec![VmEntry {
                    vm: "6f1c3e2a-0000-4000-8000-000000000001".into(),
                    entry: entry(),
                }],
            },
            ReplyBody::Derived {
                files: vec![],
                next: 9,
            },
            ReplyBody::Watching,
            ReplyBody::TaintNotice {
                notice: TaintNotice::Leak {
                    alert: LeakAlert {
                        at_ms: 1_700_000_000_100,
                        vm: "6f1c3e2a-0000-4000-8000-000000000001".into(),
                        vm_name: "web".into(),
                        pid: 731,
                        name: "curl".into(),
                        task: 0xffff_8880_0300_0000,
                        start_time: 77,
                        transport: Transport::Tcp,
                        local: "10.0.2.15:44312".parse().unwrap(),
                        destination: "93.184.216.34:443".parse().unwrap(),
                        chain: vec![VmEntry {
                            vm: "6f1c3e2a-0000-4000-8000-000000000001".into(),
                            entry: entry(),
                        }],
                        chain_complete: true,
                        freeze: true,
                    },
                },
            },
            ReplyBody::TaintNotice {
                notice: TaintNotice::Lagged { missed: 5 },
            },
            ReplyBody::SocketOwner {
                owner: Some(SocketOwner {
                    pid: 310,
                    name: "curl".into(),
                    uid: 1000,
                    exe: Some("/usr/bin/curl".into()),
                    task: 0xffff_8880_0456_8000,
                }),
            },
            ReplyBody::SocketOwner { owner: None },
            ReplyBody::SocketOwners {
                owners: vec![
                    None,
                    Some(SocketOwner {
                        pid: 311,
                        name: "nc".into(),
                        uid: 0,
                        exe: None,
                        task: 0,
                    }),
                ],
            },
            ReplyBody::Error {
                kind: FailureKind::UnknownVm,
                message: "no VM named web".into(),
            },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for (i, op) in every_op().into_iter().enumerate() {
            let r = Request::new(i as u64 + 1, op);
            let line = to_line(&r).unwrap();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(Request::from_line(&line).unwrap(), r, "{:?}", r.op);
        }
    }

    #[test]
    fn every_reply_round_trips() {
        for (i, body) in every_body().into_iter().enumerate() {
            let r = Reply::new(i as u64, body);
            let line = to_line(&r).unwrap();
            assert_eq!(serde_json::from_slice::<Reply>(&line).unwrap(), r);
        }
    }

    #[test]
    fn names_for_messages_are_the_wire_names() {
        for op in every_op() {
            let v = serde_json::to_value(&op).unwrap();
            assert_eq!(v["op"], op.name());
        }
        for body in every_body() {
            let v = serde_json::to_value(&body).unwrap();
            assert_eq!(v["result"], body.name());
        }
    }

    #[test]
    fn wire_format() {
        let s = String::from_utf8(
            to_line(&Request::new(
                7,
                Op::Flush {
                    vm: "web".into(),
                    inos: vec![1234, 5678],
                },
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            s,
            "{\"v\":1,\"id\":7,\"op\":\"flush\",\"vm\":\"web\",\"inos\":[1234,5678]}\n"
        );
        let r: Reply = serde_json::from_str(r#"{"v":1,"id":7,"result":"pong"}"#).unwrap();
        assert_eq!(r, Reply::new(7, ReplyBody::Pong));
        let r: Reply = serde_json::from_str(
            r#"{"v":1,"id":0,"result":"error","kind":"kind_of_the_future","message":"x"}"#,
        )
        .unwrap();
        assert_eq!(r, Reply::failure(0, FailureKind::Other, "x"));
    }

    #[test]
    fn refusals_keep_the_id_when_they_can() {
        let refuse = |line: &str| Request::from_line(line.as_bytes()).unwrap_err();
        for line in ["not json", "[1,2]", "7", r#"{"v":"one","id":3}"#] {
            let r = refuse(line);
            assert_eq!((r.id, r.kind), (0, FailureKind::BadRequest), "{line}");
            assert!(r.message.starts_with("bad request"), "{r:?}");
        }
        let r = refuse(r#"{"v":1,"id":3,"op":"rm","vm":"a"}"#);
        assert_eq!((r.id, r.kind), (3, FailureKind::BadRequest));
        let r = refuse(r#"{"v":1,"id":4,"op":"flush","vm":"a"}"#);
        assert_eq!((r.id, r.kind), (4, FailureKind::BadRequest));
        let r = refuse(r#"{"v":1,"id":5,"op":"ps","vm":"a","x":1}"#);
        assert_eq!((r.id, r.kind), (5, FailureKind::BadRequest), "{r:?}");
        let r = refuse(r#"{"v":2,"id":6,"op":"ping"}"#);
        assert_eq!((r.id, r.kind), (6, FailureKind::UnsupportedVersion));
        let r = refuse(r#"{"id":8,"op":"ping"}"#);
        assert_eq!((r.id, r.kind), (8, FailureKind::BadRequest));
        let reply = refuse(r#"{"v":1,"op":"ping"}"#).into_reply();
        assert_eq!(reply.id, 0);
        assert_eq!(reply.v, VERSION);
    }
}
