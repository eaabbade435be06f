//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::Path;

use driver::{DaemonKind, Harness, HarnessOptions};

/// Starts `kind` on a fresh share, or prints SKIP (machine lacks root or
/// virtiofsd) and returns None. A missing fsd binary is a failure.
pub fn start(
    kind: DaemonKind,
    opts: &HarnessOptions,
    populate: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Option<Harness> {
    if !Harness::require(kind) {
        return None;
    }
    match Harness::start(kind, opts, populate) {
        Ok(h) => Some(h),
        Err(e) => panic!("starting {}: {e}", kind.name()),
    }
}

/// Both daemons must be runnable for a side-by-side test; virtiofsd missing
/// is a SKIP, fsd missing a failure.
pub fn both_available() -> bool {
    [DaemonKind::Virtiofsd, DaemonKind::Fsd]
        .into_iter()
        .all(Harness::require)
}

/// The standard test tree: a 10000-byte file, a directory with three files,
/// a relative symlink.
pub fn populate(share: &Path) -> std::io::Result<()> {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(share.join("a.txt"), &data)?;
    std::fs::create_dir(share.join("d"))?;
    for n in ["x", "y", "z"] {
        std::fs::write(share.join("d").join(n), n.repeat(3))?;
    }
    std::os::unix::fs::symlink("a.txt", share.join("l"))?;
    Ok(())
}
