//! Prerequisite checks and the skip rule.
//!
//! A test that needs a real guest calls [`require`] first. When something is
//! missing it prints `SKIP: <reason>` and gets `None`, so it returns without
//! asserting anything — except in CI (`CI=true` or `CI=1`), where
//! `scripts/install-deps.sh` must have provided everything and a missing piece
//! is a failure (panic), never a silent pass.

use std::path::PathBuf;

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
        Err(reason) if in_ci() => panic!("CI=true and a guest-test prerequisite is {reason}"),
        Err(reason) => {
            println!("SKIP: {reason}");
            None
        }
    }
}
