//! The nodes and handles one guest holds, counted and bounded.
//!
//! Every node the guest has looked up keeps something on the host: with
//! `--inode-file-handles=never` an O_PATH descriptor, otherwise a file handle
//! in memory; every open file or directory keeps a descriptor. A guest that
//! looks up or opens without end would otherwise run fsd out of descriptors
//! or memory, and then every error path becomes a place where a check could
//! fail. So fsd counts what the guest holds, the same way the guest kernel
//! does (one per LOOKUP, CREATE, READDIRPLUS entry...; FORGET gives back),
//! and refuses the request that would pass a bound, with ENFILE or EMFILE,
//! well below the process's descriptor limit. The guest's own request fails;
//! fsd keeps the descriptors it needs to decide and to answer.
//!
//! The table also remembers each node's host `(st_dev, st_ino)`, which the
//! access-control guard needs for every decision.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use crate::handover::state::NodeState;
use crate::policy::labels::InodeKey;

/// Descriptors fsd keeps for itself beyond what the guest may hold: the
/// share root, `/proc/self/fd`, sockets, eventfds, the policy's peers, the
/// descriptors a check opens for a moment, and the shared read-only and
/// O_PATH descriptors ([`super::READONLY_SHARED`], [`super::PATH_SHARED`]).
pub const RESERVED_FDS: u64 = 320;

/// How much one guest may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Distinct nodes (inodes) the guest knows.
    pub nodes: usize,
    /// Open files and directories.
    pub handles: usize,
}

impl Limits {
    /// Splits the open-file limit `nofile` between nodes and handles. With
    /// file handles, nodes hold no descriptor, and only memory bounds them.
    pub fn for_nofile(nofile: u64, nodes_hold_fds: bool) -> Limits {
        let usable = nofile.saturating_sub(RESERVED_FDS).max(64);
        if nodes_hold_fds {
            Limits {
                nodes: (usable * 3 / 4) as usize,
                handles: (usable / 4) as usize,
            }
        } else {
            Limits {
                nodes: 4 << 20,
                handles: (usable * 3 / 4) as usize,
            }
        }
    }
}

struct Node {
    key: InodeKey,
    lookups: AtomicU64,
    /// The epoch (see `hostwatch`) at which the node was last found
    /// unprotected; 0 when never.
    public_at: AtomicU64,
}

impl Node {
    fn new(key: InodeKey, lookups: u64) -> Self {
        Node {
            key,
            lookups: AtomicU64::new(lookups),
            public_at: AtomicU64::new(0),
        }
    }
}

/// Nodes the guest holds, with their lookup counts, and a handle count.
pub struct NodeTable {
    nodes: RwLock<HashMap<u64, Node>>,
    handles: AtomicUsize,
    limits: Limits,
}

/// The bound a request would pass.
pub fn enfile() -> io::Error {
    io::Error::from_raw_os_error(libc::ENFILE)
}

impl NodeTable {
    pub fn new(limits: Limits) -> Self {
        NodeTable {
            nodes: RwLock::new(HashMap::new()),
            handles: AtomicUsize::new(0),
            limits,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Forgets every node and handle: a new FUSE session starts.
    pub fn reset(&self) {
        self.nodes.write().unwrap().clear();
        self.handles.store(0, Ordering::SeqCst);
    }

    /// Records one more lookup of `node` (host `key`). `Ok(true)` when the
    /// node is new to the guest; ENFILE when a new node would pass the bound
    /// (the caller then gives the lookup back to the passthrough layer).
    /// A node id seen again with another key is a new inode under a reused
    /// number: its count starts afresh.
    pub fn add(&self, node: u64, key: InodeKey) -> io::Result<bool> {
        if let Some(n) = self.nodes.read().unwrap().get(&node) {
            if n.key == key {
                n.lookups.fetch_add(1, Ordering::AcqRel);
                return Ok(false);
            }
        }
        let mut nodes = self.nodes.write().unwrap();
        match nodes.get(&node) {
            Some(n) if n.key == key => {
                n.lookups.fetch_add(1, Ordering::AcqRel);
                return Ok(false);
            }
            None if nodes.len() >= self.limits.nodes => return Err(enfile()),
            // New, or a new inode under a reused number.
            _ => {}
        }
        nodes.insert(node, Node::new(key, 1));
        Ok(true)
    }

    /// Registers the root, which the guest never forgets.
    pub fn add_root(&self, node: u64, key: InodeKey) {
        self.nodes
            .write()
            .unwrap()
            .insert(node, Node::new(key, u64::MAX / 2));
    }

    /// Gives back `count` lookups of `node`; the node goes when none is left.
    pub fn forget(&self, node: u64, count: u64) {
        let gone = match self.nodes.read().unwrap().get(&node) {
            Some(n) => {
                let mut cur = n.lookups.load(Ordering::Acquire);
                loop {
                    let next = cur.saturating_sub(count);
                    match n
                        .lookups
                        .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => break next == 0,
                        Err(c) => cur = c,
                    }
                }
            }
            None => false,
        };
        if gone {
            let mut nodes = self.nodes.write().unwrap();
            if nodes
                .get(&node)
                .is_some_and(|n| n.lookups.load(Ordering::Acquire) == 0)
            {
                nodes.remove(&node);
            }
        }
    }

    /// Whether `node` was found unprotected at `epoch`.
    pub fn public_at(&self, node: u64, epoch: u64) -> bool {
        self.nodes
            .read()
            .unwrap()
            .get(&node)
            .is_some_and(|n| n.public_at.load(Ordering::Acquire) == epoch)
    }

    /// Remembers that `node` was found unprotected at `epoch`.
    pub fn set_public(&self, node: u64, epoch: u64) {
        if let Some(n) = self.nodes.read().unwrap().get(&node) {
            n.public_at.store(epoch, Ordering::Release);
        }
    }

    /// The host key of a node the guest holds.
    pub fn key(&self, node: u64) -> Option<InodeKey> {
        self.nodes.read().unwrap().get(&node).map(|n| n.key)
    }

    /// How many nodes the guest holds.
    pub fn len(&self) -> usize {
        self.nodes.read().unwrap().len()
    }

    /// Whether the guest holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a handle slot before opening; EMFILE when the guest holds as
    /// many handles as it may. Give it back with [`Self::handle_closed`]
    /// (also when the open then fails).
    pub fn reserve_handle(&self) -> io::Result<()> {
        let max = self.limits.handles;
        self.handles
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h < max).then_some(h + 1)
            })
            .map(|_| ())
            .map_err(|_| io::Error::from_raw_os_error(libc::EMFILE))
    }

    /// A handle was released (or a reserved slot was not used).
    pub fn handle_closed(&self) {
        let _ = self
            .handles
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| h.checked_sub(1));
    }

    /// How many handles the guest holds.
    pub fn handles(&self) -> usize {
        self.handles.load(Ordering::Acquire)
    }

    /// The table for a live handover: every node with its count, and the
    /// number of handles held.
    pub fn export(&self) -> (Vec<NodeState>, usize) {
        let nodes = self
            .nodes
            .read()
            .unwrap()
            .iter()
            .map(|(&node, n)| NodeState {
                node,
                dev: n.key.0,
                ino: n.key.1,
                lookups: n.lookups.load(Ordering::Acquire),
            })
            .collect();
        (nodes, self.handles())
    }

    /// Takes over a predecessor's table. Whether a node was found
    /// unprotected is not carried over: the rename epoch it refers to is
    /// the predecessor's, so each node is checked afresh.
    pub fn import(&self, nodes: &[NodeState], handles: usize) {
        let mut map = self.nodes.write().unwrap();
        map.clear();
        for n in nodes {
            map.insert(n.node, Node::new((n.dev, n.ino), n.lookups));
        }
        self.handles.store(handles, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_lookups_and_forgets() {
        let t = NodeTable::new(Limits {
            nodes: 2,
            handles: 1,
        });
        assert!(t.add(5, (1, 5)).unwrap());
        assert!(!t.add(5, (1, 5)).unwrap());
        assert!(t.add(6, (1, 6)).unwrap());
        assert_eq!(
            t.add(7, (1, 7)).unwrap_err().raw_os_error(),
            Some(libc::ENFILE)
        );
        // Known nodes still resolve while the table is full.
        assert!(!t.add(6, (1, 6)).unwrap());
        t.forget(5, 1);
        assert_eq!(t.key(5), Some((1, 5)));
        t.forget(5, 1);
        assert_eq!(t.key(5), None);
        assert!(t.add(7, (1, 7)).unwrap());
        // The same node id for another inode (a reused inode number).
        assert!(t.add(7, (1, 70)).unwrap());
        assert_eq!(t.key(7), Some((1, 70)));
        // Forgetting more than was looked up does not wrap.
        t.forget(6, 100);
        assert_eq!(t.key(6), None);
    }

    #[test]
    fn handles_are_bounded() {
        let t = NodeTable::new(Limits {
            nodes: 1,
            handles: 2,
        });
        t.reserve_handle().unwrap();
        t.reserve_handle().unwrap();
        assert_eq!(
            t.reserve_handle().unwrap_err().raw_os_error(),
            Some(libc::EMFILE)
        );
        t.handle_closed();
        t.reserve_handle().unwrap();
        t.handle_closed();
        t.handle_closed();
        t.handle_closed();
        assert_eq!(t.handles(), 0, "never below zero");
    }

    #[test]
    fn limits_leave_room_below_the_process_limit() {
        let l = Limits::for_nofile(1024, true);
        assert!((l.nodes + l.handles) as u64 <= 1024 - RESERVED_FDS);
        let l = Limits::for_nofile(1024, false);
        assert!(l.handles as u64 <= 1024 - RESERVED_FDS);
    }
}
