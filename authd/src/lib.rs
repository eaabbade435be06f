//! authd: the host authentication daemon.
//!
//! When a guest touches a protected file, the file server (`fsd`) asks authd
//! whether the VM may act for a principal. authd asks the person at the host
//! in a dialog the guest cannot draw, read or fake (it shows the user's secret
//! seal), verifies the password with argon2id in this privileged process, and
//! answers with a time-limited grant. Grant ends are pushed to subscribers so
//! that fsd stops serving as soon as a grant expires or is revoked.
//!
//! The wire protocol is described in `docs/authd.md`; [`client`] and
//! [`grant_cache`] are what fsd
//! links against.

// Append-only JSON-lines audit log of prompts and outcomes (never passwords).
pub mod audit;
// The protocol and client live in `authd-client`, so fsd can link them
// without the dialog; re-exported here under their old paths.
pub use authd_client::{client, grant_cache, protocol};
// The client fsd uses: authenticate with a timeout, subscribe to grant ends.
// Daemon configuration (JSON file, every field defaulted).
pub mod config;
// The trusted dialog: pure renderer, window process, and the parent side.
pub mod dialog;
// Typed errors of the crate.
pub mod error;
// For fsd: live grants mirrored from authd through a subscription, fail closed.
// The grant table: lifetimes, revocation, expiry.
pub mod grants;
// Abuse resistance: failure delay and lockout per principal, prompt rate per VM.
pub mod limits;
// argon2id hashing and verification of passwords.
pub mod password;
// Asking the person: coalescing, one prompt per VM, dialog or terminal.
pub mod prompt;
// Wire types of the JSON-lines protocol (version 1).
// The seal: a phrase and colour chosen by the user, shown only by authd.
pub mod seal;
// The daemon: socket, peer credential check, request dispatch.
pub mod server;
// The root-only credential store with crash-safe atomic replace.
pub mod store;
// Terminal fallback prompt for hosts without a display.
pub mod tty;

pub use error::{Error, Result};
