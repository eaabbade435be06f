//! Shared helpers of the real-guest tests: start fsd or the reference
//! virtiofsd on a share, boot a QEMU TCG guest that runs a script, and fail
//! with the console and daemon logs when something goes wrong.
//!
//! Every test first calls [`testrig::require`]: without QEMU, the guest kernel
//! or virtiofsd it prints `SKIP: …` and returns (run with `--nocapture` to see
//! it); under `CI=true` a missing prerequisite fails instead.

use std::path::{Path, PathBuf};

use testrig::guest_tools::GuestTools;
use testrig::{Daemon, DaemonSpec, InitramfsBuilder, Prereqs, QemuConfig, Sandbox, Transcript, Vm};

/// Mount tag used by the tests.
pub const TAG: &str = "share";

/// The fsd binary cargo built for these tests.
pub const FSD: &str = env!("CARGO_BIN_EXE_fsd");

/// Which vhost-user-fs daemon serves the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The reference daemon from crates.io.
    Virtiofsd,
    /// This crate's daemon.
    Fsd,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Virtiofsd => "virtiofsd",
            Server::Fsd => "fsd",
        }
    }

    pub fn program(self, env: &Prereqs) -> PathBuf {
        match self {
            Server::Virtiofsd => env.virtiofsd.clone().expect("require(Need::Virtiofsd)"),
            Server::Fsd => PathBuf::from(FSD),
        }
    }

    /// The daemon listening on `socket`, serving `share` (same flags for both:
    /// fsd is a drop-in for virtiofsd).
    pub fn spec(
        self,
        env: &Prereqs,
        socket: &Path,
        share: &Path,
        log: &Path,
        extra: &[&str],
    ) -> DaemonSpec {
        DaemonSpec::virtiofsd_style(self.program(env), socket, share, "auto", extra, log)
            .rust_log("info")
    }
}

/// fsd confined as `sandbox`, with `extra` flags (see [`DaemonSpec::fsd`]).
pub fn fsd_spec<S: AsRef<std::ffi::OsStr>>(
    sandbox: Sandbox,
    socket: &Path,
    share: &Path,
    log: &Path,
    extra: &[S],
) -> DaemonSpec {
    DaemonSpec::fsd(FSD, socket, share, sandbox, extra, log)
}

/// A guest run's result with the daemon log kept for failure messages.
pub struct Run {
    pub transcript: Transcript,
    pub daemon_log: String,
    pub server: Server,
}

impl Run {
    /// The script output; panics with console tail and daemon log otherwise.
    pub fn output(&self) -> &str {
        match self.transcript.output() {
            Ok(o) => o,
            Err(e) => panic!(
                "{} guest: {e}\n--- {} log ---\n{}",
                self.server.name(),
                self.server.name(),
                self.daemon_log
            ),
        }
    }
}

/// Boots a guest that mounts `share` served by `server` and runs `script`
/// (cwd is the mount point, `/mnt`). `tools` adds the guest helpers.
pub fn run_script(
    env: &Prereqs,
    server: Server,
    share: &Path,
    script: &str,
    tools: Option<&GuestTools>,
) -> Run {
    let work = tempfile::tempdir().unwrap();
    let socket = work.path().join(format!("{}.sock", server.name()));
    let log = work.path().join(format!("{}.log", server.name()));
    let spec = server.spec(env, &socket, share, &log, &[]);
    let daemon = Daemon::spawn_on_path(&spec, &socket).unwrap_or_else(|e| panic!("{e}"));
    let mut builder = InitramfsBuilder::run_script(TAG, script);
    if let Some(t) = tools {
        builder = builder.guest_tools(t);
    }
    let transcript = boot(env, &builder, &socket, &daemon, server);
    Run {
        transcript,
        daemon_log: daemon.log_text(),
        server,
    }
}

/// Builds the initramfs and boots it against `socket`; panics with the logs
/// when the guest does not finish.
pub fn boot(
    env: &Prereqs,
    builder: &InitramfsBuilder,
    socket: &Path,
    daemon: &Daemon,
    server: Server,
) -> Transcript {
    let initrd = builder.build(&env.kernel).unwrap_or_else(|e| panic!("{e}"));
    let cfg = QemuConfig::new(&env.kernel, &initrd).fs(socket, TAG);
    let vm = Vm::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    match vm.wait() {
        Ok(t) => t,
        Err(e) => panic!(
            "{} guest: {e}\n--- {} log ---\n{}",
            server.name(),
            server.name(),
            daemon.log_text()
        ),
    }
}

/// The static guest helpers, built on demand (panics with the build error).
pub fn guest_tools() -> GuestTools {
    testrig::guest_tools::build().unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh empty share directory inside `dir`.
pub fn share_in(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A policy under which `secret/**` belongs to alice and is asked for (VM
/// `vm1` acts for alice): fsd waits `ask_timeout_secs` for authd, grants
/// last `grant_secs`, and the guest may cache as `cache` says.
pub fn asking_policy(ask_timeout_secs: u64, cache: &str, grant_secs: u64) -> String {
    format!(
        r#"version = 1

[defaults]
ask_timeout_secs = {ask_timeout_secs}

[[principal]]
name = "alice"

[[vm]]
name = "vm1"
principal = "alice"

[[rule]]
path = "secret/**"
owner = "alice"
without_grant = "ask"
cache = "{cache}"
grant_secs = {grant_secs}
"#
    )
}

/// A policy under which VM `vm1` acts for alice and each of `paths`
/// belongs to alice and is denied without a grant.
pub fn denying_policy(paths: &[&str]) -> String {
    let mut p = String::from(
        "version = 1\n\n[[principal]]\nname = \"alice\"\n\n[[vm]]\nname = \"vm1\"\nprincipal = \"alice\"\n",
    );
    for path in paths {
        p.push_str(&format!(
            "\n[[rule]]\npath = \"{path}\"\nowner = \"alice\"\nwithout_grant = \"deny\"\n"
        ));
    }
    p
}

/// Asserts that every line of `expected` appears in `output`, in order.
pub fn assert_lines_in_order(output: &str, expected: &[&str], what: &str) {
    let lines: Vec<&str> = output.lines().collect();
    let mut at = 0;
    for want in expected {
        match lines[at..].iter().position(|l| l == want) {
            Some(i) => at += i + 1,
            None => {
                panic!("{what}: expected line {want:?} (in this order) not found in:\n{output}")
            }
        }
    }
}
