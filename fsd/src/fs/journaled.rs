//! The file system's share of crash recovery (see [`crate::crash`]).
//!
//! Every change that gives the guest an id or takes one back is appended
//! to the journal from here, before the reply that tells the guest leaves:
//! a recovering fsd must know every id the guest may hold. Nothing is
//! journaled without `--crash-recovery`.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::ROOT_ID;

use super::SharedFs;
use crate::crash::journal::{Folded, JNode, Journal, Record};
use crate::handover::state::{FsState, PassthroughState};
use crate::policy::labels::InodeKey;

/// A taken-over session's tables, as the journal needs them.
pub(super) struct JournalBase {
    nodes: Vec<(u64, u64, u64, u64)>,
    handles: Vec<(u64, u64, u32)>,
}

impl SharedFs {
    fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.get()
    }

    /// Makes the journal's memory, before the seccomp filter (memfds).
    pub fn prepare_journal(&self) -> io::Result<()> {
        let _ = self.journal.set(Arc::new(Journal::create()?));
        Ok(())
    }

    /// Starts journaling, from the tables this process holds now (none, or
    /// those taken over). Returns copies of the journal's descriptors.
    pub fn start_journal(&self) -> io::Result<[OwnedFd; 2]> {
        let j = self
            .journal()
            .ok_or_else(|| io::Error::other("journal not prepared"))?;
        let base = std::mem::take(&mut *self.journal_base.lock().unwrap());
        j.begin(&base)?;
        j.fds()
    }

    /// What of a taken-over session's tables the journal starts with,
    /// taken before the import consumes them: node ids with their host
    /// keys and lookup counts, open files with their inode and flags.
    pub(super) fn journal_base_of(st: &FsState) -> JournalBase {
        let counted: std::collections::HashMap<u64, u64> =
            st.nodes.iter().map(|n| (n.node, n.lookups)).collect();
        let nodes = st
            .passthrough
            .inodes
            .iter()
            .map(|i| {
                let lookups = counted.get(&i.inode).copied().unwrap_or(i.refcount);
                (i.inode, i.dev, i.ino, lookups)
            })
            .collect();
        let handles = st
            .passthrough
            .handles
            .iter()
            .map(|h| (h.handle, h.inode, h.flags))
            .collect();
        JournalBase { nodes, handles }
    }

    /// Sets the journal's start once the tables are imported: mount ids
    /// and file handles as this process holds them (mount ids are per
    /// mount namespace, and each sandboxed fsd has its own).
    pub(super) fn set_journal_base(&self, b: JournalBase) {
        let mut f = Folded::default();
        for (node, dev, ino, lookups) in b.nodes {
            f.apply(self.node_record(node, (dev, ino), lookups));
        }
        for (handle, inode, flags) in b.handles {
            f.apply(Record::HandleOpen {
                handle,
                inode,
                flags,
            });
        }
        *self.journal_base.lock().unwrap() = f;
    }

    /// Directory streams taken over have no inode in the handover
    /// document; they are journaled by the caller that knows it.
    pub(super) fn journal_node(&self, node: u64, key: InodeKey, new: bool) {
        let Some(j) = self.journal() else { return };
        if !new {
            j.append(&Record::NodeRef { node, n: 1 });
            return;
        }
        j.append(&self.node_record(node, key, 1));
    }

    /// A node new to the journal, with what this process reopens it by.
    fn node_record(&self, node: u64, key: InodeKey, lookups: u64) -> Record {
        let (mnt, mode, handle) = self.inner.inode_identity(node).unwrap_or((0, 0, None));
        Record::NodeNew {
            node,
            n: JNode {
                dev: key.0,
                ino: key.1,
                mnt,
                mode,
                lookups,
                handle,
            },
        }
    }

    pub(super) fn journal_root(&self, key: InodeKey) {
        let Some(j) = self.journal() else { return };
        j.append(&Record::Reset);
        j.append(&self.node_record(ROOT_ID, key, u64::MAX / 2));
    }

    pub(super) fn journal_forget(&self, node: u64, n: u64) {
        if let Some(j) = self.journal() {
            j.append(&Record::NodeForget { node, n });
        }
    }

    pub(super) fn journal_open(&self, handle: u64, inode: u64, flags: u32) {
        if let Some(j) = self.journal() {
            j.append(&Record::HandleOpen {
                handle,
                inode,
                flags,
            });
        }
    }

    pub(super) fn journal_close(&self, handle: u64) {
        if let Some(j) = self.journal() {
            j.append(&Record::HandleClose { handle });
        }
    }

    pub(super) fn journal_opendir(&self, handle: u64, inode: u64) {
        if let Some(j) = self.journal() {
            j.append(&Record::DirOpen { handle, inode });
        }
    }

    pub(super) fn journal_closedir(&self, handle: u64) {
        if let Some(j) = self.journal() {
            j.append(&Record::DirClose { handle });
        }
    }

    /// Lets the supervisor hold the descriptions that carry locks.
    pub fn keep_locks_with(&self, keeper: Arc<crate::crash::keeper::KeeperLink>) {
        self.locks.keep_with(keeper);
    }

    /// The passthrough layer's counters and INIT-negotiated flags, without
    /// its tables.
    pub fn session_flags(&self) -> PassthroughState {
        super::handover::session_flags(self.inner.session_state())
    }

    /// Opens an inode by its file handle on the share's file system.
    pub fn reopen_by_handle(&self, handle: &(i32, Vec<u8>), flags: i32) -> io::Result<OwnedFd> {
        super::handover::open_by_handle(
            self.confined.root_fd(),
            handle.0,
            &handle.1,
            flags | libc::O_NOFOLLOW,
        )
    }

    /// Whether the guest's open file `fh` appends (unknown: yes).
    pub fn handle_appends(&self, fh: u64) -> bool {
        self.handle_flags
            .lock()
            .unwrap()
            .get(&fh)
            .map_or(true, |f| *f as i32 & libc::O_APPEND != 0)
    }

    /// After a crash, what the guest read under each grant is unknown. So
    /// every protected inode it holds counts as read under every
    /// principal's grant: when a grant ends, all of them are flushed from
    /// the guest (more than needed, never less).
    pub fn assume_read_under_grant(
        &self,
        held: &HashSet<InodeKey>,
    ) -> Vec<(String, Vec<InodeKey>)> {
        let Some(g) = &self.guard else {
            return Vec::new();
        };
        let protected: Vec<InodeKey> = held
            .iter()
            .copied()
            .filter(|k| g.labels.has_key(*k))
            .collect();
        g.policy()
            .principals
            .iter()
            .map(|p| (p.clone(), protected.clone()))
            .collect()
    }
}
