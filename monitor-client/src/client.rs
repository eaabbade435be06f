//! A blocking client: one connection to the monitor daemon, requests sent
//! one after the other, each waiting for its reply with a deadline.
//!
//! The connection comes from a socket path ([`Client::connect`]) or ready
//! made ([`Client::from_stream`]), for a caller that cannot reach the path
//! itself (fsd, once sandboxed, gets connections from its unsandboxed
//! parent). Requests are numbered from 1 on each connection; a late reply
//! to an earlier request that timed out is recognised by its id and
//! skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::{
    to_line, FailureKind, Op, Reply, ReplyBody, Request, MAX_REPLY_LINE, VERSION,
};
use crate::report::{FlushReport, FreezeReport, Identity, Process};
use crate::taint::{FileEvent, GuestEvent, PluginSeq, SocketOwner, SocketQuery, Transport};
use crate::taint_report::{DerivedFile, Query, TaintNotice, TaintStatus, TaintedEntry, VmEntry};

/// Why a call did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon's socket could not be connected.
    #[error("connecting to the monitor at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("i/o with the monitor: {0}")]
    Io(#[source] std::io::Error),
    /// No reply came before the deadline.
    #[error("the monitor did not answer within {0:?}")]
    Timeout(Duration),
    /// The daemon closed the connection before replying.
    #[error("the monitor closed the connection")]
    Disconnected,
    /// A request could not be encoded as JSON.
    #[error("encoding a request: {0}")]
    Encode(#[source] serde_json::Error),
    /// A reply line was not a reply of this protocol.
    #[error("malformed reply from the monitor: {0}")]
    Decode(#[source] serde_json::Error),
    /// A reply line was longer than `MAX_REPLY_LINE` or ended without a
    /// newline.
    #[error("reply line from the monitor too long or truncated")]
    BadLine,
    /// The reply speaks another protocol version.
    #[error("the monitor speaks protocol version {0}, this client {VERSION}")]
    Version(u32),
    /// The reply answers a request this client did not send.
    #[error("reply to request {got}, expected {expected}")]
    WrongId { expected: u64, got: u64 },
    /// The reply is of another kind than the request calls for.
    #[error("expected a `{expected}` reply from the monitor, got `{got}`")]
    UnexpectedReply {
        expected: &'static str,
        got: &'static str,
    },
    /// A `socket_owners` reply did not answer every query.
    #[error("asked the owners of {asked} sockets, the monitor answered {got}")]
    OwnerCount { asked: usize, got: usize },
    /// The monitor refused the request or the operation failed.
    #[error("the monitor answered: {message}")]
    Monitor { kind: FailureKind, message: String },
}

impl ClientError {
    /// True when the monitor could not be talked to at all (not there, gone,
    /// or silent), as opposed to a monitor that answered.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Io(_)
                | ClientError::Timeout(_)
                | ClientError::Disconnected
        )
    }
}

/// One connection to the monitor daemon.
#[derive(Debug)]
pub struct Client {
    /// Reads replies; writes go to the same socket through `get_ref`.
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Client {
    /// Connects to the daemon's socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        UnixStream::connect(path)
            .map(Client::from_stream)
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })
    }

    /// Uses a connection opened elsewhere.
    pub fn from_stream(stream: UnixStream) -> Client {
        Client {
            reader: BufReader::new(stream),
            next_id: 1,
        }
    }

    /// Sends one operation and waits at most `timeout` for its reply. A
    /// failure reply is returned as [`ClientError::Monitor`].
    pub fn call(&mut self, op: Op, timeout: Duration) -> Result<ReplyBody, ClientError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id;
        self.next_id += 1;
        let line = to_line(&Request::new(id, op)).map_err(ClientError::Encode)?;
        let stream = self.reader.get_ref();
        stream
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(ClientError::Io)?;
        let mut writer = stream;
        writer
            .write_all(&line)
            .map_err(|e| io_or_timeout(e, timeout))?;
        loop {
            let reply = self.read_reply(deadline, timeout)?;
            if reply.v != VERSION {
                return Err(ClientError::Version(reply.v));
            }
            match (reply.id, reply.body) {
                (got, ReplyBody::Error { kind, message }) if got == id || got == 0 => {
                    return Err(ClientError::Monitor { kind, message })
                }
                (got, body) if got == id => return Ok(body),
                // A late answer to an earlier request that timed out.
                (got, _) if got != 0 && got < id => continue,
                (got, _) => return Err(ClientError::WrongId { expected: id, got }),
            }
        }
    }

    fn read_reply(&mut self, deadline: Instant, timeout: Duration) -> Result<Reply, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(timeout));
        }
        self.read_line_within(Some(left), timeout)
    }

    /// Reads one reply line, waiting at most `left` (`None`: for ever).
    fn read_line_within(
        &mut self,
        left: Option<Duration>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(left)
            .map_err(ClientError::Io)?;
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| io_or_timeout(e, timeout))?;
        if n == 0 {
            return Err(ClientError::Disconnected);
        }
        if line.last() != Some(&b'\n') {
            return Err(ClientError::BadLine);
        }
        serde_json::from_slice(&line).map_err(ClientError::Decode)
    }

    /// Checks that the daemon answers.
    pub fn ping(&mut self, timeout: Duration) -> Result<(), ClientError> {
        match self.call(Op::Ping, timeout)? {
            ReplyBody::Pong => Ok(()),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// The VM's identity: its SMBIOS UUID checked against QEMU's.
    pub fn uuid(&mut self, vm: &str, timeout: Duration) -> Result<Identity, ClientError> {
        match self.call(Op::Uuid { vm: vm.into() }, timeout)? {
            ReplyBody::Identity { identity } => Ok(identity),
            other => Err(unexpected("identity", &other)),
        }
    }

    /// The guest's processes.
    pub fn ps(&mut self, vm: &str, timeout: Duration) -> Result<Vec<Process>, ClientError> {
        match self.call(Op::Ps { vm: vm.into() }, timeout)? {
            ReplyBody::Processes { processes } => Ok(processes),
            other => Err(unexpected("processes", &other)),
        }
    }

    /// Parks guest process `pid` from outside.
    pub fn freeze(
        &mut self,
        vm: &str,
        pid: u32,
        timeout: Duration,
    ) -> Result<FreezeReport, ClientError> {
        match self.call(Op::Freeze { vm: vm.into(), pid }, timeout)? {
            ReplyBody::Frozen { report } => Ok(report),
            other => Err(unexpected("frozen", &other)),
        }
    }

    /// Wakes a process parked by [`Client::freeze`].
    pub fn thaw(
        &mut self,
        vm: &str,
        pid: u32,
        timeout: Duration,
    ) -> Result<FreezeReport, ClientError> {
        match self.call(Op::Thaw { vm: vm.into(), pid }, timeout)? {
            ReplyBody::Thawed { report } => Ok(report),
            other => Err(unexpected("thawed", &other)),
        }
    }

    /// Drops the guest's page cache of the host files `inos` and scrubs the
    /// freed frames. A flush waits for the guest to reach a safe point:
    /// allow seconds, not milliseconds.
    pub fn flush(
        &mut self,
        vm: &str,
        inos: &[u64],
        timeout: Duration,
    ) -> Result<FlushReport, ClientError> {
        let op = Op::Flush {
            vm: vm.into(),
            inos: inos.to_vec(),
        };
        match self.call(op, timeout)? {
            ReplyBody::Flushed { report } => Ok(report),
            other => Err(unexpected("flushed", &other)),
        }
    }

    /// Reports file accesses for taint tracking, with the number of events
    /// fsd lost since it started; returns how many the monitor took in and
    /// the files they made derived from a rule.
    pub fn file_events(
        &mut self,
        vm: &str,
        events: Vec<FileEvent>,
        dropped: u64,
        timeout: Duration,
    ) -> Result<(u64, Vec<DerivedFile>), ClientError> {
        let op = Op::FileEvents {
            vm: vm.into(),
            events,
            dropped,
        };
        match self.call(op, timeout)? {
            ReplyBody::Accepted { count, derived } => Ok((count, derived)),
            other => Err(unexpected("accepted", &other)),
        }
    }

    /// Reports events of hooks in the guest kernel of `vm`, with the number
    /// the hooks lost since they started; returns how many were taken in.
    pub fn guest_events(
        &mut self,
        vm: &str,
        events: Vec<GuestEvent>,
        dropped: u64,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        self.numbered_guest_events(vm, events, dropped, None, timeout)
    }

    /// As [`Client::guest_events`], from a plugin that numbers its events:
    /// `seq` says which of its numbers the batch accounts for (what lets a
    /// restarted monitor show that it missed none).
    pub fn numbered_guest_events(
        &mut self,
        vm: &str,
        events: Vec<GuestEvent>,
        dropped: u64,
        seq: Option<PluginSeq>,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        let op = Op::GuestEvents {
            vm: vm.into(),
            events,
            dropped,
            seq,
        };
        match self.call(op, timeout)? {
            ReplyBody::Accepted { count, .. } => Ok(count),
            other => Err(unexpected("accepted", &other)),
        }
    }

    /// Taint tracking counted, for VM `vm` or for all.
    pub fn taint_status(
        &mut self,
        vm: Option<&str>,
        timeout: Duration,
    ) -> Result<TaintStatus, ClientError> {
        let op = Op::TaintStatus {
            vm: vm.map(str::to_owned),
        };
        match self.call(op, timeout)? {
            ReplyBody::TaintStatus { status } => Ok(status),
            other => Err(unexpected("taint_status", &other)),
        }
    }

    /// Whether a process or a flow of `vm` is tainted: the entry if so, and
    /// whether the VM's tracking is complete.
    pub fn taint_query(
        &mut self,
        vm: &str,
        query: Query,
        timeout: Duration,
    ) -> Result<(Option<TaintedEntry>, bool), ClientError> {
        let op = Op::TaintQuery {
            vm: vm.into(),
            query,
        };
        match self.call(op, timeout)? {
            ReplyBody::TaintAnswer { tainted, complete } => Ok((tainted, complete)),
            other => Err(unexpected("taint_answer", &other)),
        }
    }

    /// The VM's tainted entries with their origins (a graph's nodes; each
    /// origin is an edge), and its UUID.
    pub fn taint_graph(
        &mut self,
        vm: &str,
        timeout: Duration,
    ) -> Result<(String, Vec<VmEntry>), ClientError> {
        match self.call(Op::TaintGraph { vm: vm.into() }, timeout)? {
            ReplyBody::TaintGraph { vm, nodes } => Ok((vm, nodes)),
            other => Err(unexpected("taint_graph", &other)),
        }
    }

    /// Files of `vm` derived from a rule, after position `after`; returns
    /// them and the position to ask from next.
    pub fn taint_derived(
        &mut self,
        vm: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<(Vec<DerivedFile>, u64), ClientError> {
        let op = Op::TaintDerived {
            vm: vm.into(),
            after,
        };
        match self.call(op, timeout)? {
            ReplyBody::Derived { files, next } => Ok((files, next)),
            other => Err(unexpected("derived", &other)),
        }
    }

    /// Turns this connection into a stream of taint notices.
    pub fn taint_watch(mut self, timeout: Duration) -> Result<Watch, ClientError> {
        let id = self.next_id;
        match self.call(Op::TaintWatch, timeout)? {
            ReplyBody::Watching => Ok(Watch { client: self, id }),
            other => Err(unexpected("watching", &other)),
        }
    }

    /// The guest process owning the socket bound to `local`.
    pub fn socket_owner(
        &mut self,
        vm: &str,
        transport: Transport,
        local: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<Option<SocketOwner>, ClientError> {
        let op = Op::SocketOwner {
            vm: vm.into(),
            transport,
            local,
        };
        match self.call(op, timeout)? {
            ReplyBody::SocketOwner { owner } => Ok(owner),
            other => Err(unexpected("socket_owner", &other)),
        }
    }

    /// The owners of several sockets, in the order asked, found with at
    /// most one walk of the guest's tasks.
    pub fn socket_owners(
        &mut self,
        vm: &str,
        sockets: Vec<SocketQuery>,
        timeout: Duration,
    ) -> Result<Vec<Option<SocketOwner>>, ClientError> {
        let asked = sockets.len();
        let op = Op::SocketOwners {
            vm: vm.into(),
            sockets,
        };
        match self.call(op, timeout)? {
            ReplyBody::SocketOwners { owners } if owners.len() == asked => Ok(owners),
            ReplyBody::SocketOwners { owners } => Err(ClientError::OwnerCount {
                asked,
                got: owners.len(),
            }),
            other => Err(unexpected("socket_owners", &other)),
        }
    }
}

/// A connection turned into a stream of taint notices
/// ([`Client::taint_watch`]).
#[derive(Debug)]
pub struct Watch {
    client: Client,
    /// The `taint_watch` request's id, which every notice carries.
    id: u64,
}

impl Watch {
    /// The next notice, waiting at most `timeout` (`None`: for ever).
    pub fn next_notice(&mut self, timeout: Option<Duration>) -> Result<TaintNotice, ClientError> {
        let shown = timeout.unwrap_or(Duration::MAX);
        let reply = self.client.read_line_within(timeout, shown)?;
        if reply.v != VERSION {
            return Err(ClientError::Version(reply.v));
        }
        match (reply.id, reply.body) {
            (id, ReplyBody::TaintNotice { notice }) if id == self.id => Ok(notice),
            (_, ReplyBody::Error { kind, message }) => Err(ClientError::Monitor { kind, message }),
            (id, ReplyBody::TaintNotice { .. }) => Err(ClientError::WrongId {
                expected: self.id,
                got: id,
            }),
            (_, other) => Err(unexpected("taint_notice", &other)),
        }
    }
}

fn unexpected(expected: &'static str, got: &ReplyBody) -> ClientError {
    ClientError::UnexpectedReply {
        expected,
        got: got.name(),
    }
}

fn io_or_timeout(e: std::io::Error, timeout: Duration) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::Timeout(timeout)
        }
        _ => ClientError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_REQUEST_LINE;
    use crate::taint::FileAccess;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A tiny daemon: answers each request line with what `answer` makes of
    /// it, until the client hangs up.
    fn serve(stream: UnixStream, answer: impl Fn(Request) -> Vec<Vec<u8>>) {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = Vec::new();
            match (&mut reader)
                .take(MAX_REQUEST_LINE as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let replies = match Request::from_line(&line) {
                Ok(req) => answer(req),
                Err(rejection) => vec![to_line(&rejection.into_reply()).unwrap()],
            };
            for reply in replies {
                // The client may have hung up already.
                if reader.get_ref().write_all(&reply).is_err() {
                    return;
                }
            }
        }
    }

    /// Answers like the monitor would, from canned reports.
    fn canned(req: Request) -> Vec<Vec<u8>> {
        let body = match req.op {
            Op::Ping => ReplyBody::Pong,
            Op::Uuid { vm } => ReplyBody::Identity {
                identity: Identity {
                    qmp_uuid: format!("uuid-of-{vm}"),
                    smbios_uuid: Some(format!("uuid-of-{vm}")),
                    tampered: false,
                },
            },
            Op::Ps { .. } => ReplyBody::Processes {
                processes: vec![Process {
                    pid: 1,
                    ppid: 0,
                    uid: 0,
                    state: 'S',
                    name: "sh".into(),
                    kernel_thread: false,
                    task: 0xffff_8880_0100_0000,
                }],
            },
            Op::Freeze { pid, .. } => ReplyBody::Frozen {
                report: FreezeReport {
                    pid,
                    threads: 1,
                    attempts: 1,
                    ..FreezeReport::default()
                },
            },
            Op::Thaw { pid, .. } => ReplyBody::Thawed {
                report: FreezeReport {
                    pid,
                    threads: 1,
                    woken: 1,
                    ..FreezeReport::default()
                },
            },
            Op::Flush { inos, .. } => ReplyBody::Flushed {
                report: FlushReport {
                    inodes: inos.len() as u64,
                    pages_before: 10,
                    invalidated: 9,
                    zeroed: 9,
                    still_cached: 1,
                    ..FlushReport::default()
                },
            },
            Op::FileEvents { events, .. } => ReplyBody::Accepted {
                count: events.len() as u64,
                derived: vec![DerivedFile {
                    dev: 1,
                    ino: 2,
                    rule: "secret/**".into(),
                    path: None,
                    seq: 1,
                }],
            },
            Op::GuestEvents { events, .. } => ReplyBody::Accepted {
                count: events.len() as u64,
                derived: vec![],
            },
            Op::TaintStatus { .. } => ReplyBody::TaintStatus {
                status: TaintStatus {
                    vms: vec![Default::default()],
                    ..Default::default()
                },
            },
            Op::TaintQuery { .. } => ReplyBody::TaintAnswer {
                tainted: None,
                complete: true,
            },
            Op::TaintGraph { vm } => ReplyBody::TaintGraph {
                vm: format!("uuid-of-{vm}"),
                nodes: vec![],
            },
            Op::TaintDerived { .. } => ReplyBody::Derived {
                files: vec![],
                next: 1,
            },
            Op::TaintWatch => ReplyBody::Watching,
            Op::SocketOwner { vm, .. } if vm == "nobody" => ReplyBody::SocketOwner { owner: None },
            Op::SocketOwner { .. } => ReplyBody::SocketOwner {
                owner: Some(SocketOwner {
                    pid: 9,
                    name: "curl".into(),
                    uid: 1000,
                    exe: None,
                    task: 0,
                }),
            },
            Op::SocketOwners { sockets, .. } => ReplyBody::SocketOwners {
                owners: sockets
                    .iter()
                    .map(|q| {
                        (q.transport == Transport::Tcp).then(|| SocketOwner {
                            pid: q.local.port() as u32,
                            name: "wget".into(),
                            uid: 1000,
                            exe: Some("/bin/busybox".into()),
                            task: 1,
                        })
                    })
                    .collect(),
            },
        };
        vec![to_line(&Reply::new(req.id, body)).unwrap()]
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn every_call_against_a_server_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || serve(listener.accept().unwrap().0, canned));
        let mut c = Client::connect(&path).unwrap();
        c.ping(T).unwrap();
        assert_eq!(c.uuid("web", T).unwrap().qmp_uuid, "uuid-of-web");
        assert_eq!(c.ps("web", T).unwrap()[0].task, 0xffff_8880_0100_0000);
        assert_eq!(c.freeze("web", 42, T).unwrap().pid, 42);
        assert_eq!(c.thaw("web", 42, T).unwrap().woken, 1);
        let f = c.flush("web", &[11, 22], T).unwrap();
        assert_eq!((f.inodes, f.pages_left()), (2, 1));
        let ev = FileEvent {
            pid: 5,
            dev: 1,
            ino: 2,
            access: FileAccess::Write,
            path: None,
            rule: None,
        };
        let (count, derived) = c.file_events("web", vec![ev.clone(), ev], 0, T).unwrap();
        assert_eq!((count, derived.len()), (2, 1));
        assert_eq!(c.guest_events("web", vec![], 0, T).unwrap(), 0);
        assert_eq!(c.taint_status(None, T).unwrap().vms.len(), 1);
        let (t, complete) = c
            .taint_query("web", Query::Process { pid: 5, task: None }, T)
            .unwrap();
        assert!(t.is_none() && complete);
        assert_eq!(c.taint_graph("web", T).unwrap().0, "uuid-of-web");
        assert_eq!(c.taint_derived("web", 0, T).unwrap().1, 1);
        let local = "10.0.2.15:80".parse().unwrap();
        let owner = c.socket_owner("web", Transport::Tcp, local, T).unwrap();
        assert_eq!(owner.unwrap().name, "curl");
        assert_eq!(
            c.socket_owner("nobody", Transport::Udp, local, T).unwrap(),
            None
        );
        let q = |transport, port| SocketQuery {
            transport,
            local: std::net::SocketAddr::from(([10, 0, 2, 15], port)),
            remote: None,
        };
        let owners = c
            .socket_owners(
                "web",
                vec![q(Transport::Tcp, 40000), q(Transport::Udp, 53)],
                T,
            )
            .unwrap();
        assert_eq!(owners[0].as_ref().unwrap().pid, 40000);
        assert_eq!(owners[1], None);
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn failures_and_refusals_are_typed() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            serve(theirs, |req| {
                let (kind, message) = match req.op {
                    Op::Flush { .. } => (FailureKind::UnknownVm, "no VM named web"),
                    _ => (FailureKind::Unsupported, "not served"),
                };
                vec![to_line(&Reply::failure(req.id, kind, message)).unwrap()]
            })
        });
        let mut c = Client::from_stream(mine);
        match c.flush("web", &[1], T) {
            Err(ClientError::Monitor { kind, message }) => {
                assert_eq!(kind, FailureKind::UnknownVm);
                assert_eq!(message, "no VM named web");
            }
            other => panic!("{other:?}"),
        }
        let e = c.ping(T).unwrap_err();
        assert!(!e.is_unreachable(), "{e}");
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn stale_replies_are_skipped_and_wrong_ones_refused() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            serve(theirs, |req| match req.id {
                // The first request gets no answer in time...
                1 => vec![],
                // ...and its late answer arrives before the second's.
                2 => vec![
                    to_line(&Reply::new(1, ReplyBody::Pong)).unwrap(),
                    to_line(&Reply::new(2, ReplyBody::Pong)).unwrap(),
                ],
                // A reply to a request never sent.
                3 => vec![to_line(&Reply::new(99, ReplyBody::Pong)).unwrap()],
                // Another version.
                4 => vec![b"{\"v\":2,\"id\":4,\"result\":\"pong\"}\n".to_vec()],
                // The wrong kind of result.
                5 => vec![to_line(&Reply::new(
                    5,
                    ReplyBody::Accepted {
                        count: 1,
                        derived: vec![],
                    },
                ))
                .unwrap()],
                // Not a reply at all.
                _ => vec![b"{\"hello\":1}\n".to_vec()],
            })
        });
        let mut c = Client::from_stream(mine);
        let e = c.ping(Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout(_)), "{e}");
        assert!(e.is_unreachable());
        c.ping(T).unwrap();
        assert!(matches!(
            c.ping(T),
            Err(ClientError::WrongId {
                expected: 3,
                got: 99
            })
        ));
        assert!(matches!(c.ping(T), Err(ClientError::Version(2))));
        assert!(matches!(
            c.ping(T),
            Err(ClientError::UnexpectedReply {
                expected: "pong",
                got: "accepted"
            })
        ));
        assert!(matches!(c.ping(T), Err(ClientError::Decode(_))));
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn a_bad_request_is_refused_with_id_zero() {
        // A line the daemon cannot read: its refusal (id 0) reaches the
        // next call on the connection.
        let (mine, theirs) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || serve(theirs, canned));
        (&mine).write_all(b"garbage\n").unwrap();
        let mut c = Client::from_stream(mine);
        match c.ping(T) {
            Err(ClientError::Monitor { kind, .. }) => assert_eq!(kind, FailureKind::BadRequest),
            other => panic!("{other:?}"),
        }
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn a_daemon_that_hangs_up_or_is_absent() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let e = Client::from_stream(mine).ping(T).unwrap_err();
        assert!(
            matches!(e, ClientError::Disconnected | ClientError::Io(_)),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = Client::connect(dir.path().join("none.sock")).unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }) && e.is_unreachable());
    }

    #[test]
    fn a_watch_streams_notices_with_its_id() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            serve(theirs, |req| {
                let notice = |id, missed| {
                    to_line(&Reply::new(
                        id,
                        ReplyBody::TaintNotice {
                            notice: TaintNotice::Lagged { missed },
                        },
                    ))
                    .unwrap()
                };
                vec![
                    to_line(&Reply::new(req.id, ReplyBody::Watching)).unwrap(),
                    notice(req.id, 1),
                    notice(req.id, 2),
                    notice(req.id + 5, 3),
                ]
            })
        });
        let mut w = Client::from_stream(mine).taint_watch(T).unwrap();
        assert_eq!(
            w.next_notice(Some(T)).unwrap(),
            TaintNotice::Lagged { missed: 1 }
        );
        assert_eq!(
            w.next_notice(None).unwrap(),
            TaintNotice::Lagged { missed: 2 }
        );
        assert!(matches!(
            w.next_notice(Some(T)),
            Err(ClientError::WrongId { .. })
        ));
        let e = w.next_notice(Some(Duration::from_millis(50))).unwrap_err();
        assert!(matches!(e, ClientError::Timeout(_)), "{e}");
        drop(w);
        server.join().unwrap();
    }
}
