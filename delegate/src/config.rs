//! The command line.
//!
//! ```text
//! delegate --policy /etc/fsd/policy.toml \
//!     --vm vm1=/run/delegate/vm1.sock --helper helper1=/run/delegate/helper1.sock \
//!     --authd-socket /run/authd/authd.sock --audit-log /var/log/delegate/audit.jsonl
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::session::Settings;

/// The host's delegation broker.
#[derive(Debug, Parser)]
#[command(name = "delegate", version, about)]
pub struct Args {
    /// fsd's policy file, whose [[delegate]] entries and [[vm]] principals
    /// decide (read again for every request).
    #[arg(long)]
    pub policy: PathBuf,
    /// A user VM and the socket its QEMU's delegation port connects to:
    /// NAME=PATH; repeat per VM. NAME is the policy's [[vm]] name.
    #[arg(long = "vm", value_parser = name_path, required = true)]
    pub vms: Vec<(String, PathBuf)>,
    /// A helper VM and the socket its QEMU's agent port connects to:
    /// NAME=PATH; repeat per helper. NAME is what [[delegate]] helper says.
    #[arg(long = "helper", value_parser = name_path)]
    pub helpers: Vec<(String, PathBuf)>,
    /// Group given the channel sockets (mode 0770 instead of 0600), for a
    /// QEMU that does not run as root (libvirt's `libvirt-qemu`).
    #[arg(long)]
    pub socket_group: Option<String>,
    /// authd's socket.
    #[arg(long, default_value = "/run/authd/authd.sock")]
    pub authd_socket: PathBuf,
    /// Audit log (JSON lines, mode 0600); without it, audit lines go to
    /// the log only.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Requests a VM may make per window before it is refused.
    #[arg(long, default_value_t = 20)]
    pub max_requests: usize,
    /// The window of --max-requests, in seconds.
    #[arg(long, default_value_t = 60)]
    pub window_secs: u64,
    /// How long the helper's agent has to answer, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub agent_timeout_ms: u64,
    /// How long a request waits for a busy helper, in seconds.
    #[arg(long, default_value_t = 30)]
    pub busy_timeout_secs: u64,
}

fn name_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.into(), p.into())),
        _ => Err(format!("{s:?} is not NAME=PATH")),
    }
}

impl Args {
    pub fn settings(&self) -> Settings {
        Settings {
            max_requests: self.max_requests.max(1),
            window: Duration::from_secs(self.window_secs.max(1)),
            agent_timeout: Duration::from_millis(self.agent_timeout_ms.max(1)),
            busy_timeout: Duration::from_secs(self.busy_timeout_secs),
            ..Settings::default()
        }
    }
}
