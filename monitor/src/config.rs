//! Which VMs the monitor knows and where their QEMU endpoints are.
//!
//! A small JSON file names VMs:
//!
//! ```json
//! { "vms": { "web": { "qmp": "/run/vm/web.qmp", "gdb": "/run/vm/web.gdb",
//!                     "mem": "/dev/shm/web-ram", "vmlinux": "/boot/vmlinux-6.1",
//!                     "uuid": "6f1c3e2a-…", "addrs": ["10.0.0.2"] } },
//!   "taint": { "state_dir": "/var/lib/monitor/taint", "journal_sync": "interval",
//!              "audit_log": "/var/log/monitor/taint.log", "freeze_on_leak": false } }
//! ```
//!
//! The same VM fields can be given as command-line flags instead. `uuid`
//! and `addrs` serve taint tracking (docs/taint.md): the UUID keys the VM's
//! taint state without asking QEMU, and the addresses of all VMs tell a
//! send to a neighbour from a leak. `plugin` names the socket of the TCG
//! plugin in the VM's QEMU, whose hook events the daemon feeds to taint
//! tracking.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::taint::TaintConfig;

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
    /// The VM's UUID (QEMU's `-uuid`); when absent, QMP `query-uuid` is
    /// asked once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The guest's IP addresses, as other VMs of this host reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<IpAddr>,
    /// The TCG plugin's socket (`-plugin libtaint_plugin.so,sock=PATH`):
    /// the daemon arms the plugin's hooks in this VM's kernel and feeds
    /// its events to taint tracking (docs/taint.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PathBuf>,
}

/// The config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub vms: BTreeMap<String, VmSpec>,
    /// Taint tracking.
    #[serde(default)]
    pub taint: TaintConfig,
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

    /// The addresses of every VM: destinations inside the host.
    pub fn internal_addrs(&self) -> HashSet<IpAddr> {
        self.vms
            .values()
            .flat_map(|v| v.addrs.iter().copied())
            .collect()
    }

    /// The name of the VM with this UUID, if the file gives it.
    pub fn name_of_uuid(&self, uuid: &str) -> Option<&str> {
        self.vms
            .iter()
            .find(|(_, v)| {
                v.uuid
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
            })
            .map(|(n, _)| n.as_str())
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
        assert!(!c.taint.freeze_on_leak);
        let c: Config = serde_json::from_str(
            r#"{"vms":{"a":{"qmp":"/q","mem":"/m","vmlinux":"/k","uuid":"AB-CD","addrs":["10.0.0.2"]}},
                "taint":{"freeze_on_leak":true,"limits":{"files":10}}}"#,
        )
        .unwrap();
        assert_eq!(c.name_of_uuid("ab-cd"), Some("a"));
        assert!(c.internal_addrs().contains(&"10.0.0.2".parse().unwrap()));
        assert!(c.taint.freeze_on_leak);
        assert_eq!(c.taint.limits.files, 10);
        assert_eq!(
            c.taint.limits.processes,
            crate::taint::Limits::default().processes,
            "unnamed limits keep their default"
        );
        assert!(serde_json::from_str::<Config>(r#"{"taint":{"freez_on_leak":true}}"#).is_err());
    }
}
