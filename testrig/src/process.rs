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
