//! The filter against a real guest, in one test binary: Debian's kernel
//! under QEMU TCG (testrig) with its network through the filter and passt,
//! the monitor answering ownership lookups from the guest's RAM, and
//! servers on the host's loopback reached through passt's gateway.
//!
//! Without QEMU, the guest kernel, virtiofsd (the rig's share) or passt a
//! test prints `SKIP: …` and returns; under `CI=true` it fails.

mod common;

mod bench;
mod filter;
