//! The job agent a helper VM starts at boot.
//!
//! It serves one port, whose other end only the host's broker holds, and
//! runs one job at a time: answers the broker's ping, then runs the job
//! that echoes the ping's nonce (a job without a fresh ping is stale and
//! refused), as the ids the job names, chrooted into the helper's root,
//! on a pty when the caller has a terminal and on pipes otherwise. It
//! relays standard input, signals and terminal size changes in, output
//! out, and ends with the exit status. If the broker goes away mid-job,
//! the job is killed: nobody is left to see it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use delegate_proto::{ErrorCode, Exit, Job, Message, AGENT_PORT};

use super::port::{port_path, Port};
use super::sys;

/// Settings of the agent.
pub struct Options {
    pub port: String,
    /// The helper's root as this process sees it (`/` when the share is the
    /// guest's root).
    pub root: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: port_path(AGENT_PORT),
            root: "/".into(),
        }
    }
}

/// Serves jobs forever; returns only when the port cannot be opened.
pub fn serve(opts: &Options) -> Result<(), String> {
    let mut port = Port::open(&opts.port, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    eprintln!("delegate-agent: serving {}", opts.port);
    let mut last_ping: Option<u64> = None;
    loop {
        if !port.host_connected() {
            // The broker is down or restarting: wait, then start clean.
            std::thread::sleep(Duration::from_millis(200));
            last_ping = None;
            continue;
        }
        let m = match port.recv(Duration::from_secs(1)) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(_) => {
                port.drain();
                last_ping = None;
                continue;
            }
        };
        match m {
            Message::Ping(n) => {
                last_ping = Some(n);
                let _ = port.send(&Message::Pong(n));
            }
            Message::Job(job) if Some(job.nonce) == last_ping.take() => {
                run_job(&mut port, opts, &job);
            }
            Message::Job(_) => {
                let _ = port.send(&Message::Error(
                    ErrorCode::Protocol,
                    "a job without a fresh ping is stale; not run".into(),
                ));
            }
            // Input for a job that has ended, or anything else: nothing runs.
            _ => {}
        }
    }
}

fn cstring(b: &[u8]) -> Option<CString> {
    CString::new(b.to_vec()).ok()
}

/// Where the job's streams go.
struct Streams {
    /// Parent's end of stdin (pipe or pty master).
    input: Option<OwnedFd>,
    /// Parent's ends of stdout and stderr (the pty master serves both).
    out: OwnedFd,
    err: Option<OwnedFd>,
    /// Kept for the child: closed in the parent after the fork.
    child: Vec<OwnedFd>,
    stdio: [i32; 3],
    ctty: Option<i32>,
}

fn streams(job: &Job) -> std::io::Result<Streams> {
    if let Some(ws) = job.tty {
        let (master, name) = sys::openpty()?;
        let slave = sys::open_rw(&name, libc::O_NOCTTY)?;
        sys::set_winsize(master.as_raw_fd(), ws.rows, ws.cols)?;
        let s = slave.as_raw_fd();
        let input = master.try_clone()?;
        Ok(Streams {
            input: Some(input),
            out: master,
            err: None,
            stdio: [s, s, s],
            ctty: Some(s),
            child: vec![slave],
        })
    } else {
        let (in_r, in_w) = sys::pipe()?;
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        Ok(Streams {
            input: Some(in_w),
            out: out_r,
            err: Some(err_r),
            stdio: [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            ctty: None,
            child: vec![in_r, out_w, err_w],
        })
    }
}

fn fail(port: &Port, code: ErrorCode, msg: String) {
    eprintln!("delegate-agent: {msg}");
    let _ = port.send(&Message::Error(code, msg));
}

/// Runs one job to its end, relaying.
fn run_job(port: &mut Port, opts: &Options, job: &Job) {
    let (Some(root), Some(cwd), Some(program)) = (
        cstring(opts.root.as_bytes()),
        cstring(&job.cwd),
        cstring(&job.program),
    ) else {
        return fail(
            port,
            ErrorCode::ExecFailed,
            "a path holds a NUL byte".into(),
        );
    };
    let argv: Option<Vec<CString>> = job.argv.iter().map(|a| cstring(a)).collect();
    let env: Option<Vec<CString>> = job.env.iter().map(|a| cstring(a)).collect();
    let (Some(argv), Some(env)) = (argv, env) else {
        return fail(
            port,
            ErrorCode::ExecFailed,
            "an argument holds a NUL byte".into(),
        );
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let mut st = match streams(job) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                port,
                ErrorCode::ExecFailed,
                format!("setting up streams: {e}"),
            )
        }
    };
    let (report_r, report_w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => return fail(port, ErrorCode::ExecFailed, e.to_string()),
    };
    let spawn = sys::Spawn {
        root: &root,
        cwd: &cwd,
        program: &program,
        argv: &argv_p,
        envp: &env_p,
        ruid: job.ruid,
        rgid: job.rgid,
        euid: job.euid,
        egid: job.egid,
        stdio: st.stdio,
        ctty: st.ctty,
        report: report_w.as_raw_fd(),
    };
    let pid = match sys::spawn(&spawn) {
        Ok(p) => p,
        Err(e) => return fail(port, ErrorCode::ExecFailed, e.to_string()),
    };
    st.child.clear();
    drop(report_w);
    // Four bytes on the report pipe: the exec failed; EOF: it ran.
    let mut code = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match sys::read(report_r.as_raw_fd(), &mut code[got..]) {
            Ok(Some(0)) | Err(_) => break,
            Ok(Some(n)) => got += n,
            Ok(None) => {}
        }
    }
    if got == 4 {
        let c = i32::from_be_bytes(code);
        while matches!(sys::try_wait(pid), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let errno = std::io::Error::from_raw_os_error(c & 0xffff);
        return fail(
            port,
            ErrorCode::ExecFailed,
            format!(
                "cannot start {}: {}: {errno}",
                String::from_utf8_lossy(&job.program),
                sys::spawn_step(c)
            ),
        );
    }
    eprintln!(
        "delegate-agent: job: {} uid {}->{} gid {}->{}{} started",
        String::from_utf8_lossy(&job.program),
        job.ruid,
        job.euid,
        job.rgid,
        job.egid,
        if job.tty.is_some() { " on a pty" } else { "" }
    );
    if port.send(&Message::Started).is_err() {
        sys::kill_group(pid, libc::SIGKILL);
    }
    let outcome = relay(port, job, pid, &mut st);
    match outcome {
        Ok(exit) => {
            let _ = port.send(&Message::Exit(exit));
        }
        Err((code, msg)) => fail(port, code, msg),
    }
}

/// Relays between the port and the job until it ended and its output is
/// drained.
fn relay(
    port: &mut Port,
    job: &Job,
    pid: libc::pid_t,
    st: &mut Streams,
) -> Result<Exit, (ErrorCode, String)> {
    let deadline = Instant::now() + Duration::from_secs(job.max_secs.max(1) as u64);
    for fd in [
        Some(st.out.as_raw_fd()),
        st.err.as_ref().map(|e| e.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        let _ = sys::set_nonblocking(fd, true);
    }
    let mut out_open = true;
    let mut err_open = st.err.is_some();
    let mut status: Option<i32> = None;
    let mut timed_out = false;
    let mut buf = vec![0u8; 16384];
    loop {
        // Input from the broker.
        loop {
            match port.next_message() {
                Ok(Some(Message::Stdin(d))) => {
                    if let Some(input) = &st.input {
                        if d.is_empty() {
                            if job.tty.is_some() {
                                // End of input on a terminal: its EOF character.
                                let _ = sys::write_all(input.as_raw_fd(), &[4], 1000);
                            } else {
                                st.input = None;
                            }
                        } else if sys::write_all(input.as_raw_fd(), &d, 5000).is_err() {
                            st.input = None;
                        }
                    }
                }
                Ok(Some(Message::Signal(s))) => {
                    if matches!(
                        s as i32,
                        libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT | libc::SIGKILL
                    ) {
                        sys::kill_group(pid, s as i32);
                    }
                }
                Ok(Some(Message::Winsize(ws))) => {
                    if job.tty.is_some() {
                        let _ = sys::set_winsize(st.out.as_raw_fd(), ws.rows, ws.cols);
                    }
                }
                Ok(Some(Message::Ping(n))) => {
                    let _ = port.send(&Message::Pong(n));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    sys::kill_group(pid, libc::SIGKILL);
                    port.drain();
                    break;
                }
            }
        }
        if status.is_none() {
            if let Ok(Some(s)) = sys::try_wait(pid) {
                status = Some(s);
            }
        }
        if status.is_some() && !out_open && !err_open {
            break;
        }
        if status.is_none() && Instant::now() >= deadline {
            timed_out = true;
            sys::kill_group(pid, libc::SIGKILL);
        }
        let mut fds = vec![(port.fd(), libc::POLLIN)];
        if out_open {
            fds.push((st.out.as_raw_fd(), libc::POLLIN));
        }
        if err_open {
            fds.push((st.err.as_ref().expect("err open").as_raw_fd(), libc::POLLIN));
        }
        // Once the output is closed only the exit is awaited: it follows
        // within moments, so look again soon rather than sleep.
        let wait = if out_open || err_open { 100 } else { 2 };
        let ev = sys::poll(&fds, wait).unwrap_or_else(|_| vec![0; fds.len()]);
        if ev[0] & libc::POLLIN != 0 {
            if !matches!(port.fill(), Ok(true)) {
                // The broker went away: nobody will see the job.
                sys::kill_group(pid, libc::SIGKILL);
            }
        } else if ev[0] & libc::POLLHUP != 0 {
            sys::kill_group(pid, libc::SIGKILL);
        }
        let mut i = 1;
        for (open, is_err) in [(&mut out_open, false), (&mut err_open, true)] {
            if !*open {
                continue;
            }
            if ev[i] != 0 {
                let fd = if is_err {
                    st.err.as_ref().expect("err open").as_raw_fd()
                } else {
                    st.out.as_raw_fd()
                };
                match sys::read(fd, &mut buf) {
                    // A pty master reads EIO once the last slave closed.
                    Ok(Some(0)) | Err(_) => *open = false,
                    Ok(Some(n)) => {
                        let d = buf[..n].to_vec();
                        let m = if is_err {
                            Message::Stderr(d)
                        } else {
                            Message::Stdout(d)
                        };
                        if port.send(&m).is_err() {
                            sys::kill_group(pid, libc::SIGKILL);
                        }
                    }
                    Ok(None) => {}
                }
            }
            i += 1;
        }
    }
    let exit = sys::decode_status(status.expect("reaped"));
    if timed_out {
        return Err((
            ErrorCode::TimedOut,
            format!("killed after its limit of {} s", job.max_secs),
        ));
    }
    Ok(exit)
}
