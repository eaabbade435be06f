//! The taint engine: propagation rules applied to batches of events.
//!
//! The engine is a pure state machine: a [`Record`] (one batch of events of
//! one VM, stamped with the time the monitor received it) goes in, the
//! tables change, and [`Effects`] come out (notices for watchers, leak
//! alerts, processes to freeze, files derived from a rule). It does no I/O
//! and reads no clock, so replaying the journal rebuilds exactly the state
//! the daemon had, and tests drive it with synthetic events.
//!
//! Rules (docs/taint.md):
//!
//! * a file fsd reports with a rule is a **source**;
//! * a process that opens or reads a tainted file becomes tainted;
//! * a file written by a tainted process becomes tainted (and, when the
//!   taint comes from a rule, **derived** from it);
//! * a child forked by a tainted process is tainted; exec keeps taint;
//! * a socket a tainted process sends on is tainted; a process that
//!   receives from a tainted socket becomes tainted; a flow between two VMs
//!   of this host carries taint from one VM's tables into the other's;
//! * a tainted process sending to an INET destination outside the host's
//!   VMs raises a **leak alert**.
//!
//! Processes are keyed by their leader's `task_struct` address and start
//! time, never by pid: a pid is only an index into the VM's process view
//! (what the hooks said each pid is now), so a new process under a reused
//! pid starts clean. A pid fsd reports that the view does not know is kept
//! as an unverified process, and identified when a hook names it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::restart::{Continuity, Heard, Lost};
use super::rules::{Leak, Step};
use super::tables::{Bounded, Stored};
use super::{Limits, TaintError};
use crate::report::Process;
use monitor_client::taint::{FileEvent, GuestEvent, PluginSeq};
use monitor_client::taint_report::{
    DerivedFile, LeakAlert, Origin, Query, Subject, SubjectKind, TaintNotice, TaintStatus,
    TaintedEntry, VmEntry, VmTaintStatus,
};

/// A VM as the engine knows it: its SMBIOS UUID (the key) and the name it
/// was last addressed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmId {
    pub uuid: String,
    pub name: String,
}

/// One batch of events of one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// From fsd; `dropped` is fsd's count of events lost since it started.
    Files {
        events: Vec<FileEvent>,
        dropped: u64,
    },
    /// From hooks in the guest kernel; `dropped` as for fsd, `seq` the
    /// plugin's numbers the batch accounts for (when it numbers them).
    Guest {
        events: Vec<GuestEvent>,
        dropped: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<PluginSeq>,
    },
    /// A process list the monitor read itself (`ps`): the pids that exist.
    Processes { processes: Vec<Process> },
    /// The monitor started again with this VM's state: events of the time
    /// it was down may be lost, and `lost` names causes known to have lost
    /// some for good (see [`super::restart`]).
    Restarted {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lost: Vec<Lost>,
    },
}

/// An input with its VM and the time it arrived: what the journal stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub vm: VmId,
    #[serde(flatten)]
    pub input: Input,
}

/// A leak's process to freeze (`freeze_on_leak`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreezeOrder {
    pub vm: VmId,
    /// The process (its tgid).
    pub pid: u32,
    pub task: u64,
}

/// What a batch caused.
#[derive(Debug, Default)]
pub struct Effects {
    /// Events taken in.
    pub accepted: u64,
    /// For watchers, in order: leaks, and (when asked for, see
    /// [`Engine::apply_with`]) every entry tainted.
    pub notices: Vec<TaintNotice>,
    /// Files the batch made derived from a rule.
    pub derived: Vec<DerivedFile>,
    /// Processes to freeze.
    pub freezes: Vec<FreezeOrder>,
}

impl Effects {
    /// The leak alerts among the notices.
    pub fn alerts(&self) -> impl Iterator<Item = &LeakAlert> {
        self.notices.iter().filter_map(|n| match n {
            TaintNotice::Leak { alert } => Some(alert),
            _ => None,
        })
    }
}

/// A tainted entry as stored (its subject is the key, `ended` the table's
/// retired flag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub origin: Origin,
    pub verified: bool,
}

/// What a pid is now, in the VM's process view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ident {
    pub tgid: u32,
    pub task: u64,
    /// 0 when not known (seen in a process list, not by a hook).
    pub start: u64,
    pub comm: String,
}

impl Ident {
    pub(super) fn subject(&self) -> Subject {
        Subject::Process {
            task: self.task,
            start_time: self.start,
        }
    }
}

/// A flow between VMs of this host that carries taint: which VM's tables
/// hold it, and what its taint is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowMark {
    pub vm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub verified: bool,
}

/// Counters of one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub file_events: u64,
    pub guest_events: u64,
    pub rejected: u64,
    pub fsd_dropped: u64,
    /// The last cumulative count fsd reported (it restarts from 0 when fsd
    /// restarts).
    pub fsd_dropped_last: u64,
    pub hooks_dropped: u64,
    pub hooks_dropped_last: u64,
    pub evicted: u64,
    pub alerts: u64,
}

impl Counters {
    /// Adds a producer's cumulative drop count to `total`.
    pub(super) fn add_dropped(total: &mut u64, last: &mut u64, reported: u64) {
        *total += if reported >= *last {
            reported - *last
        } else {
            reported
        };
        *last = reported;
    }
}

/// The tables of one VM.
#[derive(Debug, Clone)]
pub struct VmState {
    pub id: VmId,
    pub(super) files: Bounded<Subject, Node>,
    pub(super) procs: Bounded<Subject, Node>,
    pub(super) unix: Bounded<Subject, Node>,
    pub(super) inet: Bounded<Subject, Node>,
    /// The process view: thread id -> its process.
    pub(super) known: Bounded<u32, Ident>,
    pub(super) derived: VecDeque<DerivedFile>,
    pub(super) derived_next: u64,
    /// (process, destination) pairs already alerted.
    pub(super) alerted: Bounded<(Subject, SocketAddr), ()>,
    /// Forks and sends of processes that were clean when they were applied,
    /// newest last (at most [`RECENT`]): fsd's report of a read made just
    /// before them can arrive after them, and then they are applied again
    /// (see `rules::Step::replay`). Kept in snapshots too: a restart may
    /// take less than the seconds they matter for.
    pub(super) recent: VecDeque<Recent>,
    pub counters: Counters,
    /// What restarts of the monitor may have cost, and what showed since
    /// that they cost nothing.
    pub(super) continuity: Continuity,
    /// When the VM's last batch came (ms): of two VMs that were given the
    /// same name, the later one is the name's.
    pub(super) last_at_ms: u64,
}

/// A fork or send by a process that was clean then.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recent {
    pub(super) at_ms: u64,
    pub(super) actor: Subject,
    pub(super) event: GuestEvent,
}

/// Forks and sends of clean processes remembered per VM.
pub const RECENT: usize = 256;

/// Memory of one tainted entry (key, value, its age index, names, and the
/// hash table's slack), as the resident set grew per entry when tables were
/// filled with a million events (`examples/taint_throughput.rs`).
pub const ENTRY_BYTES: u64 = 1024;
/// Of one process-view or alerted-pair entry, likewise.
pub const SMALL_BYTES: u64 = 384;
/// Of one derived-file record, path aside.
pub const DERIVED_BYTES: u64 = 128;

/// Longest name (path, `comm`, UNIX address) kept, in bytes: a guest
/// chooses its names, and the tables' memory bound counts on this.
pub const MAX_NAME: usize = 256;

impl VmState {
    fn new(id: VmId, l: &Limits) -> VmState {
        VmState {
            id,
            files: Bounded::new(l.files),
            procs: Bounded::new(l.processes),
            unix: Bounded::new(l.sockets),
            inet: Bounded::new(l.sockets),
            known: Bounded::new(l.known_processes),
            derived: VecDeque::new(),
            derived_next: 0,
            alerted: Bounded::new(l.alerts),
            recent: VecDeque::new(),
            counters: Counters::default(),
            continuity: Continuity::default(),
            last_at_ms: 0,
        }
    }

    pub(super) fn table(&self, kind: SubjectKind) -> &Bounded<Subject, Node> {
        match kind {
            SubjectKind::File => &self.files,
            SubjectKind::Process => &self.procs,
            SubjectKind::Unix => &self.unix,
            SubjectKind::Inet => &self.inet,
        }
    }

    pub(super) fn table_mut(&mut self, kind: SubjectKind) -> &mut Bounded<Subject, Node> {
        match kind {
            SubjectKind::File => &mut self.files,
            SubjectKind::Process => &mut self.procs,
            SubjectKind::Unix => &mut self.unix,
            SubjectKind::Inet => &mut self.inet,
        }
    }

    pub(super) fn node(&self, s: &Subject) -> Option<&Node> {
        self.table(s.kind()).get(s)
    }

    /// A live (not ended) tainted entry.
    pub(super) fn live(&self, s: &Subject) -> Option<&Node> {
        let t = self.table(s.kind());
        t.get(s).filter(|_| !t.is_retired(s))
    }

    /// A tainted entry whose taint still flows out of it. A process named
    /// by its task and start time keeps its taint after it was seen to
    /// end: no other process can have that name, and "ended" may only mean
    /// its leader thread exited while other threads run on. A process named
    /// by a pid alone, or by a task without a start time, must be live: a
    /// new process can come under that name.
    pub(super) fn holder(&self, s: &Subject) -> Option<&Node> {
        match s {
            Subject::Process { start_time, .. } if *start_time != 0 => self.node(s),
            _ => self.live(s),
        }
    }

    /// The entry of `s` in its wire form.
    pub fn entry(&self, s: &Subject) -> Option<TaintedEntry> {
        let n = self.node(s)?;
        Some(TaintedEntry {
            subject: s.clone(),
            name: n.name.clone(),
            pid: n.pid,
            rule: n.rule.clone(),
            origin: n.origin.clone(),
            verified: n.verified,
            ended: self.table(s.kind()).is_retired(s),
        })
    }

    /// Every tainted entry, in a stable order.
    pub fn entries(&self) -> Vec<TaintedEntry> {
        let mut subjects: Vec<&Subject> = [&self.files, &self.procs, &self.unix, &self.inet]
            .into_iter()
            .flat_map(|t| t.iter().map(|(k, _)| k))
            .collect();
        subjects.sort();
        subjects.into_iter().filter_map(|s| self.entry(s)).collect()
    }

    /// The process a guest-written pid names: the view's, else an
    /// unverified one.
    pub(super) fn resolve_pid(&mut self, pid: u32) -> (Subject, bool) {
        self.known.touch(&pid);
        match self.known.get(&pid) {
            Some(i) => (i.subject(), true),
            None => (Subject::UnverifiedProcess { pid }, false),
        }
    }

    fn approx_bytes(&self) -> u64 {
        let entries =
            (self.files.len() + self.procs.len() + self.unix.len() + self.inet.len()) as u64;
        let small = (self.known.len() + self.alerted.len()) as u64;
        let derived: u64 = self
            .derived
            .iter()
            .map(|d| DERIVED_BYTES + d.path.as_ref().map_or(0, |p| p.len() as u64))
            .sum();
        entries * ENTRY_BYTES + small * SMALL_BYTES + derived
    }

    /// The VM's status.
    pub fn status(&self) -> VmTaintStatus {
        let c = &self.counters;
        let mut incomplete = Vec::new();
        if c.guest_events == 0 {
            incomplete.push(
                "no events from hooks in the guest kernel: processes are known only by the \
                 pids fsd reports, and forks and sockets are not followed"
                    .to_string(),
            );
        }
        if c.fsd_dropped > 0 {
            incomplete.push(format!(
                "fsd lost {} file events (queue full or monitor unreachable)",
                c.fsd_dropped
            ));
        }
        if c.hooks_dropped > 0 {
            incomplete.push(format!(
                "the guest kernel hooks lost {} events",
                c.hooks_dropped
            ));
        }
        if c.evicted > 0 {
            incomplete.push(format!(
                "{} tainted entries were evicted at a table's bound (oldest first, ended \
                 processes before live ones)",
                c.evicted
            ));
        }
        incomplete.extend(self.continuity.incomplete());
        VmTaintStatus {
            vm: self.id.uuid.clone(),
            name: self.id.name.clone(),
            files: self.files.len() as u64,
            processes: self.procs.len() as u64,
            unverified: self
                .procs
                .iter()
                .filter(|(k, _)| matches!(k, Subject::UnverifiedProcess { .. }))
                .count() as u64,
            unix_sockets: self.unix.len() as u64,
            inet_flows: self.inet.len() as u64,
            known_processes: self.known.len() as u64,
            file_events: c.file_events,
            guest_events: c.guest_events,
            rejected: c.rejected,
            fsd_dropped: c.fsd_dropped,
            hooks_dropped: c.hooks_dropped,
            evicted: c.evicted,
            alerts: c.alerts,
            complete: incomplete.is_empty(),
            incomplete,
        }
    }
}

/// How the engine is set up.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub limits: Limits,
    /// Addresses of the host's VMs: a destination among them (or a loopback
    /// address) is inside; any other is a leak.
    pub internal: HashSet<IpAddr>,
    /// Ask for the leaking process to be frozen.
    pub freeze_on_leak: bool,
}

/// The taint state of every VM.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    vms: HashMap<String, VmState>,
    /// Flows between VMs of this host that carry taint.
    flows: Bounded<Subject, FlowMark>,
    seq: u64,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        let flows = Bounded::new(config.limits.sockets);
        Engine {
            config,
            vms: HashMap::new(),
            flows,
            seq: 0,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The VM with this UUID, if it has any state.
    pub fn vm(&self, uuid: &str) -> Option<&VmState> {
        self.vms.get(uuid)
    }

    /// Every VM with state, by UUID.
    pub fn vm_ids(&self) -> Vec<VmId> {
        let mut ids: Vec<VmId> = self.vms.values().map(|v| v.id.clone()).collect();
        ids.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        ids
    }

    /// The UUID of the VM last addressed by `name`.
    pub fn uuid_of_name(&self, name: &str) -> Option<&str> {
        self.vms
            .values()
            .filter(|v| v.id.name == name)
            .max_by(|a, b| (a.last_at_ms, &a.id.uuid).cmp(&(b.last_at_ms, &b.id.uuid)))
            .map(|v| v.id.uuid.as_str())
    }

    /// Whether a batch of VM `vm` would be taken in: the VM has state, or
    /// there is room for one more.
    pub fn admits(&self, vm: &VmId) -> Result<(), TaintError> {
        if self.vms.contains_key(&vm.uuid) || self.vms.len() < self.config.limits.vms {
            Ok(())
        } else {
            Err(TaintError::TooManyVms(self.config.limits.vms))
        }
    }

    /// Applies one batch, with a notice for every entry tainted.
    pub fn apply(&mut self, rec: &Record) -> Result<Effects, TaintError> {
        self.apply_with(rec, true)
    }

    /// Applies one batch; `tainted_notices` says whether to describe each
    /// entry tainted in a notice (someone is watching) or not (a replay, or
    /// nobody listening: building them costs more than the propagation).
    pub fn apply_with(
        &mut self,
        rec: &Record,
        tainted_notices: bool,
    ) -> Result<Effects, TaintError> {
        if !self.vms.contains_key(&rec.vm.uuid) {
            self.admits(&rec.vm)?;
            self.vms.insert(
                rec.vm.uuid.clone(),
                VmState::new(rec.vm.clone(), &self.config.limits),
            );
        }
        let mut fx = Effects::default();
        {
            let vm = self.vms.get_mut(&rec.vm.uuid).expect("inserted above");
            // A restart is not the VM being heard of.
            if !matches!(rec.input, Input::Restarted { .. }) {
                vm.last_at_ms = vm.last_at_ms.max(rec.at_ms);
            }
            let (c, continuity) = (&mut vm.counters, &mut vm.continuity);
            match &rec.input {
                Input::Files { dropped, .. } => {
                    continuity.fsd_reported(rec.at_ms, *dropped, c.fsd_dropped_last);
                    Counters::add_dropped(&mut c.fsd_dropped, &mut c.fsd_dropped_last, *dropped)
                }
                Input::Guest { dropped, seq, .. } => {
                    c.hooks_dropped += continuity.hooks_reported(rec.at_ms, seq.as_ref());
                    Counters::add_dropped(&mut c.hooks_dropped, &mut c.hooks_dropped_last, *dropped)
                }
                Input::Processes { .. } => {}
                Input::Restarted { lost } => {
                    let heard = Heard {
                        fsd: c.file_events > 0 || c.fsd_dropped_last > 0,
                        hooks: c.guest_events > 0 || continuity.plugin.is_some(),
                    };
                    continuity.restarted(rec.at_ms, heard, lost);
                    // The hook feeds are the daemon's own threads: they
                    // count their losses from 0 again.
                    c.hooks_dropped_last = 0;
                }
            }
        }
        let n = match &rec.input {
            Input::Files { events, .. } => events.len(),
            Input::Guest { events, .. } => events.len(),
            Input::Processes { .. } => 1,
            Input::Restarted { .. } => 0,
        };
        for i in 0..n {
            let leaks = {
                let vm = self.vms.get_mut(&rec.vm.uuid).expect("inserted above");
                vm.id.name.clone_from(&rec.vm.name);
                let mut step = Step {
                    vm,
                    flows: &mut self.flows,
                    internal: &self.config.internal,
                    at_ms: rec.at_ms,
                    seq: &mut self.seq,
                    fx: &mut fx,
                    limits: &self.config.limits,
                    leaks: Vec::new(),
                    tainted_notices,
                };
                match &rec.input {
                    Input::Files { events, .. } => step.file_event(&events[i]),
                    Input::Guest { events, .. } => step.guest_event(&events[i]),
                    Input::Processes { processes } => step.processes(processes),
                    Input::Restarted { .. } => {}
                }
                step.leaks
            };
            for leak in leaks {
                self.alert(&rec.vm, rec.at_ms, leak, &mut fx);
            }
        }
        fx.accepted = match &rec.input {
            Input::Processes { processes } => processes.len() as u64,
            _ => n as u64,
        };
        Ok(fx)
    }

    fn alert(&mut self, vm: &VmId, at_ms: u64, leak: Leak, fx: &mut Effects) {
        let (chain, chain_complete) = self.chain(&vm.uuid, &leak.process);
        let freeze = self.config.freeze_on_leak;
        if let Some(v) = self.vms.get_mut(&vm.uuid) {
            v.counters.alerts += 1;
        }
        fx.notices.push(TaintNotice::Leak {
            alert: LeakAlert {
                at_ms,
                vm: vm.uuid.clone(),
                vm_name: vm.name.clone(),
                pid: leak.pid,
                name: leak.ident.comm.clone(),
                task: leak.ident.task,
                start_time: leak.ident.start,
                transport: leak.transport,
                local: leak.local,
                destination: leak.destination,
                chain,
                chain_complete,
                freeze,
            },
        });
        if freeze {
            fx.freezes.push(FreezeOrder {
                vm: vm.clone(),
                pid: leak.pid,
                task: leak.ident.task,
            });
        }
    }

    /// From `subject` of VM `uuid` back to a source: one entry per hop, and
    /// whether a source was reached (false when an entry on the way was
    /// evicted, or the chain is longer than the limit).
    pub fn chain(&self, uuid: &str, subject: &Subject) -> (Vec<VmEntry>, bool) {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut at = (uuid.to_string(), subject.clone());
        while out.len() < self.config.limits.chain {
            if !seen.insert(at.clone()) {
                return (out, false);
            }
            let Some(entry) = self.vms.get(&at.0).and_then(|v| v.entry(&at.1)) else {
                return (out, false);
            };
            let next = entry
                .origin
                .from
                .clone()
                .map(|from| (entry.origin.from_vm.clone().unwrap_or(at.0.clone()), from));
            out.push(VmEntry {
                vm: at.0.clone(),
                entry,
            });
            match next {
                Some(n) => at = n,
                None => return (out, true),
            }
        }
        (out, false)
    }

    /// The answer to a `taint_query`: the live tainted entry, if any, and
    /// whether the VM's tracking is complete.
    pub fn query(&self, uuid: &str, q: &Query) -> (Option<TaintedEntry>, bool) {
        let Some(vm) = self.vms.get(uuid) else {
            // Nothing ever reported for this VM: nothing known, nothing sure.
            return (None, false);
        };
        let complete = vm.status().complete;
        let found = match q {
            Query::Process { pid, task } => {
                let subject = match (vm.known.get(pid), task) {
                    (Some(i), Some(t)) if i.task != *t => None,
                    (Some(i), _) => Some(i.subject()),
                    (None, None) => Some(Subject::UnverifiedProcess { pid: *pid }),
                    // The newest live process in that task slot: a choice
                    // that does not depend on the hash map's order, so the
                    // answer is the same after a restart.
                    (None, Some(t)) => vm
                        .procs
                        .iter()
                        .map(|(k, _)| k)
                        .filter(|k| {
                            matches!(k, Subject::Process { task, .. } if task == t)
                                && !vm.procs.is_retired(k)
                        })
                        .max_by_key(|k| match k {
                            Subject::Process { start_time, .. } => *start_time,
                            _ => 0,
                        })
                        .cloned(),
                };
                subject.and_then(|s| vm.holder(&s).and(vm.entry(&s)))
            }
            Query::Flow {
                transport,
                local,
                peer,
            } => {
                let s = Subject::flow(*transport, *local, *peer);
                vm.entry(&s).or_else(|| {
                    let mark = self.flows.get(&s)?;
                    self.vms.get(&mark.vm)?.entry(&s)
                })
            }
        };
        (found, complete)
    }

    /// Status of one VM or of all.
    pub fn status(&self, uuid: Option<&str>) -> TaintStatus {
        let mut vms: Vec<VmTaintStatus> = self
            .vms
            .values()
            .filter(|v| uuid.map_or(true, |u| u == v.id.uuid))
            .map(VmState::status)
            .collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name).then(a.vm.cmp(&b.vm)));
        TaintStatus {
            vms,
            approx_bytes: self.approx_bytes(),
            persistent: false,
        }
    }

    /// Estimated memory of all tables.
    pub fn approx_bytes(&self) -> u64 {
        self.vms.values().map(VmState::approx_bytes).sum::<u64>()
            + self.flows.len() as u64 * ENTRY_BYTES
    }

    /// The VM's entries, and the entries of other VMs their origins lead
    /// to: the nodes of its graph (each origin is an edge).
    pub fn graph(&self, uuid: &str) -> Vec<VmEntry> {
        let Some(vm) = self.vms.get(uuid) else {
            return Vec::new();
        };
        let mut nodes: Vec<VmEntry> = vm
            .entries()
            .into_iter()
            .map(|entry| VmEntry {
                vm: uuid.to_string(),
                entry,
            })
            .collect();
        let mut shown: HashSet<(String, Subject)> = nodes
            .iter()
            .map(|n| (n.vm.clone(), n.entry.subject.clone()))
            .collect();
        let foreign: Vec<(String, Subject)> = nodes
            .iter()
            .filter_map(|n| {
                let o = &n.entry.origin;
                Some((o.from_vm.clone()?, o.from.clone()?))
            })
            .collect();
        for (v, s) in foreign {
            for link in self.chain(&v, &s).0 {
                if shown.insert((link.vm.clone(), link.entry.subject.clone())) {
                    nodes.push(link);
                }
            }
        }
        nodes
    }

    /// Files of VM `uuid` derived from a rule after position `after` (at
    /// most `max`), and the position to ask from next.
    pub fn derived_after(&self, uuid: &str, after: u64, max: usize) -> (Vec<DerivedFile>, u64) {
        let Some(vm) = self.vms.get(uuid) else {
            return (Vec::new(), after);
        };
        let files: Vec<DerivedFile> = vm
            .derived
            .iter()
            .filter(|d| d.seq > after)
            .take(max)
            .cloned()
            .collect();
        let next = files.last().map_or(after, |d| d.seq);
        (files, next)
    }

    /// The whole state, for a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let mut vms: Vec<VmSnapshot> = self
            .vms
            .values()
            .map(|v| VmSnapshot {
                id: v.id.clone(),
                files: v.files.to_stored(),
                processes: v.procs.to_stored(),
                unix: v.unix.to_stored(),
                inet: v.inet.to_stored(),
                known: v.known.to_stored(),
                derived: v.derived.iter().cloned().collect(),
                derived_next: v.derived_next,
                alerted: v.alerted.to_stored(),
                counters: v.counters.clone(),
                continuity: v.continuity.clone(),
                recent: v.recent.iter().cloned().collect(),
                last_at_ms: v.last_at_ms,
            })
            .collect();
        vms.sort_by(|a, b| a.id.uuid.cmp(&b.id.uuid));
        Snapshot {
            version: SNAPSHOT_VERSION,
            journal: 0,
            seq: self.seq,
            vms,
            flows: self.flows.to_stored(),
        }
    }

    /// An engine holding a snapshot's state, with today's configuration
    /// (and so today's bounds).
    ///
    /// Entries beyond a bound lowered since are evicted as the tables
    /// evict, and counted as evicted (the VM's tracking is incomplete).
    /// VMs beyond the bound on VMs are left out, the latest-used kept:
    /// what is asked of a VM left out is answered as of a VM the monitor
    /// knows nothing of (incomplete).
    pub fn restore(config: EngineConfig, s: Snapshot) -> Result<Engine, TaintError> {
        if !(MIN_SNAPSHOT_VERSION..=SNAPSHOT_VERSION).contains(&s.version) {
            return Err(TaintError::SnapshotVersion(s.version));
        }
        let l = &config.limits;
        let mut kept = s.vms;
        if kept.len() > l.vms {
            kept.sort_by(|a, b| (b.last_at_ms, &b.id.uuid).cmp(&(a.last_at_ms, &a.id.uuid)));
            for v in kept.drain(l.vms..) {
                log::warn!(
                    "taint state of VM {} ({}) left out: more VMs than taint.limits.vms = {}",
                    v.id.name,
                    v.id.uuid,
                    l.vms
                );
            }
        }
        let mut vms = HashMap::new();
        for v in kept {
            let mut evicted = 0;
            let mut table = |cap, entries| {
                let (t, out) = Bounded::from_stored_evicting(cap, entries);
                evicted += out.len() as u64;
                t
            };
            let (files, procs) = (table(l.files, v.files), table(l.processes, v.processes));
            let (unix, inet) = (table(l.sockets, v.unix), table(l.sockets, v.inet));
            let mut derived: VecDeque<DerivedFile> = v.derived.into_iter().collect();
            while derived.len() > l.derived {
                derived.pop_front();
            }
            let mut recent: VecDeque<Recent> = v.recent.into_iter().collect();
            while recent.len() > RECENT {
                recent.pop_front();
            }
            let mut counters = v.counters;
            counters.evicted += evicted;
            let state = VmState {
                files,
                procs,
                unix,
                inet,
                known: Bounded::from_stored(l.known_processes, v.known),
                derived,
                derived_next: v.derived_next,
                alerted: Bounded::from_stored(l.alerts, v.alerted),
                recent,
                counters,
                continuity: v.continuity,
                last_at_ms: v.last_at_ms,
                id: v.id,
            };
            vms.insert(state.id.uuid.clone(), state);
        }
        let (flows, evicted) = Bounded::from_stored_evicting(l.sockets, s.flows);
        for (_, mark) in evicted {
            if let Some(v) = vms.get_mut(&mark.vm) {
                v.counters.evicted += 1;
            }
        }
        Ok(Engine {
            config,
            vms,
            flows,
            seq: s.seq,
        })
    }
}

/// Format of [`Snapshot`] written; one outside
/// [`MIN_SNAPSHOT_VERSION`]`..=`[`SNAPSHOT_VERSION`] is refused rather than
/// misread. Version 2 added what a restart must keep besides the tables
/// (restart marks, the plugin's last number, the recent forks and sends,
/// when each VM was last heard of): an older monitor refuses it instead of
/// dropping those.
pub const SNAPSHOT_VERSION: u32 = 2;
/// The oldest format read (what it lacks starts empty).
pub const MIN_SNAPSHOT_VERSION: u32 = 1;

/// The engine's whole state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// The generation of the journal that continues this snapshot: a
    /// journal of an older generation is in the snapshot already (see
    /// [`super::journal`]).
    #[serde(default)]
    pub journal: u64,
    pub seq: u64,
    pub vms: Vec<VmSnapshot>,
    pub flows: Vec<Stored<Subject, FlowMark>>,
}

/// One VM's state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    pub id: VmId,
    pub files: Vec<Stored<Subject, Node>>,
    pub processes: Vec<Stored<Subject, Node>>,
    pub unix: Vec<Stored<Subject, Node>>,
    pub inet: Vec<Stored<Subject, Node>>,
    pub known: Vec<Stored<u32, Ident>>,
    pub derived: Vec<DerivedFile>,
    pub derived_next: u64,
    pub alerted: Vec<Stored<(Subject, SocketAddr), ()>>,
    pub counters: Counters,
    #[serde(default)]
    pub continuity: Continuity,
    #[serde(default)]
    pub recent: Vec<Recent>,
    #[serde(default)]
    pub last_at_ms: u64,
}
