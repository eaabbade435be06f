//! A QEMU TCG plugin that hooks chosen guest kernel functions and tells the
//! monitor what they saw: which process forked which, exited, ran a new
//! program, sent or received on which socket, read or wrote which file.
//!
//! Taint tracking needs these facts as they happen. The gdbstub can give
//! them, but a breakpoint stops the whole VM (about 5 ms a hit under TCG);
//! a plugin callback is a direct call from translated code. The plugin
//! instruments only the first instruction of each hooked function (found by
//! address: kallsyms plus the KASLR slide, which the monitor knows), reads
//! the arguments and a few struct fields, and leaves the rest of the guest
//! untouched. Needs QEMU's plugin API v4 (QEMU 9.2 to 10.0): register reads
//! and guest virtual memory reads.
//!
//! Loading: `qemu-system-x86_64 -plugin libtaint_plugin.so,sock=PATH[,ring=N]
//! [,fn.NAME=ADDR...][,off.KEY=VALUE...]`; see `docs/taint.md`, "Hooks in the
//! guest kernel", for the arguments, the socket protocol and the costs.
//!
//! - [`config`]: the arguments, the monitor's requests, the hook table.
//! - [`guest`]: from registers and guest memory to an event (testable
//!   without QEMU).
//! - [`event`]: the fixed-size event and its JSON line.
//! - [`channel`]: the ring, the socket and its threads.
//! - `qemu`: installation and QEMU's callbacks (left out of unit tests,
//!   which cannot link against a QEMU process).

pub mod channel;
pub mod config;
pub mod event;
pub mod guest;
#[cfg(not(test))]
mod qemu;

#[cfg(not(test))]
qemu_plugin::register!(qemu::TaintPlugin);
