//! The daemon: listens on a Unix socket, admits peers by uid (SO_PEERCRED),
//! reads JSON-lines requests and answers each with its own id. An
//! authentication runs on its own thread so one open prompt never blocks
//! other calls; grant ends are pushed to every subscriber.
//!
//! Grants and counters are saved after every change and read back at start
//! ([`crate::persist`]), so a restart (SIGTERM, or a crash) keeps live
//! grants and failure counts; revocation and `lock` end grants for good.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::{Audit, Record};
use crate::config::Config;
use crate::dialog::DialogRequest;
use crate::error::{Error, Result};
use crate::grants::GrantTable;
use crate::limits::{FailState, Faillock, PromptRate};
use crate::password;
use crate::persist::{Clock, Loaded, Persist, Snapshot};
use crate::prompt::{Answer, Broker, Frontend};
use crate::store::{validate_principal, Store};
use authd_client::protocol::{
    Call, Choice, DenyReason, EndCause, Event, EventKind, Grant, Provenance, Reason, Reply,
    ReplyBody, Request, RevokeScope, MAX_LINE, MIN_VERSION, VERSION,
};

/// A connection's write half, shared by request threads and broadcasts.
struct Conn {
    writer: Mutex<UnixStream>,
}

impl Conn {
    fn send<T: serde::Serialize>(&self, msg: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&line)
    }

    /// Answers request `id` in protocol version `v`: the request's own, so
    /// that a version 1 client reads its replies (their shape is the same).
    fn reply(&self, v: u32, id: u64, body: ReplyBody) {
        let _ = self.send(&Reply { v, id, body });
    }
}

/// The version to answer a request line in: the one it names when this
/// daemon speaks it, else this daemon's own.
fn answer_version(v: Option<u64>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| (MIN_VERSION..=VERSION).contains(v))
        .unwrap_or(VERSION)
}

/// A connection that asked for grant ends, and the version it asked in.
struct Subscriber {
    conn: Arc<Conn>,
    v: u32,
}

/// The daemon's state.
pub struct Daemon {
    cfg: Config,
    store: Store,
    grants: GrantTable,
    faillock: Faillock,
    rate: PromptRate,
    broker: Broker<ReplyBody>,
    frontend: Frontend,
    audit: Audit,
    subscribers: Mutex<Vec<Subscriber>>,
    /// The runtime state file; `None` when grants and counters are
    /// memory-only (`persist_runtime_state: false`).
    persist: Option<Persist>,
}

fn deny(why: DenyReason) -> ReplyBody {
    ReplyBody::Denied {
        why,
        retry_after_ms: None,
    }
}

/// Blocks SIGTERM and SIGINT in this thread and all threads it starts, so
/// that one thread can take them with `sigwait`. Dialog children get an
/// empty mask back before exec (see `dialog::parent`).
fn block_termination_signals() -> Result<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(Error::io(
                "pthread_sigmask",
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(set)
    }
}

/// Checks the guest-reported and fsd-supplied fields of a request.
fn validate(vm: &str, principal: &str, reason: &Reason) -> bool {
    let plain = |s: &str, max: usize| s.len() <= max && !s.chars().any(char::is_control);
    !vm.is_empty()
        && plain(vm, 128)
        && validate_principal(principal).is_ok()
        && plain(&reason.operation, 64)
        && plain(&reason.path, 4096)
        && plain(&reason.process, 256)
}

impl Daemon {
    /// Sets the daemon up; with persistent runtime state this takes the
    /// state directory's lock (a second daemon on the same state fails
    /// here), and [`Self::serve`] reads the saved state back.
    pub fn new(cfg: Config) -> Result<Arc<Daemon>> {
        let audit = Audit::open(&cfg.audit_log)?;
        let frontend = Frontend::from_config(&cfg);
        let persist = match cfg.persisted_state_dir() {
            Some(dir) => Some(Persist::open(&dir)?),
            None => {
                log::warn!(
                    "runtime state is memory-only (persist_runtime_state: false): \
                     a restart ends every grant and forgets failed passwords"
                );
                None
            }
        };
        Ok(Arc::new(Daemon {
            persist,
            store: Store::new(cfg.state_dir.clone()),
            grants: GrantTable::new(),
            faillock: Faillock::new(cfg.faillock.clone()),
            rate: PromptRate::new(cfg.prompt_rate.clone()),
            broker: Broker::default(),
            frontend,
            audit,
            subscribers: Mutex::new(Vec::new()),
            cfg,
        }))
    }

    /// Binds the socket, reads the saved runtime state back and serves until
    /// SIGTERM or SIGINT. Those save the state and exit, keeping every grant
    /// for the next start (subscribers see their connection close); with
    /// memory-only state they end every grant first (subscribers hear
    /// `locked`).
    pub fn serve(self: &Arc<Self>) -> Result<()> {
        let signals = block_termination_signals()?;
        let path = &self.cfg.socket;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(Error::io(
                    format!("{} exists and is not a socket", path.display()),
                    std::io::ErrorKind::AlreadyExists.into(),
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
        // The uid allow-list is the real gate; the mode keeps strangers out early.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| Error::io("chmod socket", e))?;
        self.audit.record(Record::Started {
            pid: std::process::id(),
        });
        // Before the first request is accepted and the expiry thread runs.
        self.restore_state();
        log::info!(
            "listening on {} (frontend: {})",
            path.display(),
            self.frontend.name()
        );

        let me = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || me.wait_for_termination(signals))
            .map_err(|e| Error::io("spawning signal thread", e))?;

        let me = self.clone();
        std::thread::Builder::new()
            .name("grant-expiry".into())
            .spawn(move || {
                me.grants.run_expiry(|ended| {
                    me.save_state();
                    for g in ended {
                        me.grant_ended(g, EndCause::Expired);
                    }
                })
            })
            .map_err(|e| Error::io("spawning expiry thread", e))?;

        for stream in listener.incoming() {
            match stream {
                Ok(s) => {
                    let me = self.clone();
                    let _ = std::thread::Builder::new()
                        .name("conn".into())
                        .spawn(move || me.handle_conn(s));
                }
                Err(e) => log::warn!("accept: {e}"),
            }
        }
        Ok(())
    }

    fn wait_for_termination(&self, set: libc::sigset_t) {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised signal set; `sig` is a valid out pointer.
        while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
        match &self.persist {
            // A stop is most often a restart (an upgrade, `systemctl
            // restart`): the grants stay, for the next start to restore.
            // Whoever wants them ended says so: `authd lock`.
            Some(p) => {
                // Taken under the file's lock (inside `save_final`): one
                // taken before it could undo a revocation saved meanwhile.
                let kept = std::cell::Cell::new(0);
                let saved = p.save_final(|| {
                    let snapshot = self.snapshot();
                    kept.set(snapshot.grants.len());
                    snapshot
                });
                let kept = kept.get();
                if let Err(e) = saved {
                    log::error!("runtime state: {e}; the next start restores no grant");
                }
                self.audit.record(Record::Stopped { signal: sig, kept });
                log::info!(
                    "signal {sig}: {kept} live grants kept in {} for the next start, exiting",
                    p.path().display()
                );
            }
            None => {
                let ended = self.lock_all();
                self.audit.record(Record::Stopped {
                    signal: sig,
                    kept: 0,
                });
                log::info!("signal {sig}: ended {ended} grants, exiting");
            }
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        std::process::exit(0);
    }

    /// The grants and counters now, in wall-clock time.
    fn snapshot(&self) -> Snapshot {
        let clock = Clock::now();
        Snapshot {
            grants: self.grants.list(),
            faillock: self.faillock.export(&clock),
            prompts: self.rate.export(&clock),
        }
    }

    /// Writes the runtime state after a change. A failure is logged, not
    /// fatal: the daemon goes on deciding from memory, and the file was
    /// made stale, so a restart cannot bring back a grant ended since.
    fn save_state(&self) {
        let Some(p) = &self.persist else { return };
        if let Err(e) = p.save(|| self.snapshot()) {
            log::error!("runtime state: {e}; a restart now restores counters but no grant");
        }
    }

    /// Reads back what the previous daemon saved, and writes the state as
    /// it now is (expired grants gone, counters aged).
    ///
    /// A file that cannot be trusted fails closed: no grant is restored,
    /// and every enrolled principal is locked out for `unlock_time_secs`,
    /// since how many of its guesses were spent is unknown. Starting anyway
    /// (rather than refusing to) keeps `grants`, `revoke` and `lock`
    /// working and heals by itself when the lockout ends; an operator who
    /// knows better stops authd, removes the file and starts it again.
    fn restore_state(&self) {
        let Some(p) = &self.persist else { return };
        let clock = Clock::now();
        match p.load() {
            Loaded::Nothing => log::info!(
                "runtime state: none yet at {}; grants and counters start empty",
                p.path().display()
            ),
            Loaded::Restored {
                state,
                grants_dropped,
                dropped,
            } => {
                let cap = Duration::from_secs(self.cfg.max_grant_secs);
                let expired = self.grants.restore(state.grants, &clock, cap);
                for g in &expired {
                    self.audit.record(Record::GrantEnded {
                        grant: g,
                        cause: EndCause::Expired,
                    });
                }
                self.faillock.restore(state.faillock, &clock);
                self.rate.restore(state.prompts, &clock);
                let grants = self.grants.list().len();
                // Those that still count (aged-out failures are gone).
                let principals = self.faillock.export(&clock).len();
                if let Some(why) = grants_dropped {
                    log::warn!("runtime state: {dropped} saved grants not restored ({why:?})");
                }
                log::info!(
                    "runtime state restored from {}: {grants} live grants, {} expired \
                     while authd was down, failure records of {principals} principals",
                    p.path().display(),
                    expired.len()
                );
                self.audit.record(Record::StateRestored {
                    grants,
                    expired: expired.len(),
                    dropped,
                    grants_dropped,
                    principals,
                });
            }
            Loaded::Unusable(e) => {
                let locked = self.store.principals().unwrap_or_else(|se| {
                    log::error!("store: {se}");
                    Vec::new()
                });
                for principal in &locked {
                    self.faillock.lock_out(principal, clock.mono);
                }
                log::error!(
                    "RUNTIME STATE UNUSABLE: {e}. Failing closed: no grant is restored, \
                     and {} enrolled principals are locked out for {} s. The file is \
                     kept as runtime.json.bad; to start afresh instead, stop authd, \
                     remove it and start again.",
                    locked.len(),
                    self.cfg.faillock.unlock_time_secs
                );
                p.set_aside();
                self.audit.record(Record::StateUnusable {
                    error: &e.to_string(),
                    locked: &locked,
                });
            }
        }
        self.save_state();
    }

    fn handle_conn(self: Arc<Self>, stream: UnixStream) {
        let cred = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("SO_PEERCRED: {e}");
                return;
            }
        };
        let uid = cred.uid.as_raw();
        let writer = match stream.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        // A subscriber that stops reading must not stall broadcasts for long.
        let _ = writer.set_write_timeout(Some(Duration::from_secs(5)));
        let conn = Arc::new(Conn {
            writer: Mutex::new(writer),
        });
        if !self.cfg.allow_uids.contains(&uid) {
            self.audit.record(Record::PeerRejected {
                uid,
                pid: cred.pid.as_raw_nonzero().get(),
            });
            conn.reply(
                VERSION,
                0,
                ReplyBody::Error {
                    message: format!("uid {uid} is not allowed"),
                },
            );
            return;
        }

        let mut reader = BufReader::new(stream);
        loop {
            let mut buf = Vec::new();
            match (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.last() != Some(&b'\n') => {
                    conn.reply(
                        VERSION,
                        0,
                        ReplyBody::Error {
                            message: "line too long".into(),
                        },
                    );
                    break;
                }
                Ok(_) => {}
            }
            let req: Request = match serde_json::from_slice(&buf) {
                Ok(r) => r,
                Err(e) => {
                    // Still answer with the id and version if they can be read.
                    let line = serde_json::from_slice::<serde_json::Value>(&buf).ok();
                    let field = |name: &str| line.as_ref().and_then(|l| l.get(name)?.as_u64());
                    conn.reply(
                        answer_version(field("v")),
                        field("id").unwrap_or(0),
                        ReplyBody::Error {
                            message: format!("bad request: {e}"),
                        },
                    );
                    continue;
                }
            };
            if !(MIN_VERSION..=VERSION).contains(&req.v) {
                conn.reply(
                    VERSION,
                    req.id,
                    ReplyBody::Error {
                        message: format!(
                            "unsupported version {}, this is {VERSION} (accepts {MIN_VERSION} to {VERSION})",
                            req.v
                        ),
                    },
                );
                continue;
            }
            self.dispatch(req, &conn);
        }
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| !Arc::ptr_eq(&s.conn, &conn));
    }

    fn dispatch(self: &Arc<Self>, req: Request, conn: &Arc<Conn>) {
        let (v, id) = (req.v, req.id);
        match req.call {
            Call::Authenticate {
                vm,
                principal,
                mut reason,
                lifetime_secs,
            } => {
                let provenance = Provenance::of_version(v);
                if provenance == Provenance::Guest {
                    // Version 1 has no such field; nothing was checked.
                    reason.pid_verified = false;
                }
                let me = self.clone();
                let to = conn.clone();
                let spawned = std::thread::Builder::new()
                    .name("authenticate".into())
                    .spawn(move || {
                        let body =
                            me.authenticate(&vm, &principal, &reason, provenance, lifetime_secs);
                        to.reply(v, id, body);
                    });
                if spawned.is_err() {
                    conn.reply(v, id, deny(DenyReason::Internal));
                }
            }
            Call::Confirm {
                vm,
                principal,
                question,
            } => {
                let me = self.clone();
                let to = conn.clone();
                let spawned = std::thread::Builder::new()
                    .name("confirm".into())
                    .spawn(move || to.reply(v, id, me.confirm(&vm, &principal, &question)));
                if spawned.is_err() {
                    conn.reply(v, id, deny(DenyReason::Internal));
                }
            }
            Call::ListGrants => conn.reply(
                v,
                id,
                ReplyBody::Grants {
                    grants: self.grants.list(),
                },
            ),
            Call::Revoke { scope } => {
                let ended = self.grants.revoke(&scope);
                let count = ended.len();
                // Saved before anyone hears of it: a revoked grant never
                // comes back with a restart.
                if count > 0 {
                    self.save_state();
                }
                for g in &ended {
                    self.grant_ended(g, EndCause::Revoked);
                }
                conn.reply(v, id, ReplyBody::Revoked { count });
            }
            Call::Lock => {
                let count = self.lock_all();
                conn.reply(v, id, ReplyBody::Revoked { count });
            }
            Call::Subscribe => {
                self.subscribers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Subscriber {
                        conn: conn.clone(),
                        v,
                    });
                conn.reply(v, id, ReplyBody::Subscribed);
            }
        }
    }

    /// Ends every grant; returns how many there were.
    pub fn lock_all(&self) -> usize {
        let ended = self.grants.revoke(&RevokeScope::All);
        if !ended.is_empty() {
            self.save_state();
        }
        for g in &ended {
            self.grant_ended(g, EndCause::Locked);
        }
        ended.len()
    }

    fn grant_ended(&self, grant: &Grant, cause: EndCause) {
        self.audit.record(Record::GrantEnded { grant, cause });
        let kind = EventKind::GrantEnded {
            grant: grant.clone(),
            cause,
        };
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| {
                let event = Event {
                    v: s.v,
                    kind: kind.clone(),
                };
                s.conn.send(&event).is_ok()
            });
    }

    /// Decides one authentication request (coalesced with identical ones).
    /// `provenance` says whether the caller vouches for the reason's
    /// operation and path (what the prompt may show as the host's facts).
    pub fn authenticate(
        &self,
        vm: &str,
        principal: &str,
        reason: &Reason,
        provenance: Provenance,
        lifetime_secs: u64,
    ) -> ReplyBody {
        if !validate(vm, principal, reason) || lifetime_secs == 0 {
            return deny(DenyReason::BadRequest);
        }
        let lifetime = Duration::from_secs(lifetime_secs.min(self.cfg.max_grant_secs));
        let body = self.broker.run(
            vm,
            principal,
            || self.authenticate_alone(vm, principal, reason, provenance, lifetime),
            deny(DenyReason::Internal),
        );
        if let ReplyBody::Denied { why, .. } = &body {
            self.audit.record(Record::Denied {
                vm,
                principal,
                reason,
                why: *why,
            });
        }
        body
    }

    /// Puts a host service's question to `principal` in the dialog with
    /// their seal: no password, no grant, allow once or always, or a
    /// denial. Prompts are serialised per VM and rate-limited like password
    /// prompts (the question is caused by the guest's traffic).
    pub fn confirm(&self, vm: &str, principal: &str, question: &str) -> ReplyBody {
        let plain = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
        };
        if !plain(vm, 128) || validate_principal(principal).is_err() || !plain(question, 1024) {
            return deny(DenyReason::BadRequest);
        }
        // A key of its own in the broker: a question never shares the
        // answer of a password prompt, nor of another question.
        let key = format!("{principal}\u{1f}confirm\u{1f}{question}");
        let body = self.broker.run(
            vm,
            &key,
            || self.confirm_alone(vm, principal, question),
            deny(DenyReason::Internal),
        );
        match &body {
            ReplyBody::Confirmed { choice } => self.audit.record(Record::Confirmed {
                vm,
                principal,
                question,
                choice: *choice,
            }),
            ReplyBody::Denied { why, .. } => self.audit.record(Record::ConfirmDenied {
                vm,
                principal,
                question,
                why: *why,
            }),
            _ => {}
        }
        body
    }

    fn confirm_alone(&self, vm: &str, principal: &str, question: &str) -> ReplyBody {
        let user = match self.store.user(principal) {
            Ok(Some(u)) => u,
            Ok(None) => return deny(DenyReason::UnknownPrincipal),
            Err(e) => {
                log::error!("store: {e}");
                return deny(DenyReason::Internal);
            }
        };
        if matches!(self.frontend, Frontend::None) {
            return deny(DenyReason::NoFrontend);
        }
        if let Err(wait) = self.rate.try_take(vm, Instant::now()) {
            return ReplyBody::Denied {
                why: DenyReason::RateLimited,
                retry_after_ms: Some(wait.as_millis() as u64),
            };
        }
        self.save_state();
        let reason = Reason {
            operation: "confirm".into(),
            ..Reason::default()
        };
        let request = DialogRequest {
            vm: vm.to_owned(),
            principal: principal.to_owned(),
            reason: reason.clone(),
            seal: user.seal.clone(),
            timeout_secs: self.cfg.prompt_timeout_secs,
            focus_delay_ms: self.cfg.focus_delay_ms,
            question: Some(question.to_owned()),
            vm_window_titles: self.cfg.vm_window_titles.clone(),
            // The question is the host service's own text; the process
            // facts inside it are the guest's, and it says so.
            provenance: Provenance::Host,
        };
        self.audit.record(Record::Prompt {
            vm,
            principal,
            reason: &reason,
            provenance: Provenance::Host,
            frontend: self.frontend.name(),
        });
        let asked = Instant::now();
        let mut on_shown = || {
            self.audit.record(Record::PromptShown {
                vm,
                principal,
                latency_ms: asked.elapsed().as_secs_f64() * 1e3,
            })
        };
        match self.frontend.ask(&request, &mut on_shown) {
            Ok(Answer::Allowed { always }) => ReplyBody::Confirmed {
                choice: if always { Choice::Always } else { Choice::Once },
            },
            Ok(Answer::Cancelled) => deny(DenyReason::Cancelled),
            Ok(Answer::TimedOut) => deny(DenyReason::Timeout),
            // A question has no password field.
            Ok(Answer::Password(_)) => deny(DenyReason::Internal),
            Err(e) => {
                log::error!("prompt: {e}");
                deny(DenyReason::Internal)
            }
        }
    }

    /// The decision proper; the broker guarantees no other prompt for this VM runs.
    fn authenticate_alone(
        &self,
        vm: &str,
        principal: &str,
        reason: &Reason,
        provenance: Provenance,
        lifetime: Duration,
    ) -> ReplyBody {
        if let Some(grant) = self.grants.find_live(vm, principal) {
            self.audit.record(Record::Granted {
                vm,
                principal,
                reason,
                grant: &grant,
                reused: true,
            });
            return ReplyBody::Granted { grant };
        }
        let user = match self.store.user(principal) {
            Ok(Some(u)) => u,
            Ok(None) => return deny(DenyReason::UnknownPrincipal),
            Err(e) => {
                log::error!("store: {e}");
                return deny(DenyReason::Internal);
            }
        };
        let delay = match self.faillock.state(principal, Instant::now()) {
            FailState::Locked { remaining } => {
                return ReplyBody::Denied {
                    why: DenyReason::Locked,
                    retry_after_ms: Some(remaining.as_millis() as u64),
                }
            }
            FailState::Allowed { delay } => delay,
        };
        if matches!(self.frontend, Frontend::None) {
            return deny(DenyReason::NoFrontend);
        }
        if let Err(wait) = self.rate.try_take(vm, Instant::now()) {
            return ReplyBody::Denied {
                why: DenyReason::RateLimited,
                retry_after_ms: Some(wait.as_millis() as u64),
            };
        }
        self.save_state();
        std::thread::sleep(delay);

        let request = DialogRequest {
            vm: vm.to_owned(),
            principal: principal.to_owned(),
            reason: reason.clone(),
            provenance,
            seal: user.seal.clone(),
            timeout_secs: self.cfg.prompt_timeout_secs,
            focus_delay_ms: self.cfg.focus_delay_ms,
            question: None,
            vm_window_titles: self.cfg.vm_window_titles.clone(),
        };
        self.audit.record(Record::Prompt {
            vm,
            principal,
            reason,
            provenance,
            frontend: self.frontend.name(),
        });
        let asked = Instant::now();
        let mut on_shown = || {
            self.audit.record(Record::PromptShown {
                vm,
                principal,
                latency_ms: asked.elapsed().as_secs_f64() * 1e3,
            })
        };
        let password = match self.frontend.ask(&request, &mut on_shown) {
            Ok(Answer::Password(p)) => p,
            Ok(Answer::Cancelled) => return deny(DenyReason::Cancelled),
            Ok(Answer::TimedOut) => return deny(DenyReason::Timeout),
            // A password prompt has no allow buttons.
            Ok(Answer::Allowed { .. }) => return deny(DenyReason::Internal),
            Err(e) => {
                log::error!("prompt: {e}");
                return deny(DenyReason::Internal);
            }
        };
        let t = Instant::now();
        let ok = password::verify(password.as_bytes(), &user.phc);
        drop(password);
        let verify_ms = t.elapsed().as_secs_f64() * 1e3;
        match ok {
            Ok(true) => {
                self.audit.record(Record::Verified {
                    principal,
                    ok: true,
                    verify_ms,
                });
                self.faillock.record_success(principal);
                let grant = self.grants.issue(vm, principal, lifetime);
                self.save_state();
                self.audit.record(Record::Granted {
                    vm,
                    principal,
                    reason,
                    grant: &grant,
                    reused: false,
                });
                ReplyBody::Granted { grant }
            }
            Ok(false) => {
                self.audit.record(Record::Verified {
                    principal,
                    ok: false,
                    verify_ms,
                });
                if self.faillock.record_failure(principal, Instant::now()) {
                    log::warn!("principal {principal} locked after repeated failures");
                }
                self.save_state();
                deny(DenyReason::WrongPassword)
            }
            Err(e) => {
                log::error!("verify {principal}: {e}");
                deny(DenyReason::Internal)
            }
        }
    }
}
