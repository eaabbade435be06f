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
use crate::taint::{FileEvent, SocketOwner, SocketQuery, Transport};

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
    /// [`ReplyBody::Accepted`]. Defined, not yet served: the daemon answers
    /// [`FailureKind::Unsupported`].
    FileEvents { vm: String, events: Vec<FileEvent> },
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
            Op::SocketOwner { .. } => "socket_owner",
            Op::SocketOwners { .. } => "socket_owners",
        }
    }

    /// The VM the operation is about (`None` for `ping`).
    pub fn vm(&self) -> Option<&str> {
        match self {
            Op::Ping => None,
            Op::Uuid { vm }
            | Op::Ps { vm }
            | Op::Freeze { vm, .. }
            | Op::Thaw { vm, .. }
            | Op::Flush { vm, .. }
            | Op::FileEvents { vm, .. }
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
    /// To `file_events`: how many events were taken in.
    Accepted { count: u64 },
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
    use crate::taint::{FileAccess, FileEvent, SocketOwner, SocketQuery, Transport};

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
                    },
                    FileEvent {
                        pid: 8,
                        dev: 0x803,
                        ino: 100,
                        access: FileAccess::Rename,
                    },
                ],
            },
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
                    still_cached: 6,
                    busy: 2,
                    zeroed_late: 1,
                    wait_us: 266_144,
                    work_us: 72_160,
                },
            },
            ReplyBody::Accepted { count: 2 },
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
