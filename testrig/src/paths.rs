//! Where the rig finds and keeps things.
//!
//! `scripts/install-deps.sh` fills `$FSD_CACHE` (default `~/.cache/fsd`):
//!
//! ```text
//! guest/root/boot/vmlinuz-<release>       Debian guest kernel (dpkg -x of the .deb)
//! guest/root/boot/config-<release>        its configuration (to skip built-in modules)
//! guest/root/lib/modules/<release>/...    its modules
//! guest/release                           <release>
//! guest/vmlinux                           decompressed ELF kernel with .BTF
//! virtiofsd/bin/virtiofsd                 reference daemon
//! qemu10/root/usr/bin/qemu-system-x86_64  QEMU 10 (bookworm-backports, dpkg -x)
//! qemu10/root/usr/share/{qemu,seabios}    its firmware
//! qemu10/root/usr/lib/x86_64-linux-gnu/qemu  its modules
//! initramfs/<sha256>.cpio                 initramfs images built by the rig
//! ```
//!
//! `FSD_GUEST_DIR` replaces `$FSD_CACHE/guest` (same layout inside).

use std::path::{Path, PathBuf};

/// The cache root: `$FSD_CACHE`, else `$HOME/.cache/fsd`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FSD_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/fsd")
}

/// The unpacked guest kernel: `$FSD_GUEST_DIR`, else `<cache>/guest`.
pub fn guest_dir() -> PathBuf {
    match std::env::var_os("FSD_GUEST_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => cache_dir().join("guest"),
    }
}

/// The reference daemon installed by `cargo install --root <cache>/virtiofsd`.
/// `FSD_VIRTIOFSD` overrides it (for a virtiofsd installed elsewhere).
pub fn virtiofsd() -> PathBuf {
    match std::env::var_os("FSD_VIRTIOFSD").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => cache_dir().join("virtiofsd/bin/virtiofsd"),
    }
}

/// Built initramfs images, named by the SHA-256 of their content.
pub fn initramfs_cache() -> PathBuf {
    cache_dir().join("initramfs")
}

/// The static busybox that goes into every guest (`busybox-static`).
pub fn busybox() -> PathBuf {
    match std::env::var_os("FSD_BUSYBOX").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("/bin/busybox"),
    }
}

/// The QEMU binary (`FSD_QEMU` overrides the one on `PATH`).
pub fn qemu() -> PathBuf {
    match std::env::var_os("FSD_QEMU").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("qemu-system-x86_64"),
    }
}

/// Where `scripts/install-deps.sh` unpacks QEMU 10 (beside the system QEMU).
pub fn qemu10_root() -> PathBuf {
    cache_dir().join("qemu10/root")
}

/// A QEMU whose TCG plugin API can read registers and guest memory (API v4,
/// QEMU >= 9.2): `FSD_QEMU10`, else the one unpacked under [`qemu10_root`].
pub fn qemu10() -> PathBuf {
    match std::env::var_os("FSD_QEMU10").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => qemu10_root().join("usr/bin/qemu-system-x86_64"),
    }
}

/// Firmware directories (`-L`) of the unpacked QEMU 10; empty when the
/// binary came from `FSD_QEMU10` (an installed QEMU finds its own).
pub fn qemu10_data_dirs() -> Vec<PathBuf> {
    if std::env::var_os("FSD_QEMU10").is_some_and(|v| !v.is_empty()) {
        return Vec::new();
    }
    ["usr/share/qemu", "usr/share/seabios"]
        .iter()
        .map(|d| qemu10_root().join(d))
        .filter(|d| d.is_dir())
        .collect()
}

/// Module directory (`QEMU_MODULE_DIR`) of the unpacked QEMU 10, so it never
/// loads the system QEMU's modules of another version.
pub fn qemu10_module_dir() -> Option<PathBuf> {
    if std::env::var_os("FSD_QEMU10").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    Some(qemu10_root().join("usr/lib/x86_64-linux-gnu/qemu")).filter(|d| d.is_dir())
}

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory in use (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target"),
    }
}

/// Finds `program` on `PATH` (or checks it directly when it has a slash).
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
