//! Stopping the daemon cleanly on SIGTERM (what a supervisor sends) or
//! SIGINT: taint tracking is left as a clean stop leaves it, with a last
//! snapshot and a manifest that says the stop was clean (docs/taint.md,
//! "Persistence"), and the process exits.
//!
//! The signals are blocked before any thread starts (threads inherit the
//! mask) and taken by one thread of the daemon with `sigwait`: no handler
//! runs at an arbitrary point of another thread, and what is done on a
//! signal is ordinary code, which may take locks. A batch of taint events
//! being applied when the signal comes is applied and journaled first;
//! later ones are refused, and their producers count them as lost.

use std::sync::Arc;

use crate::daemon::State;
use crate::error::{Error, Result};

/// The signals that stop the daemon, blocked in this thread (and so in
/// every thread it starts from now on).
pub struct StopSignals {
    set: libc::sigset_t,
}

/// Blocks SIGTERM and SIGINT in the calling thread. Call it before any
/// other thread starts.
pub fn block() -> Result<StopSignals> {
    // SAFETY: a zeroed sigset_t is a valid argument for sigemptyset, which
    // initialises it; the other calls get valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(Error::io(
                "block SIGTERM and SIGINT",
                std::io::Error::from_raw_os_error(r),
            ));
        }
        Ok(StopSignals { set })
    }
}

/// Starts the thread that waits for `signals` and then stops the daemon:
/// taint tracking closed, then `exit(0)` (1 when its state could not be
/// saved).
pub fn stop_on(signals: StopSignals, state: Arc<State>) -> Result<()> {
    std::thread::Builder::new()
        .name("monitor-stop".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `signals.set` was initialised by `block`.
            let r = unsafe { libc::sigwait(&signals.set, &mut sig) };
            let name = match sig {
                libc::SIGTERM => "SIGTERM",
                libc::SIGINT => "SIGINT",
                _ => "a signal",
            };
            if r != 0 {
                log::error!(
                    "waiting for SIGTERM: {}",
                    std::io::Error::from_raw_os_error(r)
                );
                return;
            }
            match state.taint().close() {
                Ok(()) => {
                    log::info!("{name}: taint state saved, stopping");
                    std::process::exit(0)
                }
                Err(e) => {
                    log::error!("{name}: taint state not saved: {e}; stopping");
                    std::process::exit(1)
                }
            }
        })
        .map_err(|source| Error::ThreadSpawn {
            what: "stop on SIGTERM",
            source,
        })?;
    Ok(())
}
