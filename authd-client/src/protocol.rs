//! Wire types. One JSON object per line in each direction. Every request
//! carries its protocol version `"v"` and an `id` chosen by the caller; every
//! reply carries the same `id`, so answers cannot be confused when a
//! connection has several requests in flight, and the version the request
//! was made in. Pushed events carry `"event"` and no `id`.
//!
//! Version 2 changed only what a [`Reason`] vouches for (its operation and
//! path are the caller's own facts); the daemon still accepts version 1
//! requests and shows their reasons as version 1 labelled them, all of it
//! the guest's word ([`Provenance`]).

use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build.
pub const VERSION: u32 = 2;

/// Oldest request version the daemon still accepts.
pub const MIN_VERSION: u32 = 1;

/// Longest accepted request line; longer lines close the connection.
pub const MAX_LINE: usize = 64 * 1024;

/// What is being asked for, shown to the person deciding; none of it is
/// used for a security decision.
///
/// From version 2 on, `operation` and `path` are the caller's own facts:
/// fsd decoded the request and resolved the file on the host itself, so the
/// guest can choose what to ask for but cannot misdescribe it. `pid` and
/// `process` are the guest's word: the pid is the one in the FUSE header,
/// which the guest kernel writes, unless `pid_verified` says the caller
/// checked them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// File operation as the caller decoded it, e.g. `open`, `unlink`.
    pub operation: String,
    /// The file's path on the host, relative to the VM's shared directory.
    pub path: String,
    /// Process id from the FUSE header (guest-written).
    pub pid: u32,
    /// Process name, empty when unknown (virtio-fs does not carry it).
    pub process: String,
    /// Whether the caller checked `pid` and `process` against what the host
    /// knows of the guest's processes (the monitor's process list). Absent
    /// in version 1, and ignored there.
    #[serde(default)]
    pub pid_verified: bool,
}

/// Who vouches for a [`Reason`]'s `operation` and `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// The caller saw them itself (version 2 and later).
    Host,
    /// Nobody: a version 1 request, whose reason was all labelled as the
    /// guest's word.
    Guest,
}

impl Provenance {
    /// What a reason in a request of protocol version `v` vouches for.
    pub fn of_version(v: u32) -> Provenance {
        if v >= 2 {
            Provenance::Host
        } else {
            Provenance::Guest
        }
    }
}

/// Which grants a revoke call ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeScope {
    Grant(String),
    Vm(String),
    All,
}

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    pub id: u64,
    #[serde(flatten)]
    pub call: Call,
}

/// The calls (the same in versions 1 and 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// Ask the person at the host to let `vm` act as `principal`.
    Authenticate {
        vm: String,
        principal: String,
        reason: Reason,
        /// Grant lifetime wanted by fsd's policy; capped by the daemon.
        lifetime_secs: u64,
    },
    /// List live grants.
    ListGrants,
    /// End grants early.
    Revoke { scope: RevokeScope },
    /// End every grant (screen lock, user leaving).
    Lock,
    /// Receive `grant_ended` events on this connection from now on.
    Subscribe,
    /// Put a yes/no question from a host service (the packet filter: "process
    /// X (uid U) in VM V wants to connect to D:P") to `principal`, in the
    /// trusted dialog with their seal. No password and no grant: the answer
    /// is allow once, allow always, or a denial.
    Confirm {
        vm: String,
        principal: String,
        question: String,
    },
}

/// The person's answer to a [`Call::Confirm`] that allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// This one time.
    Once,
    /// This and the same question again (the asking service remembers it).
    Always,
}

/// A time-limited permission for one VM to act as one principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Random 128-bit id, hex.
    pub id: String,
    pub vm: String,
    pub principal: String,
    /// Unix time in milliseconds at which the grant ends.
    pub expires_at_ms: u64,
    /// Lifetime actually granted (after the daemon's cap).
    pub lifetime_secs: u64,
}

/// Why a request was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// The password typed was wrong.
    WrongPassword,
    /// Too many recent failures for this principal.
    Locked,
    /// This VM asked for too many prompts recently.
    RateLimited,
    /// The user pressed Esc, Cancel or closed the dialog.
    Cancelled,
    /// Nobody answered in time.
    Timeout,
    /// No such principal is enrolled.
    UnknownPrincipal,
    /// No display or terminal to ask on.
    NoFrontend,
    /// Malformed request.
    BadRequest,
    /// Something failed inside authd; failing closed.
    Internal,
}

/// A reply line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    pub id: u64,
    #[serde(flatten)]
    pub body: ReplyBody,
}

/// Result of a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplyBody {
    Granted {
        grant: Grant,
    },
    Denied {
        why: DenyReason,
        /// When retrying makes sense again (lockout, rate limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Grants {
        grants: Vec<Grant>,
    },
    Revoked {
        count: usize,
    },
    Subscribed,
    /// To `confirm`: the person allowed.
    Confirmed {
        choice: Choice,
    },
    Error {
        message: String,
    },
}

/// Why a grant ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    Expired,
    Revoked,
    Locked,
}

/// A pushed event line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    GrantEnded { grant: Grant, cause: EndCause },
}

/// Anything the daemon sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerMessage {
    Event(Event),
    Reply(Reply),
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_wire_format() {
        let r = Request {
            v: 1,
            id: 3,
            call: Call::Confirm {
                vm: "vm1".into(),
                principal: "alice".into(),
                question: "process nc wants to connect".into(),
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"v":1,"id":3,"op":"confirm","vm":"vm1","principal":"alice","question":"process nc wants to connect"}"#
        );
        let reply: Reply =
            serde_json::from_str(r#"{"v":1,"id":3,"result":"confirmed","choice":"always"}"#)
                .unwrap();
        assert_eq!(
            reply.body,
            ReplyBody::Confirmed {
                choice: Choice::Always
            }
        );
    }

    #[test]
    fn request_wire_format() {
        let r = Request {
            v: VERSION,
            id: 7,
            call: Call::Authenticate {
                vm: "vm1".into(),
                principal: "alice".into(),
                reason: Reason {
                    operation: "open".into(),
                    path: "k.pem".into(),
                    pid: 42,
                    process: "cat".into(),
                    pid_verified: false,
                },
                lifetime_secs: 300,
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""op":"authenticate""#), "{s}");
        assert!(s.contains(r#""pid_verified":false"#), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let revoke: Request =
            serde_json::from_str(r#"{"v":1,"id":2,"op":"revoke","scope":{"vm":"vm1"}}"#).unwrap();
        assert_eq!(
            revoke.call,
            Call::Revoke {
                scope: RevokeScope::Vm("vm1".into())
            }
        );
        let all: Request =
            serde_json::from_str(r#"{"v":1,"id":3,"op":"revoke","scope":"all"}"#).unwrap();
        assert_eq!(
            all.call,
            Call::Revoke {
                scope: RevokeScope::All
            }
        );
    }

    #[test]
    fn version_1_requests_still_parse() {
        let line = r#"{"v":1,"id":7,"op":"authenticate","vm":"vm1","principal":"alice",
            "reason":{"operation":"open","path":"k.pem","pid":42,"process":"cat"},
            "lifetime_secs":300}"#;
        let r: Request = serde_json::from_str(line).unwrap();
        assert_eq!(r.v, 1);
        match r.call {
            Call::Authenticate { reason, .. } => {
                assert_eq!(reason.pid, 42);
                assert!(!reason.pid_verified);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(Provenance::of_version(1), Provenance::Guest);
        assert_eq!(Provenance::of_version(VERSION), Provenance::Host);
    }

    #[test]
    fn server_messages_are_told_apart() {
        let g = Grant {
            id: "ab".into(),
            vm: "vm1".into(),
            principal: "alice".into(),
            expires_at_ms: 5,
            lifetime_secs: 1,
        };
        let ev = serde_json::to_string(&Event {
            v: 1,
            kind: EventKind::GrantEnded {
                grant: g.clone(),
                cause: EndCause::Expired,
            },
        })
        .unwrap();
        assert!(matches!(
            serde_json::from_str::<ServerMessage>(&ev).unwrap(),
            ServerMessage::Event(_)
        ));
        let rep = serde_json::to_string(&Reply {
            v: 1,
            id: 9,
            body: ReplyBody::Denied {
                why: DenyReason::Locked,
                retry_after_ms: Some(10),
            },
        })
        .unwrap();
        match serde_json::from_str::<ServerMessage>(&rep).unwrap() {
            ServerMessage::Reply(r) => assert_eq!(r.id, 9),
            other => panic!("parsed as {other:?}"),
        }
    }
}
