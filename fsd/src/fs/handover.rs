//! The file system's share of a live handover.
//!
//! The guest's node ids and file handles are numbers that only mean
//! something to the process that gave them out. For the successor to
//! understand them, every table that holds them moves: the passthrough
//! layer's inodes and handles (each with a descriptor), fsd's own count of
//! nodes, the descriptions that carry locks, the directory streams and each
//! handle's open flags. Caches that can be rebuilt (host names of nodes,
//! "found unprotected" marks) stay behind and are refilled on demand.
//!
//! A sandboxed predecessor's inode descriptors sit on its own clone of the
//! share's mounts, in a mount namespace that ends with it; fsd names
//! inodes by path through `/proc/self/fd` in places (see [`super::confine`])
//! and that name would then be wrong. So each inode is anchored again
//! beneath this process's share root, through its file handle, where the
//! file system has handles; where it has none the predecessor's descriptor
//! is kept (docs/rejuvenation.md says what that costs).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use fuse_backend_rs::passthrough::handover::{
    Exported, ExportedHandle, ExportedInode, ExportedSession,
};
use rustix::fs::{statx, AtFlags, Statx, StatxFlags};

use super::SharedFs;
use crate::handover::state::{FdBag, FsState, HandleState, InodeState, PassthroughState, Received};

impl SharedFs {
    /// Copies the session out. Requests must be paused.
    pub fn export_state(&self, bag: &mut FdBag) -> io::Result<FsState> {
        let e = self.inner.export_state()?;
        let s = e.session;
        let passthrough = PassthroughState {
            inodes: e
                .inodes
                .into_iter()
                .map(|i| InodeState {
                    inode: i.inode,
                    refcount: i.refcount,
                    ino: i.ino,
                    dev: i.dev,
                    mnt: i.mnt,
                    mode: i.mode,
                    fd: i.file.map(|f| bag.put(f.into())),
                    handle: i.handle,
                })
                .collect(),
            handles: e
                .handles
                .into_iter()
                .map(|h| HandleState {
                    handle: h.handle,
                    inode: h.inode,
                    flags: h.flags,
                    fd: bag.put(h.file.into()),
                })
                .collect(),
            ..session_flags(s)
        };
        let (nodes, handles_held) = self.nodes.export();
        let (posix_locks, flock_locks) = self.locks.export(bag)?;
        let (dirs_next, dirs) = self.dirs.export(bag)?;
        let handle_flags = self
            .handle_flags
            .lock()
            .unwrap()
            .iter()
            .map(|(&h, &f)| (h, f))
            .collect();
        let read_under_grant = self
            .guard
            .as_ref()
            .map(|g| g.read_under_grants())
            .unwrap_or_default();
        Ok(FsState {
            read_under_grant,
            passthrough,
            nodes,
            handles_held,
            posix_locks,
            flock_locks,
            dirs_next,
            dirs,
            handle_flags,
        })
    }

    /// Continues a predecessor's session: afterwards every node id and file
    /// handle the guest holds names what it named there.
    pub fn import_state(&self, st: FsState, fds: &mut Received) -> io::Result<()> {
        let base = Self::journal_base_of(&st);
        let p = st.passthrough;
        // Mount ids are per mount namespace: the predecessor's share root
        // is this process's share root (a sandboxed predecessor had its own
        // clone of the mounts). Inodes on other mounts keep their id.
        let pred_root = p
            .inodes
            .iter()
            .find(|i| i.inode == fuse_backend_rs::api::filesystem::ROOT_ID)
            .map(|i| i.mnt);
        let own_root = mount_id(self.confined.root_fd());
        let remap = |mnt: u64| match (pred_root, own_root) {
            (Some(p), Some(o)) if p == mnt => o,
            _ => mnt,
        };
        let mut inodes = Vec::with_capacity(p.inodes.len());
        for i in p.inodes {
            let key = (i.dev, i.ino);
            let (file, handle, mnt) = match (i.fd, i.handle) {
                (Some(fd), _) => {
                    let fd = fds.take(fd)?;
                    match reanchor(&fd, self.confined.root_fd(), key) {
                        Some((f, mnt)) => (Some(f), None, mnt),
                        None => (Some(fd), None, i.mnt),
                    }
                }
                (None, Some(h)) => (None, Some(h), remap(i.mnt)),
                (None, None) => return Err(io::Error::other("inode without descriptor or handle")),
            };
            inodes.push(ExportedInode {
                inode: i.inode,
                refcount: i.refcount,
                ino: i.ino,
                dev: i.dev,
                mnt,
                mode: i.mode,
                file: file.map(Into::into),
                handle,
            });
        }
        let mut handles = Vec::with_capacity(p.handles.len());
        for h in p.handles {
            handles.push(ExportedHandle {
                handle: h.handle,
                inode: h.inode,
                flags: h.flags,
                file: fds.take(h.fd)?.into(),
            });
        }
        self.inner.import_state(Exported {
            session: ExportedSession {
                next_inode: p.next_inode,
                next_handle: p.next_handle,
                writeback: p.writeback,
                no_open: p.no_open,
                no_opendir: p.no_opendir,
                killpriv_v2: p.killpriv_v2,
                perfile_dax: p.perfile_dax,
            },
            inodes,
            handles,
        })?;
        self.nodes.import(&st.nodes, st.handles_held);
        self.locks.import(&st.posix_locks, &st.flock_locks, fds)?;
        self.dirs.import(st.dirs_next, &st.dirs, fds)?;
        *self.handle_flags.lock().unwrap() = st.handle_flags.into_iter().collect();
        if let Some(g) = &self.guard {
            g.restore_read_under_grants(st.read_under_grant);
        }
        self.dir_paths.write().unwrap().clear();
        self.set_journal_base(base);
        Ok(())
    }
}

/// The passthrough layer's counters and INIT-negotiated flags, with no
/// tables (a handover adds them; the crash journal keeps them apart).
pub(super) fn session_flags(s: ExportedSession) -> PassthroughState {
    PassthroughState {
        next_inode: s.next_inode,
        next_handle: s.next_handle,
        writeback: s.writeback,
        no_open: s.no_open,
        no_opendir: s.no_opendir,
        killpriv_v2: s.killpriv_v2,
        perfile_dax: s.perfile_dax,
        inodes: Vec::new(),
        handles: Vec::new(),
    }
}

/// Reopens the inode of `fd` (O_PATH) by its file handle beneath `root`:
/// the descriptor and its mount id, or `None` when the file system has no
/// handles, the inode is on another mount, or it is not the same inode.
fn reanchor(fd: &OwnedFd, root: BorrowedFd<'_>, key: (u64, u64)) -> Option<(OwnedFd, u64)> {
    const MAX_HANDLE: usize = 128;
    let mut buf = [0u8; 8 + MAX_HANDLE];
    buf[..4].copy_from_slice(&(MAX_HANDLE as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` holds a file_handle header with room for MAX_HANDLE
    // bytes; the path is an empty C string used with AT_EMPTY_PATH.
    let r = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr() as *mut libc::file_handle,
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return None;
    }
    let typ = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
    let len = (u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize).min(MAX_HANDLE);
    open_handle(root, typ, &buf[8..8 + len], key)
}

/// Opens (O_PATH) the inode with file handle (`typ`, `bytes`) beneath
/// `root`: the descriptor and its mount id, if it is the inode `key`.
fn open_handle(
    root: BorrowedFd<'_>,
    typ: i32,
    bytes: &[u8],
    key: (u64, u64),
) -> Option<(OwnedFd, u64)> {
    let new = open_by_handle(root, typ, bytes, libc::O_PATH).ok()?;
    let stx = statx_fd(new.as_fd(), StatxFlags::INO | StatxFlags::MNT_ID)?;
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    ((dev, stx.stx_ino) == key).then_some((new, stx.stx_mnt_id))
}

/// `statx` of `fd` itself.
fn statx_fd(fd: BorrowedFd<'_>, mask: StatxFlags) -> Option<Statx> {
    statx(fd, c"", AtFlags::EMPTY_PATH, mask).ok()
}

/// Opens the inode with file handle (`typ`, `bytes`) on the file system of
/// `root`, with `flags` (close-on-exec added). Used for a handover's
/// inodes and for a crash recovery's open files alike.
pub(super) fn open_by_handle(
    root: BorrowedFd<'_>,
    typ: i32,
    bytes: &[u8],
    flags: i32,
) -> io::Result<OwnedFd> {
    const MAX_HANDLE: usize = 128;
    if bytes.len() > MAX_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = [0u8; 8 + MAX_HANDLE];
    buf[..4].copy_from_slice(&(bytes.len() as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&typ.to_ne_bytes());
    buf[8..8 + bytes.len()].copy_from_slice(bytes);
    // SAFETY: `buf` holds a complete file_handle structure.
    let fd = unsafe {
        libc::open_by_handle_at(
            root.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::file_handle,
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The mount id of `fd`.
fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    statx_fd(fd, StatxFlags::MNT_ID).map(|stx| stx.stx_mnt_id)
}
