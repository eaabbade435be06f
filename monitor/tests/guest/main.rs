//! The monitor against real booted guests, in one test binary: Debian's
//! kernel under QEMU TCG (testrig), looked at from outside while the test
//! runs commands inside it. Each test boots its own guest (10–30 s).
//!
//! Without QEMU, the guest kernel (with its decompressed vmlinux) or
//! virtiofsd a test prints `SKIP: …` and returns; under `CI=true` it fails.

mod common;

mod live;
mod ops;
mod sockets;
mod uuid_cost;
