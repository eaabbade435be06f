//! The system calls the taint hooks watch, made on purpose from inside a
//! guest: a probe whose pids, exit code and sockets a test can compare with
//! what the host-side hooks reported, and a cost loop that times the same
//! calls so the added cost of a hook can be measured inside the guest.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// `exit` code of the probe's child, recognisable in a `do_exit` event
/// (`7 << 8`).
pub const CHILD_EXIT_CODE: i32 = 7;

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// `socketpair(AF_UNIX, kind)`.
fn socketpair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array we own.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(last_error("socketpair"));
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn sendto(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for its length; no destination address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            std::ptr::null(),
            0,
        )
    };
    if n < 0 {
        return Err(last_error("sendto"));
    }
    Ok(n as usize)
}

fn recvfrom(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; no source address wanted.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(last_error("recvfrom"));
    }
    Ok(n as usize)
}

/// Forks a child that runs `child` and `_exit`s with its result; returns
/// the child's pid and wait status.
fn fork_wait(child: impl FnOnce() -> i32) -> io::Result<(i32, i32)> {
    // SAFETY: the child only runs `child` (writes and exits) and never
    // returns into the parent's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_error("fork"));
    }
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(last_error("waitpid"));
    }
    Ok((pid, status))
}

/// The probe: one line per fact, for a test to match against hook events.
///
/// ```text
/// PROBE pid=P
/// CHILD pid=C ppid=P            (printed by the child)
/// CHILD_EXIT pid=C status=0x700
/// UNIX sent=10 received=10      (socketpair, SOCK_DGRAM, sendto/recvfrom)
/// TCP local=127.0.0.1:L remote=127.0.0.1:R sent=9 received=9
/// ```
/// The TCP line names the connecting socket's own address (`local`) and the
/// listener's (`remote`); the loopback interface must be up.
pub fn probe(out: &mut impl Write) -> io::Result<()> {
    let me = std::process::id();
    writeln!(out, "PROBE pid={me}")?;
    out.flush()?;
    let (child, status) = fork_wait(|| {
        let mut o = io::stdout();
        // SAFETY: getpid/getppid have no preconditions.
        let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
        let _ = writeln!(o, "CHILD pid={pid} ppid={ppid}");
        let _ = o.flush();
        CHILD_EXIT_CODE
    })?;
    writeln!(out, "CHILD_EXIT pid={child} status={status:#x}")?;

    let (a, b) = socketpair(libc::SOCK_DGRAM)?;
    let sent = sendto(&a, b"unix-probe")?;
    let mut buf = [0u8; 64];
    let received = recvfrom(&b, &mut buf)?;
    writeln!(out, "UNIX sent={sent} received={received}")?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.write_all(b"tcp-probe")?;
    let mut got = [0u8; 9];
    server.read_exact(&mut got)?;
    writeln!(
        out,
        "TCP local={} remote={} sent=9 received={}",
        client.local_addr()?,
        client.peer_addr()?,
        got.len()
    )?;
    out.flush()
}

/// A UNIX stream server for one client, as a taint test needs one: binds
/// `path`, says so, accepts one connection and reads it to its end (so the
/// last read comes after the data arrived), then prints what it got.
///
/// ```text
/// USERVE listening pid=P
/// USERVE got=N
/// ```
pub fn unix_serve(path: &str, out: &mut impl Write) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)?;
    writeln!(out, "USERVE listening pid={}", std::process::id())?;
    out.flush()?;
    let (mut c, _) = l.accept()?;
    let mut got = Vec::new();
    c.read_to_end(&mut got)?;
    writeln!(out, "USERVE got={}", got.len())?;
    out.flush()
}

/// Connects to the UNIX stream socket at `path` and writes `text` (with a
/// newline) with `write`, the way most programs send.
///
/// ```text
/// USEND pid=P sent=N
/// ```
pub fn unix_send(path: &str, text: &str, out: &mut impl Write) -> io::Result<()> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    let line = format!("{text}\n");
    s.write_all(line.as_bytes())?;
    writeln!(out, "USEND pid={} sent={}", std::process::id(), line.len())?;
    out.flush()
}

/// Buffers no kernel can read: an unmapped kernel-half address and a user
/// address in the first page. A hostile guest can hand such values to any
/// system call; a hook on a function that takes the buffer must report a
/// failed read and let the call go on (to fail with EFAULT).
pub const GARBAGE_BUFFERS: [u64; 2] = [0xffff_dead_beef_0000, 0x10];

/// `sendto` on a UNIX datagram socket with each of [`GARBAGE_BUFFERS`]:
///
/// ```text
/// GARBAGE buf=0xffffdeadbeef0000 result=-1 errno=14
/// ```
pub fn garbage(out: &mut impl Write) -> io::Result<()> {
    let (a, _b) = socketpair(libc::SOCK_DGRAM)?;
    for buf in GARBAGE_BUFFERS {
        // SAFETY: the kernel checks the buffer and refuses it (EFAULT);
        // this process never touches it.
        let n = unsafe {
            libc::sendto(
                a.as_raw_fd(),
                buf as usize as *const libc::c_void,
                10,
                0,
                std::ptr::null(),
                0,
            )
        };
        let errno = if n < 0 {
            io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        };
        writeln!(out, "GARBAGE buf={buf:#x} result={n} errno={errno}")?;
    }
    out.flush()
}

/// One timed operation of [`cost`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub op: &'static str,
    pub iterations: u64,
    pub ns_per_op: f64,
}

/// Socket operations are timed in batches of this many (sends fill the
/// stream's buffer, receives drain it; the other half is not timed).
const BATCH: u64 = 64;
const MSG: usize = 64;

/// Times `n` getpid, read (1 byte of /dev/zero), write (1 byte to
/// /dev/null), sendto and recvfrom (64 bytes on a UNIX stream socketpair)
/// and `n_fork` fork + child `_exit` + waitpid.
pub fn cost(n: u64, n_fork: u64) -> io::Result<Vec<Cost>> {
    let mut out = Vec::new();
    let mut push = |op, iterations, ns: u128| {
        out.push(Cost {
            op,
            iterations,
            ns_per_op: ns as f64 / iterations.max(1) as f64,
        })
    };

    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: a raw getpid (libc may cache the pid; this always enters
        // the kernel).
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    push("getpid", n, t.elapsed().as_nanos());

    let zero = std::fs::File::open("/dev/zero")?;
    let mut byte = [0u8; 1];
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: reads one byte into a buffer we own.
        if unsafe { libc::read(zero.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } != 1 {
            return Err(last_error("read /dev/zero"));
        }
    }
    push("read", n, t.elapsed().as_nanos());

    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: writes one byte from a buffer we own.
        if unsafe { libc::write(null.as_raw_fd(), byte.as_ptr().cast(), 1) } != 1 {
            return Err(last_error("write /dev/null"));
        }
    }
    push("write", n, t.elapsed().as_nanos());

    let t = Instant::now();
    for _ in 0..n_fork {
        fork_wait(|| 0)?;
    }
    push("fork", n_fork, t.elapsed().as_nanos());

    let (a, b) = socketpair(libc::SOCK_STREAM)?;
    let msg = [0x5au8; MSG];
    let mut buf = [0u8; MSG];
    let batches = n.div_ceil(BATCH);
    let (mut send_ns, mut recv_ns) = (0u128, 0u128);
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..BATCH {
            sendto(&a, &msg)?;
        }
        send_ns += t.elapsed().as_nanos();
        for _ in 0..BATCH {
            recvfrom(&b, &mut buf)?;
        }
        for _ in 0..BATCH {
            sendto(&a, &msg)?;
        }
        let t = Instant::now();
        for _ in 0..BATCH {
            if recvfrom(&b, &mut buf)? != MSG {
                return Err(io::Error::other("short recvfrom"));
            }
        }
        recv_ns += t.elapsed().as_nanos();
    }
    push("sendto", batches * BATCH, send_ns);
    push("recvfrom", batches * BATCH, recv_ns);
    Ok(out)
}
