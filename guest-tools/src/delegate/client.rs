//! The client a user VM runs in place of a delegated program.
//!
//! fsd shows the user VM this binary under the program's name, so running
//! `passwd` runs this. It names the program by its path in the share (what
//! the kernel says it executed, less the virtio-fs mount point), sends the
//! request with the arguments, the environment, the working directory and
//! the terminal's size, and then relays: its standard input (or terminal,
//! in raw mode) to the host, the program's output back, signals it gets
//! (and terminal size changes) to the job, and finally exits with the
//! program's status. Nothing here is trusted by the host.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use delegate_proto::message::MAX_ENV;
use delegate_proto::MAX_PAYLOAD;
use delegate_proto::{ErrorCode, Exit, Message, Request, Winsize, CLIENT_PORT, VERSION};

use super::port::{port_path, Port};
use super::sys;

/// Exit status when the program could not be run at all (as a shell
/// reports a command it found but could not execute).
pub const STATUS_REFUSED: i32 = 126;

/// How long the client waits for the channel when another delegation of
/// this VM holds it.
const BUSY_WAIT: Duration = Duration::from_secs(30);
/// How long it waits for the broker to be connected (a restart takes
/// QEMU's reconnect interval).
const HOST_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the broker's answer to a request: the person may be
/// typing a password.
const ANSWER_WAIT: Duration = Duration::from_secs(330);

/// Settings of one run.
pub struct Options {
    /// The port's device path.
    pub port: String,
    /// The program, as a path in the share; `None`: from `/proc/self/exe`.
    pub program: Option<String>,
    /// Print the time from request to exit on stderr (for the benchmark).
    pub timing: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: port_path(CLIENT_PORT),
            program: None,
            timing: false,
        }
    }
}

/// Mount points of virtio-fs in this guest, longest first.
fn virtiofs_mounts() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mnt = left.split(' ').nth(4)?;
            (fstype == "virtiofs").then(|| mnt.to_string())
        })
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

/// `path` (absolute, in the guest) relative to the virtio-fs mount it is
/// under; `None` when it is under none.
pub fn share_relative(path: &str, mounts: &[String]) -> Option<String> {
    for m in mounts {
        let rest = if m == "/" {
            path.strip_prefix('/')
        } else {
            path.strip_prefix(m.as_str())
                .and_then(|r| r.strip_prefix('/'))
        };
        if let Some(r) = rest {
            return Some(r.to_string());
        }
        if path == m {
            return Some(String::new());
        }
    }
    None
}

/// Runs the delegated program; returns the exit status for the process.
pub fn run(opts: &Options, args: Vec<Vec<u8>>) -> i32 {
    let mounts = virtiofs_mounts();
    let program = match &opts.program {
        Some(p) => p.clone(),
        None => {
            let exe = std::fs::read_link("/proc/self/exe")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            match share_relative(&exe, &mounts) {
                Some(p) => p,
                None => {
                    eprintln!("delegate: {exe} is not on a share served by the host");
                    return STATUS_REFUSED;
                }
            }
        }
    };
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| share_relative(&d.to_string_lossy(), &mounts))
        .unwrap_or_default();
    let tty = sys::isatty(0);
    let winsize = if tty {
        // A serial line reports 0x0: use the classic size then.
        sys::winsize(0)
            .filter(|&(r, c)| r > 0 && c > 0)
            .map(|(rows, cols)| Winsize { rows, cols })
    } else {
        None
    };
    let env: Vec<Vec<u8>> = std::env::vars_os()
        .take(MAX_ENV)
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            e
        })
        .filter(|e| e.len() <= delegate_proto::message::MAX_STRING)
        // The request must fit in one frame with the arguments: the
        // environment gets at most a quarter of it (the host keeps only the
        // few variables the policy lists anyway).
        .scan(0usize, |total, e| {
            *total += e.len() + 4;
            Some((*total <= MAX_PAYLOAD / 4).then_some(e))
        })
        .flatten()
        .collect();
    let req = Request {
        version: VERSION,
        program: program.clone().into_bytes(),
        args,
        env,
        cwd: cwd.into_bytes(),
        tty: if tty {
            Some(winsize.unwrap_or(Winsize { rows: 24, cols: 80 }))
        } else {
            None
        },
    };
    match session(opts, &req) {
        Ok((exit, elapsed)) => {
            if opts.timing {
                eprintln!("delegate-timing-us: {}", elapsed.as_micros());
            }
            exit.shell_status()
        }
        Err(msg) => {
            eprintln!("delegate: {program}: {msg}");
            STATUS_REFUSED
        }
    }
}

fn error_text(code: ErrorCode, msg: &str) -> String {
    format!("{msg} ({})", code.name())
}

/// One delegation over the port: request, relay, exit.
fn session(opts: &Options, req: &Request) -> Result<(Exit, Duration), String> {
    // Signals are caught from the start: one that arrives while the host
    // decides is kept in the pipe and forwarded once the program runs, so
    // it ends the program rather than only this client.
    let signals = sys::catch_signals(&[
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGWINCH,
    ])
    .map_err(|e| e.to_string())?;
    let mut port = Port::open(&opts.port, BUSY_WAIT).map_err(|e| e.to_string())?;
    port.wait_host(HOST_WAIT).map_err(|e| e.to_string())?;
    port.drain();
    let t0 = Instant::now();
    port.send(&Message::Request(req.clone()))
        .map_err(|e| format!("sending the request: {e}"))?;
    // The answer: started, or why not.
    match port.recv(ANSWER_WAIT) {
        Ok(Some(Message::Started)) => {}
        Ok(Some(Message::Error(code, msg))) => return Err(error_text(code, &msg)),
        Ok(Some(other)) => return Err(format!("unexpected answer from the host: {other:?}")),
        Ok(None) => return Err("no answer from the host".into()),
        Err(e) => return Err(format!("the host's delegation broker went away ({e})")),
    }
    let raw = match req.tty {
        Some(_) => Some(sys::RawTerminal::enter(0).map_err(|e| e.to_string())?),
        None => None,
    };
    let r = relay(&mut port, req.tty.is_some(), &signals);
    drop(raw);
    r.map(|exit| (exit, t0.elapsed()))
}

/// Relays until the program's exit arrives.
fn relay(port: &mut Port, tty: bool, signals: &std::os::fd::OwnedFd) -> Result<Exit, String> {
    use std::os::fd::AsRawFd;
    let sigfd = signals.as_raw_fd();
    // Standard input stays blocking: its open file is shared with the
    // calling shell, which must not find it non-blocking if this process
    // is killed. It is read only after poll reported it readable.
    let mut stdin_open = true;
    let mut buf = vec![0u8; 16384];
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        // Everything already decoded first.
        match port.next_message() {
            Ok(Some(Message::Stdout(d))) => {
                let _ = out.write_all(&d).and_then(|_| out.flush());
                continue;
            }
            Ok(Some(Message::Stderr(d))) => {
                let _ = err.write_all(&d).and_then(|_| err.flush());
                continue;
            }
            Ok(Some(Message::Exit(e))) => break Ok(e),
            Ok(Some(Message::Error(code, msg))) => break Err(error_text(code, &msg)),
            Ok(Some(other)) => break Err(format!("unexpected frame from the host: {other:?}")),
            Ok(None) => {}
            Err(e) => break Err(format!("bad frame from the host: {e}")),
        }
        let mut fds = vec![(port.fd(), libc::POLLIN), (sigfd, libc::POLLIN)];
        if stdin_open {
            fds.push((0, libc::POLLIN));
        }
        let ev = match sys::poll(&fds, 1000) {
            Ok(ev) => ev,
            Err(e) => break Err(e.to_string()),
        };
        if ev[0] & libc::POLLIN != 0 {
            match port.fill() {
                Ok(true) => {}
                Ok(false) => break Err("the host's delegation broker went away".into()),
                Err(e) => break Err(e.to_string()),
            }
        } else if ev[0] & libc::POLLHUP != 0 {
            break Err("the host's delegation broker went away".into());
        }
        if ev[1] & libc::POLLIN != 0 {
            let mut s = [0u8; 16];
            if let Ok(Some(n)) = sys::read(sigfd, &mut s) {
                for &sig in &s[..n] {
                    let m = if sig as i32 == libc::SIGWINCH {
                        match sys::winsize(0) {
                            Some((rows, cols)) if tty => Message::Winsize(Winsize { rows, cols }),
                            _ => continue,
                        }
                    } else {
                        Message::Signal(sig)
                    };
                    if let Err(e) = port.send(&m) {
                        return Err(e.to_string());
                    }
                }
            }
        }
        if stdin_open
            && ev
                .get(2)
                .is_some_and(|e| *e & (libc::POLLIN | libc::POLLHUP) != 0)
        {
            match sys::read(0, &mut buf) {
                Ok(Some(0)) | Err(_) => {
                    stdin_open = false;
                    let _ = port.send(&Message::Stdin(Vec::new()));
                }
                Ok(Some(n)) => {
                    if let Err(e) = port.send(&Message::Stdin(buf[..n].to_vec())) {
                        break Err(e.to_string());
                    }
                }
                Ok(None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_relative_to_the_share() {
        let m = vec!["/mnt".to_string(), "/".to_string()];
        assert_eq!(
            share_relative("/mnt/usr/bin/passwd", &m).as_deref(),
            Some("usr/bin/passwd")
        );
        assert_eq!(share_relative("/mntx/a", &m).as_deref(), Some("mntx/a"));
        assert_eq!(share_relative("/mnt", &m).as_deref(), Some(""));
        assert_eq!(share_relative("/x", &["/mnt".to_string()]), None);
    }
}
