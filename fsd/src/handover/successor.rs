//! The new fsd's side of a handover.
//!
//! It has started like any fsd (sandbox, file system, policy) but without a
//! socket of its own. It reads the predecessor's version and refuses one it
//! cannot read; otherwise it restores the file system tables, replays the
//! vhost-user setup into its own daemon, continues the FUSE session,
//! serves the connection, kicks each queue once and answers `Done`. On any
//! error it answers `Failed` and the caller exits: the predecessor then
//! serves on.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use log::{info, warn};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;

use super::state::{readable, Received, STATE_VERSION};
use super::transfer::{Channel, Msg};
use super::vhost::{self, Daemon};
use super::HandoverError;
use crate::crash::inflight::InFlightTable;
use crate::crash::recover;
use crate::vhost_user::FsBackend;

/// Step 2: reads the predecessor's version; answers `Ready` or `Refused`.
pub fn greet(chan: &Channel) -> Result<u32, HandoverError> {
    chan.set_timeout(Some(super::predecessor::START_TIMEOUT))
        .map_err(HandoverError::Channel)?;
    let (version, pid) = match chan.recv()?.0 {
        Msg::Hello { version, pid } => (version, pid),
        m => {
            return Err(HandoverError::Protocol(format!(
                "expected Hello, got {}",
                m.name()
            )))
        }
    };
    if !readable(version) {
        let e = HandoverError::Version(version);
        let _ = chan.send(&Msg::Refused { why: e.to_string() }, &[]);
        return Err(e);
    }
    chan.send(
        &Msg::Ready {
            version: STATE_VERSION,
            pid: std::process::id(),
        },
        &[],
    )?;
    Ok(pid)
}

/// Hooks of [`take_over`] into the daemon's start.
pub struct Hooks<'a> {
    /// After the file system state is imported, before anything is served
    /// (labels, the crash journal).
    pub before_serving: &'a mut dyn FnMut() -> std::io::Result<()>,
    /// After the device is set up again, before any queue runs: a crash
    /// from the first request on must find the device with the supervisor.
    pub device_ready: &'a mut dyn FnMut(&Daemon, &UnixStream),
}

/// Steps 5-6: takes the state and serves. Returns the connection served.
/// `hooks.before_serving` runs once the predecessor has paused and the
/// tables are restored, before any request is served (the label database
/// is read there: the predecessor may label files until it pauses). With
/// `track`, requests in flight are tracked in it from the first one on
/// (crash recovery).
pub fn take_over(
    chan: &Channel,
    daemon: &mut Daemon,
    backend: &Arc<FsBackend>,
    hooks: Hooks<'_>,
    track: Option<Arc<InFlightTable>>,
) -> Result<UnixStream, HandoverError> {
    chan.set_timeout(None).map_err(HandoverError::Channel)?;
    let result = restore(chan, daemon, backend, hooks, track);
    match &result {
        Ok(_) => chan.send(&Msg::Done, &[])?,
        Err(e) => {
            let _ = chan.send(&Msg::Failed { why: e.to_string() }, &[]);
        }
    }
    result
}

fn restore(
    chan: &Channel,
    daemon: &mut Daemon,
    backend: &Arc<FsBackend>,
    hooks: Hooks<'_>,
    track: Option<Arc<InFlightTable>>,
) -> Result<UnixStream, HandoverError> {
    let dispatcher = backend.dispatcher();
    // A handover's document, or one rebuilt from what a dead fsd left.
    let (state, mut device_fds, mut fs_fds, crashed) = match chan.recv()? {
        (Msg::State(s), fds) => {
            let fds = Received::new(fds);
            (*s, fds, None, None)
        }
        (Msg::Recover(r), fds) => {
            let m = recover::build(*r, fds, dispatcher.fs())?;
            if m.lost > 0 {
                warn!("crash recovery: {} nodes were held by descriptor and cannot be opened again; the guest gets ESTALE on them", m.lost);
            }
            (m.state, m.device_fds, Some(m.fs_fds), Some(m.inflight))
        }
        (Msg::Failed { why }, _) => return Err(HandoverError::Failed(why)),
        (m, _) => {
            return Err(HandoverError::Protocol(format!(
                "expected State, got {}",
                m.name()
            )))
        }
    };
    if !readable(state.version) {
        return Err(HandoverError::Version(state.version));
    }
    let inodes = state.fs.passthrough.inodes.len();
    let ready: Vec<u32> = state
        .vhost
        .queues
        .iter()
        .filter(|q| q.ready)
        .map(|q| q.index)
        .collect();
    dispatcher
        .fs()
        .import_state(state.fs, fs_fds.as_mut().unwrap_or(&mut device_fds))
        .map_err(HandoverError::FileSystem)?;
    (hooks.before_serving)().map_err(HandoverError::FileSystem)?;
    // What can fail is done before the queues start: once a worker of this
    // process has served a request, the predecessor cannot take the rings
    // back.
    let conn = UnixStream::from(
        device_fds
            .take(state.vhost.connection)
            .map_err(HandoverError::Dup)?,
    );
    let served = conn.try_clone().map_err(HandoverError::Dup)?;
    let replayed = vhost::replay(daemon, &state.vhost, &mut device_fds, crashed.is_none())?;
    // Replaying SET_FEATURES looked like a device restart; the session goes
    // on, and is restored before any request is served.
    dispatcher.restore_session(&state.fuse);
    if let Some(table) = &crashed {
        recover::answer_pending(daemon, backend, table, &ready)
            .map_err(HandoverError::FileSystem)?;
    }
    if let Some(t) = track {
        for (i, v) in daemon.vrings().iter().enumerate() {
            let q = v.get_ref();
            if q.get_queue().ready() {
                t.set_next_avail(i, q.get_queue().next_avail());
            }
        }
        backend.track_in_flight(t);
    }
    (hooks.device_ready)(daemon, &conn);
    let kicks = replayed.start(daemon)?;
    daemon
        .start_on_stream(served)
        .map_err(|e| HandoverError::Daemon(e.to_string()))?;
    vhost::kick(&kicks);
    match crashed {
        None => info!(
            "handover: serving the predecessor's session ({inodes} inodes, {} queues)",
            kicks.len()
        ),
        Some(_) => info!(
            "crash recovery: serving the dead fsd's session ({inodes} inodes, {} queues)",
            kicks.len()
        ),
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::transfer::pair;

    fn greet_with(version: u32) -> (Result<u32, HandoverError>, Msg) {
        let (pred, succ) = pair().unwrap();
        let succ = Channel::from_fd(succ);
        pred.send(&Msg::Hello { version, pid: 42 }, &[]).unwrap();
        let r = greet(&succ);
        let (answer, _) = pred.recv().unwrap();
        (r, answer)
    }

    #[test]
    fn a_version_it_cannot_read_is_refused_before_anything_pauses() {
        let (r, answer) = greet_with(STATE_VERSION + 1);
        assert!(matches!(r, Err(HandoverError::Version(v)) if v == STATE_VERSION + 1));
        assert!(matches!(answer, Msg::Refused { .. }), "{}", answer.name());
    }

    #[test]
    fn its_own_version_is_accepted() {
        let (r, answer) = greet_with(STATE_VERSION);
        assert_eq!(r.unwrap(), 42);
        assert!(matches!(answer, Msg::Ready { version, .. } if version == STATE_VERSION));
    }
}
