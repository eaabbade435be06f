//! The hostile-guest battery.
//!
//! Each case starts a fresh daemon on a scratch share fenced by sentinels,
//! sends FUSE_INIT, then one attack: a broken descriptor ring, a lying FUSE
//! header, an id that was never handed out, a name built to escape the share,
//! or resource exhaustion. A case passes when
//! - the attack got an error reply (for broken rings: an error reply, or the
//!   chain was dropped and the queue failed cleanly),
//! - nothing outside the share changed,
//! - the daemon neither crashed nor hung, and
//! - it still answers a GETATTR afterwards (for broken rings, answering on
//!   the hiprio queue or a clean exit also counts).
//!
//! Every wait is bounded.
//!
//! | attack family | module |
//! |---|---|
//! | broken descriptor chains and rings | `chains.rs` |
//! | lying and truncated FUSE headers and arguments, unknown opcodes | `headers.rs` |
//! | FUSE_INIT again on a live session | `init.rs` |
//! | node ids and file handles never handed out, FORGET of the root | `ids.rs` |
//! | names and paths built to escape the share | `names.rs` |
//! | sizes that lie, descriptor exhaustion | `sizes.rs` |
//! | running a case, probing the daemon, the comparison table | `runner.rs` |
//!
//! This module holds what they share: a case and its context, what a case
//! finds and how a run is reported.

mod chains;
mod headers;
mod ids;
mod init;
mod names;
mod runner;
mod sizes;

use std::time::Duration;

use crate::chain::Chain;
use crate::error::{errno_name, Error, Result};
use crate::fuse::{Reply, Request};
use crate::harness::Harness;
use crate::session::{next_unique, Session};

pub use runner::{compare, populate, run_case};

/// How long to wait for the reply to an attack.
const ATTACK_WAIT: Duration = Duration::from_secs(5);
/// Granularity of the attack wait (to notice a daemon that exited).
const POLL_SLICE: Duration = Duration::from_millis(100);
/// How long to wait for the health probe.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// The whole battery, in the order of the published table
/// (docs/hostile-guest.md), which is why two families come back at its end.
pub fn cases() -> Vec<Case> {
    vec![
        chains::DESC_OUTSIDE_MEMORY,
        chains::REPLY_OUTSIDE_MEMORY,
        chains::DESC_STRADDLES_END,
        chains::DESC_LOOP,
        chains::DESC_NEXT_OUT_OF_RANGE,
        chains::AVAIL_HEAD_OUT_OF_RANGE,
        chains::AVAIL_IDX_RUNAWAY,
        chains::ZERO_LENGTH_BUFFERS,
        chains::OVERSIZED_BUFFER,
        chains::NO_WRITABLE_PART,
        chains::WRITABLE_BEFORE_READABLE,
        headers::IN_LEN_TOO_BIG,
        headers::IN_LEN_TOO_SMALL,
        headers::TRUNCATED_HEADER,
        headers::TRUNCATED_ARGS,
        headers::UNKNOWN_OPCODE,
        init::SECOND_INIT,
        init::INIT_MAJOR_6,
        ids::UNKNOWN_NODEID,
        ids::NODEID_ZERO,
        ids::UNKNOWN_FH,
        ids::RELEASE_UNKNOWN_FH,
        ids::DIR_FH_AS_FILE_FH,
        ids::FORGET_STORM,
        sizes::READ_4GIB,
        sizes::READ_OFFSET_OVERFLOW,
        sizes::OFFSETS_OVERFLOW,
        sizes::WRITE_BEYOND_BUFFER,
        names::NAME_WITH_SLASH,
        names::NAME_DOTDOT_ESCAPE,
        names::NAME_WITH_NUL,
        names::NAME_WITHOUT_NUL,
        names::NAME_4096,
        names::SYMLINK_ABSOLUTE_NAME,
        names::SYMLINK_OUT_THEN_LOOKUP,
        names::LOOKUP_DOTDOT_AT_ROOT,
        names::RENAME_OUT,
        names::MKNOD_DEVICE_THEN_OPEN,
        ids::SETATTR_UNKNOWN_NODE,
        ids::READDIR_BAD_OFFSET,
        sizes::FD_EXHAUSTION,
    ]
}

type CaseFn = fn(&mut Ctx<'_>) -> Result<Finding>;

/// One attack.
pub struct Case {
    /// Short name (table row, test filter).
    pub name: &'static str,
    /// What it does.
    pub attack: &'static str,
    /// Broken-ring case: a failed queue or clean exit is acceptable.
    pub ring: bool,
    /// Daemon fd limit for this case.
    pub rlimit_nofile: Option<u64>,
    run: CaseFn,
}

impl Case {
    /// A case whose attack is a request the daemon must refuse and survive.
    const fn request(name: &'static str, attack: &'static str, run: CaseFn) -> Case {
        Case {
            name,
            attack,
            ring: false,
            rlimit_nofile: None,
            run,
        }
    }

    /// A broken-ring case: the guest may only hurt itself.
    const fn ring(name: &'static str, attack: &'static str, run: CaseFn) -> Case {
        Case {
            ring: true,
            ..Case::request(name, attack, run)
        }
    }

    /// The daemon runs under this descriptor limit.
    const fn with_rlimit_nofile(self, limit: u64) -> Case {
        Case {
            rlimit_nofile: Some(limit),
            ..self
        }
    }
}

/// The context a case runs in: an initialised session on queue 1.
pub struct Ctx<'a> {
    /// The harness (daemon, device, scratch tree).
    pub h: &'a mut Harness,
}

impl Ctx<'_> {
    fn session(&mut self) -> Session<'_> {
        let mut s = Session::new(self.h.device.queue(1).expect("queue 1 exists"));
        s.timeout = ATTACK_WAIT;
        s
    }

    /// Submits `chain` on queue 1 and waits (bounded) for it.
    pub fn send_chain(&mut self, chain: &Chain) -> Result<Outcome> {
        let token = self.h.device.queue(1)?.submit(chain)?;
        let start = std::time::Instant::now();
        // Wait in slices so that a daemon that exited is noticed at once.
        loop {
            match self.h.device.queue(1)?.wait_for(token, POLL_SLICE) {
                Ok(c) => {
                    return Ok(Outcome::Reply(Reply::decode(&c).unwrap_or(Reply {
                        header: Default::default(),
                        body: c.data.clone(),
                        used_len: c.len,
                    })))
                }
                Err(Error::Timeout(_)) => {
                    if self.h.daemon.status().is_some() || start.elapsed() >= ATTACK_WAIT {
                        return Ok(Outcome::NoReply);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `req` laid out normally with `body` bytes of reply room.
    pub fn send(&mut self, req: &Request, body: u32) -> Result<Outcome> {
        self.send_chain(&req.chain(next_unique(), body))
    }

    /// Host path of the share.
    pub fn share(&self) -> std::path::PathBuf {
        self.h.share()
    }
}

/// What came back for an attack.
#[derive(Debug)]
pub enum Outcome {
    /// A reply arrived.
    Reply(Reply),
    /// Nothing arrived within the wait.
    NoReply,
}

/// A case's own judgement of what it saw.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Short description for the table ("EINVAL", "no reply", ...).
    pub observed: String,
    /// Whether that is acceptable.
    pub ok: bool,
}

impl Finding {
    /// Several steps of one case, each labelled ("mkdir EINVAL, lookup
    /// EINVAL"); acceptable when every step is.
    fn steps<const N: usize>(steps: [(&str, Finding); N]) -> Finding {
        let observed: Vec<String> = steps
            .iter()
            .map(|(label, f)| format!("{label} {}", f.observed))
            .collect();
        Finding {
            observed: observed.join(", "),
            ok: steps.iter().all(|(_, f)| f.ok),
        }
    }

    /// Fails the finding, saying what, when the host shows that the
    /// attack took effect anyway ("d/sub CREATED").
    fn failed_if(mut self, took_effect: bool, what: &str) -> Finding {
        if took_effect {
            self.observed.push_str(", ");
            self.observed.push_str(what);
            self.ok = false;
        }
        self
    }
}

/// An attack must be refused with an error reply.
pub fn expect_error(o: &Outcome) -> Finding {
    judge(o, false)
}

/// A broken ring: an error reply, an empty return or a failed queue are all
/// clean outcomes; a success is not.
pub fn expect_error_or_dropped(o: &Outcome) -> Finding {
    judge(o, true)
}

/// An error reply is always right and a success never; `ring` says whether
/// a chain returned empty or dropped is too.
fn judge(o: &Outcome, ring: bool) -> Finding {
    let (observed, ok) = match o {
        Outcome::Reply(r) if r.used_len == 0 => ("chain returned empty", ring),
        Outcome::Reply(r) if r.errno() != 0 => (errno_name(r.errno()), true),
        Outcome::Reply(_) => ("OK (expected an error)", false),
        Outcome::NoReply if ring => ("dropped", true),
        Outcome::NoReply => ("no reply", false),
    };
    Finding {
        observed: observed.into(),
        ok,
    }
}

/// The daemon's state after the attack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// It answered a GETATTR on the request queue.
    Answers,
    /// It answered, but the root node is gone (GETATTR of the root fails).
    RootLost(i32),
    /// The request queue is dead, the hiprio queue answers.
    HiprioOnly,
    /// Alive but silent on both queues.
    Silent,
    /// Exited with a status code.
    Exited(i32),
    /// Killed by a signal.
    Crashed(i32),
}

impl std::fmt::Display for After {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            After::Answers => write!(f, "answers"),
            After::RootLost(e) => write!(f, "ROOT LOST (GETATTR / -> {})", errno_name(*e)),
            After::HiprioOnly => write!(f, "queue failed, hiprio answers"),
            After::Silent => write!(f, "SILENT (hang)"),
            After::Exited(c) => write!(f, "exited ({c})"),
            After::Crashed(s) => write!(f, "CRASHED (signal {s})"),
        }
    }
}

/// The full result of one case against one daemon.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Case name.
    pub name: &'static str,
    /// What the case saw.
    pub finding: Finding,
    /// State afterwards.
    pub after: After,
    /// Paths changed outside the share.
    pub escaped: Vec<String>,
    /// Overall verdict.
    pub pass: bool,
}

impl CaseResult {
    /// One table cell.
    pub fn cell(&self) -> String {
        let mut s = format!("{}; {}", self.finding.observed, self.after);
        if !self.escaped.is_empty() {
            s.push_str("; ESCAPED: ");
            s.push_str(&self.escaped.join(" "));
        }
        format!("{} {}", if self.pass { "pass" } else { "**FAIL**" }, s)
    }
}
