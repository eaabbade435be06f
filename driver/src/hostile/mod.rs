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

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    BatchForgetIn, ForgetIn, ForgetOne, GetattrIn, InitIn, ReadIn, ReleaseIn, WriteIn,
};

use crate::chain::{Chain, Segment, Tail, OUT_HEADER_LEN};
use crate::daemon::DaemonKind;
use crate::error::{errno_name, Error, Result};
use crate::fuse::{op, Reply, Request, ROOT_ID};
use crate::harness::{Harness, HarnessOptions, Unavailable};
use crate::memory::PAGE_SIZE;
use crate::session::{
    mknod_request, next_unique, read_request, symlink_request, Session, ATTR_LEN, ENTRY_LEN,
    OPEN_LEN,
};

/// How long to wait for the reply to an attack.
const ATTACK_WAIT: Duration = Duration::from_secs(5);
/// Granularity of the attack wait (to notice a daemon that exited).
const POLL_SLICE: Duration = Duration::from_millis(100);
/// How long to wait for the health probe.
const PROBE_WAIT: Duration = Duration::from_secs(10);

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

/// An attack must be refused with an error reply.
pub fn expect_error(o: &Outcome) -> Finding {
    match o {
        Outcome::Reply(r) if r.used_len == 0 => Finding {
            observed: "chain returned empty".into(),
            ok: false,
        },
        Outcome::Reply(r) if r.errno() != 0 => Finding {
            observed: errno_name(r.errno()).into(),
            ok: true,
        },
        Outcome::Reply(_) => Finding {
            observed: "OK (expected an error)".into(),
            ok: false,
        },
        Outcome::NoReply => Finding {
            observed: "no reply".into(),
            ok: false,
        },
    }
}

/// A broken ring: an error reply, an empty return or a failed queue are all
/// clean outcomes; a success is not.
pub fn expect_error_or_dropped(o: &Outcome) -> Finding {
    match o {
        Outcome::Reply(r) if r.used_len == 0 => Finding {
            observed: "chain returned empty".into(),
            ok: true,
        },
        Outcome::Reply(r) if r.errno() != 0 => Finding {
            observed: errno_name(r.errno()).into(),
            ok: true,
        },
        Outcome::Reply(_) => Finding {
            observed: "OK (expected an error)".into(),
            ok: false,
        },
        Outcome::NoReply => Finding {
            observed: "dropped".into(),
            ok: true,
        },
    }
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

/// Files in `many/` for the fd-exhaustion case.
const FD_FILES: usize = 1200;
/// Descriptor limit for the fd-exhaustion case (virtiofsd refuses to start
/// below about 610).
const FD_LIMIT: u64 = 1024;

/// The standard share: a file, a directory with a file, many small files.
pub fn populate(share: &Path) -> std::io::Result<()> {
    std::fs::write(share.join("a.txt"), vec![b'a'; 10_000])?;
    std::fs::create_dir(share.join("d"))?;
    std::fs::write(share.join("d").join("x"), b"x")?;
    std::fs::create_dir(share.join("many"))?;
    for i in 0..FD_FILES {
        std::fs::write(share.join("many").join(format!("f{i}")), b"")?;
    }
    Ok(())
}

fn getattr_req(node: u64) -> Request {
    Request::new(op::GETATTR, node).arg(&GetattrIn::default())
}

/// A well-formed GETATTR of the root with one descriptor replaced.
fn getattr_with(readable: Segment, writable: Vec<Segment>, tail: Tail) -> Chain {
    let mut c = Chain::default().push(readable);
    for w in writable {
        c = c.push(w);
    }
    c.with_tail(tail)
}

fn hdr(len: u32) -> Segment {
    Segment::Writable { len, align: 16 }
}

fn getattr_bytes() -> Segment {
    Segment::Readable {
        data: getattr_req(ROOT_ID).encode(next_unique()),
        align: 16,
    }
}

/// The whole battery.
pub fn cases() -> Vec<Case> {
    fn c(name: &'static str, attack: &'static str, ring: bool, run: CaseFn) -> Case {
        Case {
            name,
            attack,
            ring,
            rlimit_nofile: None,
            run,
        }
    }
    vec![
        c(
            "desc-outside-memory",
            "request descriptor at 1 TiB, outside guest RAM",
            true,
            |x| {
                let ch = getattr_with(
                    Segment::Raw {
                        addr: 1 << 40,
                        len: 56,
                        writable: false,
                    },
                    vec![hdr(OUT_HEADER_LEN), hdr(ATTR_LEN)],
                    Tail::End,
                );
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "reply-outside-memory",
            "writable descriptor outside guest RAM",
            true,
            |x| {
                let ch = getattr_with(
                    getattr_bytes(),
                    vec![Segment::Raw {
                        addr: 1 << 40,
                        len: 4096,
                        writable: true,
                    }],
                    Tail::End,
                );
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "desc-straddles-end",
            "descriptor starting inside RAM and running past its end",
            true,
            |x| {
                let end = x.h.device.mem().base() + x.h.device.mem().size();
                let ch = getattr_with(
                    getattr_bytes(),
                    vec![Segment::Raw {
                        addr: end - 8,
                        len: 4096,
                        writable: true,
                    }],
                    Tail::End,
                );
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "desc-loop",
            "descriptor chain whose last entry points back at its head",
            true,
            |x| {
                let ch = getattr_with(
                    getattr_bytes(),
                    vec![hdr(OUT_HEADER_LEN), hdr(ATTR_LEN)],
                    Tail::LoopTo(0),
                );
                let o = x.send_chain(&ch)?;
                Ok(match &o {
                    // The spec bounds a chain walk by the queue size; a
                    // daemon that stops there and answers has handled it.
                    Outcome::Reply(r) if r.used_len > 0 && r.errno() == 0 => Finding {
                        observed: "OK (walk bounded)".into(),
                        ok: true,
                    },
                    _ => expect_error_or_dropped(&o),
                })
            },
        ),
        c(
            "desc-next-out-of-range",
            "NEXT index beyond the descriptor table",
            true,
            |x| {
                let ch = getattr_with(
                    getattr_bytes(),
                    vec![hdr(OUT_HEADER_LEN)],
                    Tail::NextIndex(60_000),
                );
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "avail-head-out-of-range",
            "available ring entry naming descriptor 60000 of a 128-entry table",
            true,
            |x| {
                let q = x.h.device.queue(1)?;
                let token = q.publish_raw_head(60_000)?;
                Ok(match q.wait_for(token, ATTACK_WAIT) {
                    Ok(c) => expect_error_or_dropped(&Outcome::Reply(Reply {
                        header: Default::default(),
                        body: Vec::new(),
                        used_len: c.len,
                    })),
                    Err(Error::Timeout(_)) => expect_error_or_dropped(&Outcome::NoReply),
                    Err(e) => return Err(e),
                })
            },
        ),
        c(
            "avail-idx-runaway",
            "available index moved 1000 entries ahead of a 128-entry ring",
            true,
            |x| {
                let q = x.h.device.queue(1)?;
                q.advance_avail_idx(1000)?;
                std::thread::sleep(Duration::from_millis(500));
                Ok(Finding {
                    observed: "nothing to return".into(),
                    ok: true,
                })
            },
        ),
        c(
            "zero-length-buffers",
            "zero-length readable and writable descriptors",
            true,
            |x| {
                let base = x.h.device.mem().base();
                let ch = Chain::default()
                    .push(Segment::Raw {
                        addr: base,
                        len: 0,
                        writable: false,
                    })
                    .push(Segment::Raw {
                        addr: base,
                        len: 0,
                        writable: true,
                    });
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "oversized-buffer",
            "writable descriptor claiming 4 GiB - 1",
            true,
            |x| {
                let base = x.h.device.mem().base();
                let ch = getattr_with(
                    getattr_bytes(),
                    vec![Segment::Raw {
                        addr: base + PAGE_SIZE,
                        len: u32::MAX,
                        writable: true,
                    }],
                    Tail::End,
                );
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "no-writable-part",
            "GETATTR chain with no writable descriptor",
            true,
            |x| {
                let ch = Chain::default().push(getattr_bytes());
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "writable-before-readable",
            "writable descriptor first, request after it",
            true,
            |x| {
                let ch = Chain::default()
                    .push(hdr(OUT_HEADER_LEN))
                    .push(getattr_bytes());
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "in-len-too-big",
            "fuse_in_header.len = 1 MiB on a 56-byte request",
            false,
            |x| {
                Ok(expect_error(
                    &x.send(&getattr_req(ROOT_ID).with_len(1 << 20), ATTR_LEN)?,
                ))
            },
        ),
        c(
            "in-len-too-small",
            "fuse_in_header.len = 8, shorter than the header",
            false,
            |x| {
                Ok(expect_error(
                    &x.send(&getattr_req(ROOT_ID).with_len(8), ATTR_LEN)?,
                ))
            },
        ),
        c(
            "truncated-header",
            "readable part of 20 bytes, half a fuse_in_header",
            true,
            |x| {
                let mut b = getattr_req(ROOT_ID).encode(next_unique());
                b.truncate(20);
                let ch = Chain::default()
                    .push(Segment::Readable { data: b, align: 16 })
                    .push(hdr(OUT_HEADER_LEN));
                Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
            },
        ),
        c(
            "truncated-args",
            "READ whose fuse_read_in is cut short",
            false,
            |x| {
                let r = Request::new(op::READ, ROOT_ID).bytes(&[0u8; 8]);
                Ok(expect_error(&x.send(&r, 4096)?))
            },
        ),
        c("unknown-opcode", "opcode 9999", false, |x| {
            Ok(expect_error(&x.send(&Request::new(9999, ROOT_ID), 64)?))
        }),
        c(
            "second-init",
            "a second FUSE_INIT on a live session",
            false,
            |x| {
                let r = Request::new(op::INIT, 0).arg(&InitIn {
                    major: 7,
                    minor: 31,
                    max_readahead: 0,
                    flags: 0,
                });
                Ok(expect_error(&x.send(&r, 80)?))
            },
        ),
        c(
            "init-major-6",
            "FUSE_INIT claiming protocol major 6 (re-init with an old ABI)",
            false,
            |x| {
                let r = Request::new(op::INIT, 0).arg(&InitIn {
                    major: 6,
                    minor: 0,
                    max_readahead: 0,
                    flags: 0,
                });
                Ok(expect_error(&x.send(&r, 80)?))
            },
        ),
        c(
            "unknown-nodeid",
            "GETATTR of node 0xdeadbeef, never looked up",
            false,
            |x| Ok(expect_error(&x.send(&getattr_req(0xdead_beef), ATTR_LEN)?)),
        ),
        c("nodeid-zero", "GETATTR of node 0", false, |x| {
            Ok(expect_error(&x.send(&getattr_req(0), ATTR_LEN)?))
        }),
        c(
            "unknown-fh",
            "READ with a file handle never opened",
            false,
            |x| {
                let a = x.session().lookup(ROOT_ID, b"a.txt")?;
                Ok(expect_error(&x.send(
                    &read_request(a.nodeid, 0x1234_5678, 0, 4096),
                    4096,
                )?))
            },
        ),
        c(
            "release-unknown-fh",
            "RELEASE of a handle never opened, then READ with it",
            false,
            |x| {
                let a = x.session().lookup(ROOT_ID, b"a.txt")?;
                let _ = x.send(
                    &Request::new(op::RELEASE, a.nodeid).arg(&ReleaseIn {
                        fh: 77,
                        ..Default::default()
                    }),
                    0,
                )?;
                Ok(expect_error(
                    &x.send(&read_request(a.nodeid, 77, 0, 16), 16)?,
                ))
            },
        ),
        c(
            "dir-fh-as-file-fh",
            "READ with a handle from OPENDIR",
            false,
            |x| {
                let fh = x.session().open(ROOT_ID, libc::O_RDONLY as u32, true)?.fh;
                Ok(expect_error(
                    &x.send(&read_request(ROOT_ID, fh, 0, 16), 16)?,
                ))
            },
        ),
        c(
            "forget-storm",
            "20,000 FORGETs and a BATCH_FORGET of unknown and root ids, nlookup 2^64-1",
            false,
            |x| {
                let q = x.h.device.queue(1)?;
                let mut sent = 0u64;
                for i in 0..20_000u64 {
                    let node = match i % 4 {
                        0 => ROOT_ID,
                        1 => 0,
                        2 => 0xdead_0000 + i,
                        _ => u64::MAX - i,
                    };
                    let r = Request::new(op::FORGET, node).arg(&ForgetIn { nlookup: u64::MAX });
                    let ch = Chain::default().push(Segment::Readable {
                        data: r.encode(next_unique()),
                        align: 16,
                    });
                    while q.free_descriptors() == 0 {
                        q.wait(ATTACK_WAIT)?;
                    }
                    q.submit(&ch)?;
                    sent += 1;
                }
                let mut batch = Request::new(op::BATCH_FORGET, 0).arg(&BatchForgetIn {
                    count: 1000,
                    dummy: 0,
                });
                for i in 0..1000u64 {
                    batch = batch.arg(&ForgetOne {
                        nodeid: if i % 2 == 0 { ROOT_ID } else { i << 20 },
                        nlookup: u64::MAX,
                    });
                }
                let ch = Chain::default().push(Segment::Readable {
                    data: batch.encode(next_unique()),
                    align: 16,
                });
                while q.free_descriptors() == 0 {
                    q.wait(ATTACK_WAIT)?;
                }
                q.submit(&ch)?;
                while q.in_flight() > 0 {
                    if q.wait(ATTACK_WAIT).is_err() {
                        break;
                    }
                }
                let lost = q.in_flight();
                q.abandon_in_flight();
                Ok(Finding {
                    observed: format!("{} forgets, {lost} unreturned", sent + 1),
                    ok: lost == 0,
                })
            },
        ),
        c(
            "read-4gib",
            "READ of 4 GiB - 1 into a 4 KiB buffer",
            false,
            |x| {
                let mut s = x.session();
                let a = s.lookup(ROOT_ID, b"a.txt")?;
                let fh = s.open(a.nodeid, libc::O_RDONLY as u32, false)?.fh;
                let o = x.send(&read_request(a.nodeid, fh, 0, u32::MAX), 4096)?;
                Ok(match &o {
                    Outcome::Reply(r) if r.errno() == 0 => Finding {
                        observed: format!("short read of {} bytes", r.body.len()),
                        ok: r.body.len() <= 4096,
                    },
                    _ => expect_error(&o),
                })
            },
        ),
        c(
            "write-beyond-buffer",
            "WRITE claiming 1 MiB with 100 bytes of payload",
            false,
            |x| {
                let (e, o) = x.session().create(
                    ROOT_ID,
                    b"w",
                    libc::S_IFREG | 0o644,
                    libc::O_RDWR as u32,
                )?;
                let r = Request::new(op::WRITE, e.nodeid)
                    .arg(&WriteIn {
                        fh: o.fh,
                        offset: 0,
                        size: 1 << 20,
                        ..Default::default()
                    })
                    .data(vec![7u8; 100]);
                let out = x.send(&r, 8)?;
                let size = std::fs::metadata(x.share().join("w"))
                    .map(|m| m.len())
                    .unwrap_or(0);
                let mut f = expect_error(&out);
                if let Outcome::Reply(r) = &out {
                    if r.errno() == 0 {
                        let n: u32 = r
                            .parse::<fuse_backend_rs::abi::fuse_abi::WriteOut>()
                            .map(|w| w.size)
                            .unwrap_or(0);
                        f = Finding {
                            observed: format!("wrote {n} (file {size} bytes)"),
                            ok: n <= 100 && size <= 100,
                        };
                    }
                }
                Ok(f)
            },
        ),
        c(
            "name-with-slash",
            "MKDIR \"d/sub\" and LOOKUP \"d/x\"",
            false,
            |x| {
                let m = expect_error(
                    &x.send(
                        &Request::new(op::MKDIR, ROOT_ID)
                            .arg(&fuse_backend_rs::abi::fuse_abi::MkdirIn {
                                mode: 0o755,
                                umask: 0,
                            })
                            .name(b"d/sub"),
                        ENTRY_LEN,
                    )?,
                );
                let l = expect_error(
                    &x.send(&Request::new(op::LOOKUP, ROOT_ID).name(b"d/x"), ENTRY_LEN)?,
                );
                let created = x.share().join("d/sub").exists();
                Ok(Finding {
                    observed: format!(
                        "mkdir {}, lookup {}{}",
                        m.observed,
                        l.observed,
                        if created { ", d/sub CREATED" } else { "" }
                    ),
                    ok: m.ok && l.ok && !created,
                })
            },
        ),
        c(
            "name-dotdot-escape",
            "MKDIR \"../escape\" and CREATE \"..\"",
            false,
            |x| {
                let m = expect_error(
                    &x.send(
                        &Request::new(op::MKDIR, ROOT_ID)
                            .arg(&fuse_backend_rs::abi::fuse_abi::MkdirIn {
                                mode: 0o755,
                                umask: 0,
                            })
                            .name(b"../escape"),
                        ENTRY_LEN,
                    )?,
                );
                let c = expect_error(
                    &x.send(
                        &Request::new(op::CREATE, ROOT_ID)
                            .arg(&fuse_backend_rs::abi::fuse_abi::CreateIn {
                                flags: libc::O_RDWR as u32,
                                mode: libc::S_IFREG | 0o644,
                                umask: 0,
                                fuse_flags: 0,
                            })
                            .name(b".."),
                        ENTRY_LEN + OPEN_LEN,
                    )?,
                );
                Ok(Finding {
                    observed: format!("mkdir {}, create {}", m.observed, c.observed),
                    ok: m.ok && c.ok,
                })
            },
        ),
        c(
            "name-with-nul",
            "CREATE \"ok\\0evil\" (embedded NUL)",
            false,
            |x| {
                let r = Request::new(op::CREATE, ROOT_ID)
                    .arg(&fuse_backend_rs::abi::fuse_abi::CreateIn {
                        flags: libc::O_RDWR as u32,
                        mode: libc::S_IFREG | 0o644,
                        umask: 0,
                        fuse_flags: 0,
                    })
                    .name(b"ok\0evil");
                let o = x.send(&r, ENTRY_LEN + OPEN_LEN)?;
                let made: Vec<String> = std::fs::read_dir(x.share())
                    .map_err(|e| Error::Io("read share", e))?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("ok"))
                    .collect();
                let mut f = expect_error(&o);
                if !made.is_empty() {
                    f.observed = format!("{}, created {:?}", f.observed, made);
                }
                Ok(f)
            },
        ),
        c(
            "name-without-nul",
            "LOOKUP whose name has no terminating NUL",
            false,
            |x| {
                Ok(expect_error(&x.send(
                    &Request::new(op::LOOKUP, ROOT_ID).bytes(b"a.txt"),
                    ENTRY_LEN,
                )?))
            },
        ),
        c(
            "name-4096",
            "LOOKUP and MKDIR of a 4096-byte name",
            false,
            |x| {
                let long = vec![b'n'; 4096];
                let l = expect_error(
                    &x.send(&Request::new(op::LOOKUP, ROOT_ID).name(&long), ENTRY_LEN)?,
                );
                let m = expect_error(
                    &x.send(
                        &Request::new(op::MKDIR, ROOT_ID)
                            .arg(&fuse_backend_rs::abi::fuse_abi::MkdirIn {
                                mode: 0o755,
                                umask: 0,
                            })
                            .name(&long),
                        ENTRY_LEN,
                    )?,
                );
                Ok(Finding {
                    observed: format!("lookup {}, mkdir {}", l.observed, m.observed),
                    ok: l.ok && m.ok,
                })
            },
        ),
        c(
            "symlink-absolute-name",
            "SYMLINK whose *name* is an absolute host path outside the share",
            false,
            |x| {
                let evil = x.h.scratch().join("outside").join("evil");
                let o = x.send(
                    &symlink_request(ROOT_ID, evil.as_os_str().as_encoded_bytes(), b"/etc/passwd"),
                    ENTRY_LEN,
                )?;
                let mut f = expect_error(&o);
                if std::fs::symlink_metadata(&evil).is_ok() {
                    f.observed.push_str(", symlink created OUTSIDE");
                    f.ok = false;
                }
                Ok(f)
            },
        ),
        c(
            "symlink-out-then-lookup",
            "SYMLINK \"esc\" -> \"..\" (allowed), then LOOKUP \"outside\" through it",
            false,
            |x| {
                let mut s = x.session();
                let l = s.symlink(ROOT_ID, b"esc", b"..")?;
                let o = x.send(
                    &Request::new(op::LOOKUP, l.nodeid).name(b"outside"),
                    ENTRY_LEN,
                )?;
                Ok(expect_error(&o))
            },
        ),
        c(
            "lookup-dotdot-at-root",
            "LOOKUP \"..\" and \".\" at the root",
            false,
            |x| {
                let share_ino = std::fs::metadata(x.share())
                    .map_err(|e| Error::Io("stat share", e))?
                    .ino();
                let mut obs = Vec::new();
                let mut ok = true;
                for name in [&b".."[..], b"."] {
                    match x.send(&Request::new(op::LOOKUP, ROOT_ID).name(name), ENTRY_LEN)? {
                        Outcome::Reply(r) if r.errno() == 0 => {
                            let e: fuse_backend_rs::abi::fuse_abi::EntryOut = r.parse()?;
                            let same = e.attr.ino == share_ino;
                            ok &= same;
                            obs.push(format!(
                                "{} -> {}",
                                String::from_utf8_lossy(name),
                                if same { "root" } else { "PARENT OF SHARE" }
                            ));
                        }
                        o => obs.push(format!(
                            "{} -> {}",
                            String::from_utf8_lossy(name),
                            expect_error(&o).observed
                        )),
                    }
                }
                Ok(Finding {
                    observed: obs.join(", "),
                    ok,
                })
            },
        ),
        c(
            "rename-out",
            "RENAME a.txt to \"../outside/stolen\"",
            false,
            |x| {
                let r = Request::new(op::RENAME, ROOT_ID)
                    .arg(&fuse_backend_rs::abi::fuse_abi::RenameIn { newdir: ROOT_ID })
                    .name(b"a.txt")
                    .name(b"../outside/stolen");
                Ok(expect_error(&x.send(&r, 0)?))
            },
        ),
        c(
            "mknod-device-then-open",
            "MKNOD of /dev/null's char device, then OPEN it",
            false,
            |x| {
                let m = x.send(
                    &mknod_request(ROOT_ID, b"null", libc::S_IFCHR | 0o666, (1 << 8) | 3),
                    ENTRY_LEN,
                )?;
                match m {
                    Outcome::Reply(r) if r.errno() == 0 => {
                        let e: fuse_backend_rs::abi::fuse_abi::EntryOut = r.parse()?;
                        let o = x.send(
                            &Request::new(op::OPEN, e.nodeid).arg(
                                &fuse_backend_rs::abi::fuse_abi::OpenIn {
                                    flags: libc::O_RDWR as u32,
                                    fuse_flags: 0,
                                },
                            ),
                            OPEN_LEN,
                        )?;
                        let f = expect_error(&o);
                        Ok(Finding {
                            observed: format!("mknod OK, open {}", f.observed),
                            ok: f.ok,
                        })
                    }
                    o => {
                        let f = expect_error(&o);
                        Ok(Finding {
                            observed: format!("mknod {}", f.observed),
                            ok: f.ok,
                        })
                    }
                }
            },
        ),
        c(
            "setattr-unknown-node",
            "SETATTR (chmod 4777) of a node never looked up",
            false,
            |x| {
                let a = fuse_backend_rs::abi::fuse_abi::SetattrIn {
                    valid: 1,
                    mode: 0o4777,
                    ..Default::default()
                };
                Ok(expect_error(&x.send(
                    &Request::new(op::SETATTR, 0x4242_4242).arg(&a),
                    ATTR_LEN,
                )?))
            },
        ),
        c(
            "readdir-bad-offset",
            "READDIR with a handle never opened and offset 2^63",
            false,
            |x| {
                let r = Request::new(op::READDIR, ROOT_ID).arg(&ReadIn {
                    fh: 999,
                    offset: 1 << 63,
                    size: 4096,
                    ..Default::default()
                });
                Ok(expect_error(&x.send(&r, 4096)?))
            },
        ),
        Case {
            name: "fd-exhaustion",
            attack: "LOOKUP+OPEN 1200 files without RELEASE under RLIMIT_NOFILE=1024",
            ring: false,
            rlimit_nofile: Some(FD_LIMIT),
            run: |x| {
                let many = x.session().lookup(ROOT_ID, b"many")?.nodeid;
                let mut errs = std::collections::BTreeMap::new();
                let mut opened = 0;
                for i in 0..FD_FILES {
                    let name = format!("f{i}");
                    let o = x.send(
                        &Request::new(op::LOOKUP, many).name(name.as_bytes()),
                        ENTRY_LEN,
                    )?;
                    let node = match &o {
                        Outcome::Reply(r) if r.errno() == 0 => {
                            r.parse::<fuse_backend_rs::abi::fuse_abi::EntryOut>()?
                                .nodeid
                        }
                        Outcome::Reply(r) => {
                            *errs.entry(errno_name(r.errno())).or_insert(0) += 1;
                            continue;
                        }
                        Outcome::NoReply => {
                            return Ok(Finding {
                                observed: format!("no reply after {opened} opens"),
                                ok: false,
                            })
                        }
                    };
                    match x.send(
                        &Request::new(op::OPEN, node).arg(
                            &fuse_backend_rs::abi::fuse_abi::OpenIn {
                                flags: libc::O_RDONLY as u32,
                                fuse_flags: 0,
                            },
                        ),
                        OPEN_LEN,
                    )? {
                        Outcome::Reply(r) if r.errno() == 0 => opened += 1,
                        Outcome::Reply(r) => *errs.entry(errno_name(r.errno())).or_insert(0) += 1,
                        Outcome::NoReply => {
                            return Ok(Finding {
                                observed: format!("no reply after {opened} opens"),
                                ok: false,
                            })
                        }
                    }
                }
                let errs: Vec<String> = errs.iter().map(|(k, v)| format!("{v}x{k}")).collect();
                Ok(Finding {
                    observed: format!(
                        "{opened} opened, then {}",
                        if errs.is_empty() {
                            "no error".into()
                        } else {
                            errs.join(" ")
                        }
                    ),
                    ok: !errs.is_empty(),
                })
            },
        },
    ]
}

/// Runs one case against a fresh `kind` daemon.
pub fn run_case(kind: DaemonKind, case: &Case) -> Result<CaseResult> {
    let opts = HarnessOptions {
        rlimit_nofile: case.rlimit_nofile,
        ..Default::default()
    };
    let mut h = Harness::start(kind, &opts, populate)?;
    Session::new(h.device.queue(1)?).init()?;
    let finding = match (case.run)(&mut Ctx { h: &mut h }) {
        Ok(f) => f,
        Err(e) => Finding {
            observed: format!("driver error: {e}"),
            ok: false,
        },
    };
    let after = probe(&mut h);
    let escaped = h.escaped();
    if after != After::Answers {
        log::warn!(
            "{} after {}: {after}; daemon log:\n{}",
            kind.name(),
            case.name,
            h.daemon.log_tail()
        );
    }
    let after_ok = match after {
        After::Answers => true,
        After::HiprioOnly | After::Exited(_) => case.ring,
        After::Silent | After::Crashed(_) | After::RootLost(_) => false,
    };
    Ok(CaseResult {
        name: case.name,
        pass: finding.ok && after_ok && escaped.is_empty(),
        finding,
        after,
        escaped,
    })
}

/// Is the daemon alive and answering? GETATTR on queue 1, then on hiprio.
fn probe(h: &mut Harness) -> After {
    for q in [1usize, 0] {
        if let Some(a) = dead(h) {
            return a;
        }
        let Ok(queue) = h.device.queue(q) else {
            continue;
        };
        // Chains the daemon dropped would otherwise hold their buffers.
        queue.abandon_in_flight();
        let mut s = Session::new(queue);
        s.timeout = PROBE_WAIT;
        match s.getattr(ROOT_ID) {
            Ok(_) if q == 1 => return After::Answers,
            Ok(_) => return After::HiprioOnly,
            Err(Error::Fuse { errno, .. }) => return After::RootLost(errno),
            Err(_) => {}
        }
    }
    dead(h).unwrap_or(After::Silent)
}

fn dead(h: &mut Harness) -> Option<After> {
    use std::os::unix::process::ExitStatusExt;
    h.daemon.status().map(|st| match st.signal() {
        Some(sig) => After::Crashed(sig),
        None => After::Exited(st.code().unwrap_or(-1)),
    })
}

/// Runs the battery against each daemon and renders a Markdown table.
pub fn compare(kinds: &[DaemonKind], filter: Option<&str>) -> Result<String> {
    let mut avail = Vec::new();
    for &k in kinds {
        match Harness::available(k) {
            Ok(_) => avail.push(k),
            Err(Unavailable::Skip(m) | Unavailable::Fail(m)) => {
                eprintln!("skipping {}: {m}", k.name())
            }
        }
    }
    let mut t = String::new();
    let _ = write!(t, "| case | attack |");
    for k in &avail {
        let _ = write!(t, " {} |", k.name());
    }
    let _ = write!(t, "\n|---|---|");
    for _ in &avail {
        let _ = write!(t, "---|");
    }
    t.push('\n');
    for case in cases() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let _ = write!(t, "| {} | {} |", case.name, case.attack);
        for &k in &avail {
            let cell = match run_case(k, &case) {
                Ok(r) => r.cell(),
                Err(e) => format!("**FAIL** harness: {e}"),
            };
            let _ = write!(t, " {} |", cell.replace('|', "\\|"));
        }
        t.push('\n');
    }
    Ok(t)
}
