//! The crash journal: the guest's node ids, open files and directory
//! streams, kept current as the session goes.
//!
//! A live handover reads these tables out of a paused fsd; after a crash
//! there is no fsd to read them from. So each change that gives the guest
//! a new id, or takes one back, is appended here before the guest is told
//! of it: a node id is journaled before the reply that names it, so the
//! guest never holds an id a recovering fsd does not know. Records go into
//! shared memory ([`super::shm`]) with plain stores; a record counts once
//! the header's `used` word covers it, so a crash mid-record loses only
//! that record, whose reply never left.
//!
//! Two buffers: when the active one is full, its records are folded (one
//! record per live node, file, directory and grant read) into the other,
//! which is then committed by raising its generation. A crash during the
//! fold leaves the older buffer whole. Recovery reads the buffer with the
//! higher generation.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::shm::SharedMap;

const MAGIC: u64 = 0x4c4e_524a_4453_4631; // "1FSDJRNL"
/// The record format; a recovering fsd refuses a journal of another.
pub const JOURNAL_VERSION: u64 = 1;
const HEADER: usize = 64;
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_GENERATION: usize = 16;
const OFF_USED: usize = 24;
/// Set when a fold did not fit: the journal no longer covers the session
/// and a recovery from it is refused.
const OFF_BROKEN: usize = 32;
/// Bytes per buffer (sparse memfd: only what is written costs memory).
pub const BUFFER_SIZE: usize = 256 << 20;
/// Longest file handle a record carries (MAX_HANDLE_SZ).
const MAX_HANDLE: usize = 128;

/// One change of the session's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A node new to the guest (or a reused id naming another inode), with
    /// what reopens it: a file handle on mount `mnt`, or none when the
    /// inode is held by descriptor (it cannot be recovered).
    NodeNew {
        node: u64,
        n: JNode,
    },
    /// More lookups of a known node.
    NodeRef {
        node: u64,
        n: u64,
    },
    /// Lookups given back (FORGET); the node goes at zero.
    NodeForget {
        node: u64,
        n: u64,
    },
    /// An open file: its handle, inode and open flags.
    HandleOpen {
        handle: u64,
        inode: u64,
        flags: u32,
    },
    HandleClose {
        handle: u64,
    },
    /// An open directory stream.
    DirOpen {
        handle: u64,
        inode: u64,
    },
    DirClose {
        handle: u64,
    },
    /// A new FUSE session: nothing before counts.
    Reset,
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; 4]);
        let put = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        match self {
            Record::NodeNew { node, n } => {
                out.push(1);
                for v in [*node, n.dev, n.ino, n.mnt, n.lookups] {
                    put(out, v);
                }
                out.extend_from_slice(&n.mode.to_le_bytes());
                match &n.handle {
                    Some((typ, bytes)) => {
                        out.extend_from_slice(&typ.to_le_bytes());
                        out.push(bytes.len().min(MAX_HANDLE) as u8);
                        out.extend_from_slice(&bytes[..bytes.len().min(MAX_HANDLE)]);
                    }
                    None => {
                        out.extend_from_slice(&0i32.to_le_bytes());
                        out.push(0xff);
                    }
                }
            }
            Record::NodeRef { node, n } => {
                out.push(2);
                put(out, *node);
                put(out, *n);
            }
            Record::NodeForget { node, n } => {
                out.push(3);
                put(out, *node);
                put(out, *n);
            }
            Record::HandleOpen {
                handle,
                inode,
                flags,
            } => {
                out.push(4);
                put(out, *handle);
                put(out, *inode);
                out.extend_from_slice(&flags.to_le_bytes());
            }
            Record::HandleClose { handle } => {
                out.push(5);
                put(out, *handle);
            }
            Record::DirOpen { handle, inode } => {
                out.push(6);
                put(out, *handle);
                put(out, *inode);
            }
            Record::DirClose { handle } => {
                out.push(7);
                put(out, *handle);
            }
            Record::Reset => out.push(8),
        }
        // Records are 8-byte aligned, so that `used` always is.
        while (out.len() - start) % 8 != 0 {
            out.push(0);
        }
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes the records of `bytes`; an error names the first bad one.
    fn decode_all(bytes: &[u8]) -> io::Result<Vec<Record>> {
        let bad = |what: &str| io::Error::other(format!("journal: {what}"));
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let len = u32::from_le_bytes(
                bytes
                    .get(pos..pos + 4)
                    .ok_or_else(|| bad("cut record"))?
                    .try_into()
                    .unwrap(),
            ) as usize;
            if len < 8 || len % 8 != 0 || pos + len > bytes.len() {
                return Err(bad("record length"));
            }
            let mut r = Cursor {
                b: &bytes[pos + 5..pos + len],
            };
            let rec = match bytes[pos + 4] {
                1 => {
                    let (node, dev, ino, mnt, lookups) =
                        (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
                    let mode = r.u32()?;
                    let typ = r.u32()? as i32;
                    let hlen = r.u8()?;
                    let handle = match hlen {
                        0xff => None,
                        n => Some((typ, r.bytes(n as usize)?.to_vec())),
                    };
                    Record::NodeNew {
                        node,
                        n: JNode {
                            dev,
                            ino,
                            mnt,
                            mode,
                            lookups,
                            handle,
                        },
                    }
                }
                2 => Record::NodeRef {
                    node: r.u64()?,
                    n: r.u64()?,
                },
                3 => Record::NodeForget {
                    node: r.u64()?,
                    n: r.u64()?,
                },
                4 => Record::HandleOpen {
                    handle: r.u64()?,
                    inode: r.u64()?,
                    flags: r.u32()?,
                },
                5 => Record::HandleClose { handle: r.u64()? },
                6 => Record::DirOpen {
                    handle: r.u64()?,
                    inode: r.u64()?,
                },
                7 => Record::DirClose { handle: r.u64()? },
                8 => Record::Reset,
                t => return Err(bad(&format!("record type {t}"))),
            };
            out.push(rec);
            pos += len;
        }
        Ok(out)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl Cursor<'_> {
    fn bytes(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.b.len() < n {
            return Err(io::Error::other("journal: record too short"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
}

/// A node as the journal knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JNode {
    pub dev: u64,
    pub ino: u64,
    pub mnt: u64,
    pub mode: u32,
    pub lookups: u64,
    pub handle: Option<(i32, Vec<u8>)>,
}

/// The session the records describe, folded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    pub nodes: HashMap<u64, JNode>,
    pub handles: HashMap<u64, (u64, u32)>,
    pub dirs: HashMap<u64, u64>,
}

impl Folded {
    pub fn apply(&mut self, r: Record) {
        match r {
            Record::NodeNew { node, n } => {
                self.nodes.insert(node, n);
            }
            Record::NodeRef { node, n } => {
                if let Some(x) = self.nodes.get_mut(&node) {
                    x.lookups = x.lookups.saturating_add(n);
                }
            }
            Record::NodeForget { node, n } => {
                if let Some(x) = self.nodes.get_mut(&node) {
                    x.lookups = x.lookups.saturating_sub(n);
                    if x.lookups == 0 {
                        self.nodes.remove(&node);
                    }
                }
            }
            Record::HandleOpen {
                handle,
                inode,
                flags,
            } => {
                self.handles.insert(handle, (inode, flags));
            }
            Record::HandleClose { handle } => {
                self.handles.remove(&handle);
            }
            Record::DirOpen { handle, inode } => {
                self.dirs.insert(handle, inode);
            }
            Record::DirClose { handle } => {
                self.dirs.remove(&handle);
            }
            Record::Reset => *self = Folded::default(),
        }
    }

    /// The fewest records that fold to `self`.
    fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let nodes = self
            .nodes
            .iter()
            .map(|(&node, n)| Record::NodeNew { node, n: n.clone() });
        let handles = self
            .handles
            .iter()
            .map(|(&handle, &(inode, flags))| Record::HandleOpen {
                handle,
                inode,
                flags,
            });
        let dirs = self
            .dirs
            .iter()
            .map(|(&handle, &inode)| Record::DirOpen { handle, inode });
        nodes.chain(handles).chain(dirs)
    }
}

struct Buffers {
    maps: [SharedMap; 2],
    active: usize,
    scratch: Vec<u8>,
    begun: bool,
}

/// The journal a serving fsd writes.
pub struct Journal {
    inner: Mutex<Buffers>,
}

fn init_header(m: &SharedMap, generation: u64) {
    m.u64_at(OFF_USED).store(0, Ordering::Release);
    m.u64_at(OFF_BROKEN).store(0, Ordering::Release);
    m.u64_at(OFF_VERSION)
        .store(JOURNAL_VERSION, Ordering::Release);
    m.u64_at(OFF_MAGIC).store(MAGIC, Ordering::Release);
    m.u64_at(OFF_GENERATION)
        .store(generation, Ordering::Release);
}

impl Journal {
    /// A journal not begun yet: its memory is made now, while fsd may
    /// still create memfds (before the seccomp filter).
    pub fn create() -> io::Result<Self> {
        Self::with_size(BUFFER_SIZE)
    }

    fn with_size(size: usize) -> io::Result<Self> {
        let a = SharedMap::create(c"fsd-journal-a", size)?;
        let b = SharedMap::create(c"fsd-journal-b", size)?;
        init_header(&a, 0);
        init_header(&b, 0);
        Ok(Journal {
            inner: Mutex::new(Buffers {
                maps: [a, b],
                active: 0,
                scratch: Vec::with_capacity(256),
                begun: false,
            }),
        })
    }

    /// Starts journaling from `base` (the tables this process starts with:
    /// none, or those taken over). Records appended before are dropped.
    pub fn begin(&self, base: &Folded) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap();
        let mut bytes = Vec::new();
        for r in base.records() {
            r.encode(&mut bytes);
        }
        if HEADER + bytes.len() > g.maps[0].len() {
            return Err(io::Error::other("journal: the tables do not fit"));
        }
        g.maps[0].write(HEADER, &bytes);
        init_header(&g.maps[0], 0);
        g.maps[0]
            .u64_at(OFF_USED)
            .store(bytes.len() as u64, Ordering::Release);
        g.maps[0].u64_at(OFF_GENERATION).store(1, Ordering::Release);
        g.active = 0;
        g.begun = true;
        Ok(())
    }

    /// Copies of both buffers' descriptors, for the supervisor.
    pub fn fds(&self) -> io::Result<[std::os::fd::OwnedFd; 2]> {
        let g = self.inner.lock().unwrap();
        Ok([g.maps[0].dup_fd()?, g.maps[1].dup_fd()?])
    }

    /// Appends one record. Folds into the other buffer when full.
    pub fn append(&self, r: &Record) {
        let mut g = self.inner.lock().unwrap();
        if !g.begun {
            return;
        }
        let mut scratch = std::mem::take(&mut g.scratch);
        scratch.clear();
        r.encode(&mut scratch);
        let mut used = g.maps[g.active].u64_at(OFF_USED).load(Ordering::Acquire) as usize;
        if HEADER + used + scratch.len() > g.maps[g.active].len() {
            if let Err(e) = g.fold() {
                log::error!("crash journal: {e}; a crash from now on is not recovered");
                g.maps[g.active]
                    .u64_at(OFF_BROKEN)
                    .store(1, Ordering::Release);
                g.scratch = scratch;
                return;
            }
            used = g.maps[g.active].u64_at(OFF_USED).load(Ordering::Acquire) as usize;
            if HEADER + used + scratch.len() > g.maps[g.active].len() {
                g.maps[g.active]
                    .u64_at(OFF_BROKEN)
                    .store(1, Ordering::Release);
                g.scratch = scratch;
                return;
            }
        }
        let m = &g.maps[g.active];
        m.write(HEADER + used, &scratch);
        m.u64_at(OFF_USED)
            .store((used + scratch.len()) as u64, Ordering::Release);
        g.scratch = scratch;
    }
}

impl Buffers {
    /// Folds the active buffer into the other and makes that one active.
    fn fold(&mut self) -> io::Result<()> {
        let folded = read_buffer(&self.maps[self.active])?;
        let other = 1 - self.active;
        let generation = self.maps[self.active]
            .u64_at(OFF_GENERATION)
            .load(Ordering::Acquire);
        let m = &self.maps[other];
        // Not valid until the generation is raised, below.
        m.u64_at(OFF_GENERATION).store(0, Ordering::Release);
        let mut bytes = Vec::new();
        for r in folded.records() {
            r.encode(&mut bytes);
        }
        if HEADER + bytes.len() > m.len() {
            return Err(io::Error::other("the folded tables do not fit"));
        }
        m.write(HEADER, &bytes);
        init_header(m, 0);
        m.u64_at(OFF_USED)
            .store(bytes.len() as u64, Ordering::Release);
        m.u64_at(OFF_GENERATION)
            .store(generation + 1, Ordering::Release);
        self.active = other;
        Ok(())
    }
}

fn read_buffer(m: &SharedMap) -> io::Result<Folded> {
    let used = m.u64_at(OFF_USED).load(Ordering::Acquire) as usize;
    if HEADER + used > m.len() {
        return Err(io::Error::other("journal: used beyond the buffer"));
    }
    let mut f = Folded::default();
    for r in Record::decode_all(&m.read(HEADER, used))? {
        f.apply(r);
    }
    Ok(f)
}

/// Reads a dead fsd's journal from its two buffers: the tables as the
/// guest knows them. Refused when it is not one, of another version, or
/// broken (it stopped covering the session).
pub fn recover(a: SharedMap, b: SharedMap) -> io::Result<Folded> {
    let valid = |m: &SharedMap| {
        m.len() > HEADER
            && m.u64_at(OFF_MAGIC).load(Ordering::Acquire) == MAGIC
            && m.u64_at(OFF_GENERATION).load(Ordering::Acquire) > 0
    };
    let newest = [&a, &b]
        .into_iter()
        .filter(|m| valid(m))
        .max_by_key(|m| m.u64_at(OFF_GENERATION).load(Ordering::Acquire))
        .ok_or_else(|| io::Error::other("journal: no valid buffer"))?;
    let version = newest.u64_at(OFF_VERSION).load(Ordering::Acquire);
    if version != JOURNAL_VERSION {
        return Err(io::Error::other(format!(
            "journal version {version}, this fsd reads {JOURNAL_VERSION}"
        )));
    }
    if newest.u64_at(OFF_BROKEN).load(Ordering::Acquire) != 0 {
        return Err(io::Error::other(
            "journal: it overflowed and no longer covers the session",
        ));
    }
    read_buffer(newest)
}

/// Host inodes behind the nodes a journal knows (for the grant flush).
pub fn keys(f: &Folded) -> HashSet<(u64, u64)> {
    f.nodes.values().map(|n| (n.dev, n.ino)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node: u64, lookups: u64) -> Record {
        Record::NodeNew {
            node,
            n: JNode {
                dev: 1,
                ino: node + 100,
                mnt: 7,
                mode: 0o100644,
                lookups,
                handle: Some((1, vec![1, 2, 3, node as u8])),
            },
        }
    }

    fn begun(base: &Folded, size: usize) -> Journal {
        let j = Journal::with_size(size).unwrap();
        j.append(&node(99, 1)); // before begin: dropped
        j.begin(base).unwrap();
        j
    }

    fn reread(j: &Journal) -> Folded {
        let [a, b] = j.fds().unwrap();
        recover(SharedMap::map(a).unwrap(), SharedMap::map(b).unwrap()).unwrap()
    }

    #[test]
    fn records_fold_to_the_tables() {
        let j = begun(&Folded::default(), BUFFER_SIZE);
        j.append(&node(2, 1));
        j.append(&Record::NodeRef { node: 2, n: 2 });
        j.append(&node(3, 1));
        j.append(&Record::NodeForget { node: 3, n: 1 });
        j.append(&Record::HandleOpen {
            handle: 5,
            inode: 2,
            flags: 2,
        });
        j.append(&Record::DirOpen {
            handle: 9,
            inode: 2,
        });
        j.append(&Record::DirClose { handle: 9 });
        let f = reread(&j);
        assert_eq!(f.nodes.len(), 1);
        assert_eq!(f.nodes[&2].lookups, 3);
        assert_eq!(f.handles[&5], (2, 2));
        assert!(f.dirs.is_empty());
    }

    #[test]
    fn a_full_buffer_folds_into_the_other_without_losing_a_node() {
        let j = begun(&Folded::default(), 4096);
        for i in 0..2000u64 {
            j.append(&node(10 + i % 5, 1));
            j.append(&Record::NodeRef {
                node: 10 + i % 5,
                n: 1,
            });
        }
        let f = reread(&j);
        assert_eq!(f.nodes.len(), 5);
        assert!(f.nodes.values().all(|n| n.lookups == 2));
    }

    #[test]
    fn a_journal_that_overflowed_is_refused() {
        let j = begun(&Folded::default(), 1024);
        for i in 0..100u64 {
            j.append(&node(i + 2, 1));
        }
        let [a, b] = j.fds().unwrap();
        assert!(recover(SharedMap::map(a).unwrap(), SharedMap::map(b).unwrap()).is_err());
    }

    #[test]
    fn a_record_not_committed_is_not_read() {
        let j = begun(&Folded::default(), BUFFER_SIZE);
        j.append(&node(2, 1));
        {
            // A crash between writing a record and committing it.
            let g = j.inner.lock().unwrap();
            let mut bytes = Vec::new();
            node(3, 1).encode(&mut bytes);
            let used = g.maps[0].u64_at(OFF_USED).load(Ordering::Acquire) as usize;
            g.maps[0].write(HEADER + used, &bytes);
        }
        let f = reread(&j);
        assert!(f.nodes.contains_key(&2) && !f.nodes.contains_key(&3));
    }

    #[test]
    fn the_base_is_there_from_the_start() {
        let mut base = Folded::default();
        base.apply(node(1, u64::MAX / 2));
        base.apply(node(4, 2));
        let j = begun(&base, BUFFER_SIZE);
        assert_eq!(reread(&j), base);
    }
}
