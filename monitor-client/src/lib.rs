//! The monitor's wire protocol and client, apart from the daemon.
//!
//! fsd links this crate to ask the monitor to flush a guest's page cache
//! when a grant ends and to report file events for taint tracking; hooks in
//! the guest kernel emit its guest events; the monitor daemon serves the
//! very same types. With
//! one definition of every message the two sides cannot drift apart, and
//! fsd does not link the monitor's introspection code (docs/monitor.md
//! describes the protocol in prose).
//!
//! | concern | module |
//! |---|---|
//! | envelope of protocol version 1: requests, replies, failures (JSON lines) | [`protocol`] |
//! | what the monitor reports: flush, freeze and thaw, identity, processes | [`report`] |
//! | what flows into taint tracking: file events, guest kernel events; ownership lookups for the packet filter | [`taint`] |
//! | what taint tracking reports: entries, origins, alerts, status, notices | [`taint_report`] |
//! | a blocking client over one Unix-socket connection | [`client`] |

pub mod client;
pub mod protocol;
pub mod report;
pub mod taint;
pub mod taint_report;

pub use client::{Client, ClientError, Watch};
pub use protocol::{FailureKind, Op, Reply, ReplyBody, Request, VERSION};
