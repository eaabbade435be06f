//! Shared helpers for the integration tests: where the guest kernel is.
#![allow(dead_code)]

use std::path::PathBuf;

/// The decompressed guest kernel, or `None` after printing a SKIP line.
pub fn vmlinux() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("MONITOR_VMLINUX").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fsd/guest/vmlinux")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return Some(c);
        }
    }
    let why = "no guest vmlinux (run scripts/install-deps.sh or set MONITOR_VMLINUX)";
    if testrig::prereq::in_ci() {
        panic!("CI=true and {why}");
    }
    println!("SKIP: {why}");
    eprintln!("SKIP: {why}");
    None
}

pub mod guest;
