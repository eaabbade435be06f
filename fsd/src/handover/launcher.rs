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
//! after a handover or not. A successor starts its own launcher. In the
//! sandboxed modes the broker parent, which stays outside the sandbox
//! anyway, answers the same requests ([`Successors`]).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::transfer::{pair, Channel};
use super::{SuccessorCommand, TAKEOVER_ENV};
use crate::broker::Broker;
use crate::crash::keeper::{poll2, Keeper};

/// How fsd starts successors: through the launcher it forked
/// (`--sandbox=none`), or through the broker parent that stays outside the
/// sandbox (`namespace`, `chroot`; see [`crate::broker`]). Both answer the
/// same two requests.
pub enum Launcher {
    Forked(Mutex<UnixStream>),
    Broker(Arc<Broker>),
}

/// A successor started: this side of its channel, and its pid as the host
/// (and an operator sending the next SIGUSR2) sees it.
pub struct Started {
    pub channel: Channel,
    pub pid: u32,
}

impl Launcher {
    /// Forks the launcher. Must run while fsd has a single thread. With
    /// `keep`, the launcher also keeps fsd's session for a crash (see
    /// [`crate::crash`]); the other end of that channel comes back.
    pub fn start(cmd: SuccessorCommand, keep: bool) -> io::Result<(Launcher, Option<Channel>)> {
        let (ours, theirs) = UnixStream::pair()?;
        let keeper = if keep { Some(pair()?) } else { None };
        // SAFETY: fsd has no other thread yet (see `daemon`), so the child
        // is a complete copy and may run ordinary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop(ours);
            let keeper = keeper.map(|(k, fsd_end)| {
                drop(fsd_end);
                Keeper::new(k)
            });
            let mut successors = Successors::new(cmd, None);
            let recovered = serve(&mut successors, theirs, keeper);
            if !recovered {
                successors.finish();
            }
            std::process::exit(0);
        }
        drop(theirs);
        Ok((
            Launcher::Forked(Mutex::new(ours)),
            keeper.map(|(_, fsd_end)| Channel::from_fd(fsd_end)),
        ))
    }

    /// Starts a successor.
    pub fn spawn(&self) -> io::Result<Started> {
        let (fd, pid) = match self {
            Launcher::Forked(sock) => request(&sock.lock().unwrap(), b'S')?,
            Launcher::Broker(b) => b.successor()?,
        };
        let fd = fd.ok_or_else(|| io::Error::other("the launcher sent no channel"))?;
        Ok(Started {
            channel: Channel::from_fd(fd),
            pid,
        })
    }

    /// Kills and reaps the last successor started.
    pub fn kill(&self) {
        let _ = match self {
            Launcher::Forked(sock) => request(&sock.lock().unwrap(), b'K').map(|_| ()),
            Launcher::Broker(b) => b.kill_successor(),
        };
    }
}

/// Sends a one-byte request; reads the answer: an errno (0: fine), a pid
/// and, for `S`, a descriptor.
pub fn request(sock: &UnixStream, code: u8) -> io::Result<(Option<OwnedFd>, u32)> {
    (&*sock).write_all(&[code])?;
    let mut answer = [0u8; 8];
    let (n, fd) = sock
        .recv_with_fd(&mut answer)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if n != answer.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the launcher went away",
        ));
    }
    let errno = i32::from_ne_bytes(answer[..4].try_into().unwrap());
    let pid = u32::from_ne_bytes(answer[4..].try_into().unwrap());
    if errno != 0 {
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok((fd.map(OwnedFd::from), pid))
}

/// Sends the answer to a request.
pub fn answer(sock: &UnixStream, r: io::Result<(Option<RawFd>, u32)>) -> io::Result<()> {
    let mut buf = [0u8; 8];
    let fd = match r {
        Ok((fd, pid)) => {
            buf[4..].copy_from_slice(&pid.to_ne_bytes());
            fd
        }
        Err(e) => {
            buf[..4].copy_from_slice(&e.raw_os_error().unwrap_or(libc::EIO).to_ne_bytes());
            None
        }
    };
    let sent = match fd {
        Some(fd) => sock.send_with_fd(&buf[..], fd),
        None => sock.send_with_fds(&[&buf[..]], &[]),
    };
    sent.map(|_| ())
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// The successors one launcher started: the last one is kept, to kill it
/// when a handover is given up, or to name it as the service's main
/// process when the predecessor has exited.
pub struct Successors {
    cmd: SuccessorCommand,
    /// The launcher's own PID namespace: a launcher that created a PID
    /// namespace for its sandboxed child enters its own again before each
    /// successor, which must not be born in (and die with) that namespace.
    pidns: Option<OwnedFd>,
    last: Option<Child>,
}

impl Successors {
    pub fn new(cmd: SuccessorCommand, pidns: Option<OwnedFd>) -> Self {
        Successors {
            cmd,
            pidns,
            last: None,
        }
    }

    /// `S`: starts one; this side of its channel and its pid.
    pub fn start(&mut self) -> io::Result<(Channel, u32)> {
        if let Some(ns) = &self.pidns {
            // SAFETY: setns on a namespace descriptor we own.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let (chan, child) = start_successor(&self.cmd)?;
        let pid = child.id();
        if let Some(mut old) = self.last.replace(child) {
            // An earlier successor that is still there was given up.
            if let Ok(None) = old.try_wait() {
                let _ = old.kill();
                let _ = old.wait();
            }
        }
        Ok((chan, pid))
    }

    /// `K`: kills and reaps the last one.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.last.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The predecessor is gone: if its last successor runs, it serves now;
    /// tell the service manager (`MAINPID=`), if there is one.
    pub fn finish(mut self) {
        if let Some(c) = self.last.as_mut() {
            if let Ok(None) = c.try_wait() {
                notify(&format!("MAINPID={}\n", c.id()));
            }
        }
    }
}

/// Sends one message to systemd's notification socket, if there is one.
pub fn notify(msg: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    if let (Ok(addr), Ok(sock)) = (addr, UnixDatagram::unbound()) {
        let _ = sock.send_to_addr(msg.as_bytes(), &addr);
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

/// Answers one launcher request (`S` or `K`) on `sock`.
pub fn handle(successors: &mut Successors, code: u8, sock: &UnixStream) -> io::Result<()> {
    match code {
        b'S' => match successors.start() {
            Ok((chan, pid)) => answer(sock, Ok((Some(chan.as_raw_fd()), pid))),
            Err(e) => answer(sock, Err(e)),
        },
        _ => {
            successors.kill();
            answer(sock, Ok((None, 0)))
        }
    }
}

/// The forked launcher's loop; true when it recovered fsd after a crash
/// (the new fsd then serves, and has a launcher of its own).
fn serve(successors: &mut Successors, sock: UnixStream, mut keeper: Option<Keeper>) -> bool {
    let mut req = [0u8; 1];
    loop {
        let fd = keeper.as_ref().filter(|k| !k.gone()).map(Keeper::raw_fd);
        let (request, kept) = match poll2(sock.as_raw_fd(), fd) {
            Ok(r) => r,
            Err(_) => break,
        };
        if kept {
            if let Some(k) = keeper.as_mut() {
                k.read_one();
            }
        }
        if !request {
            continue;
        }
        match (&sock).read(&mut req) {
            Ok(1) if matches!(req[0], b'S' | b'K') => {}
            _ => break,
        }
        if handle(successors, req[0], &sock).is_err() {
            break;
        }
    }
    keeper.is_some_and(|k| k.after_exit(Some(successors)))
}
