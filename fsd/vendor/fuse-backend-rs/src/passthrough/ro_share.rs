// fsd patch (shared read-only descriptors), not part of upstream fuse-backend-rs.
//
// A read-only OPEN needs a descriptor only to read from at the offsets
// FUSE names (pread): no private file offset, no status flags that differ.
// So a read-only OPEN of an inode opened the same way a moment ago gets
// the descriptor already open, not a new one: no open_by_handle_at, no
// close at RELEASE. The cache is small and bounded (its descriptors count
// against the daemon's own reserve), keyed by inode and exact open flags,
// and an inode the guest forgets leaves it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::{Arc, RwLock};

use super::Inode;

/// Flags whose handles may share one open file description: read-only,
/// nothing that changes what a read does or how it is done.
pub(crate) fn shareable(flags: u32) -> bool {
    let f = flags as i32;
    f & libc::O_ACCMODE == libc::O_RDONLY
        && f & (libc::O_DIRECT
            | libc::O_APPEND
            | libc::O_TRUNC
            | libc::O_CREAT
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_NOATIME
            | libc::O_NONBLOCK
            | libc::O_PATH
            | libc::O_DIRECTORY)
            == 0
}

type Key = (Inode, u32);

#[derive(Default)]
struct Inner {
    files: HashMap<Key, Arc<File>>,
    order: VecDeque<Key>,
}

/// Recently opened read-only descriptors.
#[derive(Default)]
pub(crate) struct RoShare {
    capacity: std::sync::atomic::AtomicUsize,
    /// Read-locked on the hot path (a hit); written on a miss or forget.
    inner: RwLock<Inner>,
}

impl RoShare {
    pub(crate) fn set_capacity(&self, n: usize) {
        self.capacity
            .store(n, std::sync::atomic::Ordering::Relaxed);
        self.inner.write().unwrap().trim(n);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    pub(crate) fn get(&self, inode: Inode, flags: u32) -> Option<Arc<File>> {
        self.inner.read().unwrap().files.get(&(inode, flags)).cloned()
    }

    pub(crate) fn put(&self, inode: Inode, flags: u32, file: Arc<File>) {
        let cap = self.capacity.load(std::sync::atomic::Ordering::Relaxed);
        if cap == 0 {
            return;
        }
        let mut g = self.inner.write().unwrap();
        if g.files.insert((inode, flags), file).is_none() {
            g.order.push_back((inode, flags));
        }
        g.trim(cap);
    }

    /// The guest forgot `inode`: its descriptors go (once no handle uses them).
    pub(crate) fn forget(&self, inode: Inode) {
        if !self.enabled() {
            return;
        }
        let mut g = self.inner.write().unwrap();
        g.files.retain(|k, _| k.0 != inode);
        g.order.retain(|k| k.0 != inode);
    }

    /// Everything goes (a new session).
    pub(crate) fn clear(&self) {
        let mut g = self.inner.write().unwrap();
        g.files.clear();
        g.order.clear();
    }

}

impl Inner {
    /// Drops the oldest descriptors beyond `cap`.
    fn trim(&mut self, cap: usize) {
        while self.files.len() > cap {
            match self.order.pop_front() {
                Some(k) => {
                    self.files.remove(&k);
                }
                None => break,
            }
        }
    }
}
