//! The client side of the protocol, for fsd and the `authd` command line.
//!
//! Fail closed: [`Client::authenticate`] never returns an error, only a
//! [`Decision`]; a daemon that is down, slow, killed mid-request or that
//! answers nonsense yields [`Decision::Denied`].
//!
//! A file server should:
//! 1. [`Client::subscribe`] first and keep the [`Subscription`] on a thread,
//!    dropping each grant named in a [`GrantEnded`] event;
//! 2. treat the subscription ending (daemon restart or crash) as the end of
//!    every grant it holds, and subscribe again;
//! 3. call [`Client::authenticate`] with its timeout when a protected file
//!    is touched without a live grant, and honour `expires_at_ms` itself too.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{
    now_unix_ms, Call, Choice, DenyReason, EndCause, EventKind, Grant, Reason, Reply, ReplyBody,
    Request, RevokeScope, ServerMessage, MAX_LINE, VERSION,
};

/// Why a call did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o with authd: {0}")]
    Io(#[from] std::io::Error),
    #[error("authd did not answer in time")]
    Timeout,
    #[error("authd closed the connection")]
    Disconnected,
    #[error("unexpected message from authd: {0}")]
    Protocol(String),
    #[error("authd refused the call: {0}")]
    Refused(String),
}

/// An authentication request as fsd sees it.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub vm: String,
    pub principal: String,
    /// What is asked for: operation and path as the caller saw them, pid
    /// and process as the guest reported them. Shown to the user, never
    /// used for a decision.
    pub reason: Reason,
    /// Grant lifetime from fsd's policy (the daemon may shorten it).
    pub lifetime: Duration,
}

/// Why access was not granted.
#[derive(Debug)]
pub enum Denial {
    /// The daemon decided.
    ByDaemon {
        why: DenyReason,
        retry_after: Option<Duration>,
    },
    /// The call failed; denied to fail closed.
    Failed(ClientError),
}

/// The answer to [`Client::authenticate`].
#[derive(Debug)]
pub enum Decision {
    Granted(Grant),
    Denied(Denial),
}

impl Decision {
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Decision::Granted(g) => Some(g),
            Decision::Denied(_) => None,
        }
    }

    /// The daemon's reason for a denial, if it was the daemon's decision.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Denied(Denial::ByDaemon { why, .. }) => Some(*why),
            _ => None,
        }
    }
}

/// A grant that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantEnded {
    pub grant: Grant,
    pub cause: EndCause,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Opens a fresh connection to the daemon.
pub type Connector = Arc<dyn Fn() -> std::io::Result<UnixStream> + Send + Sync>;

/// Handle on a daemon's socket. Each call uses its own connection, so one
/// slow prompt never holds up another call.
#[derive(Clone)]
pub struct Client {
    socket: PathBuf,
    connector: Option<Connector>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            connector: None,
        }
    }

    /// A client whose connections come from `connect` rather than from a
    /// path, for a caller that cannot reach the socket's path itself (fsd,
    /// once sandboxed, gets connections from its unsandboxed parent).
    /// `socket` only names the daemon in messages.
    pub fn with_connector(socket: impl Into<PathBuf>, connect: Connector) -> Client {
        Client {
            socket: socket.into(),
            connector: Some(connect),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Asks for a grant and waits at most `timeout` (which should cover the
    /// person typing: the dialog's own timeout plus a margin).
    pub fn authenticate(&self, req: &AuthRequest, timeout: Duration) -> Decision {
        let call = Call::Authenticate {
            vm: req.vm.clone(),
            principal: req.principal.clone(),
            reason: req.reason.clone(),
            lifetime_secs: req.lifetime.as_secs(),
        };
        match self.call(call, timeout) {
            Ok(ReplyBody::Granted { grant }) => {
                // The grant must be for what was asked and still be live.
                if grant.vm != req.vm || grant.principal != req.principal {
                    return Decision::Denied(Denial::Failed(ClientError::Protocol(
                        "grant for another VM or principal".into(),
                    )));
                }
                if grant.expires_at_ms <= now_unix_ms() {
                    return Decision::Denied(Denial::Failed(ClientError::Protocol(
                        "grant already expired".into(),
                    )));
                }
                Decision::Granted(grant)
            }
            Ok(ReplyBody::Denied {
                why,
                retry_after_ms,
            }) => Decision::Denied(Denial::ByDaemon {
                why,
                retry_after: retry_after_ms.map(Duration::from_millis),
            }),
            Ok(other) => {
                Decision::Denied(Denial::Failed(ClientError::Protocol(format!("{other:?}"))))
            }
            Err(e) => Decision::Denied(Denial::Failed(e)),
        }
    }

    /// Puts `question` to `principal` in the trusted dialog and waits at
    /// most `timeout` (the dialog's own timeout plus a margin). Anything but
    /// an allowing answer is a denial.
    pub fn confirm(
        &self,
        vm: &str,
        principal: &str,
        question: &str,
        timeout: Duration,
    ) -> Result<Choice, Denial> {
        let call = Call::Confirm {
            vm: vm.into(),
            principal: principal.into(),
            question: question.into(),
        };
        match self.call(call, timeout) {
            Ok(ReplyBody::Confirmed { choice }) => Ok(choice),
            Ok(ReplyBody::Denied {
                why,
                retry_after_ms,
            }) => Err(Denial::ByDaemon {
                why,
                retry_after: retry_after_ms.map(Duration::from_millis),
            }),
            Ok(other) => Err(Denial::Failed(ClientError::Protocol(format!("{other:?}")))),
            Err(e) => Err(Denial::Failed(e)),
        }
    }

    pub fn list_grants(&self, timeout: Duration) -> Result<Vec<Grant>, ClientError> {
        match self.call(Call::ListGrants, timeout)? {
            ReplyBody::Grants { grants } => Ok(grants),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Ends grants early; returns how many ended.
    pub fn revoke(&self, scope: RevokeScope, timeout: Duration) -> Result<usize, ClientError> {
        match self.call(Call::Revoke { scope }, timeout)? {
            ReplyBody::Revoked { count } => Ok(count),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Ends every grant.
    pub fn lock(&self, timeout: Duration) -> Result<usize, ClientError> {
        match self.call(Call::Lock, timeout)? {
            ReplyBody::Revoked { count } => Ok(count),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Opens a connection that receives every grant end from now on.
    pub fn subscribe(&self, timeout: Duration) -> Result<Subscription, ClientError> {
        let (stream, mut reader) = self.connect()?;
        let id = send(&stream, Call::Subscribe, timeout)?;
        match read_reply(&mut reader, id, Instant::now() + timeout)? {
            ReplyBody::Subscribed => Ok(Subscription { reader }),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    fn connect(&self) -> Result<(UnixStream, BufReader<UnixStream>), ClientError> {
        let stream = match &self.connector {
            Some(connect) => connect(),
            None => UnixStream::connect(&self.socket),
        }
        .map_err(|source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        })?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok((stream, reader))
    }

    fn call(&self, call: Call, timeout: Duration) -> Result<ReplyBody, ClientError> {
        let deadline = Instant::now() + timeout;
        let (stream, mut reader) = self.connect()?;
        let id = match send(&stream, call, timeout) {
            Ok(id) => id,
            // A daemon that refuses this peer answers and closes without
            // reading the request: its answer is already waiting.
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return match read_reply(&mut reader, 0, deadline) {
                    Err(ClientError::Refused(m)) => Err(ClientError::Refused(m)),
                    _ => Err(ClientError::Io(e)),
                };
            }
            Err(e) => return Err(e),
        };
        read_reply(&mut reader, id, deadline)
    }
}

fn send(mut stream: &UnixStream, call: Call, timeout: Duration) -> Result<u64, ClientError> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut line = serde_json::to_vec(&Request {
        v: VERSION,
        id,
        call,
    })
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    stream.write_all(&line).map_err(map_timeout)?;
    Ok(id)
}

fn map_timeout(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

/// Reads one line with a deadline; `Ok(None)` when the deadline passed.
fn read_line(
    reader: &mut BufReader<UnixStream>,
    deadline: Option<Instant>,
) -> Result<Option<ServerMessage>, ClientError> {
    let timeout = match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            Some(left)
        }
        None => None,
    };
    reader.get_ref().set_read_timeout(timeout)?;
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *reader, MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(map_timeout);
    match n {
        Err(ClientError::Timeout) => return Ok(None),
        Err(e) => return Err(e),
        Ok(0) => return Err(ClientError::Disconnected),
        Ok(_) => {}
    }
    if buf.last() != Some(&b'\n') {
        return Err(ClientError::Protocol("overlong or truncated line".into()));
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

fn read_reply(
    reader: &mut BufReader<UnixStream>,
    id: u64,
    deadline: Instant,
) -> Result<ReplyBody, ClientError> {
    loop {
        match read_line(reader, Some(deadline))? {
            None => return Err(ClientError::Timeout),
            Some(ServerMessage::Event(_)) => continue,
            Some(ServerMessage::Reply(Reply { v, id: rid, body })) => {
                // An error is read in any version: a daemon too old for this
                // one says so in its own ("unsupported version 2, this is 1").
                if let ReplyBody::Error { message } = body {
                    return Err(ClientError::Refused(message));
                }
                if v != VERSION {
                    return Err(ClientError::Protocol(format!("version {v}")));
                }
                if rid != id {
                    return Err(ClientError::Protocol(format!(
                        "reply to request {rid}, expected {id}"
                    )));
                }
                return Ok(body);
            }
        }
    }
}

/// A stream of grant ends.
pub struct Subscription {
    reader: BufReader<UnixStream>,
}

impl Subscription {
    /// Waits for the next grant end. `Ok(None)` means `timeout` passed;
    /// `Err(Disconnected)` means the daemon is gone: treat every grant as ended.
    pub fn next_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<GrantEnded>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match read_line(&mut self.reader, deadline)? {
                None => return Ok(None),
                Some(ServerMessage::Event(ev)) => match ev.kind {
                    EventKind::GrantEnded { grant, cause } => {
                        return Ok(Some(GrantEnded { grant, cause }))
                    }
                },
                Some(ServerMessage::Reply(_)) => continue,
            }
        }
    }
}
