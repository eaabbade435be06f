//! Typed errors of the rig. Messages name the missing piece and the fix, since
//! they end up in test failure output read by someone who did not write the rig.

use std::path::PathBuf;

/// Result alias used throughout the rig.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while preparing or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A prerequisite file or program is absent.
    #[error("{what} not found at {path} (run scripts/install-deps.sh)")]
    Missing { what: String, path: PathBuf },

    /// A kernel module named by the caller or by a dependency does not exist.
    #[error("kernel module {name} is neither built in nor present under {dir}")]
    ModuleMissing { name: String, dir: PathBuf },

    /// A file did not have the expected ELF structure.
    #[error("malformed ELF file {path}: {reason}")]
    BadElf { path: PathBuf, reason: String },

    /// Host I/O on a named path failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A child process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// The daemon exited before it was ready.
    #[error("daemon {program} exited during start-up ({status}); its log:\n{log}")]
    DaemonExited {
        program: String,
        status: String,
        log: String,
    },

    /// The daemon did not create its socket in time.
    #[error("daemon {program} did not create {socket} within {secs} s; its log:\n{log}")]
    DaemonTimeout {
        program: String,
        socket: PathBuf,
        secs: u64,
        log: String,
    },

    /// The guest did not power off in time.
    #[error("guest did not finish within {secs} s; console tail:\n{tail}")]
    BootTimeout { secs: u64, tail: String },

    /// The guest finished but its console lacks the result markers.
    #[error("guest ended ({status}) without a script result; console tail:\n{tail}")]
    NoResult { status: String, tail: String },

    /// Building the static guest helpers failed.
    #[error("building guest-tools failed: {0}")]
    GuestTools(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
