//! Starting the daemons under test: a vhost-user-fs daemon (fsd or the
//! reference virtiofsd) for a guest or for the host-side driver, and the
//! monitor's daemon. (authd, which needs an enrolled store and a display,
//! has its own launcher in [`crate::authd`].)
//!
//! Two ways to hand over the socket, both used in production:
//! - the daemon creates and listens on `--socket-path` ([`Daemon::spawn_on_path`]);
//! - the caller creates the listening socket and passes the fd, as libvirt
//!   does with `--fd=N` ([`Daemon::spawn_on_listener`]).
//!
//! The daemon's stdout and stderr go to a log file, read back in error
//! messages and by tests. The process is killed when the handle is dropped.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::paths;

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// Program to run.
    pub program: PathBuf,
    /// Its arguments (including the socket flag when it uses one).
    pub args: Vec<OsString>,
    /// Log file for its stdout and stderr.
    pub log: PathBuf,
    /// Extra environment, e.g. `RUST_LOG`.
    pub env: Vec<(OsString, OsString)>,
    /// How long it may take to create its socket.
    pub ready_timeout: Duration,
    /// A file-descriptor limit applied with setrlimit before exec (the
    /// daemon's own `--rlimit-nofile`, if wanted, goes in `args`).
    pub rlimit_nofile: Option<u64>,
}

/// How fsd confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// As deployed: its default mount namespace with pivot_root, and seccomp.
    /// Needs root; without it fsd runs with `--sandbox=none` (said on stdout).
    Namespace,
    /// `--sandbox=none`, as virtiofsd is started for side-by-side runs.
    None,
}

impl DaemonSpec {
    /// `program args…` logging to `log`.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>, log: impl Into<PathBuf>) -> Self {
        DaemonSpec {
            program: program.into(),
            args,
            log: log.into(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            rlimit_nofile: None,
        }
    }

    /// fsd (`program`: a test's `CARGO_BIN_EXE_fsd`, or [`paths::fsd`])
    /// serving `share` on `socket` with `--cache=auto`, confined as
    /// `sandbox`, plus `extra` flags; logs at `RUST_LOG=info`.
    pub fn fsd<S: AsRef<std::ffi::OsStr>>(
        program: impl Into<PathBuf>,
        socket: &Path,
        share: &Path,
        sandbox: Sandbox,
        extra: &[S],
        log: impl Into<PathBuf>,
    ) -> Self {
        let mut args: Vec<OsString> = vec![
            flag("--socket-path=", socket),
            flag("--shared-dir=", share),
            "--cache=auto".into(),
        ];
        match sandbox {
            Sandbox::Namespace if crate::prereq::is_root() => {}
            Sandbox::Namespace => {
                println!("note: not root, fsd runs with --sandbox=none");
                args.push("--sandbox=none".into());
            }
            Sandbox::None => args.push("--sandbox=none".into()),
        }
        args.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
        let log = log.into();
        // With a policy, labels go to a database of this daemon's own
        // (beside its log) unless the test names one: the default one is
        // shared by every fsd serving a VM of the same name.
        let has = |flag: &str| args.iter().any(|a| a.to_string_lossy().starts_with(flag));
        if has("--policy") && !has("--label-db") {
            args.push(flag("--label-db=", &log.with_extension("labels.db")));
        }
        Self::new(program, args, log).rust_log("info")
    }

    /// `monitor daemon` on `socket`, with its configuration file (the VMs it
    /// may attach to) and kernel-profile cache; logs at `RUST_LOG=info`.
    pub fn monitor(
        program: impl Into<PathBuf>,
        config: &Path,
        profile_cache: &Path,
        socket: &Path,
        log: impl Into<PathBuf>,
    ) -> Self {
        let args = vec![
            flag("--config=", config),
            flag("--profile-cache=", profile_cache),
            "daemon".into(),
            flag("--socket=", socket),
        ];
        Self::new(program, args, log).rust_log("info")
    }

    /// Sets `RUST_LOG` for the daemon.
    pub fn rust_log(mut self, level: &str) -> Self {
        self.env.push(("RUST_LOG".into(), level.into()));
        self
    }

    /// A daemon speaking virtiofsd's command line (virtiofsd itself or fsd):
    /// `--socket-path=S --shared-dir=D --cache=C --sandbox=none`, plus `extra`.
    pub fn virtiofsd_style(
        program: impl Into<PathBuf>,
        socket: &Path,
        shared_dir: &Path,
        cache: &str,
        extra: &[&str],
        log: impl Into<PathBuf>,
    ) -> Self {
        let mut args: Vec<OsString> = vec![
            flag("--socket-path=", socket),
            flag("--shared-dir=", shared_dir),
            format!("--cache={cache}").into(),
            "--sandbox=none".into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        Self::new(program, args, log)
    }

    /// The reference virtiofsd from the cache (see [`paths::virtiofsd`]).
    pub fn virtiofsd(
        socket: &Path,
        shared_dir: &Path,
        cache: &str,
        log: impl Into<PathBuf>,
    ) -> Self {
        Self::virtiofsd_style(paths::virtiofsd(), socket, shared_dir, cache, &[], log)
    }
}

fn flag(name: &str, path: &Path) -> OsString {
    let mut s = OsString::from(name);
    s.push(path.as_os_str());
    s
}

/// A running daemon; killed on drop.
pub struct Daemon {
    child: Child,
    program: String,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// Starts the daemon and waits until `socket` exists. A file left at
    /// `socket` by an earlier run is removed first, so that its presence
    /// really means the new daemon is listening.
    pub fn spawn_on_path(spec: &DaemonSpec, socket: &Path) -> Result<Daemon> {
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io {
                    path: socket.to_path_buf(),
                    source: e,
                })
            }
            _ => {}
        }
        let mut d = Self::spawn(spec, None)?;
        let deadline = Instant::now() + spec.ready_timeout;
        loop {
            if let Some(status) = d.status() {
                return Err(Error::DaemonExited {
                    program: d.program.clone(),
                    status: status.to_string(),
                    log: d.log_text(),
                });
            }
            if listens(socket) {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                return Err(Error::DaemonTimeout {
                    program: d.program.clone(),
                    socket: socket.to_path_buf(),
                    secs: spec.ready_timeout.as_secs(),
                    log: d.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon with `listener` inherited as file descriptor `fd`
    /// (close-on-exec cleared), as libvirt does; the spec's args should
    /// contain `--fd=<fd>`. The socket is ready before the daemon runs.
    pub fn spawn_on_listener(
        spec: &DaemonSpec,
        listener: UnixListener,
        fd: RawFd,
    ) -> Result<Daemon> {
        let d = Self::spawn(spec, Some((listener.as_raw_fd(), fd)))?;
        // The child holds its own copy now.
        drop(listener);
        Ok(d)
    }

    fn spawn(spec: &DaemonSpec, inherit: Option<(RawFd, RawFd)>) -> Result<Daemon> {
        let log = std::fs::File::create(&spec.log).map_err(Error::io(&spec.log))?;
        let log2 = log.try_clone().map_err(Error::io(&spec.log))?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let rlimit = spec.rlimit_nofile;
        if inherit.is_some() || rlimit.is_some() {
            // SAFETY: only async-signal-safe calls (dup2, fcntl, setrlimit)
            // between fork and exec, on descriptors this process owns.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some((from, to)) = inherit {
                        inherit_fd(from, to)?;
                    }
                    if let Some(n) = rlimit {
                        let lim = libc::rlimit {
                            rlim_cur: n,
                            rlim_max: n,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: spec.program.display().to_string(),
            source,
        })?;
        Ok(Daemon {
            child,
            program: spec.program.display().to_string(),
            log: spec.log.clone(),
            exited: None,
        })
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.status().is_none()
    }

    /// The exit status once the daemon has exited, without blocking.
    pub fn status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The signal that ended the daemon, if one did (a crash, an abort, a
    /// seccomp kill).
    pub fn crashed(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status().and_then(|s| s.signal())
    }

    /// Waits up to `timeout` for the daemon to exit by itself (a vhost-user
    /// daemon exits when its frontend disconnects); returns the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        crate::process::wait_for(timeout, || {
            status = self.status();
            status.is_some()
        });
        status
    }

    /// Number of descriptors the daemon has open (from /proc).
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .ok()
            .map(|d| d.count())
    }

    /// Everything the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// Makes `from` available as `to` in the child, without close-on-exec.
///
/// # Safety
/// Called between fork and exec: only async-signal-safe calls.
unsafe fn inherit_fd(from: RawFd, to: RawFd) -> std::io::Result<()> {
    if from == to {
        let flags = libc::fcntl(to, libc::F_GETFD);
        if flags < 0 || libc::fcntl(to, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    } else if libc::dup2(from, to) < 0 {
        // dup2 leaves the new descriptor without FD_CLOEXEC.
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a UNIX socket at `socket` takes connections: its file exists
/// and it is past `listen` (see [`bound_but_not_listening`]).
pub fn listens(socket: &Path) -> bool {
    socket.exists() && !bound_but_not_listening(socket)
}

/// A socket file appears at `bind`, before the daemon's `listen`; a client
/// connecting in between is refused. Asks the kernel's table of UNIX
/// sockets (`/proc/net/unix`, this network namespace) rather than
/// connecting: a vhost-user daemon takes the first connection as its
/// front-end. A socket the table does not show (bound in another network
/// namespace) counts as listening once its file exists.
fn bound_but_not_listening(socket: &Path) -> bool {
    /// `__SO_ACCEPTCON`: the socket listens.
    const ACCEPTING: u32 = 1 << 16;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = socket.as_os_str().to_string_lossy();
    let mut seen = false;
    for line in table.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[7] != want {
            continue;
        }
        seen = true;
        if u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & ACCEPTING != 0) {
            return false;
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_exit_is_reported_with_log() {
        let dir = tempfile::tempdir().unwrap();
        let spec = DaemonSpec::new(
            "/bin/sh",
            vec!["-c".into(), "echo boom >&2; exit 3".into()],
            dir.path().join("log"),
        );
        let err = Daemon::spawn_on_path(&spec, &dir.path().join("never.sock"))
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains('3'), "{msg}");
    }

    #[test]
    fn listener_is_inherited_at_the_requested_fd() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        // The child shows that its fd 5 is a socket (without CLOEXEC cleared
        // it would not exist in the child at all).
        let spec = DaemonSpec::new(
            "/bin/sh",
            vec!["-c".into(), "ls -l /proc/self/fd/5 >&2".into()],
            dir.path().join("log"),
        );
        let mut d = Daemon::spawn_on_listener(&spec, listener, 5).unwrap();
        assert!(d.wait_exit(Duration::from_secs(10)).is_some());
        assert!(d.log_text().contains("socket:"), "{}", d.log_text());
    }

    #[test]
    fn descriptor_limit_is_applied_before_exec() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let mut spec = DaemonSpec::new(
            "/bin/sh",
            vec!["-c".into(), "ulimit -n; exit 4".into()],
            dir.path().join("log"),
        );
        spec.rlimit_nofile = Some(321);
        let err = Daemon::spawn_on_path(&spec, &sock).err().unwrap();
        assert!(err.to_string().contains("321"), "{err}");
    }

    #[test]
    fn a_socket_is_ready_at_listen_not_at_bind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            None,
        )
        .unwrap();
        let addr = rustix::net::SocketAddrUnix::new(&path).unwrap();
        rustix::net::bind(&sock, &addr).unwrap();
        assert!(bound_but_not_listening(&path));
        rustix::net::listen(&sock, 1).unwrap();
        assert!(!bound_but_not_listening(&path));
        assert!(!bound_but_not_listening(&dir.path().join("never")));
    }
}
