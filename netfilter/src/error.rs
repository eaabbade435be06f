//! What can go wrong in the filter, one variant per cause, so that a broken
//! peer is told from a bad policy file from an unreachable monitor.

use std::io;
use std::path::PathBuf;

pub use crate::policy::PolicyError;

/// Everything that stops the filter or one of its connections.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a socket or file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "connect to passt at /run/passt.sock".
        what: String,
        #[source]
        source: io::Error,
    },
    /// The policy file was refused.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A length prefix announced a frame larger than any QEMU sends: the
    /// stream is out of step and the connection is dropped.
    #[error("frame of {0} bytes announced, more than the {max} allowed", max = crate::frame::MAX_FRAME)]
    FrameTooLong(usize),
    /// A thread of the filter could not be started.
    #[error("cannot start a thread to {what}: {source}")]
    ThreadSpawn {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The audit log could not be written.
    #[error("audit log {path}: {source}")]
    Audit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A control request or reply could not be encoded or decoded.
    #[error("control message: {0}")]
    Control(#[source] serde_json::Error),
}

/// Crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an `io::Error` with what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
