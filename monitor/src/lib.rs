//! The VMM-side eye: looks into Linux guests from outside, without any
//! agent inside them.
//!
//! - [`kernel`]: what one kernel build looks like (symbols, struct offsets).
//! - [`mem`]: guest-physical RAM as mapped from QEMU's memory backend.
//! - [`paging`]: 4- and 5-level page-table walks.
//! - [`qmp`] and [`gdb`]: QEMU's control and debug sockets.
//! - [`vmi`]: a live view of one guest kernel (KASLR, virtual reads).
//! - [`smbios`]: VM identity from the firmware tables.
//! - [`process`]: the task list.
//! - [`freeze`]: parking and waking a process from outside.
//! - [`inject`]: running a guest kernel function by call injection.
//! - [`pagecache`]: finding and flushing the cached pages of a file.
//! - [`config`]: which VMs exist and where their sockets are.

pub mod error;
pub mod kernel;

pub use error::{Error, Result};
