//! The process that starts successors.
//!
//! Once serving, fsd runs under a seccomp allow-list without fork or exec,
//! and that must stay so: a compromised fsd must not run programs. So at
//! start-up, before any thread and before the filter, fsd forks this small
//! launcher. It waits on a socket pair for one-byte requests from fsd:
//! `S` starts the successor (the binary at fsd's own path, with fsd's
//! arguments and one end of a fresh handover channel) and sends the other
//! end back; `K` kills and reaps the last successor (a handover given up).
//! It reads nothing else, and exits when fsd's end closes: when fsd exits,
//! after a handover or not. A successor starts its own launcher.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Mutex;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::transfer::{pair, Channel};
use super::{SuccessorCommand, TAKEOVER_ENV};

/// fsd's handle on its launcher.
pub struct Launcher {
    sock: Mutex<UnixStream>,
}

impl Launcher {
    /// Forks the launcher. Must run while fsd has a single thread.
    pub fn start(cmd: SuccessorCommand) -> io::Result<Launcher> {
        let (ours, theirs) = UnixStream::pair()?;
        // SAFETY: fsd has no other thread yet (see `daemon`), so the child
        // is a complete copy and may run ordinary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop(ours);
            serve(&cmd, theirs);
            std::process::exit(0);
        }
        drop(theirs);
        Ok(Launcher {
            sock: Mutex::new(ours),
        })
    }

    /// Starts a successor; returns this side of its handover channel.
    pub fn spawn(&self) -> io::Result<Channel> {
        let sock = self.sock.lock().unwrap();
        (&*sock).write_all(b"S")?;
        let mut status = [0u8; 4];
        let (n, fd) = sock
            .recv_with_fd(&mut status)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if n != 4 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the launcher went away",
            ));
        }
        match (i32::from_ne_bytes(status), fd) {
            (0, Some(f)) => Ok(Channel::from_fd(OwnedFd::from(f))),
            (0, None) => Err(io::Error::other("the launcher sent no channel")),
            (errno, _) => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    /// Kills and reaps the last successor started.
    pub fn kill(&self) {
        let sock = self.sock.lock().unwrap();
        let _ = (&*sock).write_all(b"K");
        let mut ack = [0u8; 1];
        let _ = (&*sock).read(&mut ack);
    }
}

fn start_successor(cmd: &SuccessorCommand) -> io::Result<(Channel, Child)> {
    let (chan, theirs) = pair()?;
    let mut c = Command::new(&cmd.exe);
    c.args(&cmd.args)
        .env(TAKEOVER_ENV, theirs.as_raw_fd().to_string());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            // fsd blocks some signals in every thread; a new process starts
            // with none blocked.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = c.spawn()?;
    drop(theirs);
    Ok((chan, child))
}

/// The launcher's loop.
fn serve(cmd: &SuccessorCommand, sock: UnixStream) {
    let mut last: Option<Child> = None;
    let mut req = [0u8; 1];
    loop {
        match (&sock).read(&mut req) {
            Ok(1) => {}
            _ => return,
        }
        match req[0] {
            b'S' => {
                let sent = match start_successor(cmd) {
                    Ok((chan, child)) => {
                        last = Some(child);
                        sock.send_with_fd(&0i32.to_ne_bytes()[..], chan.as_raw_fd())
                    }
                    Err(e) => (&sock)
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
            b'K' => {
                if let Some(mut c) = last.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                if (&sock).write_all(b"k").is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}
