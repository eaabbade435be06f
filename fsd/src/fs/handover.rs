//! The file system's share of a live handover.
//!
//! The guest's node ids and file handles are numbers that only mean
//! something to the process that gave them out. For the successor to
//! understand them, every table that holds them moves: the passthrough
//! layer's inodes and handles (each with a descriptor), fsd's own count of
//! nodes, the descriptions that carry locks, the directory streams and each
//! handle's open flags. Caches that can be rebuilt (host names of nodes,
//! "found unprotected" marks) stay behind and are refilled on demand.

use std::io;

use fuse_backend_rs::passthrough::handover::{
    Exported, ExportedHandle, ExportedInode, ExportedSession,
};

use super::SharedFs;
use crate::handover::state::{FdBag, FsState, HandleState, InodeState, PassthroughState, Received};

impl SharedFs {
    /// Copies the session out. Requests must be paused.
    pub fn export_state(&self, bag: &mut FdBag) -> io::Result<FsState> {
        let e = self.inner.export_state()?;
        let s = e.session;
        let passthrough = PassthroughState {
            next_inode: s.next_inode,
            next_handle: s.next_handle,
            writeback: s.writeback,
            no_open: s.no_open,
            no_opendir: s.no_opendir,
            killpriv_v2: s.killpriv_v2,
            perfile_dax: s.perfile_dax,
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
                    fd: bag.put(i.file.into()),
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
        Ok(FsState {
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
        let p = st.passthrough;
        let mut inodes = Vec::with_capacity(p.inodes.len());
        for i in p.inodes {
            inodes.push(ExportedInode {
                inode: i.inode,
                refcount: i.refcount,
                ino: i.ino,
                dev: i.dev,
                mnt: i.mnt,
                mode: i.mode,
                file: fds.take(i.fd)?.into(),
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
        self.dir_paths.write().unwrap().clear();
        Ok(())
    }
}
