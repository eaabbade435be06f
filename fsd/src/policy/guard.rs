//! The decision for one request on a labelled file.
//!
//! For a node without a label the check is one hash lookup and returns.
//! For a protected node: a live grant of the rule's owner allows; otherwise
//! the rule says deny (EACCES) or ask authd. Asking blocks the request until
//! the person answers, so it is only done on a thread that may wait (the
//! dispatcher moves such requests off the queue threads first, see
//! [`Guard::would_wait`]); anywhere else the answer is EACCES. Every failure
//! (authd down, timeout, malformed reply) is a denial.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::audit::{rfc3339, AuditLog, Record};
use super::file::{CacheRule, Missing, Policy, PolicyError, Protect};
use super::grants::{AccessRequest, GrantSource};
use super::inherit::Readers;
use super::labels::{InodeKey, Labels};

/// The kind of access a request makes, as a policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Metadata,
    Exec,
}

impl Op {
    fn protect(self) -> Protect {
        match self {
            Op::Read => Protect::READ,
            Op::Write => Protect::WRITE,
            Op::Metadata => Protect::METADATA,
            Op::Exec => Protect::EXEC,
        }
    }
}

/// What kind of access is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// An open, a change, a directory operation: logged, and may ask authd.
    Request,
    /// I/O through a handle opened earlier: allowed silently under a live
    /// grant, refused without one. It never asks: the grant it was opened
    /// under has ended, and a program retrying its reads must not turn into
    /// a stream of prompts. Opening again asks.
    Handle,
}

/// What the file system found out about the target of one access.
#[derive(Debug)]
pub enum Found {
    /// Not protected.
    Public,
    /// Protected by `rule`; `key` names the host inode.
    Protected { rule: u32, key: InodeKey },
    /// Finding out failed (descriptors or memory exhausted, a race, an I/O
    /// error): the access is denied and audited, never taken as public.
    Undecided(io::Error),
}

thread_local! {
    static MAY_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with permission to wait for authd on this thread.
pub fn waiting_allowed<R>(f: impl FnOnce() -> R) -> R {
    MAY_WAIT.with(|w| w.set(true));
    let r = f();
    MAY_WAIT.with(|w| w.set(false));
    r
}

fn eacces() -> io::Error {
    io::Error::from_raw_os_error(libc::EACCES)
}

/// Policy state of one fsd (one VM).
pub struct Guard {
    vm: String,
    policy: RwLock<Arc<Policy>>,
    pub labels: Labels,
    /// Pids that read files whose rule inherits (see [`super::inherit`]).
    pub readers: Readers,
    grants: Arc<dyn GrantSource>,
    audit: AuditLog,
    /// Host inodes read under each principal's current grant: what the
    /// guest may have cached, to be flushed when the grant ends.
    read_under_grant: Mutex<HashMap<String, HashSet<InodeKey>>>,
    /// Reads the policy file again for SIGHUP (through the broker once
    /// sandboxed: host paths are gone then).
    reread: PolicyReader,
    /// The share root as the daemon names it (for rescans on reload).
    share_root: std::path::PathBuf,
    /// Counts policy reloads.
    generation: std::sync::atomic::AtomicU64,
}

/// Reads the current text of the policy file.
pub type PolicyReader = Box<dyn Fn() -> io::Result<String> + Send + Sync>;

impl Guard {
    pub fn new(
        vm: String,
        policy: Policy,
        audit: AuditLog,
        grants: Arc<dyn GrantSource>,
        reread: PolicyReader,
        share_root: std::path::PathBuf,
    ) -> Self {
        Guard {
            vm,
            policy: RwLock::new(Arc::new(policy)),
            labels: Labels::default(),
            readers: Readers::default(),
            grants,
            audit,
            read_under_grant: Mutex::new(HashMap::new()),
            reread,
            share_root,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A counter that moves with every change of what protects what: policy
    /// reloads and labels on directories. Answers remembered under one
    /// value are not trusted under another.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire) + self.labels.dir_changes()
    }

    pub fn vm(&self) -> &str {
        &self.vm
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap().clone()
    }

    fn audit(&self, principal: &str, op: &str, path: &str, pid: u32, outcome: &str) {
        self.audit.write(&Record {
            time: rfc3339(SystemTime::now()),
            vm: &self.vm,
            principal,
            op,
            path,
            guest_reported_pid: pid,
            outcome,
        });
    }

    /// Whether a request on a labelled inode would have to wait for authd:
    /// `ask`, and no live grant. Used to move it off the queue thread.
    pub fn would_wait(&self, rule: Option<u32>) -> bool {
        let Some(r) = rule else {
            return false;
        };
        let p = self.policy();
        match p.rule(r) {
            Some(rule) => {
                !rule.tracks_only()
                    && rule.without_grant == Missing::Ask
                    && !self.grants.is_live(&self.vm, &rule.owner)
            }
            None => false,
        }
    }

    /// How the guest may cache an inode labelled with `rule`.
    pub fn cache_rule(&self, rule: u32) -> CacheRule {
        self.policy()
            .rule(rule)
            .map_or(CacheRule::Direct, |rule| rule.cache)
    }

    /// Whether an inode labelled with `rule` is opened with direct I/O: it
    /// is protected and its rule keeps it out of the guest's page cache. A
    /// rule that only tracks changes nothing about caching.
    pub fn direct_io(&self, rule: u32) -> bool {
        self.policy()
            .rule(rule)
            .map_or(true, |r| !r.tracks_only() && r.cache == CacheRule::Direct)
    }

    /// The path pattern of `rule` (its identity on the wire), if its files
    /// are taint sources.
    pub fn confidential_pattern(&self, rule: u32) -> Option<String> {
        self.policy()
            .rule(rule)
            .filter(|r| r.confidential)
            .map(|r| r.pattern.clone())
    }

    /// A process read (or opened for reading) a file labelled with `rule`:
    /// remember it when the rule inherits.
    pub fn note_read(&self, guest_pid: u32, rule: u32) {
        if self.policy().rule(rule).is_some_and(|r| r.inherit) {
            self.readers.note(guest_pid, rule);
        }
    }

    /// Records in the audit log that an inode got `rule`'s label because
    /// data of that rule was written into it (`why` says who saw it).
    pub fn audit_inherited(&self, rule: u32, path: &str, guest_pid: u32, why: &str) {
        let owner = self
            .policy()
            .rule(rule)
            .map_or_else(|| "?".to_string(), |r| r.owner.clone());
        self.audit(
            &owner,
            "inherit",
            path,
            guest_pid,
            &format!("labelled: {why}"),
        );
    }

    /// Decides one access. `found` is what the file system found out about
    /// the target; `path` names it in the audit log and the prompt (asked
    /// for only when a line is written); `what` names the operation;
    /// `access` says whether it is a request (logged, may ask) or I/O on an
    /// open handle (see [`Access`]).
    pub fn check(
        &self,
        found: Found,
        path: &dyn Fn() -> Arc<str>,
        op: Op,
        what: &str,
        guest_pid: u32,
        access: Access,
    ) -> io::Result<()> {
        let (r, key) = match found {
            Found::Public => return Ok(()),
            Found::Protected { rule, key } => (rule, key),
            Found::Undecided(e) => {
                self.audit(
                    "?",
                    what,
                    &path(),
                    guest_pid,
                    &format!("denied: cannot decide: {e}"),
                );
                return Err(eacces());
            }
        };
        let policy = self.policy();
        let Some(rule) = policy.rule(r) else {
            self.audit("?", what, &path(), guest_pid, "denied: policy changing");
            return Err(eacces());
        };
        if rule.tracks_only() {
            // Confidential, not protected: taint tracking's business only.
            return Ok(());
        }
        if !rule.protect.contains(op.protect()) {
            if access == Access::Request {
                self.audit(
                    &rule.owner,
                    what,
                    &path(),
                    guest_pid,
                    "allowed: the rule does not cover this operation",
                );
            }
            return Ok(());
        }
        if self.grants.is_live(&self.vm, &rule.owner) {
            if op == Op::Read {
                self.read_under_grant
                    .lock()
                    .unwrap()
                    .entry(rule.owner.clone())
                    .or_default()
                    .insert(key);
            }
            if access == Access::Request {
                self.audit(&rule.owner, what, &path(), guest_pid, "allowed");
            }
            return Ok(());
        }
        match rule.without_grant {
            Missing::Deny => {
                self.audit(&rule.owner, what, &path(), guest_pid, "denied: no grant");
                Err(eacces())
            }
            Missing::Ask if access == Access::Handle => {
                self.audit(
                    &rule.owner,
                    what,
                    &path(),
                    guest_pid,
                    "denied: the grant this handle was opened under has ended",
                );
                Err(eacces())
            }
            Missing::Ask => {
                let path = path();
                if !MAY_WAIT.with(|w| w.get()) {
                    self.audit(
                        &rule.owner,
                        what,
                        &path,
                        guest_pid,
                        "denied: cannot wait for authd here",
                    );
                    return Err(eacces());
                }
                let req = AccessRequest {
                    vm: self.vm.clone(),
                    principal: rule.owner.clone(),
                    operation: what.to_owned(),
                    path: path.to_string(),
                    guest_pid,
                    lifetime: rule.grant,
                };
                match self.grants.ask(&req, policy.ask_timeout) {
                    Ok(()) => {
                        self.audit(
                            &rule.owner,
                            what,
                            &path,
                            guest_pid,
                            "allowed: granted by authd",
                        );
                        Ok(())
                    }
                    Err(e) => {
                        self.audit(&rule.owner, what, &path, guest_pid, &format!("denied: {e}"));
                        Err(eacces())
                    }
                }
            }
        }
    }

    /// A grant ended (pushed by authd, or expired): the host inodes the
    /// guest read under it, which it may still have cached.
    pub fn grant_ended(&self, principal: &str) -> HashSet<InodeKey> {
        self.audit(principal, "grant-end", "", 0, "ended");
        self.read_under_grant
            .lock()
            .unwrap()
            .remove(principal)
            .unwrap_or_default()
    }

    /// For a live handover: the host inodes read under each principal's
    /// grant, so that the successor still has them flushed when the grant
    /// ends.
    pub fn read_under_grants(&self) -> Vec<(String, Vec<InodeKey>)> {
        self.read_under_grant
            .lock()
            .unwrap()
            .iter()
            .map(|(p, set)| (p.clone(), set.iter().copied().collect()))
            .collect()
    }

    /// Takes over a predecessor's [`Self::read_under_grants`].
    pub fn restore_read_under_grants(&self, read: Vec<(String, Vec<InodeKey>)>) {
        let mut map = self.read_under_grant.lock().unwrap();
        for (principal, keys) in read {
            map.entry(principal).or_default().extend(keys);
        }
    }

    /// Re-reads the policy file. A bad file keeps the old policy and says why.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let old = self.policy();
        let err = |m: String| PolicyError {
            file: old.source.clone(),
            line: None,
            message: m,
        };
        let src = (self.reread)().map_err(|e| err(format!("cannot read: {e}")))?;
        let new = Policy::parse(&old.source, &src)?;
        if new.vm(&self.vm).is_none() {
            return Err(err(format!(
                "the new policy does not name this VM ({})",
                self.vm
            )));
        }
        self.labels.remap(&old, &new);
        // Rules are renumbered: forget which pids read what (the monitor,
        // when there is one, still knows).
        self.readers.clear();
        let labelled = self.labels.relabel(&new, &self.share_root);
        log::info!("policy reload: {labelled} files match the new rules");
        *self.policy.write().unwrap() = Arc::new(new);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Err(e) = self.audit.reopen() {
            log::error!("audit log: {e}");
        }
        Ok(())
    }
}
