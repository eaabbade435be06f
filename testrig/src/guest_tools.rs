//! The static in-guest helpers of the `guest-tools` crate.
//!
//! A busybox initramfs has no C library, so the helpers must be linked
//! statically. They are built on demand with
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release
//! -p guest-tools --target x86_64-unknown-linux-gnu` into a target directory
//! of their own (`<target>/guest-tools`), so the build neither waits on the
//! lock of a running `cargo test` nor invalidates its artifacts. Set
//! `FSD_GUEST_TOOLS_DIR` to a directory of prebuilt binaries to skip the build.
//! Either way each binary is checked to need no dynamic loader.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::elf;
use crate::error::{Error, Result};
use crate::paths;

/// Binaries the `guest-tools` crate provides.
pub const TOOLS: &[&str] = &[
    "lockprobe",
    "hookprobe",
    "netprobe",
    "delegate-client",
    "delegate-agent",
    "delegateprobe",
    "pwchange",
];

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Located, verified static helper binaries.
#[derive(Debug, Clone)]
pub struct GuestTools {
    dir: PathBuf,
}

impl GuestTools {
    /// `(name, host path)` of every helper.
    pub fn binaries(&self) -> Vec<(&'static str, PathBuf)> {
        TOOLS.iter().map(|t| (*t, self.dir.join(t))).collect()
    }

    /// Directory holding the binaries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Serializes builds from parallel tests in one process (cargo would too,
/// but this avoids a burst of blocked cargo processes).
static BUILD: Mutex<()> = Mutex::new(());

/// Builds (or finds) the helpers and checks that they are static.
pub fn build() -> Result<GuestTools> {
    let dir = match std::env::var_os("FSD_GUEST_TOOLS_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
            cargo_build()?
        }
    };
    for t in TOOLS {
        let p = dir.join(t);
        let data = std::fs::read(&p).map_err(|_| Error::Missing {
            what: format!("guest helper {t}"),
            path: p.clone(),
        })?;
        if elf::needs_interpreter(&p, &data)? {
            return Err(Error::GuestTools(format!(
                "{} is dynamically linked; build with RUSTFLAGS=\"-C target-feature=+crt-static\" --target {TARGET}",
                p.display()
            )));
        }
    }
    Ok(GuestTools { dir })
}

fn cargo_build() -> Result<PathBuf> {
    let target_dir = paths::target_dir().join("guest-tools");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(paths::workspace_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "guest-tools",
            "--target",
            TARGET,
        ])
        .output()
        .map_err(|source| Error::Spawn {
            program: cargo.to_string_lossy().into_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::GuestTools(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(target_dir.join(TARGET).join("release"))
}
