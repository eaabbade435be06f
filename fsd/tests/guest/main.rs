//! fsd's real-guest tests, in one test binary (one link instead of ten):
//! Debian's kernel under QEMU TCG mounts a share served by fsd (and, side by
//! side, by the reference virtiofsd) and runs a script; see testrig.
//!
//! Every test first checks its prerequisites: without QEMU, the guest
//! kernel, virtiofsd, Xvfb, ... it prints `SKIP: …` and returns (run with
//! `--nocapture` to see it); under `CI=true` a missing prerequisite fails
//! instead. Run one module with e.g. `cargo test -p fsd --test guest posix::`.

#[path = "../authd_stub/mod.rs"]
mod authd_stub;
mod common;

mod authd_dialog;
mod fail_closed;
mod fd_handoff;
mod grant_flush;
mod handover;
mod hostile_names;
mod libvirt;
mod lifecycle;
mod locks;
mod multiqueue;
mod policy_bypass;
mod posix;
mod root;
