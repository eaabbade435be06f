//! Host resources for a sandboxed daemon, opened by its unsandboxed parent.
//!
//! Once fsd has made the share its root, host paths (the policy file, the
//! audit log, authd's socket) no longer exist for it, and it must not keep
//! descriptors of host directories either: `openat(dir, "..")` on one would
//! lead a compromised daemon back out. So the parent that stays outside
//! (with `--sandbox=namespace` it is already there, waiting for the daemon)
//! answers four requests over a socket pair, each with one descriptor:
//! the policy file opened for reading, the audit log opened for appending,
//! a fresh connection to authd or to the monitor. It opens nothing else and reads nothing the
//! guest wrote. Without a sandbox, fsd opens them itself.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::crash::keeper::{poll2, Keeper};
use crate::handover::launcher::{self, Successors};

/// What can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// The policy file, for reading (on SIGHUP).
    Policy,
    /// The audit log, for appending (after rotation).
    AuditLog,
    /// A new connection to authd.
    Authd,
    /// A new connection to the monitor.
    Monitor,
}

impl Resource {
    fn code(self) -> u8 {
        match self {
            Resource::Policy => b'P',
            Resource::AuditLog => b'A',
            Resource::Authd => b'C',
            Resource::Monitor => b'M',
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            b'P' => Some(Resource::Policy),
            b'A' => Some(Resource::AuditLog),
            b'C' => Some(Resource::Authd),
            b'M' => Some(Resource::Monitor),
            _ => None,
        }
    }
}

/// The host paths the broker may open, fixed at start-up.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub policy: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub authd: Option<PathBuf>,
    pub monitor: Option<PathBuf>,
}

impl Paths {
    /// Opens one resource here, by path.
    pub fn open(&self, r: Resource) -> io::Result<OwnedFd> {
        let missing = || io::Error::from_raw_os_error(libc::ENOENT);
        match r {
            Resource::Policy => {
                let p = self.policy.as_ref().ok_or_else(missing)?;
                Ok(File::open(p)?.into())
            }
            Resource::AuditLog => {
                let p = self.audit_log.as_ref().ok_or_else(missing)?;
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p)?;
                Ok(f.into())
            }
            Resource::Authd => {
                let p = self.authd.as_ref().ok_or_else(missing)?;
                Ok(UnixStream::connect(p)?.into())
            }
            Resource::Monitor => {
                let p = self.monitor.as_ref().ok_or_else(missing)?;
                Ok(UnixStream::connect(p)?.into())
            }
        }
    }
}

/// How this daemon gets host resources.
pub enum Broker {
    /// Not sandboxed: open by path.
    Direct(Paths),
    /// Sandboxed: ask the parent.
    Parent(Mutex<UnixStream>),
}

impl Broker {
    pub fn open(&self, r: Resource) -> io::Result<OwnedFd> {
        match self {
            Broker::Direct(paths) => paths.open(r),
            Broker::Parent(sock) => {
                let sock = sock.lock().unwrap();
                (&*sock).write_all(&[r.code()])?;
                let mut status = [0u8; 4];
                let (n, fd) = sock
                    .recv_with_fd(&mut status)
                    .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
                if n != 4 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "broker went away",
                    ));
                }
                match (i32::from_ne_bytes(status), fd) {
                    (0, Some(f)) => Ok(f.into()),
                    (0, None) => Err(io::Error::other("broker sent no descriptor")),
                    (errno, _) => Err(io::Error::from_raw_os_error(errno)),
                }
            }
        }
    }
}

impl Broker {
    /// Has the parent start a successor for a live handover (see
    /// [`crate::handover::launcher`]): its channel and host pid.
    pub fn successor(&self) -> io::Result<(Option<OwnedFd>, u32)> {
        match self {
            Broker::Direct(_) => Err(io::Error::from_raw_os_error(libc::ENOTSUP)),
            Broker::Parent(sock) => launcher::request(&sock.lock().unwrap(), b'S'),
        }
    }

    /// Has the parent kill the successor it started last.
    pub fn kill_successor(&self) -> io::Result<()> {
        match self {
            Broker::Direct(_) => Err(io::Error::from_raw_os_error(libc::ENOTSUP)),
            Broker::Parent(sock) => launcher::request(&sock.lock().unwrap(), b'K').map(|_| ()),
        }
    }
}

/// The parent's side: answers requests until the daemon closes its end.
/// With `successors`, it also starts successors for a live handover (`S`,
/// `K`: see [`crate::handover::launcher`]); with `keeper`, it keeps the
/// daemon's session for a crash and recovers it ([`crate::crash`]). True
/// when a new fsd serves after a crash.
pub fn serve(
    paths: Paths,
    sock: UnixStream,
    mut successors: Option<&mut Successors>,
    mut keeper: Option<Keeper>,
) -> bool {
    serve_requests(&paths, &sock, successors.as_deref_mut(), keeper.as_mut());
    keeper.is_some_and(|k| k.after_exit(successors))
}

fn serve_requests(
    paths: &Paths,
    sock: &UnixStream,
    mut successors: Option<&mut Successors>,
    mut keeper: Option<&mut Keeper>,
) {
    let mut req = [0u8; 1];
    loop {
        let fd = keeper.as_deref().filter(|k| !k.gone()).map(Keeper::raw_fd);
        let (request, kept) = match poll2(sock.as_raw_fd(), fd) {
            Ok(r) => r,
            Err(_) => return,
        };
        if kept {
            if let Some(k) = keeper.as_deref_mut() {
                k.read_one();
            }
        }
        if !request {
            continue;
        }
        match (&*sock).read(&mut req) {
            Ok(1) => {}
            _ => return,
        }
        if let (b'S' | b'K', Some(s)) = (req[0], successors.as_deref_mut()) {
            if launcher::handle(s, req[0], sock).is_err() {
                return;
            }
            continue;
        }
        let reply = match Resource::from_code(req[0]) {
            Some(r) => paths.open(r),
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let sent = match reply {
            Ok(fd) => {
                let raw = fd.into_raw_fd();
                // SAFETY: `raw` was just released from an OwnedFd we own.
                let owned = unsafe { File::from_raw_fd(raw) };
                sock.send_with_fd(&0i32.to_ne_bytes()[..], owned.as_raw_fd())
            }
            Err(e) => (&*sock)
                .write_all(&e.raw_os_error().unwrap_or(libc::EIO).to_ne_bytes())
                .map(|_| 4)
                .map_err(|e| {
                    vmm_sys_util::errno::Error::new(e.raw_os_error().unwrap_or(libc::EIO))
                }),
        };
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_hands_out_only_its_resources() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("p.toml"), b"version = 1\n").unwrap();
        let paths = Paths {
            policy: Some(t.path().join("p.toml")),
            audit_log: Some(t.path().join("audit.log")),
            authd: None,
            monitor: None,
        };
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(paths, b, None, None));
        let broker = Broker::Parent(Mutex::new(a));
        let mut s = String::new();
        File::from(broker.open(Resource::Policy).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "version = 1\n");
        File::from(broker.open(Resource::AuditLog).unwrap())
            .write_all(b"line\n")
            .unwrap();
        assert_eq!(
            std::fs::read(t.path().join("audit.log")).unwrap(),
            b"line\n"
        );
        let e = broker.open(Resource::Authd).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        drop(broker);
        server.join().unwrap();
    }
}
