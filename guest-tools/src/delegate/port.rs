//! One end of a virtio-serial port, as the client and the agent use it.
//!
//! A port is a single byte stream to the host. It can be open in one
//! process at a time (a second open is EBUSY), the host side may be
//! absent (the broker down or restarting: `poll` reports POLLHUP and a
//! read returns 0), and bytes from an earlier user may still be queued.
//! So a user opens it, waits a bounded time for the host, drains what was
//! left, and then speaks in whole frames.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use delegate_proto::frame::Decoder;
use delegate_proto::message::DecodeError;
use delegate_proto::{Frame, Message};

use super::sys;

/// Where the port called `name` appears in this guest: udev's link
/// `/dev/virtio-ports/NAME`, or without udev (a busybox initramfs) the
/// device whose `/sys/class/virtio-ports/*/name` is `name`.
pub fn port_path(name: &str) -> String {
    let link = format!("/dev/virtio-ports/{name}");
    if std::path::Path::new(&link).exists() {
        return link;
    }
    if let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") {
        for e in dir.flatten() {
            let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
            if n.trim_end() == name {
                return format!("/dev/{}", e.file_name().to_string_lossy());
            }
        }
    }
    link
}

/// An open port.
pub struct Port {
    fd: OwnedFd,
    decoder: Decoder,
}

/// Why the port cannot be used.
#[derive(Debug)]
pub enum PortError {
    /// No such port: this VM has no delegation channel.
    Missing(String),
    /// Another process holds the port for longer than we waited.
    Busy,
    /// The host end is not connected.
    HostAbsent,
    Io(io::Error),
}

impl std::fmt::Display for PortError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortError::Missing(p) => write!(f, "no delegation channel in this VM ({p} is missing)"),
            PortError::Busy => write!(f, "the delegation channel is busy with another program"),
            PortError::HostAbsent => write!(f, "the host's delegation broker is not connected"),
            PortError::Io(e) => write!(f, "delegation channel: {e}"),
        }
    }
}

impl Port {
    /// Opens the port, waiting up to `busy_wait` while another process
    /// holds it.
    pub fn open(path: &str, busy_wait: Duration) -> Result<Port, PortError> {
        let c = CString::new(path).map_err(|_| PortError::Missing(path.into()))?;
        let deadline = Instant::now() + busy_wait;
        let fd = loop {
            match sys::open_rw(&c, libc::O_NONBLOCK | libc::O_NOCTTY) {
                Ok(fd) => break fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    return Err(PortError::Missing(path.into()))
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    if Instant::now() >= deadline {
                        return Err(PortError::Busy);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(PortError::Io(e)),
            }
        };
        Ok(Port {
            fd,
            decoder: Decoder::default(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the host end is connected now.
    pub fn host_connected(&self) -> bool {
        matches!(sys::poll(&[(self.fd(), libc::POLLOUT)], 0), Ok(ev) if ev[0] & libc::POLLHUP == 0)
    }

    /// Waits up to `limit` for the host end.
    pub fn wait_host(&self, limit: Duration) -> Result<(), PortError> {
        let deadline = Instant::now() + limit;
        while !self.host_connected() {
            if Instant::now() >= deadline {
                return Err(PortError::HostAbsent);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Throws away whatever an earlier user left queued.
    pub fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(Some(n)) = sys::read(self.fd(), &mut buf) {
            if n == 0 {
                break;
            }
        }
        self.decoder = Decoder::default();
    }

    /// Sends one message (waiting at most 10 s for room).
    pub fn send(&self, m: &Message) -> io::Result<()> {
        let f = m
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        self.send_raw(&f.to_bytes())
    }

    /// Sends bytes as they are (the hostile-input probe uses this).
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        sys::write_all(self.fd(), bytes, 10_000)
    }

    /// Reads what is available into the decoder. `Ok(false)`: the host
    /// end went away.
    pub fn fill(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 16384];
        match sys::read(self.fd(), &mut buf)? {
            Some(0) => Ok(false),
            Some(n) => {
                self.decoder.push(&buf[..n]);
                Ok(true)
            }
            None => Ok(true),
        }
    }

    /// The next whole message already read, if any.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        match self.decoder.next_frame()? {
            Some(f) => Ok(Some(Message::decode(&f)?)),
            None => Ok(None),
        }
    }

    /// Waits up to `limit` for the next message. `Ok(None)`: timed out;
    /// an error also when the host end went away.
    pub fn recv(&mut self, limit: Duration) -> io::Result<Option<Message>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(m) = self.next_message().map_err(invalid)? {
                return Ok(Some(m));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ev = sys::poll(
                &[(self.fd(), libc::POLLIN)],
                left.as_millis().min(1000) as i32,
            )?;
            if ev[0] & libc::POLLIN != 0 {
                if !self.fill()? {
                    return Err(gone());
                }
            } else if ev[0] & libc::POLLHUP != 0 {
                return Err(gone());
            }
        }
    }
}

/// The host end went away.
pub fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the host end went away")
}

fn invalid(e: DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A frame as bytes, for callers that build frames by hand.
pub fn frame_bytes(f: &Frame) -> Vec<u8> {
    f.to_bytes()
}
