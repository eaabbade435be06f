//! The propagation rules, one event at a time: what taints what.
//!
//! [`Step`] applies one event of one VM to that VM's tables (and to the
//! host-wide index of flows between VMs). Leaks it finds are handed back
//! to the engine, which builds their chains across VMs.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use super::engine::{Effects, FlowMark, Ident, Node, Recent, VmState, MAX_NAME, RECENT};
use super::tables::Bounded;
use super::Limits;
use crate::report::Process;
use monitor_client::taint::{
    FileAccess, FileEvent, GuestEvent, GuestEventKind, SocketInfo, Transport,
};
use monitor_client::taint_report::{Carrier, DerivedFile, Origin, Subject, TaintNotice};

/// How much earlier than a fork a taint on the new pid alone may have
/// arrived and still be the child's (fsd batches its events for up to
/// 50 ms; the rest is margin for a loaded host).
pub(super) const REORDER_MS: u64 = 2000;

/// A leak found while applying one event; its chain is built afterwards.
pub(super) struct Leak {
    pub(super) process: Subject,
    pub(super) pid: u32,
    pub(super) ident: Ident,
    pub(super) transport: Transport,
    pub(super) local: SocketAddr,
    pub(super) destination: SocketAddr,
}

/// One event being applied to one VM.
pub(super) struct Step<'a> {
    pub(super) vm: &'a mut VmState,
    pub(super) flows: &'a mut Bounded<Subject, FlowMark>,
    pub(super) internal: &'a HashSet<IpAddr>,
    pub(super) at_ms: u64,
    pub(super) seq: &'a mut u64,
    pub(super) fx: &'a mut Effects,
    pub(super) limits: &'a Limits,
    pub(super) leaks: Vec<Leak>,
    /// Whether each entry tainted gets a notice.
    pub(super) tainted_notices: bool,
}

impl Step<'_> {
    fn origin(&mut self, from: Option<Subject>, by: Carrier) -> Origin {
        *self.seq += 1;
        Origin {
            from,
            from_vm: None,
            by,
            at_ms: self.at_ms,
            seq: *self.seq,
        }
    }

    /// Taints `s` unless it is tainted already; true when newly tainted.
    /// The entry the taint came from counts as used.
    fn taint(&mut self, s: Subject, node: Node) -> bool {
        if let (Some(from), None) = (&node.origin.from, &node.origin.from_vm) {
            self.vm.table_mut(from.kind()).touch(from);
        }
        let table = self.vm.table_mut(s.kind());
        if table.contains(&s) {
            return false;
        }
        if table.insert(s.clone(), node).is_some() {
            self.vm.counters.evicted += 1;
        }
        if self.tainted_notices {
            if let Some(entry) = self.vm.entry(&s) {
                self.fx.notices.push(TaintNotice::Tainted {
                    vm: self.vm.id.uuid.clone(),
                    entry,
                });
            }
        }
        true
    }

    fn reject(&mut self) {
        self.vm.counters.rejected += 1;
    }

    pub(super) fn file_event(&mut self, e: &FileEvent) {
        self.vm.counters.file_events += 1;
        let file = Subject::File {
            dev: e.dev,
            ino: e.ino,
        };
        if let Some(rule) = &e.rule {
            if !self.vm.files.contains(&file) {
                let origin = self.origin(None, Carrier::Source);
                self.taint(
                    file.clone(),
                    Node {
                        name: e.path.as_deref().map(clip),
                        pid: None,
                        rule: Some(rule.clone()),
                        origin,
                        verified: true,
                    },
                );
            }
        }
        if let (Some(path), Some(n)) = (&e.path, self.vm.files.get_mut(&file)) {
            if n.name.is_none() {
                n.name = Some(clip(path));
            }
        }
        // pid 0 is no process: the guest kernel's own writeback, say.
        if e.pid == 0 {
            return;
        }
        let (process, verified) = self.vm.resolve_pid(e.pid);
        if e.access.reads() && !self.vm.procs.contains(&process) {
            if let Some(f) = self.vm.files.get(&file) {
                let (rule, file_verified) = (f.rule.clone(), f.verified);
                let by = if e.access == FileAccess::Open {
                    Carrier::Open
                } else {
                    Carrier::Read
                };
                let origin = self.origin(Some(file.clone()), by);
                let name = self.vm.known.get(&e.pid).map(|i| i.comm.clone());
                let tainted = self.taint(
                    process.clone(),
                    Node {
                        name,
                        pid: Some(e.pid),
                        rule,
                        origin,
                        verified: verified && file_verified,
                    },
                );
                if tainted {
                    self.replay(&process, 0);
                }
            }
        }
        if e.access.writes() && !self.vm.files.contains(&file) {
            if let Some(p) = self.vm.holder(&process) {
                let (rule, p_verified) = (p.rule.clone(), p.verified);
                let origin = self.origin(Some(process), Carrier::Write);
                let node = Node {
                    name: e.path.as_deref().map(clip),
                    pid: None,
                    rule: rule.clone(),
                    origin,
                    verified: p_verified,
                };
                if self.taint(file, node) {
                    if let Some(rule) = rule {
                        self.derive(e.dev, e.ino, rule, e.path.as_deref().map(clip));
                    }
                }
            }
        }
    }

    fn derive(&mut self, dev: u64, ino: u64, rule: String, path: Option<String>) {
        self.vm.derived_next += 1;
        let d = DerivedFile {
            dev,
            ino,
            rule,
            path,
            seq: self.vm.derived_next,
        };
        self.vm.derived.push_back(d.clone());
        while self.vm.derived.len() > self.limits.derived {
            self.vm.derived.pop_front();
        }
        self.fx.derived.push(d);
    }

    /// Records what pid `tid` is now; returns its process's subject.
    fn learn(&mut self, tid: u32, new: Ident) -> Subject {
        let subject = new.subject();
        self.vm.known.touch(&tid);
        if let Some(old) = self.vm.known.get_mut(&tid) {
            if old.task == new.task && old.start == new.start {
                if old.comm != new.comm {
                    old.comm = new.comm;
                }
                return subject;
            }
        }
        match self.vm.known.get(&tid).cloned() {
            Some(old) if old.task == new.task && (old.start == new.start || new.start == 0) => {
                if old.comm != new.comm && new.start != 0 {
                    if let Some(i) = self.vm.known.get_mut(&tid) {
                        i.comm = new.comm;
                    }
                }
                return old.subject();
            }
            Some(old)
                if (old.task == new.task && old.start == 0)
                    || (old.tgid == new.tgid && old.start == new.start && new.start != 0) =>
            {
                // The same process, better named: its start time became
                // known, or an exec from another thread made that thread
                // the leader (which keeps the start time).
                self.vm.known.insert(tid, new.clone());
                self.succeed(old.subject(), subject.clone(), tid, &new.comm);
            }
            Some(old) => {
                // The pid belongs to another process now: the old one ended
                // without its exit being seen.
                if old.tgid == tid {
                    self.vm.procs.retire(&old.subject());
                }
                self.vm.known.insert(tid, new.clone());
            }
            None => {
                self.vm.known.insert(tid, new.clone());
                // A taint on this pid alone, with no fork or exit of the pid
                // seen since: the same process, now identified.
                let pid_only = Subject::UnverifiedProcess { pid: tid };
                if self.vm.live(&pid_only).is_some() {
                    self.succeed(pid_only, subject.clone(), tid, &new.comm);
                }
            }
        }
        subject
    }

    /// Moves the taint of `old` to `new`, the same process under a better
    /// identity; `old` stays (ended) so that chains through it still lead
    /// somewhere.
    fn succeed(&mut self, old: Subject, new: Subject, pid: u32, comm: &str) {
        let Some(n) = self.vm.live(&old).cloned() else {
            return;
        };
        self.vm.procs.retire(&old);
        if self.vm.procs.contains(&new) {
            return;
        }
        let origin = self.origin(Some(old), Carrier::Identified);
        self.taint(
            new,
            Node {
                name: Some(comm.to_string()),
                pid: Some(pid),
                rule: n.rule,
                origin,
                verified: n.verified,
            },
        );
    }

    /// Pid `pid` is now a new process (a fork made it): an earlier taint
    /// on the pid alone belonged to a process that is gone.
    fn pid_reused(&mut self, pid: u32) {
        self.vm.procs.retire(&Subject::UnverifiedProcess { pid });
        if let Some(old) = self.vm.known.remove(&pid) {
            if old.tgid == pid {
                self.vm.procs.retire(&old.subject());
            }
        }
    }

    pub(super) fn guest_event(&mut self, e: &GuestEvent) {
        let ours = e.vm.eq_ignore_ascii_case(&self.vm.id.uuid) || e.vm == self.vm.id.name;
        if !ours || e.task == 0 || e.pid == 0 {
            // Another VM's event in this VM's batch, or no process at all.
            return self.reject();
        }
        self.vm.counters.guest_events += 1;
        let me = self.learn(
            e.pid,
            Ident {
                tgid: e.tgid,
                task: e.task,
                start: e.start_time,
                comm: clip(&e.comm),
            },
        );
        match &e.kind {
            GuestEventKind::Fork {
                child_pid,
                child_tgid,
                child_task,
                child_start_time,
            } => self.fork(
                e,
                &me,
                *child_pid,
                *child_tgid,
                *child_task,
                *child_start_time,
            ),
            GuestEventKind::Exit => {
                self.vm.known.remove(&e.pid);
                if e.pid == e.tgid {
                    self.vm.procs.retire(&me);
                }
            }
            GuestEventKind::Exec { .. } => {
                // Exec keeps the taint: the new program runs in the same
                // process, with what the old one read still in reach (its
                // environment, arguments, open descriptors).
                if let Some(n) = self.vm.procs.get_mut(&me) {
                    n.name = Some(e.comm.clone());
                }
            }
            GuestEventKind::Send { socket } => self.send(e, &me, socket),
            GuestEventKind::Recv { socket } => self.recv(&me, e.pid, &e.comm, socket),
        }
    }

    fn fork(
        &mut self,
        e: &GuestEvent,
        parent: &Subject,
        child_pid: u32,
        child_tgid: u32,
        child_task: u64,
        child_start: u64,
    ) {
        if child_pid == 0 || child_task == 0 {
            return self.reject();
        }
        // fsd's events and the hooks' travel on separate paths, so a new
        // process's first file access can arrive just before the fork that
        // made it. A taint on the child's pid alone that arrived within
        // [`REORDER_MS`] before the fork is taken to be the child's (fail
        // closed: more taint, never less); an older one was another
        // process's, whose pid is now reused.
        let early = Subject::UnverifiedProcess { pid: child_pid };
        let early = self
            .vm
            .live(&early)
            .filter(|n| n.origin.at_ms.saturating_add(REORDER_MS) >= self.at_ms)
            .map(|n| (early.clone(), n.rule.clone(), n.verified));
        self.pid_reused(child_pid);
        if child_tgid == e.tgid {
            // A new thread of the same process.
            if let Some(i) = self.vm.known.get(&e.pid).cloned() {
                self.vm.known.insert(child_pid, i);
            }
            return;
        }
        let child = Ident {
            tgid: child_tgid,
            task: child_task,
            start: child_start,
            comm: e.comm.clone(),
        };
        let subject = child.subject();
        self.vm.known.insert(child_pid, child);
        if let Some(p) = self.vm.holder(parent) {
            let (rule, verified) = (p.rule.clone(), p.verified);
            let origin = self.origin(Some(parent.clone()), Carrier::Fork);
            self.taint(
                subject,
                Node {
                    name: Some(e.comm.clone()),
                    pid: Some(child_pid),
                    rule,
                    origin,
                    verified,
                },
            );
            return;
        }
        self.remember(parent, e);
        if let Some((early, rule, verified)) = early {
            let origin = self.origin(Some(early), Carrier::Identified);
            self.taint(
                subject,
                Node {
                    name: Some(e.comm.clone()),
                    pid: Some(child_pid),
                    rule,
                    origin,
                    verified,
                },
            );
        }
    }

    /// Remembers a fork or send of a process that is clean now.
    fn remember(&mut self, actor: &Subject, e: &GuestEvent) {
        if self.vm.recent.len() >= RECENT {
            self.vm.recent.pop_front();
        }
        self.vm.recent.push_back(Recent {
            at_ms: self.at_ms,
            actor: actor.clone(),
            event: e.clone(),
        });
    }

    /// `p` just became tainted by a file it read: its forks and sends
    /// applied within [`REORDER_MS`] before, while it was clean, are applied
    /// again, since fsd's report of the read travels separately and can
    /// arrive after them (fail closed: the child, the socket, a leak alert).
    /// A child tainted so has its own remembered events replayed in turn.
    fn replay(&mut self, p: &Subject, depth: usize) {
        if depth > 8 {
            return;
        }
        let since = self.at_ms.saturating_sub(REORDER_MS);
        let mut due = Vec::new();
        // A process known by its pid alone (fsd's report came after its
        // exit, say) owns what that pid did.
        let pid_only = match p {
            Subject::UnverifiedProcess { pid } => Some(*pid),
            _ => None,
        };
        self.vm.recent.retain(|r| {
            let mine = &r.actor == p || pid_only == Some(r.event.pid);
            if mine && r.at_ms >= since {
                due.push(r.event.clone());
            }
            !mine
        });
        for e in due {
            match &e.kind {
                GuestEventKind::Fork {
                    child_pid,
                    child_tgid,
                    child_task,
                    child_start_time,
                } => {
                    let child = Ident {
                        tgid: *child_tgid,
                        task: *child_task,
                        start: *child_start_time,
                        comm: e.comm.clone(),
                    }
                    .subject();
                    let Some(n) = self.vm.holder(p) else { continue };
                    let (rule, verified) = (n.rule.clone(), n.verified);
                    let origin = self.origin(Some(p.clone()), Carrier::Fork);
                    let node = Node {
                        name: Some(e.comm.clone()),
                        pid: Some(*child_pid),
                        rule,
                        origin,
                        verified,
                    };
                    if self.taint(child.clone(), node) {
                        self.replay(&child, depth + 1);
                    }
                }
                GuestEventKind::Send { socket } => self.send(&e, p, socket),
                _ => {}
            }
        }
    }

    /// The subject of a socket, when it can be followed.
    fn socket_subject(socket: &SocketInfo) -> Option<Subject> {
        match socket {
            SocketInfo::Unix {
                sock: Some(a),
                peer_sock: Some(b),
                ..
            } if *a != 0 && *b != 0 => Some(Subject::unix_pair(*a, *b)),
            SocketInfo::Unix { local, peer, .. } => local
                .iter()
                .chain(peer.iter())
                .find(|n| !n.is_empty())
                .map(|name| Subject::Unix { name: clip(name) }),
            SocketInfo::Inet {
                transport,
                local,
                peer: Some(peer),
            } => Some(Subject::flow(*transport, *local, *peer)),
            SocketInfo::Inet { peer: None, .. } => None,
        }
    }

    fn send(&mut self, e: &GuestEvent, me: &Subject, socket: &SocketInfo) {
        let Some(s) = Self::socket_subject(socket) else {
            return self.reject();
        };
        let Some(p) = self.vm.holder(me) else {
            self.remember(me, e);
            return;
        };
        let (rule, verified) = (p.rule.clone(), p.verified);
        if !self.vm.table(s.kind()).contains(&s) {
            let origin = self.origin(Some(me.clone()), Carrier::Send);
            self.taint(
                s.clone(),
                Node {
                    name: None,
                    pid: None,
                    rule: rule.clone(),
                    origin,
                    verified,
                },
            );
        }
        let SocketInfo::Inet {
            transport,
            local,
            peer: Some(peer),
        } = socket
        else {
            return;
        };
        let ip = canonical(peer.ip());
        if ip.is_loopback() {
            return;
        }
        if self.internal.contains(&ip) {
            // To another VM of this host (or this one's own address): the
            // receiving side picks the taint up from the flow.
            let mark = FlowMark {
                vm: self.vm.id.uuid.clone(),
                rule,
                verified,
            };
            if self.flows.insert(s, mark).is_some() {
                self.vm.counters.evicted += 1;
            }
            return;
        }
        if self.vm.alerted.contains(&(me.clone(), *peer)) {
            return;
        }
        self.vm.alerted.insert((me.clone(), *peer), ());
        let ident = self.vm.known.get(&e.pid).cloned().unwrap_or_else(|| Ident {
            tgid: e.tgid,
            task: e.task,
            start: e.start_time,
            comm: e.comm.clone(),
        });
        self.leaks.push(Leak {
            process: me.clone(),
            pid: e.tgid,
            ident,
            transport: *transport,
            local: *local,
            destination: *peer,
        });
    }

    fn recv(&mut self, me: &Subject, pid: u32, comm: &str, socket: &SocketInfo) {
        let Some(s) = Self::socket_subject(socket) else {
            return self.reject();
        };
        if self.vm.procs.contains(me) {
            return;
        }
        let (rule, verified, from_vm) = if let Some(n) = self.vm.node(&s) {
            (n.rule.clone(), n.verified, None)
        } else if let Some(mark) = self.flows.get(&s) {
            (mark.rule.clone(), mark.verified, Some(mark.vm.clone()))
        } else {
            return;
        };
        let mut origin = self.origin(Some(s), Carrier::Recv);
        origin.from_vm = from_vm.filter(|v| *v != self.vm.id.uuid);
        self.taint(
            me.clone(),
            Node {
                name: Some(comm.to_string()),
                pid: Some(pid),
                rule,
                origin,
                verified,
            },
        );
    }

    /// A process list the monitor read: the pids it names exist now (as
    /// those tasks), those the view had and the list lacks have ended.
    pub(super) fn processes(&mut self, list: &[Process]) {
        let mut leaders = HashSet::new();
        for p in list.iter().filter(|p| !p.kernel_thread && p.task != 0) {
            leaders.insert(p.pid);
            self.learn(
                p.pid,
                Ident {
                    tgid: p.pid,
                    task: p.task,
                    start: 0,
                    comm: clip(&p.name),
                },
            );
        }
        let mut gone: Vec<(u32, Ident)> = self
            .vm
            .known
            .iter()
            .filter(|(_, i)| !leaders.contains(&i.tgid))
            .map(|(t, i)| (*t, i.clone()))
            .collect();
        // Retired in pid order, not the hash map's (which differs from one
        // process to the next): the order of retirement is the order of
        // eviction, and a journal replayed after a restart must evict what
        // the daemon before it would have.
        gone.sort_unstable_by_key(|(t, _)| *t);
        for (tid, ident) in gone {
            self.vm.known.remove(&tid);
            if tid == ident.tgid {
                self.vm.procs.retire(&ident.subject());
            }
        }
    }
}

/// `s`, cut to [`MAX_NAME`] bytes on a character boundary.
fn clip(s: &str) -> String {
    if s.len() <= MAX_NAME {
        return s.to_string();
    }
    let mut end = MAX_NAME;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An IPv4 address in IPv6 clothing (`::ffff:a.b.c.d`) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
