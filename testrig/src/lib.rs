//! The workspace's test infrastructure: real guests, real daemons, a real
//! display.
//!
//! Boots Debian's own kernel under QEMU TCG with a busybox initramfs, attaches a
//! vhost-user-fs device served by a daemon under test (fsd or the reference
//! virtiofsd), runs a shell script in the guest and hands back its console
//! transcript. Nothing here is mocked: the guest kernel's virtiofs driver talks
//! to the daemon exactly as it would in production. It is also where every
//! test of the workspace finds its programs and applies the skip rule, and
//! where the daemons (fsd, virtiofsd, authd, monitor) and the X server are
//! started.
//!
//! The pieces, in the order a test uses them:
//! - [`paths`]: where the cache, the guest kernel and every program are.
//! - [`prereq`]: find QEMU, the guest kernel and virtiofsd, or skip (fail in
//!   CI); the `SKIP:` rule for every other test too.
//! - [`kernel`] and [`modules`]: the unpacked Debian kernel and the module
//!   closure needed for virtio-fs.
//! - [`cpio`] and [`initramfs`]: a newc archive with busybox, the modules and an
//!   `/init` that mounts the share and runs a script (or switches root to it).
//! - [`rootfs`]: a host directory populated as a minimal busybox root, for
//!   diskless guests whose root filesystem is the share.
//! - [`guest_tools`]: the static in-guest helpers (lock probe, ...).
//! - [`daemon`]: start a vhost-user-fs daemon (fsd, virtiofsd) on a socket
//!   path or inherited fd, or the monitor's daemon.
//! - [`authd`]: enroll and run the real authd; [`x11`]: a private Xvfb and
//!   xdotool, for its dialog; [`wayland`]: a private headless sway, wtype
//!   and grim, for the same dialog under Wayland.
//! - [`qemu`]: boot the guest and collect a [`Transcript`].
//! - [`net`]: a network for the guest through passt (user mode, no tap),
//!   over QEMU's `-netdev stream`.
//! - [`script`]: the shell helpers of guest scripts, their one output
//!   format, and the step handshake of a guest that takes turns with the test;
//!   [`shell`]: a shell in a running guest over a second serial port.
//! - [`libvirt`]: a private libvirtd (in a mount namespace of its own) to
//!   run domains whose file system is served by fsd, as deployed.
//! - [`process`]: children killed on drop, polling with a deadline.
//! - [`rejuvenation`]: which fsd process serves after a handover or a crash
//!   recovery, from its log and /proc.
//!
//! Cache layout under `$FSD_CACHE` (default `~/.cache/fsd`) is written by
//! `scripts/install-deps.sh`; see [`paths`].

pub mod authd;
pub mod cpio;
pub mod daemon;
mod elf;
pub mod error;
pub mod guest_tools;
pub mod initramfs;
pub mod kernel;
pub mod libvirt;
pub mod modules;
pub mod net;
pub mod paths;
pub mod prereq;
pub mod process;
pub mod qemu;
pub mod rejuvenation;
pub mod rootfs;
pub mod script;
pub mod shell;
pub mod wayland;
pub mod x11;

pub use daemon::{Daemon, DaemonSpec, Sandbox};
pub use error::{Error, Result};
pub use initramfs::{InitMode, InitramfsBuilder};
pub use kernel::GuestKernel;
pub use prereq::{in_ci, require, skip, Need, Prereqs};
pub use process::{wait_for, Proc};
pub use qemu::{MemoryBackend, Plugin, QemuConfig, Transcript, VhostUserFs, VirtioSerialPort, Vm};
pub use script::{Attempt, ScriptedGuest};
