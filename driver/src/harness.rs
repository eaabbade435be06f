//! A daemon with a scratch share, fenced by sentinels, and a device on it.
//!
//! Layout of the scratch directory:
//! ```text
//! <tmp>/outside/sentinel     a file the guest must never reach
//! <tmp>/share/               the shared directory
//! ```
//! After a hostile request, [`Harness::escaped`] lists anything that appeared
//! or changed outside `share/`, so a test can tell whether the daemon was
//! steered out of the share.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::daemon::{Daemon, DaemonKind, DaemonSpec};
use crate::device::{Device, DeviceConfig};
use crate::error::{Error, Result};

/// Options for [`Harness::start`].
#[derive(Debug, Clone, Default)]
pub struct HarnessOptions {
    /// Device configuration.
    pub device: DeviceConfig,
    /// Low file-descriptor limit for the daemon.
    pub rlimit_nofile: Option<u64>,
    /// Extra daemon flags.
    pub extra_args: Vec<String>,
    /// With a policy, let fsd keep its labels where it does by default
    /// (else each daemon gets a private label database in its scratch dir).
    pub default_label_db: bool,
}

/// Why a harness could not be started without it being a failure of the
/// daemon under test.
#[derive(Debug)]
pub enum Unavailable {
    /// Something the machine lacks (print SKIP and return).
    Skip(String),
    /// Something that must be fixed (fsd not built): fail.
    Fail(String),
}

/// A running daemon on a fresh scratch share, with a connected device.
pub struct Harness {
    /// The daemon process.
    pub daemon: Daemon,
    /// The device connected to it.
    pub device: Device,
    root: tempfile::TempDir,
    outside_before: BTreeSet<String>,
}

impl Harness {
    /// Checks that `kind` can be run here: root privileges and the binary.
    /// Under CI (`CI=true`) a missing prerequisite is a failure, not a skip:
    /// the install step must have provided it.
    pub fn available(kind: DaemonKind) -> std::result::Result<PathBuf, Unavailable> {
        match Self::available_here(kind) {
            Err(Unavailable::Skip(m)) if testrig::in_ci() => {
                Err(Unavailable::Fail(format!("{m} (CI)")))
            }
            other => other,
        }
    }

    /// For tests: whether `kind` can be run here. When it cannot, prints
    /// `SKIP: …` and returns false (testrig's skip rule: under CI it fails
    /// instead); a missing fsd binary always fails ("build fsd first").
    pub fn require(kind: DaemonKind) -> bool {
        match Self::available_here(kind) {
            Ok(_) => true,
            Err(Unavailable::Skip(m)) => {
                testrig::skip::<(), _>(m);
                false
            }
            Err(Unavailable::Fail(m)) => panic!("{m}"),
        }
    }

    fn available_here(kind: DaemonKind) -> std::result::Result<PathBuf, Unavailable> {
        if !testrig::prereq::is_root() {
            return Err(Unavailable::Skip(format!(
                "{} needs root (it runs with --sandbox=none and changes credentials)",
                kind.name()
            )));
        }
        kind.locate().map_err(|m| match kind {
            DaemonKind::Fsd => Unavailable::Fail(m),
            DaemonKind::Virtiofsd => Unavailable::Skip(m),
        })
    }

    /// Creates the scratch tree, lets `populate` fill the share, starts the
    /// daemon and connects. The FUSE session is not initialised yet.
    pub fn start(
        kind: DaemonKind,
        opts: &HarnessOptions,
        populate: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("fsdrive-share-")
            .tempdir()
            .map_err(|e| Error::Io("scratch dir", e))?;
        let share = root.path().join("share");
        let outside = root.path().join("outside");
        std::fs::create_dir(&share).map_err(|e| Error::Io("mkdir share", e))?;
        std::fs::create_dir(&outside).map_err(|e| Error::Io("mkdir outside", e))?;
        std::fs::write(outside.join("sentinel"), b"outside the share\n")
            .map_err(|e| Error::Io("sentinel", e))?;
        populate(&share).map_err(|e| Error::Io("populate share", e))?;
        let mut spec = DaemonSpec::new(kind, &share).map_err(|reason| Error::Daemon {
            binary: PathBuf::from(kind.name()),
            reason,
        })?;
        spec.rlimit_nofile = opts.rlimit_nofile;
        spec.extra_args = opts.extra_args.clone();
        spec.default_label_db = opts.default_label_db;
        let daemon = Daemon::spawn(spec)?;
        let device = Device::connect(daemon.socket(), &opts.device).map_err(|e| Error::Daemon {
            binary: PathBuf::from(kind.name()),
            reason: format!("{e}; daemon log:\n{}", daemon.log_tail()),
        })?;
        let outside_before = snapshot(root.path(), &share);
        Ok(Harness {
            daemon,
            device,
            root,
            outside_before,
        })
    }

    /// Splits the harness, e.g. to drop the device (disconnect, as a VMM
    /// that exits) while keeping the daemon and the scratch tree.
    pub fn into_parts(self) -> (Daemon, Device, tempfile::TempDir) {
        (self.daemon, self.device, self.root)
    }

    /// The shared directory on the host.
    pub fn share(&self) -> PathBuf {
        self.root.path().join("share")
    }

    /// The scratch root (parent of `share/` and `outside/`).
    pub fn scratch(&self) -> &Path {
        self.root.path()
    }

    /// Paths outside the share that appeared, vanished or changed since start.
    pub fn escaped(&self) -> Vec<String> {
        let now = snapshot(self.root.path(), &self.share());
        self.outside_before
            .symmetric_difference(&now)
            .cloned()
            .collect()
    }
}

/// Every path under `root` except those under `share`, with type and size.
fn snapshot(root: &Path, share: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p == share {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let kind = if md.is_dir() {
                "dir"
            } else if md.file_type().is_symlink() {
                "symlink"
            } else if md.is_file() {
                "file"
            } else {
                "special"
            };
            let rel = p.strip_prefix(root).unwrap_or(&p);
            out.insert(format!("{} ({kind}, {} bytes)", rel.display(), md.len()));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}
