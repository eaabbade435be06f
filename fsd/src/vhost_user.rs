//! The vhost-user virtio-fs device.
//!
//! Queue 0 is the high-priority queue (FORGET, INTERRUPT), queues 1..=N are
//! request queues. virtiofsd offers one request queue; fsd offers as many as
//! asked (`--request-queues`), each served by its own epoll thread, which is
//! what lets a multi-queue guest (Linux 6.11+) spread load over host cores.
//!
//! The device configuration space (tag and number of request queues) is
//! served through VHOST_USER_GET_CONFIG when a tag is set, for VMMs that read
//! it from the back-end.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use log::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryLoadGuard};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::crash::inflight::InFlightTable;
use crate::dispatch::{AtomicMem, Blocking, Chain, Dispatcher, GuestMem};
use crate::handover::quiesce::{InFlight, Quiesce};
use crate::poll::Poller;
use crate::pool::{LockWaiters, Pool};

/// Largest queue size offered; the guest may choose less.
pub const QUEUE_SIZE: usize = 1024;
/// Length of the tag field in the virtio-fs configuration space.
pub const TAG_LEN: usize = 36;

/// Settings of the device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub tag: Option<String>,
    pub request_queues: usize,
    pub thread_pool_size: usize,
    /// Threads for large READs when there is no worker pool (0: none).
    pub bulk_read_threads: usize,
    /// Longest adaptive poll of a queue before its thread sleeps.
    pub poll_max: Duration,
}

/// The vhost-user back-end of one virtio-fs device.
pub struct FsBackend {
    cfg: DeviceConfig,
    dispatcher: Arc<Dispatcher>,
    pool: Option<Pool>,
    /// Takes large READs off a queue's thread while more requests wait
    /// behind them (only without `pool`, whose workers take everything).
    bulk: Option<Pool>,
    lock_waiters: LockWaiters,
    mem: RwLock<Option<AtomicMem>>,
    event_idx: AtomicBool,
    /// Pausing for a live handover.
    quiesce: Arc<Quiesce>,
    /// Requests taken and not yet answered, for crash recovery (set when
    /// `--crash-recovery` is on; see [`crate::crash::inflight`]).
    inflight: OnceLock<Arc<InFlightTable>>,
    /// Adaptive polling before a queue's thread sleeps.
    poller: Poller,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("event {0} does not belong to any queue")]
    UnknownEvent(u16),
    #[error("guest memory is not set up yet")]
    NoMemory,
    #[error("the guest's queue is broken: {0}")]
    Queue(virtio_queue::Error),
    #[error("the tag is longer than {TAG_LEN} bytes")]
    TagTooLong,
}

impl From<DeviceError> for io::Error {
    fn from(e: DeviceError) -> Self {
        io::Error::other(e)
    }
}

impl FsBackend {
    pub fn new(cfg: DeviceConfig, dispatcher: Arc<Dispatcher>) -> io::Result<Self> {
        if cfg.tag.as_ref().is_some_and(|t| t.len() > TAG_LEN) {
            return Err(DeviceError::TagTooLong.into());
        }
        let pool = match cfg.thread_pool_size {
            0 => None,
            n => Some(Pool::new(n)?),
        };
        let bulk = match cfg.bulk_read_threads {
            n if n == 0 || pool.is_some() => None,
            n => Some(Pool::new(n)?),
        };
        let poller = Poller::new(cfg.poll_max, 1 + cfg.request_queues);
        Ok(FsBackend {
            poller,
            cfg,
            dispatcher,
            pool,
            bulk,
            lock_waiters: LockWaiters::default(),
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            quiesce: Arc::default(),
            inflight: OnceLock::new(),
        })
    }

    /// Tracks requests in flight in `table` from now on.
    pub fn track_in_flight(&self, table: Arc<InFlightTable>) {
        let _ = self.inflight.set(table);
    }

    /// How many queues the device has (the in-flight table's shape).
    pub fn queue_count(&self) -> usize {
        self.num_queues()
    }

    /// The pause switch of a live handover.
    pub fn quiesce(&self) -> &Arc<Quiesce> {
        &self.quiesce
    }

    /// The request router (its FUSE session moves in a handover).
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Guest memory as the front-end last set it.
    pub fn memory(&self) -> Option<AtomicMem> {
        self.mem.read().unwrap().clone()
    }

    /// Puts a finished chain in the used ring and notifies the guest if it
    /// asked to be. With crash recovery, the answer is committed in the
    /// in-flight table under the vring lock.
    fn complete(done: &Done, head: u16, len: u32) {
        let added = add_used(&done.vring, done.inflight.as_deref(), done.queue, head, len);
        if let Err(e) = added {
            error!("cannot add to the used ring: {e}");
            return;
        }
        let notify = if done.event_idx {
            done.vring.needs_notification().unwrap_or(true)
        } else {
            true
        };
        if notify {
            if let Err(e) = done.vring.signal_used_queue() {
                error!("cannot signal the guest: {e}");
            }
        }
    }

    /// `inline`: handle it on this (the queue's) thread even with a pool.
    /// `popped`: counts the request until it is answered (dropped on every
    /// path below).
    fn run(&self, chain: Chain, done: Done, inline: bool, popped: InFlight) {
        let head = chain.head_index();
        // Read once, used twice: for the routing here and by the handler.
        let header = Dispatcher::peek_header(&chain);
        if self.dispatcher.needs_own_thread_for(header.as_ref()) {
            match self.lock_waiters.try_reserve() {
                Some(permit) => {
                    let d = self.dispatcher.clone();
                    let done2 = done.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("fsd-waiter".into())
                            .spawn(move || {
                                let len = d.handle_peeked(chain, header, Blocking::Allowed);
                                Self::complete(&done2, head, len);
                                drop(permit);
                                drop(popped);
                            });
                    if let Err(e) = spawned {
                        // The chain went down with the closure; complete it empty.
                        error!("cannot start a lock-wait thread: {e}");
                        Self::complete(&done, head, 0);
                    }
                }
                None => {
                    warn!("too many waiting requests; refusing one that would wait");
                    let len = self
                        .dispatcher
                        .handle_peeked(chain, header, Blocking::Refused);
                    Self::complete(&done, head, len);
                }
            }
            return;
        }
        // A request handled here delays those behind it; the pool takes any
        // but the last of a batch, the bulk threads only large READs (the
        // copy then runs beside this thread's next requests, on another
        // core).
        let pool = match (&self.pool, &self.bulk) {
            _ if inline => None,
            (Some(pool), _) => Some(pool),
            (None, Some(bulk)) if Dispatcher::is_bulk_read(&chain, header.as_ref()) => Some(bulk),
            _ => None,
        };
        match pool {
            None => {
                let len = self
                    .dispatcher
                    .handle_peeked(chain, header, Blocking::Refused);
                Self::complete(&done, head, len);
            }
            Some(pool) => {
                let d = self.dispatcher.clone();
                let job = Box::new(move || {
                    let len = d.handle_peeked(chain, header, Blocking::Refused);
                    Self::complete(&done, head, len);
                    drop(popped);
                });
                if pool.execute(job).is_err() {
                    error!("worker pool is gone");
                }
            }
        }
    }

    /// Guest memory as it is now, for one pass over a queue.
    fn guest_memory(&self) -> Result<GuestMemoryLoadGuard<GuestMem>, DeviceError> {
        Ok(self
            .mem
            .read()
            .unwrap()
            .as_ref()
            .ok_or(DeviceError::NoMemory)?
            .memory())
    }

    fn process_queue(
        &self,
        queue: usize,
        vring: &VringRwLock,
        mem: &GuestMemoryLoadGuard<GuestMem>,
    ) -> Result<(), DeviceError> {
        let event_idx = self.event_idx.load(Ordering::Acquire);
        let inflight = self.inflight.get().cloned();
        let chains: Vec<Chain> = {
            let mut st = vring.get_mut();
            let q = st.get_queue_mut();
            let start = q.next_avail();
            let chains: Vec<Chain> = q.iter(mem.clone()).map_err(DeviceError::Queue)?.collect();
            if let Some(t) = &inflight {
                // Marked before any is handled, and next_avail after all are
                // marked (see `crash::inflight`).
                for (i, c) in chains.iter().enumerate() {
                    t.popped(queue, c.head_index(), start.wrapping_add(i as u16));
                }
                t.set_next_avail(queue, q.next_avail());
            }
            chains
        };
        let done = Done {
            vring: vring.clone(),
            event_idx,
            queue,
            inflight,
        };
        // A lone request is handled here at once: handing it to a worker
        // only adds a thread hop. When several are pending, the workers take
        // all but the last, which this thread handles meanwhile.
        let last = chains.len().saturating_sub(1);
        // The whole batch is counted before any of it runs, so that a
        // request handled meanwhile sees the others (`fs::split_read`).
        let popped: Vec<InFlight> = chains.iter().map(|_| self.quiesce.popped()).collect();
        for ((i, chain), popped) in chains.into_iter().enumerate().zip(popped) {
            self.run(chain, done.clone(), i == last, popped);
        }
        Ok(())
    }
}

/// Whether the guest added chains to `vring` not taken yet. An error says
/// yes, so that popping reports it.
fn has_avail(vring: &VringRwLock, mem: &GuestMem) -> bool {
    let st = vring.get_ref();
    let q = st.get_queue();
    q.avail_idx(mem, Ordering::Acquire)
        .map_or(true, |idx| idx.0 != q.next_avail())
}

/// Puts `head` in the used ring; with a crash-recovery table, the answer is
/// committed in it under the vring lock (see [`crate::crash::inflight`]).
pub fn add_used(
    vring: &VringRwLock,
    inflight: Option<&InFlightTable>,
    queue: usize,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    let mut st = vring.get_mut();
    match inflight {
        Some(t) => {
            let used_before = st.get_queue().next_used();
            t.answer(queue, head, used_before, || st.add_used(head, len))
        }
        None => st.add_used(head, len),
    }
}

/// Where a request's answer goes.
#[derive(Clone)]
struct Done {
    vring: VringRwLock,
    event_idx: bool,
    queue: usize,
    inflight: Option<Arc<InFlightTable>>,
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1 + self.cfg.request_queues
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        if self.cfg.tag.is_some() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        f
    }

    /// Called on every SET_FEATURES, i.e. each time the VMM starts the
    /// device: at boot and guest reboot (a new INIT follows), but also when
    /// a paused VM resumes (none follows, the session goes on).
    fn acked_features(&self, _features: u64) {
        self.dispatcher.device_restarted();
    }

    fn reset_device(&self) {
        // Requests of the session that ends are never answered: a crash
        // from now on must not answer them into buffers the guest reuses.
        if let Some(t) = self.inflight.get() {
            t.clear();
        }
        self.dispatcher.device_reset();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut space = [0u8; TAG_LEN + 4];
        if let Some(tag) = &self.cfg.tag {
            space[..tag.len()].copy_from_slice(tag.as_bytes());
        }
        space[TAG_LEN..].copy_from_slice(&(self.cfg.request_queues as u32).to_le_bytes());
        let start = (offset as usize).min(space.len());
        let end = start.saturating_add(size as usize).min(space.len());
        space[start..end].to_vec()
    }

    fn update_memory(&self, mem: AtomicMem) -> io::Result<()> {
        *self.mem.write().unwrap() = Some(mem);
        Ok(())
    }

    /// An exit event per queue thread: without one, dropping the daemon
    /// would wait forever for threads nothing tells to stop.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    /// One epoll thread per queue, so request queues proceed in parallel.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other("unexpected epoll event set"));
        }
        // One queue per thread (`queues_per_thread`): thread i serves
        // queue i, and `vrings` holds that one queue.
        let vring = vrings
            .get(device_event as usize)
            .ok_or(DeviceError::UnknownEvent(device_event))?;
        // Paused for a handover: leave the ring alone (see `handover::quiesce`).
        let Some(_popping) = self.quiesce.enter() else {
            return Ok(());
        };
        // Process until the guest has stopped adding chains, with
        // notifications off meanwhile (VIRTIO_RING_F_EVENT_IDX, or the
        // used ring's NO_NOTIFY flag without it), and watch the ring a
        // little longer before sleeping (`crate::poll`).
        loop {
            self.poller.woke(thread_id);
            vring.disable_notification().map_err(DeviceError::Queue)?;
            // Read once per pass: the poll below looks at the ring often.
            let mem = self.guest_memory()?;
            self.process_queue(thread_id, vring, &mem)?;
            let more = self.poller.poll(thread_id, || {
                self.quiesce.is_paused() || has_avail(vring, &mem)
            });
            // A pause waits for this thread to leave.
            if more && !self.quiesce.is_paused() {
                continue;
            }
            if !vring.enable_notification().map_err(DeviceError::Queue)? || self.quiesce.is_paused()
            {
                break;
            }
        }
        Ok(())
    }
}
