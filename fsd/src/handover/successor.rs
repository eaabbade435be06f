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

use log::info;

use super::state::{readable, Received, STATE_VERSION};
use super::transfer::{Channel, Msg};
use super::vhost::{self, Daemon};
use super::HandoverError;
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

/// Steps 5-6: takes the state and serves. Returns the connection served.
/// `before_serving` runs once the predecessor has paused and the tables are
/// restored, before any request is served (the label database is read
/// there: the predecessor may label files until it pauses).
pub fn take_over(
    chan: &Channel,
    daemon: &mut Daemon,
    backend: &Arc<FsBackend>,
    before_serving: &mut dyn FnMut() -> std::io::Result<()>,
) -> Result<UnixStream, HandoverError> {
    chan.set_timeout(None).map_err(HandoverError::Channel)?;
    let result = restore(chan, daemon, backend, before_serving);
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
    before_serving: &mut dyn FnMut() -> std::io::Result<()>,
) -> Result<UnixStream, HandoverError> {
    let (state, fds) = match chan.recv()? {
        (Msg::State(s), fds) => (s, fds),
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
    let mut fds = Received::new(fds);
    let inodes = state.fs.passthrough.inodes.len();
    let dispatcher = backend.dispatcher();
    dispatcher
        .fs()
        .import_state(state.fs, &mut fds)
        .map_err(HandoverError::FileSystem)?;
    before_serving().map_err(HandoverError::FileSystem)?;
    // What can fail is done before the queues start: once a worker of this
    // process has served a request, the predecessor cannot take the rings
    // back.
    let conn = UnixStream::from(
        fds.take(state.vhost.connection)
            .map_err(HandoverError::Dup)?,
    );
    let served = conn.try_clone().map_err(HandoverError::Dup)?;
    let replayed = vhost::replay(daemon, &state.vhost, &mut fds)?;
    // Replaying SET_FEATURES looked like a device restart; the session goes
    // on, and is restored before any request is served.
    dispatcher.restore_session(&state.fuse);
    let kicks = replayed.start(daemon)?;
    daemon
        .start_on_stream(served)
        .map_err(|e| HandoverError::Daemon(e.to_string()))?;
    vhost::kick(&kicks);
    info!(
        "handover: serving the predecessor's session ({inodes} inodes, {} queues)",
        kicks.len()
    );
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
