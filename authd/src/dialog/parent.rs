//! The daemon's side of a dialog: start the child, hand it the request, wait
//! for its answer with a deadline, and kill it if it overstays. Any failure
//! here is reported as an error, which the caller turns into a denial.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zeroize::Zeroize;

use super::{ChildMessage, DialogRequest};
use crate::error::{Error, Result};
use crate::prompt::Answer;

/// Kills and reaps the child when dropped, so no dialog outlives its request.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The display session the dialog is shown in. The child gets only the
/// variables of one, so winit cannot pick the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Session {
    X11 {
        display: String,
        xauthority: Option<PathBuf>,
    },
    Wayland {
        /// `WAYLAND_DISPLAY`: a socket name in the runtime directory, or a path.
        socket: String,
        runtime_dir: Option<PathBuf>,
        /// sway's IPC socket, to find the VM's window ([`super::anchor::sway`]).
        sway_socket: Option<PathBuf>,
    },
}

/// Shows the dialog in `session` and waits for the person's answer.
/// `on_shown` is called once when the window first appears.
pub fn ask(
    program: &Path,
    session: &Session,
    request: &DialogRequest,
    on_shown: &mut dyn FnMut(),
) -> Result<Answer> {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for var in ["RUST_LOG", "HOME", "PATH"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    match session {
        Session::X11 {
            display,
            xauthority,
        } => {
            cmd.env("DISPLAY", display);
            if let Some(x) = xauthority
                .clone()
                .or_else(|| std::env::var_os("XAUTHORITY").map(PathBuf::from))
            {
                cmd.env("XAUTHORITY", x);
            }
        }
        Session::Wayland {
            socket,
            runtime_dir,
            sway_socket,
        } => {
            cmd.env("WAYLAND_DISPLAY", socket);
            if let Some(dir) = runtime_dir {
                cmd.env("XDG_RUNTIME_DIR", dir);
            }
            if let Some(sock) = sway_socket {
                cmd.env("SWAYSOCK", sock);
            }
        }
    }
    // SAFETY: only async-signal-safe calls (sigprocmask, prctl) run between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The daemon blocks SIGTERM/SIGINT for its signal thread; the
            // dialog must not inherit that.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // If the daemon thread waiting for this dialog dies, so does the dialog.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", program.display()), e))?;
    let mut child = Reaper(child);

    let mut line = serde_json::to_vec(request).map_err(|e| Error::Dialog(e.to_string()))?;
    line.push(b'\n');
    let mut stdin = child
        .0
        .stdin
        .take()
        .ok_or_else(|| Error::Dialog("no stdin".into()))?;
    stdin
        .write_all(&line)
        .map_err(|e| Error::io("writing dialog request", e))?;
    // Keep stdin open: the child treats EOF as "the daemon is gone" and denies.
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| Error::Dialog("no stdout".into()))?;

    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("dialog-reader".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut buf = String::new();
                let n = reader.read_line(&mut buf).unwrap_or(0);
                if n == 0 || buf.len() > 16 * 1024 {
                    let _ = tx.send(None);
                    buf.zeroize();
                    return;
                }
                let msg = serde_json::from_str::<ChildMessage>(buf.trim_end()).ok();
                buf.zeroize();
                let last = !matches!(msg, Some(ChildMessage::Shown));
                if tx.send(msg).is_err() || last {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("spawning dialog reader", e))?;

    // The child enforces the timeout itself; this is the backstop.
    let deadline =
        Instant::now() + Duration::from_secs(request.timeout_secs) + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(ChildMessage::Shown)) => on_shown(),
            Ok(Some(ChildMessage::Password { password })) => {
                drop(stdin);
                return Ok(Answer::Password(zeroize::Zeroizing::new(password)));
            }
            Ok(Some(ChildMessage::Allowed { always })) => return Ok(Answer::Allowed { always }),
            Ok(Some(ChildMessage::Cancelled)) => return Ok(Answer::Cancelled),
            Ok(Some(ChildMessage::TimedOut)) => return Ok(Answer::TimedOut),
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(Answer::TimedOut),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait().ok();
                return Err(Error::Dialog(format!(
                    "dialog ended without an answer ({status:?})"
                )));
            }
        }
    }
}
