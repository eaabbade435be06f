//! Errors that stop the daemon (as opposed to errors answered to the guest).

use std::io;
use std::path::PathBuf;

/// Why fsd could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cli(#[from] crate::cli::CliError),
    #[error("shared directory {path}: {source}")]
    SharedDir { path: PathBuf, source: io::Error },
    #[error("socket: {0}")]
    Socket(#[from] crate::socket::SocketError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("file system: {0}")]
    Fs(io::Error),
    #[error("vhost-user device: {0}")]
    Device(io::Error),
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("policy: {0}")]
    Access(String),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
}

pub type Result<T> = std::result::Result<T, Error>;
