//! Typed errors of the driver.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while playing the guest side of virtio-fs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or mapping the memfd that backs guest memory failed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// Guest memory has no free block of the requested size.
    #[error("guest memory exhausted: wanted {0} bytes")]
    OutOfGuestMemory(u64),
    /// A guest-physical address was not inside guest memory.
    #[error("guest address {0:#x} (+{1}) is outside guest memory")]
    BadGuestAddress(u64, u64),
    /// A vhost-user message failed or the backend refused it.
    #[error("vhost-user {step}: {source}")]
    VhostUser {
        /// The protocol step that failed (e.g. "SET_MEM_TABLE").
        step: &'static str,
        /// The error reported by the vhost crate.
        #[source]
        source: vhost::Error,
    },
    /// The backend does not offer a feature the driver requires.
    #[error("backend lacks required feature {0}")]
    MissingFeature(&'static str),
    /// The requested queue does not exist.
    #[error("queue {0} does not exist (device has {1})")]
    NoSuchQueue(usize, usize),
    /// The descriptor table has too few free entries for the chain.
    #[error("queue full: chain needs {need} descriptors, {free} free")]
    QueueFull {
        /// Descriptors the chain needs.
        need: usize,
        /// Descriptors currently free.
        free: usize,
    },
    /// A chain specification is unusable (e.g. empty).
    #[error("invalid chain: {0}")]
    InvalidChain(&'static str),
    /// No used buffer arrived in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The device put an id in the used ring that was never submitted.
    #[error("device returned unknown descriptor head {0}")]
    UnknownHead(u32),
    /// A reply could not be decoded.
    #[error("malformed reply: {0}")]
    BadReply(String),
    /// The daemon answered with a FUSE error.
    #[error("FUSE error {errno} ({name}) for opcode {opcode}")]
    Fuse {
        /// Positive errno.
        errno: i32,
        /// Symbolic name of the errno.
        name: &'static str,
        /// Opcode of the request.
        opcode: u32,
    },
    /// Starting or supervising a daemon process failed.
    #[error("daemon {binary}: {reason}")]
    Daemon {
        /// The executable.
        binary: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A system call failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] io::Error),
}

impl Error {
    /// The errno of a FUSE error reply; `None` for every other failure.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Fuse { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a vhost error with the protocol step it occurred in.
pub(crate) fn vu(step: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::VhostUser { step, source }
}

/// Symbolic name of an errno, for readable reports and tables.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EPROTO => "EPROTO",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "E?",
    }
}
