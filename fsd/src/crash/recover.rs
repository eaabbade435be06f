//! The new fsd's side of a crash recovery.
//!
//! It gets from the supervisor what the dead fsd left ([`super::keeper`])
//! and turns it into the document of a live handover, so that from there
//! on the takeover is the handover's own (`handover::successor`):
//!
//! * the tables come from the journal: each node by its file handle, each
//!   open file and directory stream opened again from its node (the dead
//!   process's descriptions are gone; a file's offset does not matter,
//!   FUSE reads and writes name theirs), the lock descriptions from the
//!   supervisor, which kept them;
//! * each ring resumes where the in-flight table says, not where the
//!   device snapshot (stale by design) says;
//! * requests the dead fsd took and did not answer are answered before
//!   any queue starts: run again when running twice does what running once
//!   does, failed with EIO otherwise ([`verdict`]).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, WriteIn};
use fuse_backend_rs::transport::Reader;
use log::{info, warn};
use vhost_user_backend::VringT;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion,
};

use super::inflight::InFlightTable;
use super::journal::{self, Folded};
use super::keeper::Recovery;
use super::shm::SharedMap;
use crate::dispatch::{Blocking, GuestMem};
use crate::fs::SharedFs;
use crate::handover::state::{
    DirStream, FdBag, FsState, HandleState, InodeState, NodeState, PassthroughState, Received,
    State, STATE_VERSION,
};
use crate::handover::vhost::Daemon;
use crate::handover::HandoverError;
use crate::vhost_user::FsBackend;

/// What to do with a request the dead fsd took and did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run it (again): twice is the same as once.
    Rerun,
    /// Answer with this error: it may have taken effect, and running it
    /// again would not be the same.
    Fail(i32),
    /// No reply is expected (FORGET, INTERRUPT): give the buffer back.
    Empty,
}

/// The rule for each opcode. Unknown ones fail with EIO.
pub fn verdict(opcode: u32, appends: bool) -> Verdict {
    use Opcode::*;
    let is = |o: Opcode| opcode == o as u32;
    if [Forget, BatchForget, Interrupt].into_iter().any(is) {
        // A FORGET run twice would give back lookups twice.
        return Verdict::Empty;
    }
    if is(Write) {
        // A positional write of the same bytes is the same twice, unless the
        // file appends.
        return if appends {
            Verdict::Fail(libc::EIO)
        } else {
            Verdict::Rerun
        };
    }
    if is(Setlkw) {
        // POSIX lets a blocking lock request be interrupted.
        return Verdict::Fail(libc::EINTR);
    }
    let rerun = [
        Init,
        Lookup,
        Getattr,
        Readlink,
        Open,
        Read,
        Statfs,
        Release,
        Fsync,
        Getxattr,
        Listxattr,
        Flush,
        Opendir,
        Readdir,
        Releasedir,
        Fsyncdir,
        Getlk,
        Setlk,
        Access,
        Destroy,
        Readdirplus,
        Lseek,
    ];
    if rerun.into_iter().any(is) {
        Verdict::Rerun
    } else {
        Verdict::Fail(libc::EIO)
    }
}

/// The supervisor's material, opened.
pub struct Material {
    pub state: State,
    /// Descriptors of the device part (the document names them).
    pub device_fds: Received,
    /// Descriptors of the file-system part.
    pub fs_fds: Received,
    pub inflight: Arc<InFlightTable>,
    /// Nodes the journal knew that cannot be opened again.
    pub lost: usize,
}

/// Turns a [`Recovery`] into a handover document.
pub fn build(r: Recovery, fds: Vec<OwnedFd>, fs: &SharedFs) -> Result<Material, HandoverError> {
    let mut fds = Received::new(fds);
    let take = |fds: &mut Received, i| fds.take(i).map_err(HandoverError::Dup);
    let a = SharedMap::map(take(&mut fds, r.journal[0])?).map_err(HandoverError::FileSystem)?;
    let b = SharedMap::map(take(&mut fds, r.journal[1])?).map_err(HandoverError::FileSystem)?;
    let folded = journal::recover(a, b).map_err(HandoverError::FileSystem)?;
    let inflight = Arc::new(
        InFlightTable::open(take(&mut fds, r.inflight)?).map_err(HandoverError::FileSystem)?,
    );
    let mut vhost = r.device.vhost;
    for q in &mut vhost.queues {
        if let Some(n) = inflight.pending(q.index as usize, 0).next_avail {
            q.next_avail = n;
        }
        log::debug!(
            "crash recovery: queue {} resumes at {}",
            q.index,
            q.next_avail
        );
    }
    let mut bag = FdBag::default();
    let (fs_state, lost) = tables(&folded, &r.device.session, fs, &mut bag)?;
    let mut fs_state = fs_state;
    for (list, out) in [
        (r.posix_locks, &mut fs_state.posix_locks),
        (r.flock_locks, &mut fs_state.flock_locks),
    ] {
        for mut h in list {
            h.fd = bag.put(take(&mut fds, h.fd)?);
            out.push(h);
        }
    }
    Ok(Material {
        state: State {
            version: STATE_VERSION,
            vhost,
            fuse: r.device.fuse,
            fs: fs_state,
        },
        device_fds: fds,
        fs_fds: Received::new(bag.into_vec()),
        inflight,
        lost,
    })
}

/// The file-system part of the document, from the journal.
fn tables(
    f: &Folded,
    session: &PassthroughState,
    fs: &SharedFs,
    bag: &mut FdBag,
) -> Result<(FsState, usize), HandoverError> {
    let mut lost = 0;
    let mut inodes = Vec::new();
    let mut nodes = Vec::new();
    let max_node = f.nodes.keys().copied().max().unwrap_or(0);
    for (&node, n) in &f.nodes {
        let Some(handle) = n.handle.clone() else {
            lost += 1;
            continue;
        };
        inodes.push(InodeState {
            inode: node,
            refcount: n.lookups,
            ino: n.ino,
            dev: n.dev,
            mnt: n.mnt,
            mode: n.mode,
            fd: None,
            handle: Some(handle),
        });
        nodes.push(NodeState {
            node,
            dev: n.dev,
            ino: n.ino,
            lookups: n.lookups,
        });
    }
    let mut handles = Vec::new();
    let mut handle_flags = Vec::new();
    for (&h, &(inode, flags)) in &f.handles {
        let Some(file) = f
            .nodes
            .get(&inode)
            .and_then(|n| n.handle.as_ref())
            .and_then(|hd| {
                fs.reopen_by_handle(hd, reopen_flags(flags, session.writeback))
                    .ok()
            })
        else {
            warn!(
                "crash recovery: open file {h} cannot be opened again; the guest gets EBADF on it"
            );
            continue;
        };
        handles.push(HandleState {
            handle: h,
            inode,
            flags,
            fd: bag.put(file),
        });
        handle_flags.push((h, flags));
    }
    let mut dirs = Vec::new();
    for (&h, &inode) in &f.dirs {
        let Some(dir) = f
            .nodes
            .get(&inode)
            .and_then(|n| n.handle.as_ref())
            .and_then(|hd| {
                fs.reopen_by_handle(hd, libc::O_RDONLY | libc::O_DIRECTORY)
                    .ok()
            })
        else {
            warn!("crash recovery: directory stream {h} cannot be opened again");
            continue;
        };
        dirs.push(DirStream {
            handle: h,
            fd: bag.put(dir),
        });
    }
    let next_handle = f.handles.keys().copied().max().unwrap_or(0) + 1;
    Ok((
        FsState {
            passthrough: PassthroughState {
                next_inode: session.next_inode.max(max_node + 1),
                next_handle: session.next_handle.max(next_handle),
                writeback: session.writeback,
                no_open: session.no_open,
                no_opendir: session.no_opendir,
                killpriv_v2: session.killpriv_v2,
                perfile_dax: session.perfile_dax,
                inodes,
                handles,
            },
            handles_held: handles_len(f),
            nodes,
            posix_locks: Vec::new(),
            flock_locks: Vec::new(),
            dirs_next: f.dirs.keys().copied().max().unwrap_or(0) + 1,
            dirs,
            handle_flags,
            read_under_grant: fs.assume_read_under_grant(&journal::keys(f)),
        },
        lost,
    ))
}

fn handles_len(f: &Folded) -> usize {
    f.handles.len() + f.dirs.len()
}

/// The flags a guest's open file is opened again with: what the
/// passthrough layer would have used, never creating or truncating.
fn reopen_flags(guest: u32, writeback: bool) -> i32 {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_DIRECT
        | libc::O_NOATIME
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NONBLOCK
        | libc::O_LARGEFILE;
    let mut f = guest as i32 & keep;
    if writeback {
        // As the passthrough layer does: the guest's page cache may read
        // back a write-only file, and it orders appends itself.
        if f & libc::O_ACCMODE == libc::O_WRONLY {
            f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        f &= !libc::O_APPEND;
    }
    f
}

/// Answers the requests the dead fsd took and did not answer, before the
/// queues start. Returns how many were run again and how many failed.
/// `ready`: the queues the front-end had set up (they are not started yet).
pub fn answer_pending(
    daemon: &Daemon,
    backend: &FsBackend,
    table: &InFlightTable,
    ready: &[u32],
) -> io::Result<(usize, usize)> {
    let Some(mem) = backend.memory() else {
        return Ok((0, 0));
    };
    let mem = mem.memory();
    let (mut rerun, mut failed) = (0, 0);
    for (index, vring) in daemon.vrings().iter().enumerate() {
        if !ready.contains(&(index as u32)) {
            continue;
        }
        let (used_now, size, desc) = {
            let st = vring.get_ref();
            let q = st.get_queue();
            (q.next_used(), q.size(), q.desc_table())
        };
        let pending = table.pending(index, used_now);
        log::debug!(
            "crash recovery: queue {index}: used {used_now}, next avail {:?}, in flight {:?}",
            pending.next_avail,
            pending.heads
        );
        for (_, head) in pending.heads {
            let len = match chain_at(&mem, desc, size, head) {
                Ok(chain) => {
                    let d = backend.dispatcher();
                    let (opcode, appends) = peek(&chain, d.fs());
                    match verdict(opcode, appends) {
                        Verdict::Rerun => {
                            rerun += 1;
                            d.handle(chain, Blocking::Refused)
                        }
                        Verdict::Fail(errno) => {
                            failed += 1;
                            d.fail(chain, errno)
                        }
                        Verdict::Empty => 0,
                    }
                }
                Err(e) => {
                    warn!("crash recovery: request {head} of queue {index} is unreadable ({e}); returned empty");
                    0
                }
            };
            crate::vhost_user::add_used(vring, Some(table), index, head, len)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        let _ = vring.signal_used_queue();
    }
    if rerun + failed > 0 {
        info!(
            "crash recovery: {rerun} requests in flight run again, {failed} answered with an error"
        );
    }
    Ok((rerun, failed))
}

/// The opcode of a request and, for WRITE, whether its file appends.
fn peek(chain: &crate::dispatch::Chain, fs: &SharedFs) -> (u32, bool) {
    let Ok(mut r) = Reader::<()>::from_descriptor_chain(chain.memory(), chain.clone()) else {
        return (0, false);
    };
    let Ok(h) = r.read_obj::<InHeader>() else {
        return (0, false);
    };
    let appends = h.opcode == Opcode::Write as u32
        && r.read_obj::<WriteIn>()
            .map(|w| fs.handle_appends(w.fh))
            .unwrap_or(true);
    (h.opcode, appends)
}

/// The descriptor chain at `head`, found without the avail ring (whose
/// slot the guest may have reused): a queue of the same size over the same
/// descriptor table, whose avail ring, in a scratch region above guest
/// memory, offers `head` alone.
fn chain_at(mem: &GuestMem, desc: u64, size: u16, head: u16) -> io::Result<crate::dispatch::Chain> {
    let top = mem
        .iter()
        .map(|r| r.start_addr().0 + r.len())
        .max()
        .unwrap_or(0);
    let base = top.next_multiple_of(1 << 20);
    let avail = base;
    let used = base + (4 + 2 * size as u64 + 2).next_multiple_of(4096);
    let len = (used - base + 4 + 8 * size as u64 + 2).next_multiple_of(4096) as usize;
    let region = MmapRegion::<()>::new(len).map_err(|e| io::Error::other(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(base))
        .ok_or_else(|| io::Error::other("scratch region"))?;
    let with_scratch: GuestMem = mem
        .insert_region(Arc::new(region))
        .map_err(|e| io::Error::other(e.to_string()))?;
    // avail ring: flags 0, idx 1, ring[0] = head.
    with_scratch
        .write_obj(0u16, GuestAddress(avail))
        .and_then(|_| with_scratch.write_obj(1u16, GuestAddress(avail + 2)))
        .and_then(|_| with_scratch.write_obj(head, GuestAddress(avail + 4)))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut q = Queue::new(size).map_err(|e| io::Error::other(format!("{e:?}")))?;
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_ready(true);
    let atomic = GuestMemoryAtomic::new(with_scratch);
    let guard = atomic.memory();
    let mut it = q
        .iter(guard)
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    it.next()
        .filter(|c| c.head_index() == head)
        .ok_or_else(|| io::Error::other("no chain at that head"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_are_the_same_twice_run_again() {
        assert_eq!(verdict(Opcode::Read as u32, false), Verdict::Rerun);
        assert_eq!(verdict(Opcode::Getattr as u32, false), Verdict::Rerun);
        assert_eq!(verdict(Opcode::Write as u32, false), Verdict::Rerun);
        assert_eq!(
            verdict(Opcode::Write as u32, true),
            Verdict::Fail(libc::EIO)
        );
        assert_eq!(
            verdict(Opcode::Unlink as u32, false),
            Verdict::Fail(libc::EIO)
        );
        assert_eq!(
            verdict(Opcode::Create as u32, false),
            Verdict::Fail(libc::EIO)
        );
        assert_eq!(
            verdict(Opcode::Rename as u32, false),
            Verdict::Fail(libc::EIO)
        );
        assert_eq!(
            verdict(Opcode::Setlkw as u32, false),
            Verdict::Fail(libc::EINTR)
        );
        assert_eq!(verdict(Opcode::Forget as u32, false), Verdict::Empty);
        assert_eq!(verdict(9999, false), Verdict::Fail(libc::EIO));
    }

    #[test]
    fn a_reopened_file_is_never_created_or_truncated() {
        let f = reopen_flags(
            (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32,
            false,
        );
        assert_eq!(f, libc::O_WRONLY | libc::O_APPEND);
        let f = reopen_flags((libc::O_WRONLY | libc::O_APPEND) as u32, true);
        assert_eq!(f, libc::O_RDWR);
    }
}
