//! The trusted dialog.
//!
//! The daemon never links a window system into its own process at run time:
//! for each prompt it starts `authd-dialog` as a short-lived child, sends it
//! a [`DialogRequest`] on stdin, and reads [`ChildMessage`]s from its stdout
//! (a pipe only the daemon holds). The child only collects the password; the
//! daemon verifies it. A fresh process per prompt also sidesteps winit's rule
//! that an event loop cannot be created twice in one process.
//!
//! * [`render`]: the pure renderer (state to pixels), golden-tested.
//! * [`anchor`]: finding the asking VM's window and centring on it.
//! * [`state`]: focus delay, keys, clicks, timeout: the rules both
//!   front-ends share.
//! * [`window`]: the winit/softbuffer window run by `authd-dialog`.
//! * [`wayland`]: the layer-shell overlay on Wayland compositors that have one.
//! * [`parent`]: the daemon's side: spawn, feed, wait with a deadline.

pub mod anchor;
pub mod parent;
pub mod render;
pub mod state;
pub mod wayland;
pub mod window;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::seal::Seal;
use authd_client::protocol::{Provenance, Reason};

/// Font the dialog draws with (Debian package `fonts-dejavu-core`).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// What the daemon tells the dialog process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogRequest {
    pub vm: String,
    pub principal: String,
    pub reason: Reason,
    /// Whether the caller vouches for the reason's operation and path; if
    /// not (a protocol version 1 request) they are shown as the guest's word.
    pub provenance: Provenance,
    pub seal: Seal,
    /// The dialog denies on its own after this long.
    pub timeout_secs: u64,
    /// OK and Enter stay inert this long after the window gains focus.
    pub focus_delay_ms: u64,
    /// A question from a host service instead of a password prompt: the
    /// dialog shows it with Deny, Allow always and Allow once, and no
    /// password field (`confirm` in authd's protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// Title patterns of the VM's own window, which the dialog is centred
    /// on (`vm_window_titles` in the configuration, see [`anchor`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vm_window_titles: Vec<String>,
}

/// What the dialog process tells the daemon, one JSON line each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ChildMessage {
    /// The window has been drawn for the first time.
    Shown,
    /// The user confirmed with this password.
    Password { password: String },
    /// The user allowed the question, once or always.
    Allowed { always: bool },
    /// Esc, Cancel, or the window was closed.
    Cancelled,
    /// Nobody answered before the timeout.
    TimedOut,
}

/// One line of a request's details, display-safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    pub label: &'static str,
    pub value: String,
}

/// A request's details, split by who vouches for them, in the order they
/// are shown: first the host's own facts (the VM and principal; the
/// operation and path when the caller saw them; the process when the
/// caller checked it), then what only the guest says. Both the dialog and
/// the terminal prompt show them this way.
pub fn facts(req: &DialogRequest) -> (Vec<Fact>, Vec<Fact>) {
    let fact = |label, value: &str| Fact {
        label,
        value: render::display_safe(value),
    };
    let r = &req.reason;
    let mut host = vec![fact("VM", &req.vm), fact("Principal", &req.principal)];
    let mut guest = Vec::new();
    let seen = if req.provenance == Provenance::Host {
        &mut host
    } else {
        &mut guest
    };
    seen.push(fact("Operation", &r.operation));
    seen.push(fact("Path", &r.path));
    let process = if r.process.is_empty() {
        format!("pid {}", r.pid)
    } else {
        format!("{} (pid {})", r.process, r.pid)
    };
    if r.pid_verified && req.provenance == Provenance::Host {
        host.push(fact("Process", &process));
    } else {
        guest.push(fact("Process", &process));
    }
    (host, guest)
}

/// Reads the dialog font.
pub fn load_font(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading font {}", path.display()), e))?;
    ab_glyph::FontRef::try_from_slice(&bytes)
        .map_err(|e| Error::Dialog(format!("font {}: {e}", path.display())))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Rgb;

    fn request(provenance: Provenance, pid_verified: bool) -> DialogRequest {
        DialogRequest {
            vm: "vm1".into(),
            principal: "alice".into(),
            reason: Reason {
                operation: "open".into(),
                path: "notes/a.txt".into(),
                pid: 7,
                process: String::new(),
                pid_verified,
            },
            provenance,
            seal: Seal::new("owl", Rgb(0, 0, 0)).unwrap(),
            timeout_secs: 60,
            focus_delay_ms: 0,
            question: None,
            vm_window_titles: Vec::new(),
        }
    }

    fn labels(facts: &[Fact]) -> Vec<&str> {
        facts.iter().map(|f| f.label).collect()
    }

    #[test]
    fn facts_are_split_by_who_vouches_for_them() {
        let (host, guest) = facts(&request(Provenance::Host, false));
        assert_eq!(labels(&host), ["VM", "Principal", "Operation", "Path"]);
        assert_eq!(labels(&guest), ["Process"]);
        assert_eq!(guest[0].value, "pid 7", "no name: the pid alone");

        let (host, guest) = facts(&request(Provenance::Host, true));
        assert_eq!(labels(&host).last(), Some(&"Process"));
        assert!(guest.is_empty());

        for verified in [false, true] {
            let (host, guest) = facts(&request(Provenance::Guest, verified));
            assert_eq!(labels(&host), ["VM", "Principal"]);
            assert_eq!(labels(&guest), ["Operation", "Path", "Process"]);
        }
    }
}
