//! The channel between a predecessor and its successor.
//!
//! A `SOCK_SEQPACKET` socket pair: one end stays with the running fsd, the
//! other is inherited by the successor across `exec` (its number is passed
//! in [`super::TAKEOVER_ENV`]). Records keep their boundaries, so each
//! batch of descriptors (SCM_RIGHTS) arrives with exactly the record it was
//! sent with. A message is a header record (JSON length, descriptor count),
//! the JSON in records of at most [`CHUNK`] bytes, then the descriptors in
//! records of at most [`FDS_PER_RECORD`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::state::State;
use super::HandoverError;

/// Largest JSON record.
pub const CHUNK: usize = 32 * 1024;
/// Most descriptors in one record (the kernel allows 253).
pub const FDS_PER_RECORD: usize = 200;
/// Bounds on what a peer may announce.
const MAX_JSON: u64 = 1 << 30;
const MAX_FDS: u32 = 8 << 20;

/// What the two ends say to each other, in this order: the predecessor
/// `Hello`; the successor `Ready` (or `Refused`); the predecessor `State`
/// with the descriptors; the successor `Done` (or `Failed`).
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    Hello {
        version: u32,
        pid: u32,
    },
    Ready {
        version: u32,
        pid: u32,
    },
    Refused {
        why: String,
    },
    State(Box<State>),
    Done,
    Failed {
        why: String,
    },
    /// fsd to its supervisor: the device as set up now, with its descriptors
    /// (see [`crate::crash`]).
    Device(Box<crate::crash::keeper::DeviceSnapshot>),
    /// fsd to its supervisor, once: the journal's two buffers and the
    /// in-flight table.
    Journal,
    /// fsd to its supervisor: a description now carries guest locks (its
    /// descriptor comes along), or no longer does.
    LockHeld {
        kind: u8,
        inode: u64,
        key: u64,
    },
    LockDropped {
        kind: u8,
        inode: u64,
        key: u64,
    },
    /// fsd to its supervisor: it exits on purpose (handover done, VM gone);
    /// do not recover.
    Release,
    /// Supervisor to a new fsd, after a crash: take over from the journal.
    Recover(Box<crate::crash::keeper::Recovery>),
}

impl Msg {
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "Hello",
            Msg::Ready { .. } => "Ready",
            Msg::Refused { .. } => "Refused",
            Msg::State(_) => "State",
            Msg::Done => "Done",
            Msg::Failed { .. } => "Failed",
            Msg::Device(_) => "Device",
            Msg::Journal => "Journal",
            Msg::LockHeld { .. } => "LockHeld",
            Msg::LockDropped { .. } => "LockDropped",
            Msg::Release => "Release",
            Msg::Recover(_) => "Recover",
        }
    }
}

/// One end of the channel.
pub struct Channel {
    sock: UnixStream,
}

/// Makes the pair: the first end for this process (close-on-exec), the
/// second for the successor (inheritable: it must survive `exec`).
pub fn pair() -> io::Result<(Channel, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_cloexec(theirs.as_raw_fd(), false)?;
    Ok((Channel::from_fd(ours), theirs))
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_SETFD on a descriptor we own.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Channel {
    /// Adopts an end (the successor's, inherited); it becomes close-on-exec.
    pub fn from_fd(fd: OwnedFd) -> Self {
        let _ = set_cloexec(fd.as_raw_fd(), true);
        Channel {
            sock: UnixStream::from(fd),
        }
    }

    /// How long [`Self::recv`] waits (`None`: for ever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    fn send_record(&self, data: &[u8], fds: &[RawFd]) -> Result<(), HandoverError> {
        let n = self
            .sock
            .send_with_fds(&[data], fds)
            .map_err(|e| HandoverError::Channel(io::Error::from_raw_os_error(e.errno())))?;
        if n != data.len() {
            return Err(HandoverError::Channel(io::Error::other("short record")));
        }
        Ok(())
    }

    /// Sends `msg` with `fds` (which stay open here until sent).
    pub fn send(&self, msg: &Msg, fds: &[OwnedFd]) -> Result<(), HandoverError> {
        let json = serde_json::to_vec(msg).map_err(HandoverError::Encode)?;
        let mut head = [0u8; 12];
        head[..8].copy_from_slice(&(json.len() as u64).to_le_bytes());
        head[8..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        self.send_record(&head, &[])?;
        for chunk in json.chunks(CHUNK) {
            self.send_record(chunk, &[])?;
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        for chunk in raw.chunks(FDS_PER_RECORD) {
            self.send_record(b"F", chunk)?;
        }
        Ok(())
    }

    fn recv_record(&self, buf: &mut [u8]) -> Result<usize, HandoverError> {
        use std::io::Read;
        let n = (&self.sock).read(buf).map_err(HandoverError::Channel)?;
        if n == 0 {
            return Err(HandoverError::PeerGone);
        }
        Ok(n)
    }

    /// Receives one message and its descriptors.
    pub fn recv(&self) -> Result<(Msg, Vec<OwnedFd>), HandoverError> {
        let mut head = [0u8; 12];
        if self.recv_record(&mut head)? != head.len() {
            return Err(HandoverError::Protocol("bad header record".into()));
        }
        let len = u64::from_le_bytes(head[..8].try_into().unwrap());
        let nfds = u32::from_le_bytes(head[8..].try_into().unwrap());
        if len > MAX_JSON || nfds > MAX_FDS {
            return Err(HandoverError::Protocol(format!(
                "announced {len} bytes and {nfds} descriptors"
            )));
        }
        let mut json = Vec::with_capacity(len as usize);
        let mut buf = vec![0u8; CHUNK];
        while (json.len() as u64) < len {
            let n = self.recv_record(&mut buf)?;
            json.extend_from_slice(&buf[..n]);
        }
        if json.len() as u64 != len {
            return Err(HandoverError::Protocol(
                "message longer than announced".into(),
            ));
        }
        let mut fds = Vec::with_capacity(nfds as usize);
        while fds.len() < nfds as usize {
            let want = (nfds as usize - fds.len()).min(FDS_PER_RECORD);
            let mut raw = vec![-1 as RawFd; FDS_PER_RECORD];
            let mut byte = [0u8; 1];
            let mut iov = [libc::iovec {
                iov_base: byte.as_mut_ptr() as *mut libc::c_void,
                iov_len: 1,
            }];
            // SAFETY: the iovec points at `byte`, which outlives the call;
            // received descriptors are owned below.
            let (n, got) = unsafe { self.sock.recv_with_fds(&mut iov, &mut raw) }
                .map_err(|e| HandoverError::Channel(io::Error::from_raw_os_error(e.errno())))?;
            // SAFETY: the kernel installed `got` descriptors in `raw`.
            let batch: Vec<OwnedFd> = raw[..got]
                .iter()
                .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if n == 0 {
                return Err(HandoverError::PeerGone);
            }
            if got != want {
                // Too few: the kernel dropped some (descriptor limit).
                return Err(HandoverError::Protocol(format!(
                    "expected {want} descriptors in a record, got {got}"
                )));
            }
            for f in &batch {
                set_cloexec(f.as_raw_fd(), true).map_err(HandoverError::Channel)?;
            }
            fds.extend(batch);
        }
        let msg = serde_json::from_slice(&json).map_err(HandoverError::Decode)?;
        Ok((msg, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn messages_and_many_descriptors_cross() {
        let (a, b) = pair().unwrap();
        let b = Channel::from_fd(b);
        let mut files = Vec::new();
        for i in 0..450u32 {
            let mut f = tempfile::tempfile().unwrap();
            write!(f, "file {i}").unwrap();
            files.push(OwnedFd::from(f));
        }
        let why = "x".repeat(3 * CHUNK + 5);
        let t = std::thread::spawn(move || {
            a.send(&Msg::Failed { why: why.clone() }, &files).unwrap();
            why
        });
        let (msg, fds) = b.recv().unwrap();
        let why = t.join().unwrap();
        match msg {
            Msg::Failed { why: got } => assert_eq!(got, why),
            m => panic!("got {}", m.name()),
        }
        assert_eq!(fds.len(), 450);
        let mut f = std::fs::File::from(fds.into_iter().nth(321).unwrap());
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "file 321");
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (a, b) = pair().unwrap();
        drop(b);
        let e = a.recv().unwrap_err();
        assert!(matches!(e, HandoverError::PeerGone), "{e}");
    }
}
