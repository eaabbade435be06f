//! A user VM's channel: its requests, one delegation at a time, and the
//! relay between it and the helper.
//!
//! The VM is whichever socket the connection arrived on. Frames are read
//! on a thread of their own into a bounded queue (a flooding guest is
//! slowed down by its own channel, never buffered without end). A frame
//! the broker cannot place (garbage, a kind it does not expect, a body
//! that does not decode) is answered with an error and an audit line; a
//! frame that loses the stream's position (unknown kind, oversized length)
//! also drops the connection, since nothing after it can be trusted to
//! start a frame, and QEMU connects afresh.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authd_client::client::Client;
use delegate_proto::frame::FrameError;
use delegate_proto::{ErrorCode, Exit, Frame, Job, Message, Request};
use fsd::policy::Policy;

use crate::audit::{args_for_audit, AuditLog, Record};
use crate::authz::{authorize, Ask};
use crate::decide::plan;
use crate::error::Refusal;
use crate::helper::{self, HelperLink};
use crate::limits::RateLimit;

/// What arrives for a delegation: frames from the user VM, messages from
/// the helper's agent.
#[derive(Debug)]
pub enum Event {
    Vm(Result<Frame, FrameError>),
    Helper(Result<Message, String>),
}

/// Time limits and bounds of the broker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requests per VM per window.
    pub max_requests: usize,
    pub window: Duration,
    /// How long the agent has to answer a ping, and to start a job.
    pub agent_timeout: Duration,
    /// How long a request waits for a busy helper.
    pub busy_timeout: Duration,
    /// How long writing to a user VM may block before it counts as gone.
    pub vm_write_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_requests: 20,
            window: Duration::from_secs(60),
            agent_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(30),
            vm_write_timeout: Duration::from_secs(10),
        }
    }
}

/// Frames from a user VM held while the broker waits for something else.
const MAX_PENDING: usize = 256;

/// Everything the sessions of all VMs share.
pub struct Broker {
    pub policy_path: PathBuf,
    pub authd: Client,
    pub helpers: HashMap<String, Arc<HelperLink>>,
    pub audit: AuditLog,
    pub settings: Settings,
    limits: Mutex<HashMap<String, RateLimit>>,
}

impl Broker {
    pub fn new(
        policy_path: PathBuf,
        authd: Client,
        helpers: HashMap<String, Arc<HelperLink>>,
        audit: AuditLog,
        settings: Settings,
    ) -> Broker {
        Broker {
            policy_path,
            authd,
            helpers,
            audit,
            settings,
            limits: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, vm: &str) -> bool {
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(vm.to_string())
            .or_insert_with(|| RateLimit::new(self.settings.max_requests, self.settings.window))
            .allow(Instant::now())
    }
}

/// The session must end: the user VM is gone or out of step.
struct Close;

/// One user VM connection.
struct Conn<'a> {
    broker: &'a Broker,
    vm: &'a str,
    out: UnixStream,
    tx: SyncSender<Event>,
    rx: Receiver<Event>,
    pending: VecDeque<Event>,
}

/// Serves one connection of `vm`'s QEMU until it closes or goes out of step.
pub fn serve_vm(broker: &Broker, vm: &str, stream: UnixStream) {
    let (tx, rx) = sync_channel(64);
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    let _ = stream.set_write_timeout(Some(broker.settings.vm_write_timeout));
    let reader_tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("vm-{vm}"))
        .spawn(move || loop {
            let r = Frame::read_from(&mut reader);
            let end = r.is_err();
            if reader_tx.send(Event::Vm(r)).is_err() || end {
                break;
            }
        });
    if spawned.is_err() {
        return;
    }
    let mut c = Conn {
        broker,
        vm,
        out: stream,
        tx,
        rx,
        pending: VecDeque::new(),
    };
    log::info!("vm {vm}: connected");
    while let Ok(()) = c.next_request() {}
    let _ = c.out.shutdown(Shutdown::Both);
    log::info!("vm {vm}: connection closed");
}

impl Conn<'_> {
    fn recv(&mut self) -> Option<Event> {
        self.pending.pop_front().or_else(|| self.rx.recv().ok())
    }

    fn recv_timeout(&mut self, limit: Duration) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        match self.rx.recv_timeout(limit) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Keeps a user VM frame for later; a flood of them ends the session.
    fn hold(&mut self, e: Event) -> Result<(), Close> {
        if self.pending.len() >= MAX_PENDING {
            self.protocol(format!(
                "more than {MAX_PENDING} frames before the program started"
            ));
            return Err(Close);
        }
        self.pending.push_back(e);
        Ok(())
    }

    fn send(&mut self, m: &Message) -> Result<(), Close> {
        let f = m.encode().map_err(|_| Close)?;
        self.out.write_all(&f.to_bytes()).map_err(|e| {
            log::warn!("vm {}: writing: {e}", self.vm);
            Close
        })
    }

    /// Refuses a frame outside a delegation: error reply and audit line.
    fn protocol(&mut self, why: String) {
        self.broker.audit.write(Record {
            vm: self.vm.into(),
            event: "protocol",
            outcome: format!("refused: protocol: {why}"),
            ..Default::default()
        });
        let _ = self.send(&Message::Error(ErrorCode::Protocol, why));
    }

    /// Waits for and handles the next request.
    fn next_request(&mut self) -> Result<(), Close> {
        match self.recv().ok_or(Close)? {
            Event::Vm(Ok(frame)) => match Message::decode(&frame) {
                Ok(Message::Request(req)) => self.delegate(req),
                Ok(other) => {
                    self.protocol(format!("a {:?} frame outside a delegation", other.kind()));
                    Ok(())
                }
                Err(e) => {
                    self.protocol(e.to_string());
                    Ok(())
                }
            },
            Event::Vm(Err(FrameError::Closed)) => Err(Close),
            Event::Vm(Err(e)) => {
                self.protocol(format!("{e}; the channel is reset"));
                Err(Close)
            }
            // Left over from an earlier job.
            Event::Helper(_) => Ok(()),
        }
    }

    /// One delegation, from request to exit status (or refusal).
    fn delegate(&mut self, req: Request) -> Result<(), Close> {
        let t0 = Instant::now();
        let mut rec = Record {
            vm: self.vm.into(),
            event: "delegate",
            program: Some(
                String::from_utf8_lossy(&req.program[..req.program.len().min(256)]).into_owned(),
            ),
            args: Some(args_for_audit(&req.args)),
            tty: Some(req.tty.is_some()),
            ..Default::default()
        };
        // The audit line is written before the last frame goes out, so it
        // exists by the time the user VM sees the outcome.
        let (reply, close) = match self.run(&req, &mut rec) {
            Ok(x) => {
                rec.outcome = match x {
                    Exit::Code(c) => format!("exit {c}"),
                    Exit::Signal(s) => format!("signal {s}"),
                };
                (Message::Exit(x), false)
            }
            Err((refusal, close)) => {
                rec.outcome = format!("refused: {}: {}", refusal.code.name(), refusal.message);
                (Message::Error(refusal.code, refusal.message), close)
            }
        };
        rec.duration_ms = ms(t0.elapsed());
        self.broker.audit.write(rec);
        if close {
            return Err(Close);
        }
        self.send(&reply)
    }

    /// Decides, authenticates, runs and relays; the program's exit status.
    /// `Err((why, close))`: refused or failed; `close` when the user VM is
    /// gone.
    fn run(&mut self, req: &Request, rec: &mut Record) -> Result<Exit, (Refusal, bool)> {
        let refuse = |r: Refusal| (r, false);
        if !self.broker.allow(self.vm) {
            return Err(refuse(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests in {} s from this VM",
                    self.broker.settings.max_requests,
                    self.broker.settings.window.as_secs()
                ),
            )));
        }
        let policy = Policy::load(&self.broker.policy_path).map_err(|e| {
            log::error!("policy: {e}");
            refuse(Refusal::new(
                ErrorCode::Internal,
                "the host's policy cannot be read",
            ))
        })?;
        let plan = plan(&policy, self.vm, req).map_err(refuse)?;
        rec.program = Some(plan.program.clone());
        rec.principal = Some(plan.principal.clone());
        rec.helper = Some(plan.helper.clone());
        rec.run_as_uid = Some(plan.euid);
        rec.real_uid = Some(plan.ruid);

        // The person at the host, before anything runs.
        let ta = Instant::now();
        let asked = authorize(
            &self.broker.authd,
            &Ask {
                vm: self.vm,
                principal: &plan.principal,
                program: &plan.program,
                run_as_uid: plan.euid,
                helper: &plan.helper,
                lifetime: Duration::from_secs(plan.grant_secs),
            },
            policy.ask_timeout + Duration::from_secs(15),
        );
        rec.authd_ms = Some(ms(ta.elapsed()));
        asked.map_err(|why| refuse(Refusal::new(ErrorCode::Denied, why)))?;
        // The user VM may have gone while the person was asked.
        while let Ok(e) = self.rx.try_recv() {
            let gone = matches!(e, Event::Vm(Err(_)));
            self.hold(e)
                .map_err(|_| (Refusal::new(ErrorCode::Protocol, "flood"), true))?;
            if gone {
                return Err((
                    Refusal::new(
                        ErrorCode::Internal,
                        "the user VM went away before the start",
                    ),
                    true,
                ));
            }
        }

        let link = self
            .broker
            .helpers
            .get(&plan.helper)
            .cloned()
            .ok_or_else(|| {
                refuse(Refusal::new(
                    ErrorCode::HelperDown,
                    format!("the helper VM {} is not known to this broker", plan.helper),
                ))
            })?;
        let job = link
            .acquire(self.broker.settings.busy_timeout)
            .map_err(refuse)?;
        job.route(self.tx.clone());

        // Is the agent there? Only a fresh echo lets the job go out.
        let tp = Instant::now();
        let nonce = nonce();
        job.send(&Message::Ping(nonce)).map_err(refuse)?;
        self.await_agent(&job, "answer", |m| match m {
            Message::Pong(n) if *n == nonce => Some(Ok(())),
            _ => None,
        })?;
        rec.ping_ms = Some(ms(tp.elapsed()));

        let th = Instant::now();
        job.send(&Message::Job(Job {
            nonce,
            program: plan.program_path.clone(),
            argv: plan.argv.clone(),
            env: plan.env.clone(),
            cwd: plan.cwd.clone(),
            ruid: plan.ruid,
            rgid: plan.rgid,
            euid: plan.euid,
            egid: plan.egid,
            tty: plan.tty,
            max_secs: plan.max_secs.min(u32::MAX as u64) as u32,
        }))
        .map_err(refuse)?;
        self.await_agent(&job, "start the program", |m| match m {
            Message::Started => Some(Ok(())),
            Message::Error(code, msg) => Some(Err(Refusal::new(*code, msg.clone()))),
            _ => None,
        })?;
        rec.ran = true;
        if self.send(&Message::Started).is_err() {
            let _ = job.send(&Message::Signal(libc::SIGKILL as u8));
            return Err((Refusal::new(ErrorCode::Internal, "user VM gone"), true));
        }
        let outcome = self.relay(&job, Duration::from_secs(plan.max_secs));
        rec.helper_ms = Some(ms(th.elapsed()));
        outcome
    }

    /// Waits for the agent's answer that `want` accepts (`Some(Ok)`) or
    /// turns into a refusal (`Some(Err)`), for at most the agent timeout;
    /// then the connection to the helper is dropped (whatever was queued
    /// goes with it). The user VM's frames meanwhile are kept for the
    /// relay; the user VM going away ends the wait.
    fn await_agent(
        &mut self,
        job: &helper::Job,
        what: &str,
        want: impl Fn(&Message) -> Option<Result<(), Refusal>>,
    ) -> Result<(), (Refusal, bool)> {
        let limit = self.broker.settings.agent_timeout;
        let silent = || {
            Refusal::new(
                ErrorCode::AgentTimeout,
                format!(
                    "the agent in helper VM {} did not {what} within {} s",
                    job.helper(),
                    limit.as_secs_f64()
                ),
            )
        };
        let t = Instant::now();
        loop {
            match self.rx.recv_timeout(limit.saturating_sub(t.elapsed())) {
                Ok(Event::Helper(Ok(m))) => {
                    if let Some(r) = want(&m) {
                        return r.map_err(|e| (e, false));
                    }
                }
                Ok(Event::Helper(Err(why))) => {
                    return Err((Refusal::new(ErrorCode::HelperDown, why), false))
                }
                Ok(Event::Vm(Err(e))) => {
                    let gone = Refusal::new(
                        ErrorCode::Internal,
                        format!("the user VM went away before the start ({e})"),
                    );
                    return Err((gone, true));
                }
                Ok(e) => self.hold(e).map_err(|_| (silent(), true))?,
                Err(_) => {
                    job.drop_connection();
                    return Err((silent(), false));
                }
            }
        }
    }

    /// Relays between the user VM and the job until its exit status. The
    /// agent enforces the program's time limit; if no status comes within
    /// that and half a minute more, the helper is dropped.
    fn relay(&mut self, job: &helper::Job, max: Duration) -> Result<Exit, (Refusal, bool)> {
        let deadline = Instant::now() + max + Duration::from_secs(30);
        let kill = || {
            let _ = job.send(&Message::Signal(libc::SIGKILL as u8));
        };
        let mut violation: Option<String> = None;
        let mut vm_gone = false;
        let outcome = loop {
            if Instant::now() > deadline {
                job.drop_connection();
                break Err(Refusal::new(
                    ErrorCode::TimedOut,
                    "the helper did not end the program",
                ));
            }
            let Some(e) = self.recv_timeout(Duration::from_secs(1)) else {
                continue;
            };
            match e {
                Event::Vm(Ok(f)) => match Message::decode(&f) {
                    Ok(m @ (Message::Stdin(_) | Message::Signal(_) | Message::Winsize(_))) => {
                        if let Err(r) = job.send(&m) {
                            break Err(r);
                        }
                    }
                    other => {
                        // The user VM broke the protocol: the program goes.
                        if violation.is_none() {
                            kill();
                            violation = Some(match other {
                                Ok(m) => format!("a {:?} frame while a program runs", m.kind()),
                                Err(e) => e.to_string(),
                            });
                        }
                    }
                },
                Event::Vm(Err(e)) => {
                    if !vm_gone {
                        kill();
                        vm_gone = true;
                        if !matches!(e, FrameError::Closed) {
                            violation = Some(e.to_string());
                        }
                    }
                }
                Event::Helper(Ok(m @ (Message::Stdout(_) | Message::Stderr(_)))) => {
                    if !vm_gone && self.send(&m).is_err() {
                        kill();
                        vm_gone = true;
                    }
                }
                Event::Helper(Ok(Message::Exit(x))) => break Ok(x),
                Event::Helper(Ok(Message::Error(code, msg))) => break Err(Refusal::new(code, msg)),
                Event::Helper(Ok(_)) => {}
                Event::Helper(Err(why)) => {
                    break Err(Refusal::new(
                        ErrorCode::HelperDown,
                        format!("{why} while the program ran"),
                    ))
                }
            }
        };
        if let Some(why) = violation {
            let r = Refusal::new(
                ErrorCode::Protocol,
                format!("{why}; the program was killed"),
            );
            return Err((r, vm_gone));
        }
        if vm_gone {
            let r = Refusal::new(
                ErrorCode::Internal,
                "the user VM went away; the program was killed",
            );
            return Err((r, true));
        }
        outcome.map_err(|r| (r, false))
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A value the agent echoes; not a secret, only unlikely to repeat.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}
