//! Running the real authd: `authd enroll` through its command line and
//! `authd serve` with a configuration of the test's own (authd's JSON
//! format, docs/authd.md), its own socket, credential store and audit log.
//!
//! The configuration is JSON rather than authd's `Config` type so that tests
//! of crates that do not link authd (fsd's) can use it; authd's own tests
//! serialize their typed `Config` into it.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{wait_for, Proc};

/// How long `authd serve` may take to answer on its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A configured, possibly running, `authd serve`; killed on drop.
pub struct Authd {
    /// The authd binary.
    pub program: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
    /// Its credential store.
    pub state_dir: PathBuf,
    /// Its audit log (JSON lines).
    pub audit_log: PathBuf,
    /// The configuration it runs with.
    pub config: Value,
    config_path: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Authd {
    /// A configuration in `dir`: the socket, store and audit log inside it,
    /// this process's uid allowed, and then every field of `config` (a JSON
    /// object: display, dialog program, timeouts, faillock, ...) on top.
    /// Nothing runs until [`Authd::start`].
    pub fn configure(program: impl Into<PathBuf>, dir: &Path, config: Value) -> Authd {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let mut full = json!({
            "socket": dir.join("authd.sock"),
            "state_dir": dir.join("state"),
            "audit_log": dir.join("audit.jsonl"),
            "allow_uids": [uid],
        });
        for (k, v) in config
            .as_object()
            .expect("authd configuration is a JSON object")
        {
            full[k] = v.clone();
        }
        let path_of = |key: &str| PathBuf::from(full[key].as_str().unwrap_or_default());
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&full).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", config_path.display()));
        Authd {
            program: program.into(),
            socket: path_of("socket"),
            state_dir: path_of("state_dir"),
            audit_log: path_of("audit_log"),
            config: full,
            config_path,
            log: dir.join("authd.log"),
            proc: None,
        }
    }

    /// Enrolls `principal` in this daemon's store (see [`enroll`]).
    pub fn enroll(&self, principal: &str, password: &str, phrase: &str, color: &str) {
        enroll(
            &self.program,
            &self.state_dir,
            principal,
            password,
            phrase,
            color,
        );
    }

    /// (Re)starts the daemon, logging to `authd.log` beside its
    /// configuration, and waits until its socket answers.
    pub fn start(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{}: {e}", self.log.display()));
        let child = Command::new(&self.program)
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("RUST_LOG", "info")
            .env_remove("DISPLAY")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} serve: {e}", self.program.display()));
        self.proc = Some(Proc(child));
        let sock = self.socket.clone();
        assert!(
            wait_for(READY_TIMEOUT, || UnixStream::connect(&sock).is_ok()),
            "authd did not come up:\n{}",
            self.log_text()
        );
    }

    /// SIGKILLs the daemon: no clean shutdown, no events.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    /// SIGTERMs the daemon and returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut p = self.proc.take().expect("authd is running");
        crate::process::sigterm(&p.0);
        p.0.wait().unwrap()
    }

    /// Every audit record, in order.
    pub fn audit_all(&self) -> Vec<Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("authd audit lines are JSON"))
            .collect()
    }

    /// Audit records whose `event` is `event`.
    pub fn audit(&self, event: &str) -> Vec<Value> {
        self.audit_all()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// The audit log as written.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_log).unwrap_or_default()
    }

    /// What the daemon logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the daemon's log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// Enrolls `principal` with its password and seal in the store at
/// `state_dir`, through the real command line, non-interactively.
pub fn enroll(
    program: &Path,
    state_dir: &Path,
    principal: &str,
    password: &str,
    phrase: &str,
    color: &str,
) {
    let mut child = Command::new(program)
        .args(["enroll", principal, "--password-stdin"])
        .args(["--seal-phrase", phrase, "--seal-color", color])
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} enroll: {e}", program.display()));
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    assert!(child.wait().unwrap().success(), "authd enroll {principal}");
}
