//! vhost-user connection setup, in the order QEMU uses for vhost-user-fs.
//!
//! `GET_FEATURES` → `GET/SET_PROTOCOL_FEATURES` → `GET_QUEUE_NUM` →
//! `SET_OWNER` → `SET_FEATURES` → `SET_MEM_TABLE` → per ring `SET_VRING_NUM`,
//! `SET_VRING_BASE`, `SET_VRING_ADDR`, `SET_VRING_KICK`, `SET_VRING_CALL` →
//! `SET_VRING_ENABLE`. Ring addresses travel as addresses in our own address
//! space, which the daemon translates through the memory table, exactly as
//! with QEMU.

use std::path::Path;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};

use crate::error::{vu, Error, Result};
use crate::memory::GuestMem;
use crate::queue::{Queue, RingLayout};

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// How to set the device up.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Request queues (queue 0, hiprio, always exists in addition).
    pub request_queues: usize,
    /// Entries per ring (power of two).
    pub queue_size: u16,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX` if the daemon offers it.
    pub event_idx: bool,
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    /// Guest-physical address where RAM starts.
    pub mem_base: u64,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            request_queues: 1,
            queue_size: 128,
            event_idx: false,
            mem_size: 128 << 20,
            mem_base: 0,
        }
    }
}

/// A connected virtio-fs device: the frontend socket, guest RAM and queues.
pub struct Device {
    frontend: Frontend,
    mem: Arc<GuestMem>,
    queues: Vec<Queue>,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    backend_queues: u64,
}

impl Device {
    /// Connects to the daemon at `socket` and brings up hiprio plus
    /// `config.request_queues` request queues.
    pub fn connect(socket: &Path, config: &DeviceConfig) -> Result<Self> {
        let nqueues = 1 + config.request_queues;
        let mut fe = Frontend::connect(socket, nqueues as u64).map_err(vu("connect"))?;
        let offered = fe.get_features().map_err(vu("GET_FEATURES"))?;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        let mut features = VIRTIO_F_VERSION_1 | (offered & VHOST_USER_F_PROTOCOL_FEATURES);
        if config.event_idx {
            features |= offered & VIRTIO_RING_F_EVENT_IDX;
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        let mut backend_queues = nqueues as u64;
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let theirs = fe
                .get_protocol_features()
                .map_err(vu("GET_PROTOCOL_FEATURES"))?;
            protocol = theirs
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
            fe.set_protocol_features(protocol)
                .map_err(vu("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Have every request acknowledged, so that a refused
                // SET_MEM_TABLE or SET_VRING_* surfaces here, as with QEMU.
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                backend_queues = fe.get_queue_num().map_err(vu("GET_QUEUE_NUM"))?;
            }
        }
        if (nqueues as u64) > backend_queues {
            return Err(Error::NoSuchQueue(nqueues - 1, backend_queues as usize));
        }
        fe.set_owner().map_err(vu("SET_OWNER"))?;
        fe.set_features(features).map_err(vu("SET_FEATURES"))?;

        let mem = Arc::new(GuestMem::new(config.mem_base, config.mem_size)?);
        fe.set_mem_table(&mem.region_infos()?)
            .map_err(vu("SET_MEM_TABLE"))?;

        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(nqueues);
        for i in 0..nqueues {
            let q = Queue::new(i, mem.clone(), config.queue_size, event_idx)?;
            let l: RingLayout = q.layout();
            fe.set_vring_num(i, l.size).map_err(vu("SET_VRING_NUM"))?;
            fe.set_vring_base(i, 0).map_err(vu("SET_VRING_BASE"))?;
            let addrs = VringConfigData {
                queue_max_size: l.size,
                queue_size: l.size,
                flags: 0,
                desc_table_addr: mem.host_addr(l.desc)?,
                used_ring_addr: mem.host_addr(l.used)?,
                avail_ring_addr: mem.host_addr(l.avail)?,
                log_addr: None,
            };
            fe.set_vring_addr(i, &addrs).map_err(vu("SET_VRING_ADDR"))?;
            fe.set_vring_kick(i, &q.kick)
                .map_err(vu("SET_VRING_KICK"))?;
            fe.set_vring_call(i, &q.call)
                .map_err(vu("SET_VRING_CALL"))?;
            queues.push(q);
        }
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for i in 0..nqueues {
                fe.set_vring_enable(i, true)
                    .map_err(vu("SET_VRING_ENABLE"))?;
            }
        }
        // Barrier: the backend handles messages in order, so once this reply
        // arrives every ring is enabled. Without it a kick can overtake
        // SET_VRING_ENABLE and be drained while the ring is still disabled.
        fe.get_features().map_err(vu("GET_FEATURES (barrier)"))?;
        Ok(Device {
            frontend: fe,
            mem,
            queues,
            features,
            protocol,
            backend_queues,
        })
    }

    /// Queue `i` (0 is hiprio, 1.. are request queues).
    pub fn queue(&mut self, i: usize) -> Result<&mut Queue> {
        let n = self.queues.len();
        self.queues.get_mut(i).ok_or(Error::NoSuchQueue(i, n))
    }

    /// All queues, so that threads can each drive one.
    pub fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    /// Guest RAM.
    pub fn mem(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// The negotiated virtio feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// How many queues the daemon said it supports.
    pub fn backend_queues(&self) -> u64 {
        self.backend_queues
    }

    /// The underlying frontend, for hostile tests that send odd messages.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }
}
