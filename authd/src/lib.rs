//! authd: the host authentication daemon.
//!
//! When a guest touches a protected file, the file server (`fsd`) asks authd
//! whether the VM may act for a principal. authd asks the person at the host
//! in a dialog the guest cannot draw, read or fake (it shows the user's secret
//! seal), verifies the password with argon2id in this privileged process, and
//! answers with a time-limited grant. Grant ends are pushed to subscribers so
//! that fsd stops serving as soon as a grant expires or is revoked.
//!
//! The wire protocol and the client fsd links live in the `authd-client`
//! crate (docs/authd.md), so that fsd links no GUI code.
//!
//! | concern | module |
//! |---|---|
//! | crash-safe replacement of a small file (temporary file, fsync, rename) | [`atomic_file`] |
//! | append-only JSON-lines audit of prompts and outcomes (never passwords) | [`audit`] |
//! | daemon configuration (JSON file, every field defaulted) | [`config`] |
//! | the trusted dialog: pure renderer, window process, parent side | [`dialog`] |
//! | typed errors | [`error`] |
//! | the grant table: lifetimes, revocation, expiry | [`grants`] |
//! | failure delay and lockout per principal, prompt rate per VM | [`limits`] |
//! | argon2id hashing and verification | [`password`] |
//! | live grants and counters kept across restarts (`runtime.json`) | [`persist`] |
//! | asking the person: coalescing, one prompt per VM, dialog or terminal | [`prompt`] |
//! | the seal: a phrase and colour chosen by the user, shown only by authd | [`seal`] |
//! | the daemon: socket, peer credential check, request dispatch | [`server`] |
//! | the root-only credential store with crash-safe atomic replace | [`store`] |
//! | terminal fallback prompt for hosts without a display | [`tty`] |

pub mod atomic_file;
pub mod audit;
pub mod config;
pub mod dialog;
pub mod error;
pub mod grants;
pub mod limits;
pub mod password;
pub mod persist;
pub mod prompt;
pub mod seal;
pub mod server;
pub mod store;
pub mod tty;

pub use error::{Error, Result};
