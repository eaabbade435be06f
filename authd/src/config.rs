//! Daemon configuration. A JSON file whose every field has a default, so an
//! empty `{}` is a valid configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the daemon asks the person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    /// The dialog when a display is configured or `WAYLAND_DISPLAY` or
    /// `DISPLAY` is set, else the tty.
    Auto,
    Dialog,
    Tty,
}

/// pam_faillock-style failure handling, per principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaillockConfig {
    /// Failures within `fail_interval_secs` that lock the principal.
    pub deny: u32,
    pub fail_interval_secs: u64,
    pub unlock_time_secs: u64,
    /// Delay before the next prompt after one recent failure; doubles with
    /// each further failure, up to `delay_max_ms`.
    pub delay_base_ms: u64,
    pub delay_max_ms: u64,
}

impl Default for FaillockConfig {
    fn default() -> Self {
        // pam_faillock's defaults: deny=3, fail_interval=900, unlock_time=600.
        FaillockConfig {
            deny: 3,
            fail_interval_secs: 900,
            unlock_time_secs: 600,
            delay_base_ms: 1000,
            delay_max_ms: 8000,
        }
    }
}

/// How many prompts one VM may cause in a sliding window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptRateConfig {
    pub max_prompts: u32,
    pub window_secs: u64,
}

impl Default for PromptRateConfig {
    fn default() -> Self {
        PromptRateConfig {
            max_prompts: 5,
            window_secs: 300,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Unix socket the daemon listens on.
    pub socket: PathBuf,
    /// Directory of the credential store (0700).
    pub state_dir: PathBuf,
    /// Directory of the runtime state file (`runtime.json`: live grants,
    /// failure and prompt counters), which a restart of the daemon reads
    /// back (`crate::persist`); `state_dir` when unset. Created 0700 when
    /// missing; refused when group or others may write it.
    pub runtime_state_dir: Option<PathBuf>,
    /// Whether grants and counters survive a restart (the default). `false`
    /// keeps them in memory only, as authd did before: a restart ends every
    /// grant and forgets failed passwords (said in the log at start).
    pub persist_runtime_state: bool,
    /// JSON-lines audit log.
    pub audit_log: PathBuf,
    /// Peer uids (SO_PEERCRED) allowed to talk to the daemon.
    pub allow_uids: Vec<u32>,
    /// Upper bound on any grant's lifetime.
    pub max_grant_secs: u64,
    pub frontend: FrontendKind,
    /// X display for the dialog; `DISPLAY` of the daemon when unset.
    pub display: Option<String>,
    /// X authority file for `display` (the desktop session's), passed to the
    /// dialog; the daemon's `XAUTHORITY` when unset.
    pub xauthority: Option<PathBuf>,
    /// Wayland display for the dialog (a socket name such as `wayland-1`
    /// in `xdg_runtime_dir`, or a path); preferred over `display`. When
    /// neither is set, the daemon's `WAYLAND_DISPLAY`, then its `DISPLAY`.
    pub wayland_display: Option<String>,
    /// `XDG_RUNTIME_DIR` of the Wayland session; the daemon's when unset.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// sway's IPC socket (`SWAYSOCK`), which tells the dialog where the
    /// VM's window is under Wayland; the daemon's `SWAYSOCK` when unset.
    pub sway_socket: Option<PathBuf>,
    /// Terminal for the fallback prompt, e.g. `/dev/tty8` or `/dev/pts/3`.
    pub tty: Option<PathBuf>,
    /// The dialog program; `authd-dialog` beside the daemon's binary when unset.
    pub dialog_program: Option<PathBuf>,
    /// A prompt denies on its own after this long.
    pub prompt_timeout_secs: u64,
    /// OK and Enter stay inert this long after the dialog gains focus.
    pub focus_delay_ms: u64,
    pub faillock: FaillockConfig,
    pub prompt_rate: PromptRateConfig,
    /// Titles of a VM's own window (QEMU, virt-viewer, remote-viewer) that
    /// the dialog is centred on; `{vm}` is the VM's name, `*` any text.
    /// Empty: always centred on the screen. See `dialog::anchor`.
    pub vm_window_titles: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from("/run/authd/authd.sock"),
            state_dir: PathBuf::from("/var/lib/authd"),
            runtime_state_dir: None,
            persist_runtime_state: true,
            audit_log: PathBuf::from("/var/log/authd/audit.jsonl"),
            allow_uids: vec![0],
            max_grant_secs: 3600,
            frontend: FrontendKind::Auto,
            display: None,
            xauthority: None,
            wayland_display: None,
            xdg_runtime_dir: None,
            sway_socket: None,
            tty: None,
            dialog_program: None,
            prompt_timeout_secs: 60,
            focus_delay_ms: 1000,
            faillock: FaillockConfig::default(),
            prompt_rate: PromptRateConfig::default(),
            vm_window_titles: crate::dialog::anchor::default_titles(),
        }
    }
}

impl Config {
    /// Reads a configuration file; missing fields take their defaults.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Where the runtime state lives, or `None` when it is memory-only.
    pub fn persisted_state_dir(&self) -> Option<PathBuf> {
        self.persist_runtime_state.then(|| {
            self.runtime_state_dir
                .clone()
                .unwrap_or_else(|| self.state_dir.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_defaults() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c, Config::default());
        let c: Config = serde_json::from_str(r#"{"faillock":{"deny":5}}"#).unwrap();
        assert_eq!(c.faillock.deny, 5);
        assert_eq!(c.faillock.unlock_time_secs, 600);
    }

    #[test]
    fn runtime_state_defaults_to_the_state_dir() {
        let c = Config::default();
        assert_eq!(
            c.persisted_state_dir(),
            Some(PathBuf::from("/var/lib/authd"))
        );
        let c: Config = serde_json::from_str(r#"{"runtime_state_dir":"/run/authd"}"#).unwrap();
        assert_eq!(c.persisted_state_dir(), Some(PathBuf::from("/run/authd")));
        let c: Config = serde_json::from_str(r#"{"persist_runtime_state":false}"#).unwrap();
        assert_eq!(c.persisted_state_dir(), None);
    }
}
