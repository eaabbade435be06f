//! Errors that stop the daemon (as opposed to errors answered to the guest,
//! which are errno values in FUSE replies and never end fsd).
//!
//! One variant per cause, each with the underlying error as its source, so
//! that an operator reads what failed and why, and a caller can match on it.

use std::io;
use std::path::PathBuf;

/// Why fsd could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line does not make sense.
    #[error(transparent)]
    Cli(#[from] crate::cli::CliError),
    /// The shared directory cannot be served (missing, not a directory, no
    /// file handles where they were demanded).
    #[error("shared directory {path}: {source}")]
    SharedDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The vhost-user socket cannot be created or adopted.
    #[error("socket: {0}")]
    Socket(#[from] crate::socket::SocketError),
    /// Confinement failed (namespaces, pivot_root, capabilities, rlimits).
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The seccomp filter cannot be installed.
    #[error("seccomp: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The passthrough file system over the share cannot be built.
    #[error("file system over the share: {0}")]
    FileSystem(#[source] io::Error),
    /// A thread of fsd's own could not be started.
    #[error("starting the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    /// The vhost-user device (queues, eventfds) cannot be set up.
    #[error("vhost-user device: {0}")]
    Device(#[source] io::Error),
    /// The policy file does not parse or does not make sense.
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The policy has no `[[vm]]` of the name given with `--vm`.
    #[error("policy: {policy} does not declare the VM {vm:?} ([[vm]] name = ...)")]
    UnknownVm { policy: PathBuf, vm: String },
    /// The audit log cannot be opened.
    #[error("audit log {path}: {source}")]
    AuditLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The label database cannot be opened or read.
    #[error("label database {path}: {source} (--label-db)")]
    LabelDb {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The vhost-user daemon failed: setting up, accepting the VMM, or
    /// serving it (other than the VMM going away, which ends fsd cleanly).
    /// (vhost-user-backend's error implements Display, not `Error`, so it
    /// is carried but not chained as a source.)
    #[error("vhost-user daemon: {0}")]
    VhostUser(vhost_user_backend::Error),
    /// The VMM's connection could not be accepted.
    #[error("accepting the VMM's connection: {0}")]
    Accept(#[source] io::Error),
    /// Taking over from a predecessor failed (the predecessor serves on).
    #[error("handover: {0}")]
    Handover(#[source] crate::handover::HandoverError),
}

pub type Result<T> = std::result::Result<T, Error>;
