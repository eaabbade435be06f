//! Real-guest test rig.
//!
//! Boots Debian's own kernel under QEMU TCG with a busybox initramfs, attaches a
//! vhost-user-fs device served by a daemon under test (fsd or the reference
//! virtiofsd), runs a shell script in the guest and hands back its console
//! transcript. Nothing here is mocked: the guest kernel's virtiofs driver talks
//! to the daemon exactly as it would in production.
//!
//! The pieces, in the order a test uses them:
//! - [`prereq`]: find QEMU, the guest kernel and virtiofsd, or skip (fail in CI).
//! - [`kernel`] and [`modules`]: the unpacked Debian kernel and the module
//!   closure needed for virtio-fs.
//! - [`cpio`] and [`initramfs`]: a newc archive with busybox, the modules and an
//!   `/init` that mounts the share and runs a script (or switches root to it).
//! - [`rootfs`]: a host directory populated as a minimal busybox root, for
//!   diskless guests whose root filesystem is the share.
//! - [`guest_tools`]: the static in-guest helpers (lock probe, ...).
//! - [`daemon`]: start a vhost-user-fs daemon on a socket path or inherited fd.
//! - [`qemu`]: boot the guest and collect a [`Transcript`].
//!
//! Cache layout under `$FSD_CACHE` (default `~/.cache/fsd`) is written by
//! `scripts/install-deps.sh`; see [`paths`].

pub mod cpio;
pub mod daemon;
mod elf;
pub mod error;
pub mod guest_tools;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod paths;
pub mod prereq;
pub mod qemu;
pub mod rootfs;

pub use daemon::{Daemon, DaemonSpec};
pub use error::{Error, Result};
pub use initramfs::{InitMode, InitramfsBuilder};
pub use kernel::GuestKernel;
pub use prereq::{require, Need, Prereqs};
pub use qemu::{MemoryBackend, Plugin, QemuConfig, Transcript, VhostUserFs, Vm};
