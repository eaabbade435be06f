//! Small process helpers shared by the launchers: a child killed on drop,
//! polling with a deadline, a polite SIGTERM.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Sends SIGTERM (so the program can clean up) and waits up to
    /// `timeout` for it to exit; `None` when it did not.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        sigterm(&self.0);
        let mut status = None;
        wait_for(timeout, || {
            status = self.0.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM to a child that has not been reaped yet.
pub fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet (the
    // caller still holds the `Child`), so it cannot name another process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
}

/// Polls `f` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies an executable to `dst` (replacing it by a rename, as a package
/// upgrade does) so that it can be executed at once. The copy is written
/// by a `cp` child, never through a descriptor of this process: a test
/// process forks daemons from many threads, and a child forked while this
/// process held the new file open for writing would keep it open, so
/// executing the file would fail with ETXTBSY ("Text file busy").
pub fn install_executable(src: &std::path::Path, dst: &std::path::Path) -> std::io::Result<()> {
    let tmp = dst.with_extension("installing");
    let status = std::process::Command::new("cp")
        .arg("--")
        .arg(src)
        .arg(&tmp)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "cp {} {}: {status}",
            src.display(),
            tmp.display()
        )));
    }
    std::fs::rename(&tmp, dst)
}

/// Writes `content` as an executable at `dst`, as [`install_executable`]
/// does: the bytes go to a plain file first, and `cp` makes the executable.
pub fn write_executable(dst: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let data = dst.with_extension("content");
    std::fs::write(&data, content)?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
    install_executable(&data, dst)?;
    std::fs::remove_file(&data)
}
