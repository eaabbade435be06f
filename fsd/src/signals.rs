//! SIGHUP: policy reloads and audit-log reopening.
//!
//! SIGHUP is blocked in every thread and taken synchronously by one thread
//! (`sigwaitinfo`), so a reload never runs inside a signal handler and never
//! races a half-parsed policy. A bad policy keeps the old one in force and
//! says why; the audit log is reopened for rotation at the same time.

use std::sync::Arc;
use std::thread;

use log::{error, info};

use crate::policy::Guard;

/// Blocks SIGHUP in the calling thread (and so in every thread it starts).
pub fn block_sighup() {
    // SAFETY: manipulating a local sigset and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Starts the thread that reloads the policy on SIGHUP.
pub fn spawn_reloader(guard: Arc<Guard>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("fsd-sighup".into())
        .spawn(move || loop {
            // SAFETY: waiting on a sigset we own.
            let sig = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGHUP);
                libc::sigwaitinfo(&set, std::ptr::null_mut())
            };
            if sig != libc::SIGHUP {
                continue;
            }
            match guard.reload() {
                Ok(()) => info!("policy reloaded: {} rules", guard.policy().rules.len()),
                Err(e) => error!("policy reload refused, keeping the old policy: {e}"),
            }
        })?;
    Ok(())
}
