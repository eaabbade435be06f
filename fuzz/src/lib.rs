//! An in-process rig for fuzzing fsd's request path.
//!
//! The driver crate plays the guest (guest RAM, the split ring, chain
//! layout); virtio-queue pops the chains as fsd's vhost-user loop does, and
//! fsd's own `Dispatcher` handles each one against a real passthrough file
//! system over a scratch share. No sockets, no threads: one input, one
//! request, one used entry.
//!
//! After every input the rig checks that nothing appeared next to the share
//! (a guest must never create files outside it) and panics if it did, so
//! the fuzzer reports an escape as a crash.

use std::path::PathBuf;
use std::sync::Arc;

use driver::chain::Chain;
use driver::fuse::{op, Request};
use driver::memory::GuestMem;
use driver::queue::{Completion, Queue};
use fsd::dispatch::{Blocking, Dispatcher};
use fsd::fs::{SharedFs, SharedFsOptions};
use fuse_backend_rs::abi::fuse_abi::InitIn;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

/// Ring size; small so that wrap-around is exercised often.
pub const QUEUE_SIZE: u16 = 64;

/// The rig: guest side, device side, and fsd's dispatcher.
pub struct Rig {
    scratch: tempfile::TempDir,
    outside_entries: usize,
    mem: Arc<GuestMem>,
    atomic: GuestMemoryAtomic<vm_memory::GuestMemoryMmap>,
    guest: Queue,
    device: virtio_queue::Queue,
    dispatcher: Dispatcher,
}

impl Rig {
    /// Builds the scratch share, fsd's file system over it and the rings,
    /// then sends FUSE_INIT.
    pub fn new() -> Self {
        let scratch = tempfile::Builder::new()
            .prefix("fsd-fuzz-")
            .tempdir()
            .expect("scratch dir");
        let share = scratch.path().join("share");
        std::fs::create_dir(&share).expect("share");
        std::fs::create_dir(scratch.path().join("outside")).expect("outside");
        std::fs::write(scratch.path().join("outside/sentinel"), b"x").expect("sentinel");
        std::fs::write(share.join("a"), vec![b'a'; 5000]).expect("file");
        std::fs::create_dir(share.join("d")).expect("dir");
        std::fs::write(share.join("d/b"), b"b").expect("file");
        std::os::unix::fs::symlink("a", share.join("l")).expect("symlink");

        let cfg = fuse_backend_rs::passthrough::Config {
            root_dir: share.to_string_lossy().into_owned(),
            do_import: true,
            ..Default::default()
        };
        let opts = SharedFsOptions {
            readonly: false,
            xattr: true,
            announce_submounts: false,
            readdirplus: true,
            root_prefix: PathBuf::from(&share),
            guard: None,
            limits: fsd::fs::nodes::Limits::for_nofile(4096, true),
            host_watch: fsd::fs::hostwatch::HostWatch::disabled(),
            taint: None,
        };
        let fs = SharedFs::new(cfg, std::fs::File::open(&share).expect("share"), opts).expect("SharedFs");
        let dispatcher = Dispatcher::new(Arc::new(fs));

        let mem = Arc::new(GuestMem::new(0, 4 << 20).expect("guest memory"));
        let guest = Queue::new(1, mem.clone(), QUEUE_SIZE, false).expect("queue");
        let l = guest.layout();
        let mut device = virtio_queue::Queue::new(QUEUE_SIZE).expect("device queue");
        device.set_size(QUEUE_SIZE);
        device.set_desc_table_address(Some(l.desc as u32), Some((l.desc >> 32) as u32));
        device.set_avail_ring_address(Some(l.avail as u32), Some((l.avail >> 32) as u32));
        device.set_used_ring_address(Some(l.used as u32), Some((l.used >> 32) as u32));
        device.set_ready(true);
        let atomic = GuestMemoryAtomic::new(mem.mem().clone());
        let outside_entries = count_outside(scratch.path());
        let mut rig = Rig {
            scratch,
            outside_entries,
            mem,
            atomic,
            guest,
            device,
            dispatcher,
        };
        let init = Request::new(op::INIT, 0).arg(&InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0,
            flags: driver::session::INIT_FLAGS,
        });
        rig.run(&init.chain(1, 256));
        rig
    }

    /// Guest memory, for chains that name raw addresses.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// Publishes `chain`, lets fsd handle everything available, and returns
    /// what came back.
    pub fn run(&mut self, chain: &Chain) -> Vec<Completion> {
        if self.guest.publish(chain).is_err() {
            // Not expressible (too many descriptors, memory full): skip.
            return Vec::new();
        }
        let chains: Vec<_> = match self.device.iter(self.atomic.memory()) {
            Ok(it) => it.collect(),
            Err(_) => Vec::new(),
        };
        for c in chains {
            let head = c.head_index();
            let len = self.dispatcher.handle(c, Blocking::Refused);
            self.device
                .add_used(&*self.atomic.memory(), head, len)
                .expect("add_used");
        }
        let done = self.guest.try_wait().expect("used ring");
        // Chains the device could not even pop stay in flight; drop them so
        // that the ring never fills up.
        self.guest.abandon_in_flight();
        let now = count_outside(self.scratch.path());
        assert_eq!(
            now, self.outside_entries,
            "a request created or removed something outside the share"
        );
        done
    }
}

impl Default for Rig {
    fn default() -> Self {
        Self::new()
    }
}

/// Entries in the scratch directory and in `outside/` (the share excluded).
fn count_outside(scratch: &std::path::Path) -> usize {
    let top = std::fs::read_dir(scratch).map(|d| d.count()).unwrap_or(0);
    let out = std::fs::read_dir(scratch.join("outside"))
        .map(|d| d.count())
        .unwrap_or(0);
    top * 1000 + out
}
