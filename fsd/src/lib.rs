//! fsd: a vhost-user virtio-fs daemon for diskless guests.
//!
//! A drop-in for virtiofsd that serves one host directory to one guest and
//! treats every request as hostile. Where to look:
//!
//! | concern | module |
//! |---|---|
//! | command line (virtiofsd-compatible, legacy `-o`, capabilities) | [`cli`] |
//! | start-up order and the serving loop | [`daemon`] |
//! | the listening socket (`--socket-path`, `--fd`, `--socket-group`) | [`socket`] |
//! | the vhost-user device: queues, features, config space | [`vhost_user`] |
//! | one request: decode, route, always reply | [`dispatch`] |
//! | worker threads | [`pool`] |
//! | adaptive polling of a queue before its thread sleeps | [`poll`] |
//! | the file system: passthrough behind name checks, readonly, locks | [`fs`] |
//! | live handover to a new fsd under a running guest (SIGUSR2) | [`handover`] |
//! | a new fsd on the session after a crash (`--crash-recovery`) | [`crash`] |
//! | per-file access control: policy, labels, grants, audit | [`policy`] |
//! | asking the monitor to flush when a grant ends | [`monitor_link`] |
//! | file events for the monitor's taint tracking, off the request path | [`taint_link`] |
//! | host resources for the sandboxed daemon, from its parent | [`broker`] |
//! | confinement: namespaces, pivot_root, capabilities, rlimits | [`sandbox`] |
//! | the seccomp allow-list | [`seccomp`] |
//! | SIGHUP reloads and grant expiry | [`signals`] |
//! | logging to stderr or syslog | [`logging`] |
//! | errors | [`error`] |

pub mod broker;
pub mod cli;
pub mod crash;
pub mod daemon;
pub mod dispatch;
pub mod error;
pub mod fs;
pub mod handover;
pub mod logging;
pub mod monitor_link;
pub mod policy;
pub mod poll;
pub mod pool;
pub mod sandbox;
pub mod seccomp;
pub mod signals;
pub mod socket;
pub mod taint_link;
pub mod vhost_user;

pub use error::{Error, Result};
