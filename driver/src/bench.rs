//! Side-by-side benchmark workloads.
//!
//! Every workload is a small state machine per in-flight "slot": each step
//! sends one FUSE request and the reply decides the next. The engine keeps
//! `depth` slots busy on a queue, publishing new chains and kicking once per
//! batch of completions, as a guest under load does. Data buffers for READ
//! and WRITE are placed in guest memory once per slot and reused, and only
//! reply headers are copied out, so the figures measure the daemon rather
//! than this driver's memcpy.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, ForgetIn, GetattrIn, OpenIn, OpenOut, ReadIn, ReleaseIn, WriteIn,
};

use crate::chain::{Chain, Segment, OUT_HEADER_LEN};
use crate::error::{Error, Result};
use crate::fuse::{op, parse_dirents, Reply, Request, ROOT_ID};
use crate::memory::{Block, PAGE_SIZE};
use crate::queue::Queue;
use crate::session::{next_unique, ENTRY_LEN, OPEN_LEN};

/// Bound on each wait inside a benchmark.
const WAIT: Duration = Duration::from_secs(30);
/// Chunk size for READDIRPLUS (what Linux asks for: one page... we use 64 KiB
/// as the 6.x driver does with max_pages).
const DIR_CHUNK: u32 = 64 << 10;

/// The workloads of the benchmark table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// GETATTR of the root.
    Getattr,
    /// LOOKUP of a file, then FORGET of the node.
    LookupForget,
    /// OPEN, READ 4 KiB, RELEASE.
    OpenRead4k,
    /// Sequential READ in 1 MiB requests through one open handle.
    SeqRead1m,
    /// WRITE in 1 MiB requests through one open handle.
    Write1m,
    /// CREATE, RELEASE, UNLINK, FORGET.
    CreateUnlink,
    /// OPENDIR, READDIRPLUS until the end, RELEASEDIR over a big directory.
    Readdirplus,
}

impl Workload {
    /// All workloads in table order.
    pub const ALL: [Workload; 7] = [
        Workload::Getattr,
        Workload::LookupForget,
        Workload::OpenRead4k,
        Workload::SeqRead1m,
        Workload::Write1m,
        Workload::CreateUnlink,
        Workload::Readdirplus,
    ];

    /// Row label.
    pub fn label(self) -> &'static str {
        match self {
            Workload::Getattr => "getattr",
            Workload::LookupForget => "lookup+forget",
            Workload::OpenRead4k => "open+read 4 KiB+release",
            Workload::SeqRead1m => "sequential read 1 MiB",
            Workload::Write1m => "write 1 MiB",
            Workload::CreateUnlink => "create+unlink",
            Workload::Readdirplus => "readdirplus 10k entries",
        }
    }

    /// Whether MB/s is the meaningful figure.
    pub fn is_bulk(self) -> bool {
        matches!(self, Workload::SeqRead1m | Workload::Write1m)
    }
}

/// Node ids and handles a workload needs, prepared by [`prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The 4 KiB file's node (LOOKUP name `small`).
    pub small: u64,
    /// The big file's node and a read handle.
    pub big: u64,
    /// Read handle on the big file.
    pub big_fh: u64,
    /// Size of the big file.
    pub big_size: u64,
    /// The write target's node and a write handle.
    pub wfile: u64,
    /// Write handle.
    pub wfile_fh: u64,
    /// The big directory's node.
    pub bigdir: u64,
    /// Prefix for names this daemon creates (distinct per daemon).
    pub prefix: String,
}

/// Looks up and opens what the workloads need on one queue.
pub fn prepare(q: &mut Queue, prefix: &str) -> Result<Prepared> {
    let mut s = crate::Session::new(q);
    let small = s.lookup(ROOT_ID, b"small")?.nodeid;
    let b = s.lookup(ROOT_ID, b"big")?;
    let big_fh = s.open(b.nodeid, libc::O_RDONLY as u32, false)?.fh;
    let wname = format!("{prefix}-write");
    let (w, wo) = s.create(
        ROOT_ID,
        wname.as_bytes(),
        libc::S_IFREG | 0o644,
        libc::O_RDWR as u32,
    )?;
    let bigdir = s.lookup(ROOT_ID, b"bigdir")?.nodeid;
    Ok(Prepared {
        small,
        big: b.nodeid,
        big_fh,
        big_size: b.attr.size,
        wfile: w.nodeid,
        wfile_fh: wo.fh,
        bigdir,
        prefix: prefix.to_string(),
    })
}

/// Files the workloads use, created in `share`: `small` (4 KiB), `big`
/// (`big_mib` MiB), `bigdir/` with `entries` empty files.
pub fn populate(share: &std::path::Path, big_mib: u64, entries: usize) -> std::io::Result<()> {
    std::fs::write(share.join("small"), vec![b's'; 4096])?;
    let f = File::create(share.join("big"))?;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    for i in 0..big_mib {
        f.write_all_at(&chunk, i << 20)?;
    }
    let d = share.join("bigdir");
    std::fs::create_dir_all(&d)?;
    for i in 0..entries {
        let p = d.join(format!("entry-{i:05}"));
        if !p.exists() {
            File::create(p)?;
        }
    }
    Ok(())
}

/// `heldir/` in `share` with `n` empty files, for [`hold_lookups`].
pub fn populate_held(share: &std::path::Path, n: usize) -> std::io::Result<()> {
    let d = share.join("heldir");
    std::fs::create_dir_all(&d)?;
    for i in 0..n {
        let p = d.join(format!("h{i:06}"));
        if !p.exists() {
            File::create(p)?;
        }
    }
    Ok(())
}

/// What a daemon held after [`hold_lookups`].
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// Lookups that succeeded (and are held: not forgotten yet).
    pub ok: u64,
    /// Lookups that failed (e.g. EMFILE when a daemon ran out of
    /// descriptors), with the first error number.
    pub failed: u64,
    pub first_errno: Option<i32>,
}

/// Looks up the `n` files of `heldir/` one by one and keeps every one (no
/// FORGET), as a guest walking a big tree does; `after` is called while
/// all are held (to read the daemon's descriptors and memory); then all
/// are forgotten again.
pub fn hold_lookups(q: &mut Queue, n: usize, after: impl FnOnce(&Held)) -> Result<Held> {
    let mut s = crate::Session::new(q);
    let dir = s.lookup(ROOT_ID, b"heldir")?.nodeid;
    let mut nodes = Vec::with_capacity(n);
    let mut held = Held {
        ok: 0,
        failed: 0,
        first_errno: None,
    };
    for i in 0..n {
        match s.lookup(dir, format!("h{i:06}").as_bytes()) {
            Ok(e) => {
                nodes.push(e.nodeid);
                held.ok += 1;
            }
            Err(Error::Fuse { errno, .. }) => {
                held.failed += 1;
                held.first_errno.get_or_insert(errno);
            }
            Err(e) => return Err(e),
        }
    }
    after(&held);
    for node in nodes {
        s.forget(node, 1)?;
    }
    s.forget(dir, 1)?;
    Ok(held)
}

/// Figures of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measurement {
    /// Completed operations.
    pub ops: u64,
    /// Payload bytes moved (READ/WRITE data).
    pub bytes: u64,
    /// Wall time.
    pub secs: f64,
}

impl Measurement {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
    /// Megabytes (10^6) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }
}

#[derive(Default)]
struct Slot {
    step: u32,
    node: u64,
    fh: u64,
    name: String,
    dir_off: u64,
    bytes: u64,
    data: Option<Block>,
}

enum Next {
    Send(Chain),
    Done,
}

struct Engine<'a> {
    w: Workload,
    p: &'a Prepared,
    seq_off: u64,
    created: u64,
    slot_id: u64,
}

impl Engine<'_> {
    /// The next step of `slot`'s current operation, given the last reply.
    fn advance(&mut self, slot: &mut Slot, last: Option<&Reply>) -> Result<Next> {
        if let Some(r) = last {
            if r.used_len > 0 && r.errno() != 0 {
                return Err(Error::Fuse {
                    errno: r.errno(),
                    name: crate::error::errno_name(r.errno()),
                    opcode: 0,
                });
            }
        }
        let step = slot.step;
        slot.step += 1;
        let u = next_unique();
        let std_chain = |req: Request, body: u32| req.chain(u, body);
        let forget = |node: u64| {
            Chain::default().push(Segment::Readable {
                data: Request::new(op::FORGET, node)
                    .arg(&ForgetIn { nlookup: 1 })
                    .encode(u),
                align: 16,
            })
        };
        let p = self.p;
        Ok(match (self.w, step) {
            (Workload::Getattr, 0) => Next::Send(std_chain(
                Request::new(op::GETATTR, ROOT_ID).arg(&GetattrIn::default()),
                crate::session::ATTR_LEN,
            )),
            (Workload::LookupForget, 0) => Next::Send(std_chain(
                Request::new(op::LOOKUP, ROOT_ID).name(b"small"),
                ENTRY_LEN,
            )),
            (Workload::LookupForget, 1) => {
                let e: EntryOut = last.expect("reply").parse()?;
                Next::Send(forget(e.nodeid))
            }
            (Workload::OpenRead4k, 0) => Next::Send(std_chain(
                Request::new(op::OPEN, p.small).arg(&OpenIn {
                    flags: libc::O_RDONLY as u32,
                    fuse_flags: 0,
                }),
                OPEN_LEN,
            )),
            (Workload::OpenRead4k, 1) => {
                slot.fh = last.expect("reply").parse::<OpenOut>()?.fh;
                Next::Send(read_chain(u, p.small, slot.fh, 0, 4096, slot))
            }
            (Workload::OpenRead4k, 2) => {
                slot.bytes += reply_payload(last);
                Next::Send(std_chain(
                    Request::new(op::RELEASE, p.small).arg(&ReleaseIn {
                        fh: slot.fh,
                        ..Default::default()
                    }),
                    0,
                ))
            }
            (Workload::SeqRead1m, 0) => {
                let off = self.seq_off;
                self.seq_off = (self.seq_off + (1 << 20)) % p.big_size.max(1 << 20);
                Next::Send(read_chain(u, p.big, p.big_fh, off, 1 << 20, slot))
            }
            (Workload::SeqRead1m, 1) => {
                slot.bytes += reply_payload(last);
                Next::Done
            }
            (Workload::Write1m, 0) => {
                let off = self.seq_off;
                self.seq_off = (self.seq_off + (1 << 20)) % (64 << 20);
                let data = slot.data.expect("slot buffer");
                let hdr = Request::new(op::WRITE, p.wfile)
                    .arg(&WriteIn {
                        fh: p.wfile_fh,
                        offset: off,
                        size: 1 << 20,
                        ..Default::default()
                    })
                    .with_len(40 + 40 + (1 << 20))
                    .encode(u);
                Next::Send(
                    Chain::default()
                        .push(Segment::Readable {
                            data: hdr,
                            align: 16,
                        })
                        .push(Segment::Raw {
                            addr: data.addr,
                            len: 1 << 20,
                            writable: false,
                        })
                        .push(Segment::Writable {
                            len: OUT_HEADER_LEN,
                            align: 16,
                        })
                        .push(Segment::Writable { len: 8, align: 16 }),
                )
            }
            (Workload::Write1m, 1) => {
                slot.bytes += 1 << 20;
                Next::Done
            }
            (Workload::CreateUnlink, 0) => {
                self.created += 1;
                slot.name = format!("{}-c{}-{}", p.prefix, self.slot_id, self.created);
                Next::Send(std_chain(
                    Request::new(op::CREATE, ROOT_ID)
                        .arg(&CreateIn {
                            flags: libc::O_RDWR as u32,
                            mode: libc::S_IFREG | 0o644,
                            umask: 0,
                            fuse_flags: 0,
                        })
                        .name(slot.name.as_bytes()),
                    ENTRY_LEN + OPEN_LEN,
                ))
            }
            (Workload::CreateUnlink, 1) => {
                let r = last.expect("reply");
                let e: EntryOut = r.parse()?;
                slot.node = e.nodeid;
                slot.fh = r.parse_at::<OpenOut>(ENTRY_LEN as usize)?.fh;
                Next::Send(std_chain(
                    Request::new(op::RELEASE, slot.node).arg(&ReleaseIn {
                        fh: slot.fh,
                        ..Default::default()
                    }),
                    0,
                ))
            }
            (Workload::CreateUnlink, 2) => Next::Send(std_chain(
                Request::new(op::UNLINK, ROOT_ID).name(slot.name.as_bytes()),
                0,
            )),
            (Workload::CreateUnlink, 3) => Next::Send(forget(slot.node)),
            (Workload::Readdirplus, 0) => Next::Send(std_chain(
                Request::new(op::OPENDIR, p.bigdir).arg(&OpenIn {
                    flags: libc::O_RDONLY as u32,
                    fuse_flags: 0,
                }),
                OPEN_LEN,
            )),
            (Workload::Readdirplus, 1) => {
                slot.fh = last.expect("reply").parse::<OpenOut>()?.fh;
                slot.dir_off = 0;
                Next::Send(self.readdir(u, slot))
            }
            (Workload::Readdirplus, _) if slot.fh != 0 => {
                let r = last.expect("reply");
                if r.body.is_empty() {
                    let fh = std::mem::take(&mut slot.fh);
                    Next::Send(std_chain(
                        Request::new(op::RELEASEDIR, p.bigdir).arg(&ReleaseIn {
                            fh,
                            ..Default::default()
                        }),
                        0,
                    ))
                } else {
                    let ents = parse_dirents(&r.body, true)?;
                    slot.bytes += ents.len() as u64;
                    slot.dir_off = ents.last().map_or(slot.dir_off, |e| e.off);
                    Next::Send(self.readdir(u, slot))
                }
            }
            _ => Next::Done,
        })
    }

    fn readdir(&self, u: u64, slot: &Slot) -> Chain {
        Request::new(op::READDIRPLUS, self.p.bigdir)
            .arg(&ReadIn {
                fh: slot.fh,
                offset: slot.dir_off,
                size: DIR_CHUNK,
                ..Default::default()
            })
            .chain(u, DIR_CHUNK)
    }
}

/// READ with the reply body landing in the slot's reusable page-aligned
/// buffer.
fn read_chain(u: u64, node: u64, fh: u64, offset: u64, size: u32, slot: &Slot) -> Chain {
    let data = slot.data.expect("slot buffer");
    let req = Request::new(op::READ, node).arg(&ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    });
    Chain::request_into(req.encode(u), data.addr, size)
}

/// Payload bytes of a READ reply, from the out header's length.
fn reply_payload(last: Option<&Reply>) -> u64 {
    last.map_or(0, |r| {
        u64::from(r.header.len.saturating_sub(OUT_HEADER_LEN))
    })
}

/// Runs `ops` operations of `w` on `q` with `depth` in flight.
pub fn run(
    q: &mut Queue,
    p: &Prepared,
    w: Workload,
    depth: usize,
    ops: u64,
    slot_base: u64,
) -> Result<Measurement> {
    let mem = q.mem().clone();
    let bulk = matches!(
        w,
        Workload::SeqRead1m | Workload::Write1m | Workload::OpenRead4k
    );
    q.set_copy_limit(if bulk { 64 } else { usize::MAX });
    let buf_len: u64 = if bulk { 1 << 20 } else { 0 };
    let mut slots: Vec<Slot> = (0..depth.max(1))
        .map(|_| -> Result<Slot> {
            let mut s = Slot::default();
            if buf_len > 0 {
                let b = mem.alloc(buf_len, PAGE_SIZE)?;
                if w == Workload::Write1m {
                    mem.write(b.addr, &vec![0xa5u8; buf_len as usize])?;
                }
                s.data = Some(b);
            }
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let mut eng = Engine {
        w,
        p,
        seq_off: 0,
        created: 0,
        slot_id: slot_base,
    };
    let result = (|| {
        let mut by_token: HashMap<u64, usize> = HashMap::new();
        let mut started = 0u64;
        let mut done = 0u64;
        let mut bytes = 0u64;
        let t0 = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            if started == ops {
                break;
            }
            started += 1;
            if let Next::Send(ch) = eng.advance(slot, None)? {
                by_token.insert(q.publish(&ch)?, i);
            }
        }
        q.notify()?;
        while !by_token.is_empty() {
            for c in q.wait(WAIT)? {
                let i = by_token
                    .remove(&c.token)
                    .ok_or(Error::UnknownHead(u32::from(c.head)))?;
                let reply = Reply::decode(&c)?;
                let slot = &mut slots[i];
                let mut next = eng.advance(slot, Some(&reply))?;
                if let Next::Done = next {
                    done += 1;
                    bytes += std::mem::take(&mut slot.bytes);
                    slot.step = 0;
                    if started < ops {
                        started += 1;
                        next = eng.advance(slot, None)?;
                    }
                }
                if let Next::Send(ch) = next {
                    by_token.insert(q.publish(&ch)?, i);
                }
            }
            q.notify()?;
        }
        Ok(Measurement {
            ops: done,
            bytes,
            secs: t0.elapsed().as_secs_f64(),
        })
    })();
    for s in &slots {
        if let Some(b) = s.data {
            mem.free(b);
        }
    }
    result
}

/// The host's own ceiling for the read rows: the same request size with
/// `pread` from the page cache (and open/close for the 4 KiB row), into
/// `depth` buffers in turn: the memory a run at that depth fills (32 MiB of
/// buffers at depth 32 do not stay in the CPU caches as one does).
pub fn host_ceiling(
    share: &std::path::Path,
    w: Workload,
    ops: u64,
    depth: usize,
) -> Option<Measurement> {
    let mut bufs: Vec<AlignedBuf> = (0..depth.max(1))
        .map(|_| AlignedBuf::new(1 << 20))
        .collect();
    let t0 = Instant::now();
    let mut bytes = 0u64;
    match w {
        Workload::OpenRead4k => {
            for i in 0..ops {
                let f = File::open(share.join("small")).ok()?;
                let buf = &mut bufs[i as usize % depth.max(1)];
                bytes += f.read_at(&mut buf.as_mut()[..4096], 0).ok()? as u64;
            }
        }
        Workload::SeqRead1m => {
            let f = File::open(share.join("big")).ok()?;
            let size = f.metadata().ok()?.len().max(1 << 20);
            let mut off = 0u64;
            for i in 0..ops {
                let buf = &mut bufs[i as usize % depth.max(1)];
                bytes += f.read_at(buf.as_mut(), off).ok()? as u64;
                off = (off + (1 << 20)) % size;
            }
        }
        _ => return None,
    }
    Some(Measurement {
        ops,
        bytes,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// A page-aligned heap buffer (reads into it run at full copy speed).
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, PAGE_SIZE as usize).expect("layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        AlignedBuf { ptr, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of len bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            std::alloc::Layout::from_size_align(self.len, PAGE_SIZE as usize).expect("layout");
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// Median of a non-empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
