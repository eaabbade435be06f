//! The running fsd's side of a handover.
//!
//! In order, each step able to give up with the old process still serving:
//! 1. have the launcher start the successor (the binary on disk now) with
//!    one end of the channel; it builds its file system and sandbox while
//!    this process goes on serving;
//! 2. exchange versions: a successor that cannot read this state refuses
//!    now, before anything has paused;
//! 3. pause the queues and wait for requests in flight (bounded);
//! 4. stop reading the vhost-user socket between two messages and stop
//!    listening to kicks;
//! 5. send the state with its descriptors;
//! 6. the successor answers `Done` once it serves: this process exits.
//!    Anything else: listen to kicks again, serve the socket again, resume
//!    the queues (kicking each once), and kill the successor.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::launcher::Launcher;
use super::state::{FdBag, State, STATE_VERSION};
use super::transfer::{Channel, Msg};
use super::vhost::{self, Daemon};
use super::HandoverError;
use crate::vhost_user::FsBackend;

/// How long the successor may take to start (sandbox, file system, policy).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long requests in flight may take to finish before the handover is
/// given up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the successor may take to restore and start serving.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the serving fsd lends to a handover.
pub struct Serving<'a> {
    pub daemon: &'a mut Daemon,
    pub backend: &'a Arc<FsBackend>,
    /// The front-end connection (a copy of what the daemon reads).
    pub connection: &'a UnixStream,
}

/// Figures of one handover, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub successor_pid: u32,
    /// From the pause to the successor's `Done`: what the guest waits.
    pub paused: Duration,
    pub descriptors: usize,
    pub inodes: usize,
}

/// Hands the session over. `Ok`: the successor serves and this process must
/// exit without touching the connection. `Err`: this process still serves.
pub fn hand_over(s: Serving<'_>, launcher: &Launcher) -> Result<Report, HandoverError> {
    info!("handover: starting the successor");
    let started = launcher.spawn().map_err(HandoverError::Launch)?;
    let (chan, pid) = (started.channel, started.pid);
    match greet(&chan) {
        Ok(version) => info!("handover: successor {pid} is ready (state version {version})"),
        Err(e) => {
            launcher.kill();
            return Err(e);
        }
    };
    let started = Instant::now();
    if let Err(n) = s.backend.quiesce().pause(DRAIN_TIMEOUT) {
        s.backend.quiesce().resume();
        // Kicks that came while paused were consumed and ignored.
        vhost::kick(&vhost::kicks_of(s.daemon));
        let _ = chan.send(
            &Msg::Failed {
                why: format!("{n} requests still waiting"),
            },
            &[],
        );
        launcher.kill();
        return Err(HandoverError::Busy(n));
    }
    if let Err(e) = s.daemon.stop_requests() {
        // The request thread ended with an error: the front-end is gone or
        // broke the protocol; there is no session left to hand over.
        s.backend.quiesce().resume();
        vhost::kick(&vhost::kicks_of(s.daemon));
        launcher.kill();
        return Err(HandoverError::Daemon(e.to_string()));
    }
    if let Err(e) = s.daemon.listen_to_kicks(false) {
        warn!("handover: cannot stop listening to kicks: {e}");
        return Err(resume(s, launcher, HandoverError::Dup(e)));
    }
    match send_state(&s, &chan) {
        Ok((descriptors, inodes)) => match wait_done(&chan) {
            Ok(()) => {
                // The successor is the daemon now; it outlives this process.
                Ok(Report {
                    successor_pid: pid,
                    paused: started.elapsed(),
                    descriptors,
                    inodes,
                })
            }
            Err(e) => Err(resume(s, launcher, e)),
        },
        Err(e) => {
            let _ = chan.send(&Msg::Failed { why: e.to_string() }, &[]);
            Err(resume(s, launcher, e))
        }
    }
}

/// Steps 1-2: the successor is up and reads our version; its own. Also
/// the first step of a crash recovery, where the supervisor stands in for
/// the dead fsd.
pub(crate) fn greet(chan: &Channel) -> Result<u32, HandoverError> {
    chan.set_timeout(Some(START_TIMEOUT))
        .map_err(HandoverError::Channel)?;
    chan.send(
        &Msg::Hello {
            version: STATE_VERSION,
            pid: std::process::id(),
        },
        &[],
    )?;
    match chan.recv()?.0 {
        Msg::Ready { version, .. } => Ok(version),
        Msg::Refused { why } => Err(HandoverError::Refused(why)),
        m => Err(HandoverError::Protocol(format!(
            "expected Ready, got {}",
            m.name()
        ))),
    }
}

fn send_state(s: &Serving<'_>, chan: &Channel) -> Result<(usize, usize), HandoverError> {
    let mut bag = FdBag::default();
    let vhost = vhost::capture(s.daemon, s.backend, s.connection, &mut bag)?;
    let dispatcher = s.backend.dispatcher();
    let fs = dispatcher
        .fs()
        .export_state(&mut bag)
        .map_err(HandoverError::FileSystem)?;
    let inodes = fs.passthrough.inodes.len();
    let state = State {
        version: STATE_VERSION,
        vhost,
        fuse: dispatcher.session_state(),
        fs,
    };
    let n = bag.len();
    chan.send(&Msg::State(Box::new(state)), &bag.into_vec())?;
    Ok((n, inodes))
}

fn wait_done(chan: &Channel) -> Result<(), HandoverError> {
    chan.set_timeout(Some(RESTORE_TIMEOUT))
        .map_err(HandoverError::Channel)?;
    match chan.recv()?.0 {
        Msg::Done => Ok(()),
        Msg::Failed { why } | Msg::Refused { why } => Err(HandoverError::Failed(why)),
        m => Err(HandoverError::Protocol(format!(
            "expected Done, got {}",
            m.name()
        ))),
    }
}

/// Serves again after a failed handover; returns `e`.
fn resume(s: Serving<'_>, launcher: &Launcher, e: HandoverError) -> HandoverError {
    launcher.kill();
    if let Err(e) = s.daemon.listen_to_kicks(true) {
        warn!("handover: cannot listen to kicks again: {e}");
    }
    match s.connection.try_clone() {
        Ok(c) => {
            if let Err(e) = s.daemon.start_on_stream(c) {
                warn!("handover: cannot serve the connection again: {e}");
            }
        }
        Err(e) => warn!("handover: cannot serve the connection again: {e}"),
    }
    s.backend.quiesce().resume();
    vhost::kick(&vhost::kicks_of(s.daemon));
    e
}
