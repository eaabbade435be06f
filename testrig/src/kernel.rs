//! The guest kernel: Debian's packaged image, unpacked by
//! `scripts/install-deps.sh` (see [`crate::paths`] for the layout).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::paths;

/// A located guest kernel with its modules.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Compressed boot image passed to QEMU's `-kernel`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
    /// `boot/config-<release>`, when shipped.
    pub config: Option<PathBuf>,
    /// Decompressed ELF kernel (with `.BTF`), when extracted.
    pub vmlinux: Option<PathBuf>,
}

impl GuestKernel {
    /// Finds the kernel in `$FSD_GUEST_DIR` or the cache.
    pub fn locate() -> Result<Self> {
        Self::at(&paths::guest_dir())
    }

    /// Finds the kernel in `dir` (layout: `root/boot`, `root/lib/modules`, `release`).
    pub fn at(dir: &Path) -> Result<Self> {
        let root = dir.join("root");
        let release = match std::fs::read_to_string(dir.join("release")) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => newest_release(&root.join("lib/modules"))?,
        };
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            return Err(Error::Missing {
                what: "guest kernel image".into(),
                path: vmlinuz,
            });
        }
        let modules_dir = root.join("lib/modules").join(&release);
        if !modules_dir.join("kernel").is_dir() {
            return Err(Error::Missing {
                what: "guest kernel modules".into(),
                path: modules_dir,
            });
        }
        let config =
            Some(root.join("boot").join(format!("config-{release}"))).filter(|p| p.is_file());
        let vmlinux = Some(dir.join("vmlinux")).filter(|p| p.is_file());
        Ok(GuestKernel {
            release,
            vmlinuz,
            modules_dir,
            config,
            vmlinux,
        })
    }
}

/// Picks the highest-sorting release under `lib/modules` when no `release`
/// file names one (e.g. a directory unpacked by hand).
fn newest_release(modules: &Path) -> Result<String> {
    let missing = || Error::Missing {
        what: "guest kernel (no lib/modules/<release>)".into(),
        path: modules.to_path_buf(),
    };
    let entries = std::fs::read_dir(modules).map_err(|_| missing())?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kernel").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .max()
        .ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_directory_is_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = GuestKernel::at(dir.path()).unwrap_err();
        assert!(err.to_string().contains("install-deps.sh"), "{err}");
    }

    #[test]
    fn finds_release_without_release_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("lib/modules/9.9.9-test/kernel")).unwrap();
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-9.9.9-test"), b"x").unwrap();
        let k = GuestKernel::at(dir.path()).unwrap();
        assert_eq!(k.release, "9.9.9-test");
        assert!(k.config.is_none());
    }
}
