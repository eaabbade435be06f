//! A host-side virtio-fs guest driver.
//!
//! It plays the guest kernel's virtio-fs driver from the host: connects to a
//! daemon's vhost-user socket, shares memfd-backed guest RAM, lays out split
//! virtqueues in it, sends FUSE requests as descriptor chains of any shape and
//! decodes the replies. A guest under emulation is too slow to load a daemon
//! and cannot craft malicious FUSE messages; this can do both, so it drives
//! the differential tests, the hostile-guest suite and the benchmarks.
//!
//! Layers, bottom up:
//! - [`memory`]: guest RAM over a memfd, with an allocator;
//! - [`chain`]: descriptor chain shapes, well-formed or deliberately broken;
//! - [`queue`]: one split virtqueue (rings, kicks, calls, completions);
//! - [`device`]: the vhost-user handshake, as QEMU does it;
//! - [`fuse`]: FUSE requests and replies as bytes;
//! - [`session`]: typed FUSE operations on one queue;
//! - [`daemon`]: starting fsd or virtiofsd on a scratch socket;
//! - [`harness`]: a daemon on a scratch share fenced by sentinels;
//! - [`hostile`]: the hostile-guest battery;
//! - [`bench`]: the side-by-side benchmark workloads.
//!
//! ```no_run
//! use driver::fuse::{op, Request, ROOT_ID};
//! use driver::{Chain, Device, DeviceConfig, Segment, Session};
//! use std::path::Path;
//!
//! let mut dev = Device::connect(Path::new("/run/fsd.sock"), &DeviceConfig::default())?;
//! let mut s = Session::new(dev.queue(1)?);
//! s.init()?;
//! let entry = s.lookup(ROOT_ID, b"etc")?;
//! // Any header, any body, any chain shape:
//! let lie = Request::new(op::GETATTR, entry.nodeid).with_len(8).encode(99);
//! let chain = Chain::default()
//!     .push(Segment::Readable { data: lie, align: 16 })
//!     .push(Segment::Raw { addr: 1 << 40, len: 4096, writable: true });
//! let reply = s.call_chain(&chain);
//! # let _ = reply;
//! # Ok::<(), driver::Error>(())
//! ```

pub mod bench;
pub mod chain;
pub mod daemon;
pub mod device;
pub mod error;
pub mod fuse;
pub mod harness;
pub mod hostile;
pub mod memory;
pub mod queue;
pub mod session;

pub use chain::{Chain, Segment, Tail};
pub use daemon::{Daemon, DaemonKind, DaemonSpec};
pub use device::{Device, DeviceConfig};
pub use error::{Error, Result};
pub use fuse::{Reply, Request};
pub use harness::{Harness, HarnessOptions};
pub use memory::GuestMem;
pub use queue::{Completion, Queue};
pub use session::Session;
