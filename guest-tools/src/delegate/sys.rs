//! The system calls the delegation client and agent need, each wrapped
//! once so the rest of the code is safe Rust: poll, terminals and ptys,
//! signals through a self-pipe, and the parts of starting a job that must
//! happen between fork and exec.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

/// `poll` on `fds` (descriptor, events); returns the revents of each.
/// EINTR is zero events, so signals wake the caller's loop.
pub fn poll(fds: &[(RawFd, i16)], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of pollfd of the length given.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![0; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents).collect())
}

/// `read`, with EAGAIN and EINTR as `Ok(None)`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// `write`, with EAGAIN and EINTR as `Ok(0)`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as usize)
}

/// Writes all of `buf` to a descriptor that may be non-blocking, waiting
/// at most `timeout_ms` for room each time; a hang-up is an error.
pub fn write_all(fd: RawFd, mut buf: &[u8], timeout_ms: i32) -> io::Result<()> {
    while !buf.is_empty() {
        let n = write(fd, buf)?;
        if n > 0 {
            buf = &buf[n..];
            continue;
        }
        let ev = poll(&[(fd, libc::POLLOUT)], timeout_ms)?;
        if ev[0] & (libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer hung up"));
        }
        if ev[0] == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no room to write"));
        }
    }
    Ok(())
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller holds.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) }, "F_GETFL")?;
    let fl = if on {
        fl | libc::O_NONBLOCK
    } else {
        fl & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl) }, "F_SETFL")?;
    Ok(())
}

/// A pipe, both ends close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    cvt(r, "pipe2")?;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether `fd` is a terminal.
pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The terminal size of `fd`.
pub fn winsize(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into `ws`.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != 0 {
        return None;
    }
    Some((ws.ws_row, ws.ws_col))
}

/// Sets the terminal size of `fd` (a pty master).
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    cvt(r, "TIOCSWINSZ")?;
    Ok(())
}

/// A terminal put in raw mode; its modes come back when dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    pub fn enter(fd: RawFd) -> io::Result<RawTerminal> {
        // SAFETY: an all-zero termios is valid; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into `t`.
        cvt(unsafe { libc::tcgetattr(fd, &mut t) }, "tcgetattr")?;
        let saved = t;
        // SAFETY: cfmakeraw edits the termios we own.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: tcsetattr reads the termios we pass.
        let r = unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        cvt(r, "tcsetattr")?;
        Ok(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the modes read in `enter` on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// A new pty pair: (master, name of the slave).
pub fn openpty() -> io::Result<(OwnedFd, CString)> {
    // SAFETY: posix_openpt returns a fresh descriptor or -1.
    let m = cvt(
        unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) },
        "posix_openpt",
    )?;
    // SAFETY: `m` is fresh and ours.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: grantpt and unlockpt act on the master we hold.
    cvt(unsafe { libc::grantpt(m) }, "grantpt")?;
    // SAFETY: as above.
    cvt(unsafe { libc::unlockpt(m) }, "unlockpt")?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name of at most the length given.
    let r = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
    Ok((master, name))
}

/// Self-pipe for signals: the handler writes the signal number, the main
/// loop polls the read end.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from the stack.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Routes `signals` into a pipe; returns its read end (non-blocking).
pub fn catch_signals(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let (r, w) = pipe()?;
    set_nonblocking(r.as_raw_fd(), true)?;
    set_nonblocking(w.as_raw_fd(), true)?;
    SIGNAL_PIPE.store(w.as_raw_fd(), std::sync::atomic::Ordering::Relaxed);
    std::mem::forget(w);
    for &s in signals {
        // SAFETY: an all-zero sigaction is valid; we set the handler.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: installs a handler that only calls write(2).
        let r = unsafe { libc::sigaction(s, &sa, std::ptr::null_mut()) };
        cvt(r, "sigaction")?;
    }
    Ok(r)
}

/// Sends `sig` to process group `pgid`.
pub fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory effects; a stale group is ESRCH.
    unsafe { libc::kill(-pgid, sig) };
}

/// `waitpid(pid, WNOHANG)`: the raw status once the child ended.
pub fn try_wait(pid: libc::pid_t) -> io::Result<Option<libc::c_int>> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our integer.
    let r = cvt(
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) },
        "waitpid",
    )?;
    Ok(if r == 0 { None } else { Some(status) })
}

/// Exit status or terminating signal of a raw wait status.
pub fn decode_status(status: libc::c_int) -> delegate_proto::Exit {
    if libc::WIFSIGNALED(status) {
        delegate_proto::Exit::Signal(libc::WTERMSIG(status))
    } else {
        delegate_proto::Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// What the child of a job does between fork and exec; everything it
/// needs was prepared before the fork, since only async-signal-safe calls
/// may run here.
pub struct Spawn<'a> {
    pub root: &'a CString,
    pub cwd: &'a CString,
    pub program: &'a CString,
    pub argv: &'a [*const libc::c_char],
    pub envp: &'a [*const libc::c_char],
    pub ruid: u32,
    pub rgid: u32,
    pub euid: u32,
    pub egid: u32,
    /// Descriptors for 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// A pty slave to make the controlling terminal, if any.
    pub ctty: Option<RawFd>,
    /// Where to report an exec failure (errno, 4 bytes); close-on-exec.
    pub report: RawFd,
}

/// Forks and starts the job; returns the child's pid. An exec failure
/// arrives as four errno bytes on `spawn.report`'s pipe.
pub fn spawn(s: &Spawn) -> io::Result<libc::pid_t> {
    // SAFETY: the child runs only async-signal-safe calls on data prepared
    // before the fork, then execs or _exits.
    let pid = cvt(unsafe { libc::fork() }, "fork")?;
    if pid != 0 {
        return Ok(pid);
    }
    // Child.
    // SAFETY: every call below is async-signal-safe and uses pointers into
    // memory prepared before the fork that outlives it.
    unsafe {
        let fail = |step: i32| -> ! {
            let e = *libc::__errno_location();
            let code = (step << 16) | (e & 0xffff);
            let b = code.to_be_bytes();
            libc::write(s.report, b.as_ptr().cast(), 4);
            libc::_exit(127)
        };
        if libc::setsid() < 0 {
            fail(1);
        }
        for (i, &fd) in s.stdio.iter().enumerate() {
            if libc::dup2(fd, i as i32) < 0 {
                fail(2);
            }
        }
        if let Some(t) = s.ctty {
            if libc::ioctl(t, libc::TIOCSCTTY, 0) < 0 {
                fail(3);
            }
        }
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        if libc::chroot(s.root.as_ptr()) < 0 {
            fail(4);
        }
        if libc::chdir(s.cwd.as_ptr()) < 0 && libc::chdir(c"/".as_ptr()) < 0 {
            fail(5);
        }
        // The program must be a regular file reached without a symlink.
        let fd = libc::open(
            s.program.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd < 0 {
            fail(6);
        }
        // O_PATH with O_NOFOLLOW opens a symlink itself: refuse anything
        // but a regular file here, by name, rather than at exec.
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) < 0 {
            fail(6);
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            *libc::__errno_location() = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                libc::ELOOP
            } else {
                libc::EACCES
            };
            fail(6);
        }
        if libc::setgroups(0, std::ptr::null()) < 0
            || libc::setresgid(s.rgid, s.egid, s.egid) < 0
            || libc::setresuid(s.ruid, s.euid, s.euid) < 0
        {
            fail(7);
        }
        libc::execveat(
            fd,
            c"".as_ptr(),
            s.argv.as_ptr().cast::<*mut libc::c_char>(),
            s.envp.as_ptr().cast::<*mut libc::c_char>(),
            libc::AT_EMPTY_PATH,
        );
        fail(8)
    }
}

/// The step names of [`spawn`]'s failure codes.
pub fn spawn_step(code: i32) -> &'static str {
    match code >> 16 {
        1 => "setsid",
        2 => "dup2",
        3 => "TIOCSCTTY",
        4 => "chroot",
        5 => "chdir",
        6 => "open the program (missing, a symlink or not a regular file)",
        7 => "set the user and group ids",
        8 => "exec",
        _ => "start",
    }
}

/// Opens `path` read-write, for a pty slave or a port.
pub fn open_rw(path: &CString, extra: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open with a NUL-terminated path; a fresh descriptor or -1.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | extra) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
