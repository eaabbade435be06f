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
//! * [`window`]: the winit/softbuffer window run by `authd-dialog`.
//! * [`parent`]: the daemon's side: spawn, feed, wait with a deadline.

pub mod parent;
pub mod render;
pub mod window;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::seal::Seal;
use authd_client::protocol::Reason;

/// Font the dialog draws with (Debian package `fonts-dejavu-core`).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// What the daemon tells the dialog process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogRequest {
    pub vm: String,
    pub principal: String,
    pub reason: Reason,
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

/// Reads the dialog font.
pub fn load_font(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading font {}", path.display()), e))?;
    ab_glyph::FontRef::try_from_slice(&bytes)
        .map_err(|e| Error::Dialog(format!("font {}: {e}", path.display())))?;
    Ok(bytes)
}
