//! Starting and supervising the daemons under test (fsd and virtiofsd).
//!
//! Both are started with the same flags (fsd is a drop-in), each on its own
//! socket in a private temporary directory. A daemon serves one connection and
//! exits when the driver disconnects, so every test starts a fresh one.
//! Dropping a [`Daemon`] kills it. Finding the binaries and starting the
//! process are testrig's ([`testrig::paths`], [`testrig::Daemon`]), shared
//! with the real-guest tests.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long a daemon may take to create its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

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

    /// Finds the binary ([`testrig::paths::fsd`], [`testrig::paths::virtiofsd`]).
    /// Returns a message that says how to get it otherwise.
    pub fn locate(self) -> std::result::Result<PathBuf, String> {
        match self {
            DaemonKind::Fsd => testrig::paths::fsd(),
            DaemonKind::Virtiofsd => {
                let p = testrig::paths::virtiofsd();
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(format!(
                        "virtiofsd not found at {} (set FSD_VIRTIOFSD, or run scripts/install-deps.sh)",
                        p.display()
                    ))
                }
            }
        }
    }
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
    /// With `--policy` and no `--label-db`, fsd keeps labels in its default
    /// database (shared by every fsd of the same VM name) only when this is
    /// set; otherwise the daemon gets a private one beside its log.
    pub default_label_db: bool,
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
            default_label_db: false,
        })
    }
}

/// A running daemon.
pub struct Daemon {
    kind: DaemonKind,
    process: testrig::Daemon,
    socket: PathBuf,
    _dir: tempfile::TempDir,
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
        let mut extra = spec.extra_args.clone();
        if let Some(n) = spec.rlimit_nofile {
            extra.insert(0, format!("--rlimit-nofile={n}"));
        }
        let has = |flag: &str| extra.iter().any(|a| a.starts_with(flag));
        if spec.kind == DaemonKind::Fsd
            && has("--policy")
            && !has("--label-db")
            && !spec.default_label_db
        {
            extra.push(format!(
                "--label-db={}",
                dir.path().join("labels.db").display()
            ));
        }
        let mut launch = testrig::DaemonSpec::virtiofsd_style(
            &spec.binary,
            &socket,
            &spec.shared_dir,
            &spec.cache,
            &extra.iter().map(String::as_str).collect::<Vec<_>>(),
            dir.path().join("daemon.log"),
        );
        launch.rlimit_nofile = spec.rlimit_nofile;
        launch.ready_timeout = READY_TIMEOUT;
        let process =
            testrig::Daemon::spawn_on_path(&launch, &socket).map_err(|e| err(e.to_string()))?;
        Ok(Daemon {
            kind: spec.kind,
            process,
            socket,
            _dir: dir,
        })
    }

    /// Which daemon this is.
    pub fn kind(&self) -> DaemonKind {
        self.kind
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Exit status if the daemon has exited, without blocking.
    pub fn status(&mut self) -> Option<ExitStatus> {
        self.process.status()
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Whether the daemon died of a signal (a crash, an abort, a seccomp kill).
    pub fn crashed(&mut self) -> Option<i32> {
        self.process.crashed()
    }

    /// The last lines the daemon logged.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(20)
    }

    /// Number of open file descriptors of the daemon (from /proc).
    pub fn open_fds(&self) -> Option<usize> {
        self.process.open_fds()
    }

    /// The daemon and every process below it (a daemon may serve from a
    /// child), from /proc.
    fn tree(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        let mut i = 0;
        while i < pids.len() {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", pids[i]));
            for t in tasks.into_iter().flatten().flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                pids.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
            i += 1;
        }
        pids
    }

    /// The names of the daemon's threads and of its children's
    /// (`/proc/PID/task/TID/comm`, at most 15 bytes each).
    pub fn thread_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for pid in self.tree() {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
            for t in tasks.into_iter().flatten().flatten() {
                if let Ok(n) = std::fs::read_to_string(t.path().join("comm")) {
                    names.push(n.trim().to_owned());
                }
            }
        }
        names
    }

    /// CPU time the daemon's live threads (and those of its children) have
    /// run, to the nanosecond (`/proc/PID/task/TID/schedstat`). A thread
    /// that has exited no longer counts: compare figures taken while the
    /// same threads run.
    pub fn cpu_time(&self) -> Duration {
        let mut ns = 0u64;
        for pid in self.tree() {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
            for t in tasks.into_iter().flatten().flatten() {
                ns += std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Duration::from_nanos(ns)
    }

    /// Descriptors and resident memory (KiB) of the daemon and every
    /// process below it (a daemon may serve from a child), from /proc.
    pub fn footprint(&self) -> (usize, u64) {
        let pids = self.tree();
        let mut fds = 0;
        let mut rss = 0;
        for pid in pids {
            fds += std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            rss += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        (fds, rss)
    }
}
