//! The serialized part of a handover, versioned.
//!
//! Everything that is not a descriptor travels as one JSON document; each
//! descriptor travels beside it (SCM_RIGHTS, see [`super::transfer`]) and is
//! named here by its index in that list. The document names its format
//! version: a successor reads the versions from [`MIN_READ_VERSION`] to
//! [`STATE_VERSION`] and refuses others before the predecessor has paused
//! anything, so an upgrade N -> N+1 works and a mismatch costs the guest
//! nothing.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

/// The version of the document this build writes.
pub const STATE_VERSION: u32 = 1;
/// The oldest version this build can read.
pub const MIN_READ_VERSION: u32 = 1;

/// An index into the descriptors sent with the document.
pub type FdIndex = usize;

/// Collects the descriptors that go with a document.
#[derive(Default)]
pub struct FdBag {
    fds: Vec<OwnedFd>,
}

impl FdBag {
    /// Adds one; its index goes into the document.
    pub fn put(&mut self, fd: OwnedFd) -> FdIndex {
        self.fds.push(fd);
        self.fds.len() - 1
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    pub fn into_vec(self) -> Vec<OwnedFd> {
        self.fds
    }
}

/// The descriptors as received; each can be taken once.
pub struct Received {
    fds: Vec<Option<OwnedFd>>,
}

impl Received {
    pub fn new(fds: Vec<OwnedFd>) -> Self {
        Received {
            fds: fds.into_iter().map(Some).collect(),
        }
    }

    /// Takes descriptor `i`; a document naming one twice or one that did not
    /// come is refused.
    pub fn take(&mut self, i: FdIndex) -> std::io::Result<OwnedFd> {
        self.fds
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| std::io::Error::other(format!("descriptor {i} missing in the handover")))
    }
}

/// The whole document.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub vhost: VhostState,
    pub fuse: FuseState,
    pub fs: FsState,
}

/// The vhost-user device as the front-end set it up, at the moment of the
/// handover (indices are current, not those the front-end once sent).
#[derive(Debug, Serialize, Deserialize)]
pub struct VhostState {
    pub features: u64,
    pub protocol_features: u64,
    pub regions: Vec<MemRegion>,
    pub queues: Vec<QueueState>,
    /// The front-end connection.
    pub connection: FdIndex,
}

/// One guest memory region, by guest-physical address.
#[derive(Debug, Serialize, Deserialize)]
pub struct MemRegion {
    pub guest_phys_addr: u64,
    pub size: u64,
    pub mmap_offset: u64,
    pub fd: FdIndex,
}

/// One virtqueue.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueState {
    pub index: u32,
    pub size: u16,
    pub ready: bool,
    pub enabled: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub kick: Option<FdIndex>,
    pub call: Option<FdIndex>,
    pub err: Option<FdIndex>,
}

/// The FUSE session: what INIT negotiated.
#[derive(Debug, Serialize, Deserialize)]
pub struct FuseState {
    pub initialized: bool,
    pub session: bool,
    pub major: u32,
    pub minor: u32,
}

/// The file system's tables: the guest's node ids and file handles, and
/// what fsd keeps beside them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FsState {
    pub passthrough: PassthroughState,
    pub nodes: Vec<NodeState>,
    pub handles_held: usize,
    pub posix_locks: Vec<HeldDescription>,
    pub flock_locks: Vec<HeldDescription>,
    pub dirs_next: u64,
    pub dirs: Vec<DirStream>,
    pub handle_flags: Vec<(u64, u32)>,
    /// Host inodes (dev, ino) the guest read under each principal's grant:
    /// flushed from the guest when that grant ends.
    #[serde(default)]
    pub read_under_grant: Vec<(String, Vec<(u64, u64)>)>,
}

/// The passthrough layer's tables.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PassthroughState {
    pub next_inode: u64,
    pub next_handle: u64,
    pub writeback: bool,
    pub no_open: bool,
    pub no_opendir: bool,
    pub killpriv_v2: bool,
    pub perfile_dax: bool,
    pub inodes: Vec<InodeState>,
    pub handles: Vec<HandleState>,
}

/// One inode the guest holds, by descriptor or by file handle.
#[derive(Debug, Serialize, Deserialize)]
pub struct InodeState {
    pub inode: u64,
    pub refcount: u64,
    pub ino: u64,
    pub dev: u64,
    pub mnt: u64,
    pub mode: u32,
    /// An O_PATH descriptor, for inodes held by descriptor.
    pub fd: Option<FdIndex>,
    /// The file handle (type, bytes), for inodes held by handle.
    pub handle: Option<(i32, Vec<u8>)>,
}

/// One open file of the guest: its open description.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandleState {
    pub handle: u64,
    pub inode: u64,
    pub flags: u32,
    pub fd: FdIndex,
}

/// One node in fsd's own count of what the guest holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub node: u64,
    pub dev: u64,
    pub ino: u64,
    pub lookups: u64,
}

/// A host description that carries guest locks, by `(inode, owner or handle)`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeldDescription {
    pub inode: u64,
    pub key: u64,
    pub fd: FdIndex,
}

/// An open directory stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct DirStream {
    pub handle: u64,
    pub fd: FdIndex,
}

/// Whether this build reads documents of `version`.
pub fn readable(version: u32) -> bool {
    (MIN_READ_VERSION..=STATE_VERSION).contains(&version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_versions_are_read() {
        assert!(readable(STATE_VERSION));
        assert!(!readable(STATE_VERSION + 1));
        assert!(!readable(0));
    }

    #[test]
    fn a_descriptor_is_taken_once() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut r = Received::new(vec![a.into()]);
        assert!(r.take(0).is_ok());
        assert!(r.take(0).is_err());
        assert!(r.take(7).is_err());
    }
}
