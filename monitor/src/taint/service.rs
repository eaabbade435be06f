//! Taint tracking as the daemon serves it: the engine behind a lock, its
//! journal, and what its effects set off (audit lines, watchers, freezes).
//!
//! Batches are applied and journaled under one lock, so the journal's order
//! is the order the engine saw. Everything that may take time or touch
//! other parts (writing alerts, waking watchers, freezing) happens after
//! the lock is released.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use monitor_client::taint_report::{
    DerivedFile, Query, Subject, TaintNotice, TaintStatus, TaintedEntry, VmEntry,
};

use super::alert::{now_ms, AuditLog, Freezer, NoFreezer, Subscription, Watchers};
use super::engine::{Effects, Engine, EngineConfig, Input, Record, VmId};
use super::journal::{Journal, Restored};
use super::{TaintConfig, TaintError};

struct Inner {
    engine: Engine,
    journal: Option<Journal>,
    /// Stopped ([`TaintService::close`]): no batch is taken in any more.
    closed: bool,
}

/// The engine, its persistence and its outlets.
pub struct TaintService {
    inner: Mutex<Inner>,
    watchers: Watchers,
    audit: Option<AuditLog>,
    freezer: OnceLock<Arc<dyn Freezer>>,
}

impl TaintService {
    /// Taint tracking as `config` says, with `internal` the addresses of
    /// the host's VMs. Restores the state kept in `config.state_dir`.
    pub fn open(
        config: &TaintConfig,
        internal: HashSet<IpAddr>,
    ) -> Result<(TaintService, Option<Restored>), TaintError> {
        let engine_config = EngineConfig {
            limits: config.limits.clone(),
            internal,
            freeze_on_leak: config.freeze_on_leak,
        };
        let (engine, journal, restored) = match &config.state_dir {
            Some(dir) => {
                let (j, e, r) = Journal::open(dir, config.journal_sync, engine_config, now_ms())?;
                (e, Some(j), Some(r))
            }
            None => (Engine::new(engine_config), None, None),
        };
        let audit = config
            .audit_log
            .as_deref()
            .map(AuditLog::open)
            .transpose()?;
        Ok((
            TaintService {
                inner: Mutex::new(Inner {
                    engine,
                    journal,
                    closed: false,
                }),
                watchers: Watchers::default(),
                audit,
                freezer: OnceLock::new(),
            },
            restored,
        ))
    }

    /// In memory only, no audit log.
    pub fn in_memory(config: EngineConfig) -> TaintService {
        TaintService {
            inner: Mutex::new(Inner {
                engine: Engine::new(config),
                journal: None,
                closed: false,
            }),
            watchers: Watchers::default(),
            audit: None,
            freezer: OnceLock::new(),
        }
    }

    /// Sets the freezer (once; the daemon's needs the daemon's state).
    pub fn set_freezer(&self, f: Arc<dyn Freezer>) {
        let _ = self.freezer.set(f);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one batch of `vm`, stamped with the time now.
    pub fn ingest(&self, vm: VmId, input: Input) -> Result<Effects, TaintError> {
        self.ingest_record(Record {
            at_ms: now_ms(),
            vm,
            input,
        })
    }

    /// Applies one batch as given. The batch is journaled (and a VM seen
    /// for the first time recorded in the manifest) before it is applied,
    /// and so before its producer is answered: a batch that cannot be kept
    /// is refused, not applied, and its producer counts it as lost, so that
    /// the state a restart brings back is never less than what was
    /// answered.
    pub fn ingest_record(&self, rec: Record) -> Result<Effects, TaintError> {
        let fx = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(TaintError::Closed);
            }
            let Inner {
                engine, journal, ..
            } = &mut *inner;
            let new_vm = engine.vm(&rec.vm.uuid).is_none();
            if new_vm {
                engine.admits(&rec.vm)?;
            }
            if let Some(j) = journal {
                if new_vm {
                    j.remember(&rec.vm)?;
                }
                j.append(&rec)?;
            }
            let fx = engine.apply_with(&rec, !self.watchers.is_empty())?;
            if let Some(j) = journal.as_mut().filter(|j| j.due()) {
                // The journal holds the batch: a snapshot that fails now
                // is tried again at the next batch.
                if let Err(e) = j.snapshot(engine) {
                    log::error!("taint snapshot not written: {e}");
                }
            }
            fx
        };
        for n in &fx.notices {
            if matches!(n, TaintNotice::Leak { .. }) {
                self.log_notice(n);
            }
        }
        self.watchers.publish(&fx.notices);
        if !fx.freezes.is_empty() {
            let freezer = self
                .freezer
                .get_or_init(|| Arc::new(NoFreezer) as Arc<dyn Freezer>);
            for order in &fx.freezes {
                freezer.freeze(order.clone());
            }
        }
        Ok(fx)
    }

    fn log_notice(&self, n: &TaintNotice) {
        if let TaintNotice::Leak { alert } = n {
            log::warn!(
                "taint leak: {} pid {} ({}) sent to {} ({}); chain of {}",
                alert.vm_name,
                alert.pid,
                alert.name,
                alert.destination,
                super::graph::transport(alert.transport),
                alert.chain.len()
            );
        }
        if let Some(a) = &self.audit {
            if let Err(e) = a.write(n) {
                log::error!("{e}");
            }
        }
    }

    /// The outcome of a freeze a leak asked for: to the audit log and the
    /// watchers.
    pub fn freeze_done(&self, vm: &VmId, pid: u32, outcome: Result<String, String>) {
        let (ok, message) = match outcome {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        let n = TaintNotice::Freeze {
            vm: vm.uuid.clone(),
            pid,
            ok,
            message,
        };
        self.log_notice(&n);
        self.watchers.publish(&[n]);
    }

    /// A new watcher.
    pub fn watch(&self) -> Subscription {
        self.watchers.subscribe()
    }

    /// Status of one VM (by UUID) or of all.
    pub fn status(&self, uuid: Option<&str>) -> TaintStatus {
        let inner = self.lock();
        let mut s = inner.engine.status(uuid);
        s.persistent = inner.journal.is_some();
        s
    }

    pub fn query(&self, uuid: &str, q: &Query) -> (Option<TaintedEntry>, bool) {
        self.lock().engine.query(uuid, q)
    }

    pub fn graph(&self, uuid: &str) -> Vec<VmEntry> {
        self.lock().engine.graph(uuid)
    }

    pub fn chain(&self, uuid: &str, s: &Subject) -> (Vec<VmEntry>, bool) {
        self.lock().engine.chain(uuid, s)
    }

    pub fn derived_after(&self, uuid: &str, after: u64, max: usize) -> (Vec<DerivedFile>, u64) {
        self.lock().engine.derived_after(uuid, after, max)
    }

    /// Whether the engine has state for this VM.
    pub fn knows(&self, uuid: &str) -> bool {
        self.lock().engine.vm(uuid).is_some()
    }

    /// The UUID of the VM last addressed by `name`.
    pub fn uuid_of_name(&self, name: &str) -> Option<String> {
        self.lock().engine.uuid_of_name(name).map(str::to_owned)
    }

    /// The name a VM was last addressed by.
    pub fn name_of(&self, uuid: &str) -> Option<String> {
        self.lock().engine.vm(uuid).map(|v| v.id.name.clone())
    }

    /// Writes a snapshot now.
    pub fn snapshot(&self) -> Result<(), TaintError> {
        let mut inner = self.lock();
        let Inner {
            engine, journal, ..
        } = &mut *inner;
        match journal {
            Some(j) => j.snapshot(engine),
            None => Ok(()),
        }
    }

    /// Stops taking batches in and leaves the state as a clean stop does
    /// (a last snapshot, a manifest that says so): the monitor exits next.
    /// A batch that was being applied is applied and journaled first; one
    /// that comes later is refused ([`TaintError::Closed`]), and its
    /// producer counts it as lost. Queries are still answered.
    pub fn close(&self) -> Result<(), TaintError> {
        let mut inner = self.lock();
        inner.closed = true;
        let Inner {
            engine, journal, ..
        } = &mut *inner;
        match journal {
            Some(j) => j.close(engine),
            None => Ok(()),
        }
    }
}
