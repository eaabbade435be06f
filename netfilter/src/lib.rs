//! A per-VM packet filter in the guest's network path that decides by
//! guest process and user.
//!
//! QEMU's `-netdev stream` connects to the filter's socket; the filter
//! connects on to passt (user-mode networking, no root, no tap). For the
//! first packet of every TCP or UDP flow it asks the monitor which guest
//! process owns the socket (read from the guest kernel's structures, from
//! outside), decides by policy, audits, and remembers the decision in a
//! connection table so the flow's later packets pass without inspection.
//! docs/netfilter.md describes the design.
//!
//! | concern | module |
//! |---|---|
//! | length-prefixed frames on a stream, read in batches | [`frame`] |
//! | what a frame is (etherparse), resets for denied connections | [`packet`] |
//! | the policy file and the decision | [`policy`] |
//! | decided flows, expiry and eviction | [`conntrack`] |
//! | who owns a socket (asked of the monitor) | [`owner`] |
//! | is a process tainted (the taint tracker's question) | [`taint`] |
//! | asking the person at the host (authd's dialog) | [`ask`], [`dialog`] |
//! | the audit log (JSON lines) | [`audit`] |
//! | counters and latencies | [`stats`] |
//! | a batch's decisions, both directions | [`engine`] |
//! | sockets and threads | [`daemon`] |
//! | status and switches over a control socket | [`control`] |
//! | what can go wrong | [`error`] |

pub mod ask;
pub mod audit;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod dialog;
pub mod engine;
pub mod error;
pub mod frame;
pub mod owner;
pub mod packet;
pub mod policy;
pub mod stats;
pub mod taint;

pub use error::{Error, Result};
