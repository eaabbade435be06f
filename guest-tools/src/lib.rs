//! Small helpers that run inside guests. They are conveniences for tests and
//! operators, never part of the trust base: the host enforces everything.
//!
//! Only `std` and raw libc bindings, linked statically (`+crt-static`), so a
//! binary runs in a busybox initramfs with no C library installed.
//!
//! - [`lock`]: take, hold and release `flock`, POSIX (`fcntl` process-owned)
//!   and OFD locks, and query them with `F_GETLK`, printing what happened;
//!   the `lockprobe` binary wraps it.
//! - [`syscalls`]: fork, exit, socket sends and a cost loop of the system
//!   calls the taint hooks watch; the `hookprobe` binary wraps it.
//! - [`delegate`]: setuid delegation, the guest halves: the client a user
//!   VM runs in place of a delegated program (`delegate-client`) and the
//!   job agent of a helper VM (`delegate-agent`); `delegateprobe` sends
//!   hostile frames for the broker's tests, `pwchange` is a passwd-like
//!   program to delegate.
//! - [`net`]: traffic a hostile guest may send (SYN flood, port scan,
//!   datagrams no socket owns, malformed frames) for the packet filter's
//!   tests; the `netprobe` binary wraps it.

pub mod delegate;
pub mod lock;
pub mod net;
pub mod syscalls;
