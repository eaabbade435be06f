//! What the journal cannot tell about itself: whether the monitor that
//! wrote it stopped cleanly, in which boot of the host, whether it synced
//! every line, and which VMs it ever kept state for.
//!
//! A journal's lines are in the page cache before they are on the disk.
//! After a monitor crash the kernel still writes them; after a host crash
//! the last of them may be gone, and the journal then ends at a clean line
//! with nothing to show that more was acknowledged. So the monitor keeps a
//! small manifest beside it, written whole (temporary file, fsync, rename)
//! when it starts, when it first keeps state for a VM, and when it stops
//! cleanly. At the next start:
//!
//! * **clean** (`monitor` stopped by SIGTERM): the snapshot holds
//!   everything;
//! * **not clean, same boot** (killed, crashed): nothing the kernel
//!   accepted is lost;
//! * **not clean, another boot (or none known)**, unless every line was
//!   synced (`taint.journal_sync = "batch"`): the last batches may be
//!   lost, and every VM is marked so ([`Lost::HostCrashed`]).
//!
//! A VM the manifest names that the snapshot and journal do not hold had
//! state that is gone (a damaged or lost journal, a snapshot removed): it
//! is brought back empty, marked as having lost events for good, rather
//! than left unknown and later taken for a VM seen for the first time.
//!
//! [`Lost::HostCrashed`]: super::restart::Lost::HostCrashed

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::engine::VmId;
use super::TaintError;

/// The manifest's file name in the state directory.
pub const MANIFEST: &str = "taint-manifest.json";

/// The manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    /// The boot of the host the monitor ran in (`None`: not known).
    pub boot_id: Option<String>,
    /// The monitor stopped cleanly: the snapshot holds all, the journal is
    /// empty.
    pub clean: bool,
    /// Every journal line was synced before its batch was answered.
    pub synced: bool,
    /// Every VM the state was ever kept for.
    pub vms: Vec<VmId>,
}

impl Manifest {
    /// The manifest in `dir`, if there is one (`None` also for a state
    /// kept by a monitor before manifests).
    pub fn read(dir: &Path) -> Result<Option<Manifest>, TaintError> {
        let path = dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| TaintError::ManifestFormat { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TaintError::State { path, source }),
        }
    }

    /// Whether the monitor that wrote this may have lost acknowledged
    /// batches with the host: it did not stop cleanly, did not sync every
    /// line, and ran in another boot than `boot_id` (or either is unknown).
    pub fn host_crashed(&self, boot_id: Option<&str>) -> bool {
        !self.clean
            && !self.synced
            && match (self.boot_id.as_deref(), boot_id) {
                (Some(then), Some(now)) => then != now,
                _ => true,
            }
    }

    /// Adds `vm` if it is new; true when it was.
    pub fn remember(&mut self, vm: &VmId) -> bool {
        match self.vms.iter_mut().find(|v| v.uuid == vm.uuid) {
            Some(v) => {
                v.name.clone_from(&vm.name);
                false
            }
            None => {
                self.vms.push(vm.clone());
                true
            }
        }
    }

    /// Writes the manifest into `dir`, durably.
    pub fn write(&self, dir: &Path) -> Result<(), TaintError> {
        let err = |path: PathBuf| move |source| TaintError::State { path, source };
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(TaintError::Encode)?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err(tmp.clone()))?;
            f.write_all(&bytes).map_err(err(tmp.clone()))?;
            f.sync_all().map_err(err(tmp.clone()))?;
        }
        std::fs::rename(&tmp, &path).map_err(err(path.clone()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err(dir.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_crash_is_an_unclean_stop_in_another_boot_without_synced_lines() {
        let m = |boot: Option<&str>, clean, synced| Manifest {
            boot_id: boot.map(str::to_owned),
            clean,
            synced,
            vms: Vec::new(),
        };
        assert!(m(Some("a"), false, false).host_crashed(Some("b")));
        assert!(m(None, false, false).host_crashed(Some("b")));
        assert!(m(Some("a"), false, false).host_crashed(None));
        assert!(!m(Some("a"), false, false).host_crashed(Some("a")));
        assert!(!m(Some("a"), true, false).host_crashed(Some("b")));
        assert!(!m(Some("a"), false, true).host_crashed(Some("b")));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);
        let mut w = m(Some("a"), true, false);
        let vm = |name: &str| VmId {
            uuid: "u1".into(),
            name: name.into(),
        };
        assert!(w.remember(&vm("web")));
        assert!(!w.remember(&vm("web2")), "the same VM, renamed");
        assert_eq!(w.vms, vec![vm("web2")]);
        w.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(w));
    }
}
