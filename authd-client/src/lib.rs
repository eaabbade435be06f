//! authd's wire protocol and client, apart from the daemon.
//!
//! fsd links this crate to ask for grants and to learn when they end; the
//! daemon (`authd`) re-exports it. Keeping it apart keeps the dialog's GUI
//! code out of the file server's dependencies entirely.
//!
//! | concern | module |
//! |---|---|
//! | messages of protocol version 2, and the version 1 requests still accepted (JSON lines) | [`protocol`] |
//! | calls: authenticate, confirm, grants, revoke, lock, subscribe | [`client`] |
//! | live grants kept in memory from the subscription | [`grant_cache`] |

pub mod client;
pub mod grant_cache;
pub mod protocol;
