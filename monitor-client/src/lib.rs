//! The monitor's wire protocol and client, apart from the daemon.
//!
//! fsd links this crate to ask the monitor to flush a guest's page cache
//! when a grant ends; the monitor daemon serves the very same types. With
//! one definition of every message the two sides cannot drift apart, and
//! fsd does not link the monitor's introspection code (docs/monitor.md
//! describes the protocol in prose).
//!
//! | concern | module |
//! |---|---|
//! | envelope of protocol version 1: requests, replies, failures (JSON lines) | [`protocol`] |
//! | what the monitor reports: flush, freeze and thaw, identity, processes | [`report`] |
//! | messages for taint tracking and socket-ownership lookups (packet filter) | [`taint`] |
//! | a blocking client over one Unix-socket connection | [`client`] |

pub mod client;
pub mod protocol;
pub mod report;
pub mod taint;

pub use client::{Client, ClientError};
pub use protocol::{FailureKind, Op, Reply, ReplyBody, Request, VERSION};
