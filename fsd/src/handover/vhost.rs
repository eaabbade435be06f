//! The vhost-user device's share of a live handover.
//!
//! vhost-user-backend keeps the vrings and the memory table to itself, and
//! QEMU's vhost-user-fs front-end never sends them again. So the
//! predecessor reads them out at the moment of the handover (current
//! indices, not the ones the front-end once sent) with the descriptors
//! behind them, and the successor feeds them to its own request handler as
//! if the front-end had sent SET_FEATURES, SET_MEM_TABLE and the
//! SET_VRING_* messages. The memory table is replayed with each region's
//! front-end address equal to its guest-physical address, and the vring
//! addresses as guest-physical addresses: the two cancel out in the
//! handler's translation, and the front-end's own addresses are never
//! needed. SET_VRING_ADDR reads the used index back from guest memory,
//! which after the pause equals the predecessor's.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostUserMemoryRegion, VhostUserVirtioFeatures, VhostUserVringAddrFlags,
};
use vhost_user_backend::{VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryRegion};

use super::state::{FdBag, MemRegion, QueueState, Received, VhostState};
use super::HandoverError;
use crate::vhost_user::FsBackend;

/// The daemon type fsd runs.
pub type Daemon = VhostUserDaemon<Arc<FsBackend>>;

fn dup(fd: impl AsFd) -> io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

/// The eventfd wrappers of vmm-sys-util only lend raw descriptors.
fn dup_raw(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: `fd` is open for as long as its owner, which outlives this call.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }.try_clone_to_owned()
}

/// Reads the device state out of a daemon whose request thread is stopped
/// and whose queues are paused.
pub fn capture(
    daemon: &Daemon,
    backend: &FsBackend,
    connection: &impl AsFd,
    bag: &mut FdBag,
) -> Result<VhostState, HandoverError> {
    let (features, protocol_features) = daemon.acked_features();
    let mem = backend.memory().ok_or(HandoverError::NotSetUp)?.memory();
    let mut regions = Vec::new();
    for r in mem.iter() {
        let fo = r.file_offset().ok_or(HandoverError::AnonymousMemory)?;
        regions.push(MemRegion {
            guest_phys_addr: r.start_addr().0,
            size: r.len(),
            mmap_offset: fo.start(),
            fd: bag.put(dup(fo.file()).map_err(HandoverError::Dup)?),
        });
    }
    let mut queues = Vec::new();
    for (index, v) in daemon.vrings().iter().enumerate() {
        let st = v.get_ref();
        let q = st.get_queue();
        let put = |bag: &mut FdBag, fd: Option<RawFd>| -> Result<_, HandoverError> {
            fd.map(|f| dup_raw(&f).map(|d| bag.put(d)))
                .transpose()
                .map_err(HandoverError::Dup)
        };
        queues.push(QueueState {
            index: index as u32,
            size: q.size(),
            ready: q.ready(),
            enabled: st.get_enabled(),
            desc_table: q.desc_table(),
            avail_ring: q.avail_ring(),
            used_ring: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
            kick: put(bag, st.get_kick().as_ref().map(|k| k.as_raw_fd()))?,
            call: put(bag, st.get_call().as_ref().map(|c| c.as_raw_fd()))?,
            err: put(bag, st.get_err().as_ref().map(|e| e.as_raw_fd()))?,
        });
    }
    Ok(VhostState {
        features,
        protocol_features,
        regions,
        queues,
        connection: bag.put(dup(connection).map_err(HandoverError::Dup)?),
    })
}

/// The raw numbers of every queue's kick, call and err eventfds: a new
/// number means QEMU sent a new eventfd.
pub fn eventfd_numbers(daemon: &Daemon) -> Vec<[Option<RawFd>; 3]> {
    daemon
        .vrings()
        .iter()
        .map(|v| {
            let st = v.get_ref();
            [
                st.get_kick().as_ref().map(|k| k.as_raw_fd()),
                st.get_call().as_ref().map(|c| c.as_raw_fd()),
                st.get_err().as_ref().map(|e| e.as_raw_fd()),
            ]
        })
        .collect()
}

/// Sets a fresh daemon up as the predecessor's was, all but starting its
/// queues ([`Replayed::start`]). `check_used`: the used index in guest
/// memory must be the predecessor's (a handover; after a crash it is
/// whatever the dead process left).
pub fn replay(
    daemon: &Daemon,
    s: &VhostState,
    fds: &mut Received,
    check_used_index: bool,
) -> Result<Replayed, HandoverError> {
    let mut files = Vec::new();
    let mut table = Vec::new();
    for r in &s.regions {
        table.push(VhostUserMemoryRegion::new(
            r.guest_phys_addr,
            r.size,
            r.guest_phys_addr,
            r.mmap_offset,
        ));
        files.push(File::from(fds.take(r.fd).map_err(HandoverError::Dup)?));
    }
    let mut kicks = Vec::new();
    let mut queues = Vec::new();
    for q in s.queues.iter().filter(|q| q.ready) {
        let mut take = |i: Option<usize>| {
            i.map(|i| fds.take(i).map(File::from))
                .transpose()
                .map_err(HandoverError::Dup)
        };
        let kick = take(q.kick)?;
        if let Some(k) = &kick {
            kicks.push(k.try_clone().map_err(HandoverError::Dup)?);
        }
        queues.push((q, kick, take(q.call)?, take(q.err)?));
    }
    let with_enable = s.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
    // Everything but the kicks first: until a queue has its kick eventfd,
    // no worker of this process touches it, so the check below compares
    // the rings as the predecessor left them (a worker that already served
    // a request would have moved the used index, and a failed handover
    // would then hand the old process a ring it no longer knows).
    let mut starts = Vec::new();
    daemon
        .with_handler(|h| {
            h.set_owner()?;
            h.set_features(s.features)?;
            h.set_protocol_features(s.protocol_features)?;
            h.set_mem_table(&table, files)?;
            for (q, kick, call, err) in queues {
                h.set_vring_num(q.index, u32::from(q.size))?;
                h.set_vring_addr(
                    q.index,
                    VhostUserVringAddrFlags::empty(),
                    q.desc_table,
                    q.used_ring,
                    q.avail_ring,
                    0,
                )?;
                h.set_vring_base(q.index, u32::from(q.next_avail))?;
                h.set_vring_call(q.index as u8, call)?;
                h.set_vring_err(q.index as u8, err)?;
                starts.push((q, kick));
            }
            Ok(())
        })
        .map_err(HandoverError::Replay)?;
    if check_used_index {
        check_used(daemon, s)?;
    }
    Ok(Replayed {
        starts: starts
            .into_iter()
            .map(|(q, kick)| (q.index, q.enabled, kick))
            .collect(),
        with_enable,
        kicks,
    })
}

/// A replayed device whose queues are not started yet.
pub struct Replayed {
    starts: Vec<(u32, bool, Option<File>)>,
    with_enable: bool,
    kicks: Vec<File>,
}

impl Replayed {
    /// Starts the queues (their workers serve from now on). Returns a copy
    /// of each started queue's kick eventfd, to kick once serving (see
    /// [`kick`]).
    pub fn start(self, daemon: &Daemon) -> Result<Vec<File>, HandoverError> {
        let with_enable = self.with_enable;
        daemon
            .with_handler(|h| {
                for (index, enabled, kick) in self.starts {
                    h.set_vring_kick(index as u8, kick)?;
                    if with_enable {
                        h.set_vring_enable(index, enabled)?;
                    }
                }
                Ok(())
            })
            .map_err(HandoverError::Replay)?;
        Ok(self.kicks)
    }
}

/// The used index was read back from guest memory; it must be the one the
/// predecessor left.
fn check_used(daemon: &Daemon, s: &VhostState) -> Result<(), HandoverError> {
    let vrings = daemon.vrings();
    for q in s.queues.iter().filter(|q| q.ready) {
        let now = vrings
            .get(q.index as usize)
            .map(|v: &VringRwLock| v.get_ref().get_queue().next_used());
        if now != Some(q.next_used) {
            return Err(HandoverError::UsedIndex {
                queue: q.index,
                expected: q.next_used,
                found: now,
            });
        }
    }
    Ok(())
}

/// Kicks each queue once: a kick consumed while requests were paused must
/// not leave a request unnoticed in its ring.
pub fn kick(kicks: &[File]) {
    for k in kicks {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a local buffer to an eventfd we hold.
        unsafe { libc::write(k.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
    }
}

/// Copies of the kick eventfds of a daemon's started queues.
pub fn kicks_of(daemon: &Daemon) -> Vec<File> {
    daemon
        .vrings()
        .iter()
        .filter_map(|v| {
            let st = v.get_ref();
            if !st.get_queue().ready() {
                return None;
            }
            st.get_kick()
                .as_ref()
                .and_then(|k| dup_raw(k).ok())
                .map(File::from)
        })
        .collect()
}
