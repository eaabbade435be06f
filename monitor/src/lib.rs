//! The VMM-side eye: looks into Linux guests from outside, without any
//! agent inside them.
//!
//! - [`kernel`]: what one kernel build looks like (symbols, struct offsets).
//! - [`mem`]: guest-physical RAM as mapped from QEMU's memory backend.
//! - [`paging`]: 4- and 5-level page-table walks.
//! - [`qmp`] and [`gdb`]: QEMU's control and debug sockets.
//! - [`vm`] and [`config`]: one attached VM, and where VMs are found.
//! - [`vmi`]: a live view of one guest kernel (KASLR, virtual reads).
//! - [`smbios`]: VM identity from the firmware tables.
//! - [`process`]: the task list.
//! - [`inject`]: running a guest kernel function by call injection.
//! - [`freeze`]: parking and waking a process from outside.
//! - [`pagecache`]: finding and flushing the cached pages of a file.
//! - [`hooks`]: where the TCG plugin hooks the guest kernel, and the events
//!   it streams back (fork, exit, exec, socket send/receive, file I/O).
//! - [`hook_feed`]: the daemon's end of the plugin: arming each VM's hooks
//!   and feeding their events to taint tracking.
//! - [`host`]: what tells one host boot and one host process from another.
//! - [`taint`]: following confidential data across files, processes and
//!   sockets of many VMs (engine, bounds, journal, alerts, graph).
//! - [`sockets`]: which process owns a TCP or UDP socket (for a packet
//!   filter).
//! - [`daemon`]: serving fsd's (and operators') requests, e.g. "flush
//!   these inodes in VM X", over a Unix socket.
//! - [`shutdown`]: a clean stop on SIGTERM (taint state saved).
//! - [`error`]: what can go wrong, one variant per cause.
//! - [`protocol`], [`report`] and [`taint_report`]: the wire protocol and
//!   the result types, defined once in the `monitor-client` crate that fsd
//!   links.

pub mod config;
pub mod daemon;
pub mod error;
pub mod freeze;
pub mod gdb;
pub mod hook_feed;
pub mod hooks;
pub mod host;
pub mod inject;
pub mod kernel;
pub mod mem;
pub mod pagecache;
pub mod paging;
pub mod process;
pub mod qmp;
pub mod shutdown;
pub mod smbios;
pub mod sockets;
pub mod taint;
pub mod vm;
pub mod vmi;

pub use error::{Error, Result};
pub use monitor_client::{protocol, report, taint_report};
