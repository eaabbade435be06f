//! Live handover: a new fsd takes over a running guest's session.
//!
//! QEMU's vhost-user-fs front-end cannot reconnect, so a restarted fsd would
//! leave the guest without its file system. Instead, on SIGUSR2 the running
//! fsd starts the binary that is on disk now (possibly a new version) and
//! hands it everything the session needs: the vhost-user connection, guest
//! memory, the kick/call/err eventfds, the vring indices and features, the
//! FUSE session and the tables behind the guest's node ids and file handles,
//! with a descriptor for every inode, open file, lock and directory stream.
//! The guest sees a pause, never an error. docs/rejuvenation.md has the
//! design, what a guest can observe, and how to operate it.
//!
//! | concern | module |
//! |---|---|
//! | the versioned document that moves | [`state`] |
//! | the channel (SCM_RIGHTS over a seqpacket pair) | [`transfer`] |
//! | pausing the queues, waiting for requests in flight | [`quiesce`] |
//! | the vhost-user device: read out, replay | [`vhost`] |
//! | live grants, taken over from authd's list | [`grants`] |
//! | starting successors from outside the seccomp filter | [`launcher`] |
//! | the old process's side | [`predecessor`] |
//! | the new process's side | [`successor`] |

pub mod grants;
pub mod launcher;
pub mod predecessor;
pub mod quiesce;
pub mod state;
pub mod successor;
pub mod transfer;
pub mod vhost;

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

/// The variable that tells a starting fsd to take over from its parent,
/// and on which descriptor. Set by the predecessor only.
pub const TAKEOVER_ENV: &str = "FSD_TAKEOVER_FD";

/// The signal that asks a running fsd to hand over.
pub const HANDOVER_SIGNAL: libc::c_int = libc::SIGUSR2;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover channel: {0}")]
    Channel(io::Error),
    #[error("the other side of the handover went away")]
    PeerGone,
    #[error("handover protocol: {0}")]
    Protocol(String),
    #[error("encoding the handover state: {0}")]
    Encode(serde_json::Error),
    #[error("decoding the handover state: {0}")]
    Decode(serde_json::Error),
    #[error("starting the successor: {0}")]
    Launch(io::Error),
    #[error("the successor refused: {0}")]
    Refused(String),
    #[error("the successor failed: {0}")]
    Failed(String),
    #[error("state version {0} is not one this fsd reads ({min}..={max})", min = state::MIN_READ_VERSION, max = state::STATE_VERSION)]
    Version(u32),
    #[error("{0} requests still waiting (blocking locks or prompts); try again later")]
    Busy(usize),
    #[error("the device is not set up yet (no memory table)")]
    NotSetUp,
    #[error("guest memory without a file behind it cannot be handed over")]
    AnonymousMemory,
    #[error("copying a descriptor: {0}")]
    Dup(io::Error),
    #[error("file system state: {0}")]
    FileSystem(io::Error),
    #[error("replaying the vhost-user setup: {0}")]
    Replay(::vhost::vhost_user::Error),
    #[error("queue {queue}: used index {found:?} in guest memory, {expected} expected")]
    UsedIndex {
        queue: u32,
        expected: u16,
        found: Option<u16>,
    },
    #[error("vhost-user: {0}")]
    Daemon(String),
    #[error("the sandbox mode {0:?} does not support live handover yet")]
    Unsupported(crate::cli::SandboxMode),
}

/// How to start the successor: the path this fsd was started from, which
/// names whatever binary is there now, with the same arguments.
#[derive(Debug, Clone)]
pub struct SuccessorCommand {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl SuccessorCommand {
    /// Recorded at start-up, before the binary on disk can be replaced
    /// (afterwards `/proc/self/exe` names the old, deleted file).
    pub fn of_this_process() -> io::Result<Self> {
        Ok(SuccessorCommand {
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Blocks the handover signal in the calling thread (and the threads it
/// starts), so that only [`wait_for_request`] takes it.
pub fn block_signal() {
    // SAFETY: manipulating a local sigset and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, HANDOVER_SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits up to `timeout` for the handover signal; true when it came.
pub fn wait_for_request(timeout: std::time::Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: waiting on a local sigset with a valid timeout.
    let sig = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, HANDOVER_SIGNAL);
        libc::sigtimedwait(&set, std::ptr::null_mut(), &ts)
    };
    sig == HANDOVER_SIGNAL
}

/// The descriptor of the handover channel, when this fsd was started by a
/// predecessor; the variable is removed so that it goes no further.
pub fn takeover_fd() -> Option<std::os::fd::OwnedFd> {
    let v = std::env::var(TAKEOVER_ENV).ok()?;
    std::env::remove_var(TAKEOVER_ENV);
    let fd: i32 = v.parse().ok().filter(|&fd| fd > 2)?;
    // SAFETY: F_GETFD only checks that the descriptor exists.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the predecessor handed this descriptor to us and nothing
    // else in this process refers to it.
    Some(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}
