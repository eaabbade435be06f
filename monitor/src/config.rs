//! Which VMs the monitor knows and where their QEMU endpoints are.
//!
//! A small JSON file names VMs:
//!
//! ```json
//! { "vms": { "web": { "qmp": "/run/vm/web.qmp", "gdb": "/run/vm/web.gdb",
//!                     "mem": "/dev/shm/web-ram", "vmlinux": "/boot/vmlinux-6.1" } } }
//! ```
//!
//! The same fields can be given as command-line flags instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where to reach one VM and which kernel it runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmSpec {
    /// QMP Unix socket (`-qmp unix:PATH,server,nowait`).
    pub qmp: PathBuf,
    /// gdbstub Unix socket (`-gdb unix:PATH,server,nowait`); needed for
    /// call injection (thaw, page-cache flush).
    #[serde(default)]
    pub gdb: Option<PathBuf>,
    /// The file behind `memory-backend-file` (`mem-path=`, `share=on`).
    pub mem: PathBuf,
    /// The guest's kernel: a vmlinux, or a vmlinuz with an xz payload.
    pub vmlinux: PathBuf,
    /// A System.map, when the distribution ships a real one.
    #[serde(default)]
    pub system_map: Option<PathBuf>,
}

/// The config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub vms: BTreeMap<String, VmSpec>,
}

impl Config {
    /// Read a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|source| Error::ConfigFormat {
            path: path.to_owned(),
            source,
        })
    }

    /// Look up a VM by name.
    pub fn vm(&self, name: &str) -> Result<&VmSpec> {
        self.vms
            .get(name)
            .ok_or_else(|| Error::UnknownVm(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_vms() {
        let c: Config =
            serde_json::from_str(r#"{"vms":{"a":{"qmp":"/q","mem":"/m","vmlinux":"/k"}}}"#)
                .unwrap();
        assert_eq!(c.vm("a").unwrap().gdb, None);
        assert!(c.vm("b").is_err());
    }
}
