//! The supervisor's copy of what must outlive an fsd process.
//!
//! The process that outlives fsd anyway (the broker parent of a sandboxed
//! fsd, the launcher of an unsandboxed one: see [`crate::handover::launcher`])
//! holds, for as long as fsd serves:
//!
//! * a copy of the vhost-user connection: while any process holds it, QEMU
//!   sees no disconnect, and what it sends meanwhile waits in the socket;
//! * the guest memory regions, kick/call/err eventfds and the device's
//!   setup (features, ring addresses), refreshed whenever they change;
//! * the journal's buffers and the in-flight table (shared memory);
//! * a copy of every description that carries guest locks, so that the
//!   locks stay held when fsd dies (they belong to the description).
//!
//! When fsd's end of the channel closes without a [`Msg::Release`], fsd
//! died: the supervisor starts a new fsd exactly as for a live handover and
//! gives it all of this in a [`Msg::Recover`] ([`super::recover`]).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use log::{error, info, warn};
use serde::{Deserialize, Serialize};

use crate::handover::launcher::Successors;
use crate::handover::predecessor::{self, RESTORE_TIMEOUT};
use crate::handover::state::{FdBag, FuseState, HeldDescription, PassthroughState, VhostState};
use crate::handover::transfer::{Channel, Msg};
use crate::handover::vhost::{self, Daemon};
use crate::handover::HandoverError;
use crate::vhost_user::FsBackend;

/// The device as the front-end set it up, and the FUSE session, at the
/// last change. Ring indices in it are stale by design: the in-flight
/// table has the current ones.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub vhost: VhostState,
    pub fuse: FuseState,
    /// The passthrough layer's INIT-negotiated flags and id counters (its
    /// tables are in the journal).
    pub session: PassthroughState,
}

/// What a new fsd gets after a crash; descriptors by index, as in a
/// handover.
#[derive(Debug, Serialize, Deserialize)]
pub struct Recovery {
    pub device: DeviceSnapshot,
    pub journal: [usize; 2],
    pub inflight: usize,
    pub posix_locks: Vec<HeldDescription>,
    pub flock_locks: Vec<HeldDescription>,
}

/// Lock kinds on the wire.
pub const POSIX: u8 = 0;
pub const FLOCK: u8 = 1;

/// fsd's side: tells the supervisor what it must hold.
pub struct KeeperLink {
    chan: Mutex<Channel>,
    broken: AtomicBool,
    /// What the last device snapshot was taken of.
    last: Mutex<String>,
}

impl KeeperLink {
    pub fn new(chan: Channel) -> Self {
        KeeperLink {
            chan: Mutex::new(chan),
            broken: AtomicBool::new(false),
            last: Mutex::new(String::new()),
        }
    }

    fn send(&self, msg: &Msg, fds: &[OwnedFd]) {
        if self.broken.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.chan.lock().unwrap().send(msg, fds) {
            error!("crash recovery: the supervisor does not listen ({e}); a crash will not be recovered");
            self.broken.store(true, Ordering::Release);
        }
    }

    /// Once, at start: the journal and the in-flight table.
    pub fn journal(&self, fds: Vec<OwnedFd>) {
        self.send(&Msg::Journal, &fds);
    }

    pub fn lock_held(&self, kind: u8, inode: u64, key: u64, file: &impl AsFd) {
        match file.as_fd().try_clone_to_owned() {
            Ok(fd) => self.send(&Msg::LockHeld { kind, inode, key }, &[fd]),
            Err(e) => warn!("crash recovery: cannot copy a lock's description ({e})"),
        }
    }

    pub fn lock_dropped(&self, kind: u8, inode: u64, key: u64) {
        self.send(&Msg::LockDropped { kind, inode, key }, &[]);
    }

    /// This process exits on purpose: the supervisor must not recover.
    pub fn release(&self) {
        self.send(&Msg::Release, &[]);
    }

    /// Sends the device's setup if it changed since the last call.
    pub fn refresh_device(&self, daemon: &Daemon, backend: &FsBackend, connection: &impl AsFd) {
        if self.broken.load(Ordering::Acquire) || backend.memory().is_none() {
            return;
        }
        let mut bag = FdBag::default();
        let Ok(mut vhost) = vhost::capture(daemon, backend, connection, &mut bag) else {
            return;
        };
        for q in &mut vhost.queues {
            q.next_avail = 0;
            q.next_used = 0;
        }
        let fs = backend.dispatcher().fs();
        let snap = DeviceSnapshot {
            vhost,
            fuse: backend.dispatcher().session_state(),
            session: fs.session_flags(),
        };
        // Descriptors count by identity: QEMU may send a new call eventfd
        // with nothing else changed.
        let key = format!(
            "{}{:?}",
            serde_json::to_string(&snap).unwrap_or_default(),
            vhost::eventfd_numbers(daemon)
        );
        let mut last = self.last.lock().unwrap();
        if *last == key {
            return;
        }
        self.send(&Msg::Device(Box::new(snap)), &bag.into_vec());
        *last = key;
    }
}

/// The supervisor's side.
pub struct Keeper {
    chan: Channel,
    device: Option<(DeviceSnapshot, Vec<OwnedFd>)>,
    journal: Option<Vec<OwnedFd>>,
    locks: HashMap<(u8, u64, u64), OwnedFd>,
    released: bool,
    gone: bool,
}

impl Keeper {
    pub fn new(chan: Channel) -> Self {
        Keeper {
            chan,
            device: None,
            journal: None,
            locks: HashMap::new(),
            released: false,
            gone: false,
        }
    }

    /// The descriptor to poll.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.chan.as_raw_fd()
    }

    /// Whether fsd's end is closed.
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// Reads one message (the channel is readable).
    pub fn read_one(&mut self) {
        match self.chan.recv() {
            Ok((Msg::Device(d), fds)) => self.device = Some((*d, fds)),
            Ok((Msg::Journal, fds)) if fds.len() == 3 => self.journal = Some(fds),
            Ok((Msg::LockHeld { kind, inode, key }, mut fds)) if fds.len() == 1 => {
                self.locks.insert((kind, inode, key), fds.remove(0));
            }
            Ok((Msg::LockDropped { kind, inode, key }, _)) => {
                self.locks.remove(&(kind, inode, key));
            }
            Ok((Msg::Release, _)) => self.released = true,
            Ok((m, _)) => warn!("supervisor: unexpected {} from fsd", m.name()),
            Err(HandoverError::PeerGone) => self.gone = true,
            Err(e) => {
                warn!("supervisor: {e}");
                self.gone = true;
            }
        }
    }

    /// fsd's request channel closed: drains what fsd still sent and, if it
    /// died rather than exited on purpose, starts a new fsd on its session.
    /// True when a new fsd serves.
    pub fn after_exit(mut self, successors: Option<&mut Successors>) -> bool {
        let _ = self.chan.set_timeout(Some(Duration::from_secs(2)));
        while !self.gone {
            self.read_one();
        }
        if self.released {
            return false;
        }
        let (Some(successors), Some(_), Some(_)) = (successors, &self.device, &self.journal) else {
            warn!("crash recovery: fsd died before its session could be kept; the guest loses its file system");
            return false;
        };
        error!("crash recovery: fsd died; starting a new fsd on its session");
        match self.recover(successors) {
            Ok(pid) => {
                info!("crash recovery: done; pid {pid} serves now");
                true
            }
            Err(e) => {
                error!("crash recovery failed: {e}");
                successors.kill();
                false
            }
        }
    }

    fn recover(self, successors: &mut Successors) -> Result<u32, HandoverError> {
        let (chan, pid) = successors.start().map_err(HandoverError::Launch)?;
        predecessor::greet(&chan)?;
        let (device, mut fds) = self.device.expect("checked by the caller");
        let mut bag = FdBag::default();
        // The device's descriptors keep their indices: they come first.
        for fd in fds.drain(..) {
            bag.put(fd);
        }
        let mut journal = self.journal.expect("checked by the caller").into_iter();
        let (a, b, inflight) = (
            bag.put(journal.next().unwrap()),
            bag.put(journal.next().unwrap()),
            bag.put(journal.next().unwrap()),
        );
        let mut posix_locks = Vec::new();
        let mut flock_locks = Vec::new();
        for ((kind, inode, key), fd) in self.locks {
            let held = HeldDescription {
                inode,
                key,
                fd: bag.put(fd),
            };
            match kind {
                POSIX => posix_locks.push(held),
                _ => flock_locks.push(held),
            }
        }
        let r = Recovery {
            device,
            journal: [a, b],
            inflight,
            posix_locks,
            flock_locks,
        };
        chan.send(&Msg::Recover(Box::new(r)), &bag.into_vec())?;
        chan.set_timeout(Some(RESTORE_TIMEOUT))
            .map_err(HandoverError::Channel)?;
        match chan.recv()?.0 {
            Msg::Done => Ok(pid),
            Msg::Failed { why } => Err(HandoverError::Failed(why)),
            m => Err(HandoverError::Protocol(format!(
                "expected Done, got {}",
                m.name()
            ))),
        }
    }
}

/// Waits until `a` or `b` is readable (or hung up): (a ready, b ready).
pub fn poll2(a: std::os::fd::RawFd, b: Option<std::os::fd::RawFd>) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: polling two pollfd structures we own.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r >= 0 {
            return Ok((fds[0].revents != 0, fds[1].revents != 0));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}
