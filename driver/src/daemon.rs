//! Starting and supervising the daemons under test (fsd and virtiofsd).
//!
//! Both are started with the same flags (fsd is a drop-in), each on its own
//! socket in a private temporary directory. A daemon serves one connection and
//! exits when the driver disconnects, so every test starts a fresh one.
//! Dropping a [`Daemon`] kills it.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Which daemon a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaemonKind {
    /// Our daemon.
    Fsd,
    /// The reference daemon.
    Virtiofsd,
}

impl DaemonKind {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            DaemonKind::Fsd => "fsd",
            DaemonKind::Virtiofsd => "virtiofsd",
        }
    }

    /// Finds the binary: `$FSD_BIN` / `$VIRTIOFSD_BIN` first, then the usual
    /// places. Returns a message that says how to get it otherwise.
    pub fn locate(self) -> std::result::Result<PathBuf, String> {
        match self {
            DaemonKind::Fsd => locate_fsd(),
            DaemonKind::Virtiofsd => locate_virtiofsd(),
        }
    }
}

fn locate_virtiofsd() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VIRTIOFSD_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("VIRTIOFSD_BIN={} does not exist", p.display()))
        };
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/fsd/virtiofsd/bin/virtiofsd"));
    }
    candidates.push(PathBuf::from("/usr/libexec/virtiofsd"));
    candidates.push(PathBuf::from("/usr/lib/qemu/virtiofsd"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "virtiofsd not found: set VIRTIOFSD_BIN or `cargo install virtiofsd --root ~/.cache/fsd/virtiofsd`"
                .to_string()
        })
}

fn locate_fsd() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FSD_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "FSD_BIN={} does not exist: build fsd first with `cargo build -p fsd`",
                p.display()
            ))
        };
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t));
    }
    // Test and bench executables live in <target>/<profile>/deps/.
    if let Ok(exe) = std::env::current_exe() {
        for anc in exe.ancestors().skip(1).take(3) {
            if anc.join("debug").is_dir() || anc.join("release").is_dir() {
                dirs.push(anc.to_path_buf());
            }
        }
    }
    dirs.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target"
    )));
    // Prefer the profile this program was built with, so that a test run
    // never picks up a stale binary of the other profile first.
    let exe = std::env::current_exe().unwrap_or_default();
    let profiles = if exe.components().any(|c| c.as_os_str() == "release") {
        ["release", "debug"]
    } else {
        ["debug", "release"]
    };
    for d in &dirs {
        for profile in profiles {
            let p = d.join(profile).join("fsd");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "fsd binary not found (looked in $FSD_BIN and {}): build fsd first with `cargo build -p fsd`",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// Which daemon.
    pub kind: DaemonKind,
    /// Its executable.
    pub binary: PathBuf,
    /// The directory to share.
    pub shared_dir: PathBuf,
    /// `--cache=` value.
    pub cache: String,
    /// Low file-descriptor limit, passed as `--rlimit-nofile` and applied
    /// with setrlimit before exec.
    pub rlimit_nofile: Option<u64>,
    /// Further flags.
    pub extra_args: Vec<String>,
}

impl DaemonSpec {
    /// The standard flags for `kind` sharing `dir`, or an error message if the
    /// binary is missing.
    pub fn new(kind: DaemonKind, dir: &Path) -> std::result::Result<Self, String> {
        Ok(DaemonSpec {
            kind,
            binary: kind.locate()?,
            shared_dir: dir.to_path_buf(),
            cache: "auto".into(),
            rlimit_nofile: None,
            extra_args: Vec::new(),
        })
    }
}

/// A running daemon.
pub struct Daemon {
    spec: DaemonSpec,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// Starts the daemon and waits (bounded) until its socket exists.
    pub fn spawn(spec: DaemonSpec) -> Result<Self> {
        let err = |reason: String| Error::Daemon {
            binary: spec.binary.clone(),
            reason,
        };
        let dir = tempfile::Builder::new()
            .prefix("fsdrive-")
            .tempdir()
            .map_err(|e| err(format!("tempdir: {e}")))?;
        let socket = dir.path().join("vhost.sock");
        let log = dir.path().join("daemon.log");
        let logf = File::create(&log).map_err(|e| err(format!("log file: {e}")))?;
        let logf2 = logf
            .try_clone()
            .map_err(|e| err(format!("log file: {e}")))?;
        let mut cmd = Command::new(&spec.binary);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", spec.shared_dir.display()))
            .arg("--sandbox=none")
            .arg(format!("--cache={}", spec.cache));
        if let Some(n) = spec.rlimit_nofile {
            cmd.arg(format!("--rlimit-nofile={n}"));
            // SAFETY: setrlimit is async-signal-safe; the closure touches no
            // shared state.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(&spec.extra_args)
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2);
        let child = cmd.spawn().map_err(|e| err(format!("spawn: {e}")))?;
        let mut d = Daemon {
            spec,
            child,
            socket,
            log,
            _dir: dir,
            exited: None,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !d.socket.exists() {
            if let Some(st) = d.status() {
                return Err(Error::Daemon {
                    binary: d.spec.binary.clone(),
                    reason: format!("exited before listening ({st}); log:\n{}", d.log_tail()),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Daemon {
                    binary: d.spec.binary.clone(),
                    reason: format!("no socket after 15 s; log:\n{}", d.log_tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// Which daemon this is.
    pub fn kind(&self) -> DaemonKind {
        self.spec.kind
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if the daemon has exited, without blocking.
    pub fn status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the daemon died of a signal (a crash, an abort, a seccomp kill).
    pub fn crashed(&mut self) -> Option<i32> {
        self.status().and_then(|s| s.signal())
    }

    /// The last lines the daemon logged.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Number of open file descriptors of the daemon (from /proc).
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .ok()
            .map(|d| d.count())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
