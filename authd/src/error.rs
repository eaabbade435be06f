//! Typed errors of the daemon, the store and the command line. The client
//! has its own ([`authd_client::client::ClientError`]) because it never fails open.

use std::path::PathBuf;

/// Errors of the daemon and the command-line tool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("store {path} is accessible by group or others (mode {mode:o}); refusing to use it")]
    StorePermissions { path: PathBuf, mode: u32 },
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("password hashing: {0}")]
    Hash(String),
    #[error("unknown principal {0:?}")]
    UnknownPrincipal(String),
    #[error("invalid principal name {0:?} (use 1-64 of [A-Za-z0-9._-])")]
    InvalidPrincipal(String),
    #[error("invalid seal: {0}")]
    InvalidSeal(String),
    #[error("the old password is wrong")]
    WrongOldPassword,
    #[error("changing an existing password needs the old password or root")]
    OldPasswordRequired,
    #[error("dialog: {0}")]
    Dialog(String),
    #[error("terminal prompt: {0}")]
    Tty(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::io("system call", e.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
