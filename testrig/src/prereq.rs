//! Prerequisite checks and the skip rule, for every test of the workspace.
//!
//! A test that needs something the machine may lack (a real guest, a
//! program, a file, root) checks for it first. When it is missing the test
//! prints `SKIP: <why>` on stdout and returns without asserting anything
//! ([`skip`]) — except in CI (`CI=true`, `1` or `yes`), where
//! `scripts/install-deps.sh` must have provided everything and a missing
//! piece is a failure (panic), never a silent pass. `scripts/test.sh` counts
//! the `SKIP:` lines as skipped tests. A test that needs a real guest calls
//! [`require`].

use std::fmt::Display;
use std::path::{Path, PathBuf};

use crate::kernel::GuestKernel;
use crate::paths;

/// Something a guest test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `qemu-system-x86_64`.
    Qemu,
    /// The unpacked Debian guest kernel and modules.
    Kernel,
    /// Static busybox.
    Busybox,
    /// The reference virtiofsd.
    Virtiofsd,
    /// The decompressed guest kernel (`vmlinux`), for the monitor.
    Vmlinux,
    /// QEMU 10 (TCG plugin API v4) beside the system QEMU, see
    /// [`paths::qemu10`].
    Qemu10,
}

/// What [`require`] found.
#[derive(Debug, Clone)]
pub struct Prereqs {
    /// The guest kernel (always located: every guest needs it).
    pub kernel: GuestKernel,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// virtiofsd, when [`Need::Virtiofsd`] was asked for.
    pub virtiofsd: Option<PathBuf>,
    /// The decompressed guest kernel, when [`Need::Vmlinux`] was asked for.
    pub vmlinux: Option<PathBuf>,
    /// QEMU 10, when [`Need::Qemu10`] was asked for.
    pub qemu10: Option<PathBuf>,
}

/// True when running under CI, where skipping is not allowed.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Ok("true" | "1" | "yes")
    )
}

/// Checks `needs` (the kernel, QEMU and busybox are always checked).
pub fn check(needs: &[Need]) -> Result<Prereqs, String> {
    let mut missing = Vec::new();
    let qemu = paths::which(&paths::qemu());
    if qemu.is_none() {
        missing.push(format!(
            "{} (Debian: qemu-system-x86)",
            paths::qemu().display()
        ));
    }
    if !paths::busybox().is_file() {
        missing.push(format!(
            "{} (Debian: busybox-static)",
            paths::busybox().display()
        ));
    }
    let kernel = GuestKernel::locate();
    if let Err(e) = &kernel {
        missing.push(e.to_string());
    }
    let want_virtiofsd = needs.contains(&Need::Virtiofsd);
    let virtiofsd = paths::virtiofsd();
    if want_virtiofsd && !virtiofsd.is_file() {
        missing.push(format!("virtiofsd at {}", virtiofsd.display()));
    }
    let want_vmlinux = needs.contains(&Need::Vmlinux);
    let vmlinux = paths::vmlinux();
    if want_vmlinux && !vmlinux.is_file() {
        missing.push(format!(
            "decompressed guest kernel at {}",
            vmlinux.display()
        ));
    }
    let want_qemu10 = needs.contains(&Need::Qemu10);
    let qemu10 = paths::qemu10();
    if want_qemu10 && !qemu10.is_file() {
        missing.push(format!(
            "QEMU 10 at {} (bookworm-backports; or set FSD_QEMU10)",
            qemu10.display()
        ));
    }
    match (missing.is_empty(), kernel, qemu) {
        (true, Ok(kernel), Some(qemu)) => Ok(Prereqs {
            kernel,
            qemu,
            virtiofsd: want_virtiofsd.then_some(virtiofsd),
            vmlinux: want_vmlinux.then_some(vmlinux),
            qemu10: want_qemu10.then_some(qemu10),
        }),
        _ => {
            let list = missing.join("; ");
            if list.contains("install-deps.sh") {
                Err(format!("missing {list}"))
            } else {
                Err(format!("missing {list} (run scripts/install-deps.sh)"))
            }
        }
    }
}

/// The prerequisites, or `None` after printing `SKIP: …`. Panics in CI.
pub fn require(needs: &[Need]) -> Option<Prereqs> {
    match check(needs) {
        Ok(p) => Some(p),
        Err(reason) => skip(reason),
    }
}

/// The skip rule: prints `SKIP: why` and returns `None`, so that the caller
/// returns without asserting anything; panics under CI instead.
pub fn skip<T, W: Display>(why: W) -> Option<T> {
    if in_ci() {
        panic!("CI=true and {why}");
    }
    println!("SKIP: {why}");
    None
}

/// The decompressed guest kernel alone (for tests that read it without
/// booting a guest), or `None` after printing `SKIP: …`.
pub fn vmlinux() -> Option<PathBuf> {
    let p = paths::vmlinux();
    if p.is_file() {
        return Some(p);
    }
    skip(format!(
        "no decompressed guest kernel at {} (run scripts/install-deps.sh)",
        p.display()
    ))
}

/// The first of `programs` (names looked up on `PATH`, or paths) that this
/// machine lacks, with the Debian package list that provides it.
pub fn missing_program(programs: &[&str]) -> Option<String> {
    programs
        .iter()
        .find(|p| paths::which(Path::new(p)).is_none())
        .map(|p| format!("{p} is not installed (apt: see scripts/apt/*.txt)"))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
