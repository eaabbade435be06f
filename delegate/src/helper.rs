//! The channel to one helper VM and the job it runs.
//!
//! The helper's QEMU connects to the broker's socket for it (and connects
//! again after a broker restart or a dropped connection). One job runs at
//! a time; a delegation waits a bounded time for the helper to be free.
//! Before each job the broker pings the agent and sends the job only after
//! the echo of that ping, so a dead or absent agent is found in bounded
//! time and a job is never left in a buffer for an agent that starts
//! later (the agent also refuses a job whose nonce is not its last ping).
//! On any doubt the broker drops the connection: unread bytes go with it,
//! and QEMU connects afresh.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use delegate_proto::{ErrorCode, Frame, Message};

use crate::error::Refusal;
use crate::session::Event;

/// One helper VM's channel.
pub struct HelperLink {
    pub name: String,
    state: Mutex<State>,
    free: Condvar,
}

#[derive(Default)]
struct State {
    /// The current connection and its generation.
    conn: Option<(u64, UnixStream)>,
    generation: u64,
    /// Where the agent's messages go while a job holds the link.
    route: Option<SyncSender<Event>>,
    busy: bool,
}

impl HelperLink {
    pub fn new(name: &str) -> Arc<HelperLink> {
        Arc::new(HelperLink {
            name: name.into(),
            state: Mutex::new(State::default()),
            free: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the helper's QEMU is connected.
    pub fn connected(&self) -> bool {
        self.lock().conn.is_some()
    }

    /// Takes a new connection from the helper's QEMU, replacing any other,
    /// and reads it on a thread of its own.
    pub fn attach(self: &Arc<Self>, stream: UnixStream) -> std::io::Result<()> {
        let reader = stream.try_clone()?;
        let generation = {
            let mut s = self.lock();
            s.generation += 1;
            if let Some((_, old)) = s.conn.take() {
                let _ = old.shutdown(Shutdown::Both);
            }
            s.conn = Some((s.generation, stream));
            s.generation
        };
        log::info!("helper {}: connected (connection {generation})", self.name);
        let link = self.clone();
        std::thread::Builder::new()
            .name(format!("helper-{}", self.name))
            .spawn(move || link.read(reader, generation))?;
        Ok(())
    }

    /// Routes what the agent sends to the job that holds the link.
    fn read(&self, mut stream: UnixStream, generation: u64) {
        let why = loop {
            let m = match Frame::read_from(&mut stream) {
                Ok(f) => Message::decode(&f).map_err(|e| e.to_string()),
                Err(e) => break e.to_string(),
            };
            let m = match m {
                Ok(m) => m,
                // A frame whose body is wrong: the stream is still in step.
                Err(e) => {
                    log::warn!("helper {}: bad frame from the agent: {e}", self.name);
                    continue;
                }
            };
            let route = {
                let s = self.lock();
                if s.generation != generation {
                    return;
                }
                s.route.clone()
            };
            match route {
                Some(tx) => {
                    let _ = tx.send(Event::Helper(Ok(m)));
                }
                None => log::debug!("helper {}: {:?} with no job waiting", self.name, m.kind()),
            }
        };
        let route = {
            let mut s = self.lock();
            if s.generation != generation {
                return;
            }
            s.conn = None;
            s.route.clone()
        };
        log::warn!("helper {}: disconnected ({why})", self.name);
        if let Some(tx) = route {
            let _ = tx.send(Event::Helper(Err(format!(
                "the helper VM {} disconnected",
                self.name
            ))));
        }
    }

    /// Waits up to `limit` for the helper to be free and connected.
    pub fn acquire(self: &Arc<Self>, limit: Duration) -> Result<Job, Refusal> {
        let deadline = Instant::now() + limit;
        let mut s = self.lock();
        loop {
            if s.conn.is_none() {
                return Err(Refusal::new(
                    ErrorCode::HelperDown,
                    format!(
                        "the helper VM {} is not running or not connected",
                        self.name
                    ),
                ));
            }
            if !s.busy {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Refusal::new(
                    ErrorCode::Busy,
                    format!("the helper VM {} is busy with another program", self.name),
                ));
            }
            s = self
                .free
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.busy = true;
        Ok(Job { link: self.clone() })
    }
}

/// The link held for one job; released when dropped.
pub struct Job {
    link: Arc<HelperLink>,
}

impl Job {
    /// Sends the agent's messages to `tx` until the job ends.
    pub fn route(&self, tx: SyncSender<Event>) {
        self.link.lock().route = Some(tx);
    }

    /// Sends one message to the agent; a failure drops the connection.
    pub fn send(&self, m: &Message) -> Result<(), Refusal> {
        let internal = |e: String| Refusal::new(ErrorCode::Internal, e);
        let bytes = m.encode().map_err(|e| internal(e.to_string()))?.to_bytes();
        let stream = {
            let s = self.link.lock();
            match &s.conn {
                Some((_, c)) => c.try_clone().map_err(|e| internal(e.to_string()))?,
                None => {
                    return Err(Refusal::new(
                        ErrorCode::HelperDown,
                        format!("the helper VM {} disconnected", self.link.name),
                    ))
                }
            }
        };
        let mut w = &stream;
        let r = stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .and_then(|_| w.write_all(&bytes));
        if let Err(e) = r {
            self.drop_connection();
            return Err(Refusal::new(
                ErrorCode::HelperDown,
                format!("writing to the helper VM {}: {e}", self.link.name),
            ));
        }
        Ok(())
    }

    /// Drops the connection (QEMU connects again); what was queued is lost.
    pub fn drop_connection(&self) {
        let mut s = self.link.lock();
        if let Some((_, c)) = s.conn.take() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn helper(&self) -> &str {
        &self.link.name
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let mut s = self.link.lock();
        s.route = None;
        s.busy = false;
        drop(s);
        self.link.free.notify_all();
    }
}
