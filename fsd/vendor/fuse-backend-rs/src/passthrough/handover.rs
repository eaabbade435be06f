#![allow(missing_docs)]
// fsd patch (live handover), not part of upstream fuse-backend-rs.
//
// fsd hands a running session to a successor process: the guest's node ids
// and file handles must keep naming the same files there. These two calls
// take the inode and handle tables out of one `PassthroughFs` (with a
// descriptor for each entry) and put them into a fresh one.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::bitmap::BitmapSlice;

use super::file_handle::FileHandle;
use super::inode_store::InodeId;
use super::statx::statx;
use crate::api::filesystem::Entry;
use super::{HandleData, InodeData, InodeHandle, PassthroughFs};

/// One inode the guest holds.
#[derive(Debug)]
pub struct ExportedInode {
    /// The guest's node id.
    pub inode: u64,
    pub refcount: u64,
    pub ino: u64,
    pub dev: u64,
    pub mnt: u64,
    pub mode: u32,
    /// An O_PATH descriptor of the inode, for inodes held by descriptor.
    pub file: Option<File>,
    /// The file handle (type, bytes) of an inode held by handle (on mount
    /// `mnt`): it travels as bytes, so that a handover does not need a
    /// descriptor per inode.
    pub handle: Option<(i32, Vec<u8>)>,
}

/// One open file or directory of the guest.
#[derive(Debug)]
pub struct ExportedHandle {
    pub handle: u64,
    pub inode: u64,
    pub flags: u32,
    /// The open description itself (offset, status flags and flock locks
    /// come along).
    pub file: File,
}

/// What the guest negotiated at INIT, and the id counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportedSession {
    pub next_inode: u64,
    pub next_handle: u64,
    pub writeback: bool,
    pub no_open: bool,
    pub no_opendir: bool,
    pub killpriv_v2: bool,
    pub perfile_dax: bool,
}

/// The whole state of a `PassthroughFs` session.
#[derive(Debug)]
pub struct Exported {
    pub session: ExportedSession,
    pub inodes: Vec<ExportedInode>,
    pub handles: Vec<ExportedHandle>,
}

impl<S: BitmapSlice + Send + Sync> PassthroughFs<S> {
    /// Copies the inode and handle tables out, each entry with its own
    /// descriptor. Inodes held by file handle are opened (O_PATH) here.
    /// The caller must keep requests away meanwhile.
    pub fn export_state(&self) -> io::Result<Exported> {
        let session = self.session_state();
        let mut inodes = Vec::new();
        for d in self.inode_map.inodes.read().unwrap().values() {
            let (file, handle) = match &d.handle {
                InodeHandle::File(f) => (Some(f.try_clone()?), None),
                InodeHandle::Handle(h) => (None, Some(h.file_handle().raw_parts())),
            };
            inodes.push(ExportedInode {
                inode: d.inode,
                refcount: d.refcount.load(Ordering::Acquire),
                ino: d.id.ino,
                dev: d.id.dev,
                mnt: d.id.mnt,
                mode: d.mode,
                file,
                handle,
            });
        }
        let mut handles = Vec::new();
        for (h, d) in self.handle_map.handles.read().unwrap().iter() {
            handles.push(ExportedHandle {
                handle: *h,
                inode: d.inode,
                flags: d.get_flags(),
                file: d.get_file().try_clone()?,
            });
        }
        Ok(Exported {
            session,
            inodes,
            handles,
        })
    }

    /// The session part alone (counters and INIT-negotiated flags), cheap
    /// enough to read while serving: fsd's crash journal keeps it current.
    pub fn session_state(&self) -> ExportedSession {
        ExportedSession {
            next_inode: self.next_inode.load(Ordering::Acquire),
            next_handle: self.next_handle.load(Ordering::Acquire),
            writeback: self.writeback.load(Ordering::Acquire),
            no_open: self.no_open.load(Ordering::Acquire),
            no_opendir: self.no_opendir.load(Ordering::Acquire),
            killpriv_v2: self.killpriv_v2.load(Ordering::Acquire),
            perfile_dax: self.perfile_dax.load(Ordering::Acquire),
        }
    }

    /// Lets read-only handles share recently opened descriptors, at most
    /// `n` of them (0: every OPEN opens, as upstream does).
    pub fn set_readonly_sharing(&self, n: usize) {
        self.ro_share.set_capacity(n);
    }

    /// Keeps the O_PATH descriptors of up to `n` recently used inodes held
    /// by file handle open (0: every request opens by handle, as upstream
    /// does). Off when node ids may be reused (`use_host_ino`).
    pub fn set_path_sharing(&self, n: usize) {
        let n = if self.cfg.use_host_ino { 0 } else { n };
        self.path_share.set_capacity(n);
    }

    /// The mode (file type and permissions as last seen) of an inode the
    /// guest holds: OPEN's check for a directory needs no system call.
    pub fn inode_mode(&self, inode: u64) -> Option<u32> {
        self.inode_map.get(inode).ok().map(|d| d.mode)
    }

    /// fsd patch (READDIRPLUS opens its directory once): whether `dir` is
    /// open on the file `inode` names (same inode, device and mount), so
    /// that lookups in it may stand for lookups in `inode`.
    pub fn is_open_on(&self, inode: u64, dir: &impl AsRawFd) -> io::Result<bool> {
        let d = self.inode_map.get(inode)?;
        Ok(InodeId::from_stat(&statx(dir, None)?) == d.id)
    }

    /// fsd patch (READDIRPLUS opens its directory once): LOOKUP of `name` in
    /// the directory open as `dir`, without opening that directory again.
    /// The caller checks with [`Self::is_open_on`] which inode `dir` is;
    /// `name` must be one component (no `/`).
    pub fn lookup_in(&self, dir: &impl AsRawFd, name: &CStr) -> io::Result<Entry> {
        if name.to_bytes().contains(&b'/') {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.do_lookup_in(dir, name)
    }

    /// One inode as a crash journal records it: mount id, mode and file
    /// handle (type, bytes), without a descriptor; `None` for an unknown
    /// inode, and no handle for one held by descriptor.
    pub fn inode_identity(&self, inode: u64) -> Option<(u64, u32, Option<(i32, Vec<u8>)>)> {
        let d = self.inode_map.get(inode).ok()?;
        let handle = match &d.handle {
            InodeHandle::File(_) => None,
            InodeHandle::Handle(h) => Some(h.file_handle().raw_parts()),
        };
        Some((d.id.mnt, d.mode, handle))
    }

    /// Replaces the inode and handle tables with `state`. With
    /// `inode_file_handles`, inodes are held by file handle where the file
    /// system has them, else by the O_PATH descriptor given.
    pub fn import_state(&self, state: Exported) -> io::Result<()> {
        let s = state.session;
        {
            let mut inodes = self.inode_map.get_map_mut();
            inodes.clear();
            for i in state.inodes {
                // With file handles, an inode holds a handle, not a
                // descriptor, as it would had it been looked up here: the
                // guest may hold more inodes than fsd may open files.
                let handle = match (i.handle, i.file) {
                    (Some((typ, bytes)), _) => InodeHandle::Handle(
                        self.to_openable_handle(FileHandle::from_raw_parts(i.mnt, typ, &bytes)?)?,
                    ),
                    (None, Some(file)) => {
                        let h = match self.cfg.inode_file_handles {
                            true => FileHandle::from_fd(&file)
                                .ok()
                                .flatten()
                                .and_then(|h| self.to_openable_handle(h).ok()),
                            false => None,
                        };
                        match h {
                            Some(h) => InodeHandle::Handle(h),
                            None => InodeHandle::File(file),
                        }
                    }
                    (None, None) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "inode without a descriptor or a handle",
                        ))
                    }
                };
                inodes.insert(Arc::new(InodeData::new(
                    i.inode,
                    handle,
                    i.refcount,
                    InodeId {
                        ino: i.ino,
                        dev: i.dev,
                        mnt: i.mnt,
                    },
                    i.mode,
                )));
            }
        }
        self.handle_map.clear();
        self.ro_share.clear();
        self.path_share.clear();
        for h in state.handles {
            self.handle_map
                .insert(h.handle, HandleData::new(h.inode, h.file, h.flags));
        }
        self.next_inode.store(s.next_inode, Ordering::Release);
        self.next_handle.store(s.next_handle, Ordering::Release);
        self.writeback.store(s.writeback, Ordering::Release);
        self.no_open.store(s.no_open, Ordering::Release);
        self.no_opendir.store(s.no_opendir, Ordering::Release);
        self.killpriv_v2.store(s.killpriv_v2, Ordering::Release);
        self.perfile_dax.store(s.perfile_dax, Ordering::Release);
        Ok(())
    }
}
