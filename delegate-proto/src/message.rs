//! Typed messages and their bodies.
//!
//! A delegation on the user VM's channel:
//!
//! ```text
//! client -> broker   Request
//! broker -> client   Started | Error            (authorized and started, or not)
//! client -> broker   Stdin* (empty: EOF), Signal*, Winsize*
//! broker -> client   Stdout*, Stderr* (empty: EOF), then Exit | Error
//! ```
//!
//! The same on the helper VM's channel, with `Ping`/`Pong` before and a
//! [`Job`] (what the broker decided, never what the guest asked) in place
//! of the request. Which VM a frame comes from is the channel it arrives
//! on; nothing in a message names a VM or a principal.

use crate::frame::{Frame, FrameError, Kind, MAX_PAYLOAD};
use crate::wire::{Reader, WireError, Writer};

/// Most arguments a request may carry (argv[0] included).
pub const MAX_ARGS: usize = 256;
/// Most environment variables a request may carry.
pub const MAX_ENV: usize = 64;
/// Longest program path, argument, variable or working directory.
pub const MAX_STRING: usize = 4096;

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Winsize {
    pub rows: u16,
    pub cols: u16,
}

/// What the client in a user VM asks for. All of it is the guest's word:
/// the broker only uses `program` to pick a policy entry by exact match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub version: u16,
    /// The program's path relative to the share root (no leading `/`).
    pub program: Vec<u8>,
    /// The arguments after argv[0].
    pub args: Vec<Vec<u8>>,
    /// `NAME=value` entries; the broker keeps those the policy allows.
    pub env: Vec<Vec<u8>>,
    /// Working directory relative to the share root, empty when outside it.
    pub cwd: Vec<u8>,
    /// The caller's terminal, when its standard input is one: the program
    /// then runs on a pty of that size.
    pub tty: Option<Winsize>,
}

/// What the broker has the agent in a helper VM run. Every field is the
/// broker's decision from the policy, except `args`, the filtered `env`
/// and `cwd`, which are the user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Echo of the ping that preceded it, so a job left in a buffer from
    /// an earlier connection is recognisably stale.
    pub nonce: u64,
    /// The program's path in the helper VM's root (absolute).
    pub program: Vec<u8>,
    /// argv, argv[0] included.
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    /// Working directory in the helper's root (absolute).
    pub cwd: Vec<u8>,
    /// Real uid and gid: the authenticated user's.
    pub ruid: u32,
    pub rgid: u32,
    /// Effective (and saved) uid and gid: the program's owner's.
    pub euid: u32,
    pub egid: u32,
    pub tty: Option<Winsize>,
    /// Longest the program may run before the agent kills it.
    pub max_secs: u32,
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl Exit {
    /// The status a shell would report (128 + signal for a signal).
    pub fn shell_status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Why a delegation was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// A malformed, unexpected or oversized frame.
    Protocol = 1,
    /// Another protocol version.
    Version = 2,
    /// No `[[delegate]]` entry for this program and VM.
    NotDelegated = 3,
    /// The user did not authenticate (wrong password, cancelled, locked,
    /// timeout, authd down).
    Denied = 4,
    /// The helper VM is not connected.
    HelperDown = 5,
    /// The helper VM's agent did not answer.
    AgentTimeout = 6,
    /// The helper VM is running another job for too long.
    Busy = 7,
    /// Too many requests from this VM.
    RateLimited = 8,
    /// The agent could not start the program.
    ExecFailed = 9,
    /// The program ran past its time limit and was killed.
    TimedOut = 10,
    /// Anything else on the host's side.
    Internal = 11,
}

impl ErrorCode {
    pub fn from_u8(b: u8) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match b {
            1 => Protocol,
            2 => Version,
            3 => NotDelegated,
            4 => Denied,
            5 => HelperDown,
            6 => AgentTimeout,
            7 => Busy,
            8 => RateLimited,
            9 => ExecFailed,
            10 => TimedOut,
            11 => Internal,
            _ => return None,
        })
    }

    /// A short stable name, for audit lines and messages.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Protocol => "protocol",
            Version => "version",
            NotDelegated => "not_delegated",
            Denied => "denied",
            HelperDown => "helper_down",
            AgentTimeout => "agent_timeout",
            Busy => "busy",
            RateLimited => "rate_limited",
            ExecFailed => "exec_failed",
            TimedOut => "timed_out",
            Internal => "internal",
        }
    }
}

/// Every message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Stdin(Vec<u8>),
    Signal(u8),
    Winsize(Winsize),
    Started,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(Exit),
    Error(ErrorCode, String),
    Ping(u64),
    Pong(u64),
    Job(Job),
}

/// Why a frame is not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{kind:?} frame: {source}")]
    Body {
        kind: Kind,
        #[source]
        source: WireError,
    },
    #[error("{kind:?} message does not fit in one frame")]
    TooLarge { kind: Kind },
}

fn tty(r: &mut Reader) -> Result<Option<Winsize>, WireError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(Winsize {
            rows: r.u16()?,
            cols: r.u16()?,
        })),
        _ => Err(WireError::Invalid("terminal flag is not 0 or 1")),
    }
}

fn put_tty(w: &mut Writer, t: Option<Winsize>) {
    match t {
        None => {
            w.u8(0);
        }
        Some(ws) => {
            w.u8(1).u16(ws.rows).u16(ws.cols);
        }
    }
}

fn list(
    r: &mut Reader,
    what: &'static str,
    max: usize,
    each: usize,
) -> Result<Vec<Vec<u8>>, WireError> {
    let n = r.count(what, max)?;
    (0..n).map(|_| r.bytes(what, each)).collect()
}

fn put_list(w: &mut Writer, items: &[Vec<u8>]) {
    w.u16(items.len() as u16);
    for i in items {
        w.bytes(i);
    }
}

impl Message {
    /// The frame kind this message travels in.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Request(_) => Kind::Request,
            Message::Stdin(_) => Kind::Stdin,
            Message::Signal(_) => Kind::Signal,
            Message::Winsize(_) => Kind::Winsize,
            Message::Started => Kind::Started,
            Message::Stdout(_) => Kind::Stdout,
            Message::Stderr(_) => Kind::Stderr,
            Message::Exit(_) => Kind::Exit,
            Message::Error(..) => Kind::Error,
            Message::Ping(_) => Kind::Ping,
            Message::Pong(_) => Kind::Pong,
            Message::Job(_) => Kind::Job,
        }
    }

    /// Decodes a frame's body, checking every bound.
    pub fn decode(f: &Frame) -> Result<Message, DecodeError> {
        let kind = f.kind;
        let body = |source| DecodeError::Body { kind, source };
        let mut r = Reader::new(&f.body);
        let m = match kind {
            Kind::Stdin => return Ok(Message::Stdin(f.body.clone())),
            Kind::Stdout => return Ok(Message::Stdout(f.body.clone())),
            Kind::Stderr => return Ok(Message::Stderr(f.body.clone())),
            Kind::Started => Message::Started,
            Kind::Signal => Message::Signal(r.u8().map_err(body)?),
            Kind::Winsize => Message::Winsize(Winsize {
                rows: r.u16().map_err(body)?,
                cols: r.u16().map_err(body)?,
            }),
            Kind::Exit => {
                let how = r.u8().map_err(body)?;
                let v = r.i32().map_err(body)?;
                Message::Exit(match how {
                    0 => Exit::Code(v),
                    1 => Exit::Signal(v),
                    _ => return Err(body(WireError::Invalid("exit kind is not 0 or 1"))),
                })
            }
            Kind::Error => {
                let code = ErrorCode::from_u8(r.u8().map_err(body)?)
                    .ok_or_else(|| body(WireError::Invalid("unknown error code")))?;
                let msg = r.bytes("message", MAX_STRING).map_err(body)?;
                Message::Error(code, String::from_utf8_lossy(&msg).into_owned())
            }
            Kind::Ping => Message::Ping(r.u64().map_err(body)?),
            Kind::Pong => Message::Pong(r.u64().map_err(body)?),
            Kind::Request => {
                let mut d = || -> Result<Request, WireError> {
                    Ok(Request {
                        version: r.u16()?,
                        program: r.bytes("program", MAX_STRING)?,
                        args: list(&mut r, "arguments", MAX_ARGS - 1, MAX_STRING)?,
                        env: list(&mut r, "environment", MAX_ENV, MAX_STRING)?,
                        cwd: r.bytes("cwd", MAX_STRING)?,
                        tty: tty(&mut r)?,
                    })
                };
                Message::Request(d().map_err(body)?)
            }
            Kind::Job => {
                let mut d = || -> Result<Job, WireError> {
                    Ok(Job {
                        nonce: r.u64()?,
                        program: r.bytes("program", MAX_STRING)?,
                        argv: list(&mut r, "arguments", MAX_ARGS, MAX_STRING)?,
                        env: list(&mut r, "environment", MAX_ENV, MAX_STRING)?,
                        cwd: r.bytes("cwd", MAX_STRING)?,
                        ruid: r.u32()?,
                        rgid: r.u32()?,
                        euid: r.u32()?,
                        egid: r.u32()?,
                        tty: tty(&mut r)?,
                        max_secs: r.u32()?,
                    })
                };
                Message::Job(d().map_err(body)?)
            }
        };
        r.finish().map_err(body)?;
        Ok(m)
    }

    /// The message as one frame; an error when it does not fit in one.
    pub fn encode(&self) -> Result<Frame, DecodeError> {
        let mut w = Writer::default();
        match self {
            Message::Stdin(d) | Message::Stdout(d) | Message::Stderr(d) => {
                w.buf.extend_from_slice(d);
            }
            Message::Started => {}
            Message::Signal(s) => {
                w.u8(*s);
            }
            Message::Winsize(ws) => {
                w.u16(ws.rows).u16(ws.cols);
            }
            Message::Exit(Exit::Code(c)) => {
                w.u8(0).i32(*c);
            }
            Message::Exit(Exit::Signal(s)) => {
                w.u8(1).i32(*s);
            }
            Message::Error(code, msg) => {
                let m = msg.as_bytes();
                w.u8(*code as u8).bytes(&m[..m.len().min(MAX_STRING)]);
            }
            Message::Ping(n) | Message::Pong(n) => {
                w.u64(*n);
            }
            Message::Request(q) => {
                w.u16(q.version).bytes(&q.program);
                put_list(&mut w, &q.args);
                put_list(&mut w, &q.env);
                w.bytes(&q.cwd);
                put_tty(&mut w, q.tty);
            }
            Message::Job(j) => {
                w.u64(j.nonce).bytes(&j.program);
                put_list(&mut w, &j.argv);
                put_list(&mut w, &j.env);
                w.bytes(&j.cwd)
                    .u32(j.ruid)
                    .u32(j.rgid)
                    .u32(j.euid)
                    .u32(j.egid);
                put_tty(&mut w, j.tty);
                w.u32(j.max_secs);
            }
        }
        let kind = self.kind();
        if w.buf.len() > MAX_PAYLOAD {
            return Err(DecodeError::TooLarge { kind });
        }
        Ok(Frame::new(kind, w.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> Request {
        Request {
            version: crate::VERSION,
            program: b"usr/bin/passwd".to_vec(),
            args: vec![b"--status".to_vec(), vec![0xff, 0]],
            env: vec![b"LANG=C".to_vec()],
            cwd: b"home/alice".to_vec(),
            tty: Some(Winsize { rows: 24, cols: 80 }),
        }
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = vec![
            Message::Request(sample_request()),
            Message::Stdin(b"abc".to_vec()),
            Message::Stdin(Vec::new()),
            Message::Signal(2),
            Message::Winsize(Winsize {
                rows: 50,
                cols: 132,
            }),
            Message::Started,
            Message::Stdout(b"out".to_vec()),
            Message::Stderr(Vec::new()),
            Message::Exit(Exit::Code(3)),
            Message::Exit(Exit::Signal(9)),
            Message::Error(ErrorCode::Denied, "wrong password".into()),
            Message::Ping(u64::MAX),
            Message::Pong(7),
            Message::Job(Job {
                nonce: 42,
                program: b"/usr/bin/passwd".to_vec(),
                argv: vec![b"passwd".to_vec()],
                env: vec![],
                cwd: b"/".to_vec(),
                ruid: 1000,
                rgid: 1000,
                euid: 0,
                egid: 0,
                tty: None,
                max_secs: 600,
            }),
        ];
        for m in msgs {
            let f = m.encode().unwrap();
            let back = Frame::read_from(&mut &f.to_bytes()[..]).unwrap();
            assert_eq!(Message::decode(&back).unwrap(), m);
        }
    }

    #[test]
    fn hostile_bodies_are_refused() {
        let good = Message::Request(sample_request()).encode().unwrap();
        // Every truncation of a valid request fails to decode, none panics.
        for n in 0..good.body.len() {
            let f = Frame::new(Kind::Request, good.body[..n].to_vec());
            assert!(Message::decode(&f).is_err(), "prefix of {n} bytes");
        }
        // Trailing bytes.
        let mut long = good.body.clone();
        long.push(0);
        assert!(Message::decode(&Frame::new(Kind::Request, long)).is_err());
        // Too many arguments is refused from the count alone.
        let mut w = Writer::default();
        w.u16(1).bytes(b"p").u16(u16::MAX);
        assert!(Message::decode(&Frame::new(Kind::Request, w.buf)).is_err());
        // A bad terminal flag, exit kind and error code.
        assert!(Message::decode(&Frame::new(Kind::Exit, vec![2, 0, 0, 0, 0])).is_err());
        assert!(Message::decode(&Frame::new(Kind::Error, vec![99, 0, 0, 0, 0])).is_err());
        assert!(Message::decode(&Frame::new(Kind::Signal, vec![])).is_err());
    }

    /// Random bodies of every kind, and random byte streams through the
    /// decoder: errors, never a panic or an allocation beyond the body.
    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let kinds: Vec<Kind> = (0..=255u8).filter_map(Kind::from_u8).collect();
        let good = Message::Request(sample_request()).encode().unwrap().body;
        for i in 0..20_000 {
            let kind = kinds[i % kinds.len()];
            let len = (next() % 96) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 3 == 0 {
                // Mutate a valid request instead: mostly well-formed.
                body = good.clone();
                let at = (next() as usize) % body.len();
                body[at] = next() as u8;
            }
            let _ = Message::decode(&Frame::new(kind, body));
        }
        let mut d = crate::frame::Decoder::default();
        for _ in 0..2_000 {
            let chunk: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            d.push(&chunk);
            match d.next_frame() {
                Ok(Some(f)) => {
                    let _ = Message::decode(&f);
                }
                Ok(None) => {}
                Err(_) => d = crate::frame::Decoder::default(),
            }
        }
    }

    #[test]
    fn too_big_for_one_frame_is_an_error() {
        let mut q = sample_request();
        q.args = vec![vec![b'a'; MAX_STRING]; 20];
        assert!(Message::Request(q).encode().is_err());
    }
}
