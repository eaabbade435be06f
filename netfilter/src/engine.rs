//! The decisions, apart from sockets and threads: what happens to each
//! frame of a batch in either direction.
//!
//! Egress (guest → host), per batch of frames read in one wakeup:
//! 1. every frame is classified; a frame of a flow already in the
//!    connection table passes or drops on the table's word alone;
//! 2. the new flows of the whole batch go to the monitor in one
//!    `socket_owners` request (one walk of the guest at most);
//! 3. each new flow is decided (policy, taint, dialog), audited and
//!    entered in the table; its held frames then pass, or drop, and a
//!    denied TCP connection gets a reset so the guest's connect fails at
//!    once.
//!
//! Ingress (host → guest): packets of known flows follow their verdict and
//! move the flow's state (established, closing, reset); others follow the
//! policy's `inbound` default.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use monitor_client::taint::{SocketOwner, SocketQuery};

use crate::ask::{Answer, Asker, Question, Remembered};
use crate::audit::{self, Audit, Record};
use crate::conntrack::{ConnTable, Verdict};
use crate::frame;
use crate::owner::OwnerSource;
use crate::packet::{self, Direction, Flow, FlowKey, Kind};
use crate::policy::{Action, Because, Policy};
use crate::stats::Stats;
use crate::taint::TaintOracle;

/// The two measured optimisations, switchable at run time.
#[derive(Debug)]
pub struct Switches {
    /// Several frames per wakeup and one ownership request per batch.
    pub batching: AtomicBool,
    /// Decided flows pass by the connection table without inspection.
    pub conntrack: AtomicBool,
}

impl Switches {
    pub fn new(batching: bool, conntrack: bool) -> Switches {
        Switches {
            batching: AtomicBool::new(batching),
            conntrack: AtomicBool::new(conntrack),
        }
    }

    pub fn batching(&self) -> bool {
        self.batching.load(Ordering::Relaxed)
    }

    pub fn conntrack(&self) -> bool {
        self.conntrack.load(Ordering::Relaxed)
    }
}

/// State both directions share.
pub struct Shared {
    pub policy: Arc<Policy>,
    pub table: Mutex<ConnTable>,
    pub stats: Stats,
    pub switches: Switches,
}

impl Shared {
    pub fn new(policy: Arc<Policy>, switches: Switches) -> Shared {
        Shared {
            table: Mutex::new(ConnTable::new(policy.limits.table)),
            policy,
            stats: Stats::default(),
            switches,
        }
    }

    pub fn table(&self) -> std::sync::MutexGuard<'_, ConnTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Encoded frames to send on after a batch.
#[derive(Debug, Default)]
pub struct Output {
    /// Towards passt.
    pub to_host: Vec<u8>,
    /// Back to the guest (resets for denied connections).
    pub to_guest: Vec<u8>,
}

impl Output {
    pub fn clear(&mut self) {
        self.to_host.clear();
        self.to_guest.clear();
    }
}

/// A token bucket for new flows per second.
struct Bucket {
    per_sec: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(per_sec: u32) -> Bucket {
        Bucket {
            per_sec: per_sec as f64,
            tokens: per_sec as f64,
            at: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let refill = now.duration_since(at).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + refill).min(self.per_sec);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What became of one egress frame.
enum Plan {
    Forward,
    Drop,
    /// Waits for the decision of new flow number `n` of the batch (with
    /// the frame's TCP flags and length, for the table).
    Held(usize, packet::TcpFlags, usize),
}

/// How a new flow was decided.
struct Decision {
    verdict: Verdict,
    reason: &'static str,
    detail: Option<String>,
    owner: Option<SocketOwner>,
    tainted: bool,
}

/// The egress path: owns the lookups, the policy decisions and the audit.
pub struct Egress {
    shared: Arc<Shared>,
    owners: Box<dyn OwnerSource>,
    taint: Box<dyn TaintOracle>,
    asker: Box<dyn Asker>,
    audit: Audit,
    bucket: Bucket,
    always: Vec<Remembered>,
}

impl Egress {
    pub fn new(
        shared: Arc<Shared>,
        owners: Box<dyn OwnerSource>,
        taint: Box<dyn TaintOracle>,
        asker: Box<dyn Asker>,
        audit: Audit,
    ) -> Egress {
        let bucket = Bucket::new(shared.policy.limits.new_flows_per_sec);
        Egress {
            shared,
            owners,
            taint,
            asker,
            audit,
            bucket,
            always: Vec::new(),
        }
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Handles one batch of frames from the guest.
    pub fn process(&mut self, frames: &[&[u8]], out: &mut Output) {
        let start = Instant::now();
        let shared = self.shared.clone();
        let st = &shared.stats;
        let policy = &shared.policy;
        let conntrack = shared.switches.conntrack();
        st.add(&st.c.frames_out, frames.len() as u64);
        st.add(&st.c.batches, 1);
        st.max(&st.c.max_batch, frames.len() as u64);
        let mut plans = Vec::with_capacity(frames.len());
        let mut new_flows: Vec<Flow> = Vec::new();
        let mut index: HashMap<FlowKey, usize> = HashMap::new();
        {
            let mut table = shared.table();
            if conntrack {
                table.expire(start);
            }
            for f in frames {
                st.add(&st.c.bytes_out, f.len() as u64);
                let plan = match packet::classify(f, Direction::Egress) {
                    Kind::Flow(flow) => {
                        let known = conntrack
                            .then(|| {
                                table.on_packet(
                                    &flow.key,
                                    Direction::Egress,
                                    flow.flags,
                                    f.len(),
                                    start,
                                )
                            })
                            .flatten();
                        match known {
                            Some(v) => {
                                st.add(&st.c.fast_path, 1);
                                self.apply(v, &flow, out)
                            }
                            None => {
                                st.add(&st.c.inspected, 1);
                                let n = *index.entry(flow.key).or_insert_with(|| {
                                    new_flows.push(flow);
                                    new_flows.len() - 1
                                });
                                Plan::Held(n, flow.flags, f.len())
                            }
                        }
                    }
                    Kind::Arp => Plan::Forward,
                    Kind::Icmp => verdict_plan(policy.defaults.icmp),
                    Kind::Other => verdict_plan(policy.defaults.other),
                    Kind::Fragment => {
                        st.add(&st.c.fragments, 1);
                        Plan::Drop
                    }
                    Kind::Malformed(why) => {
                        st.add(&st.c.malformed, 1);
                        self.audit.record(
                            Record {
                                ts_ms: audit::now_ms(),
                                vm: policy.vm.clone(),
                                event: "malformed",
                                verdict: Some(Verdict::Deny),
                                reason: "malformed",
                                detail: Some(why),
                                transport: None,
                                src: None,
                                dst: None,
                                owner: None,
                                tainted: false,
                                suppressed_before: 0,
                            },
                            start,
                        );
                        Plan::Drop
                    }
                };
                plans.push(plan);
            }
        }
        let decisions = self.decide(&new_flows, start);
        {
            let mut table = shared.table();
            for (flow, d) in new_flows.iter().zip(&decisions) {
                if conntrack {
                    table.insert(
                        flow.key,
                        d.verdict,
                        d.detail.clone().unwrap_or_else(|| d.reason.into()),
                        d.owner.clone(),
                        start,
                    );
                }
            }
            // Count the held frames as packets of their (now known) flows.
            if conntrack {
                for plan in &plans {
                    if let Plan::Held(n, flags, len) = plan {
                        table.on_packet(&new_flows[*n].key, Direction::Egress, *flags, *len, start);
                    }
                }
            }
        }
        let done = start.elapsed().as_micros() as u64;
        for _ in &new_flows {
            st.latency(done);
        }
        for (f, plan) in frames.iter().zip(plans) {
            let plan = match plan {
                Plan::Held(n, ..) => {
                    let v = decisions[n].verdict;
                    self.apply(v, &new_flows[n], out)
                }
                p => p,
            };
            match plan {
                Plan::Forward => frame::encode(f, &mut out.to_host),
                _ => st.add(&st.c.dropped_out, 1),
            }
        }
        self.audit.flush();
    }

    /// A verdict on one packet of `flow`; a denied TCP segment is answered
    /// with a reset.
    fn apply(&self, v: Verdict, flow: &Flow, out: &mut Output) -> Plan {
        match v {
            Verdict::Allow => Plan::Forward,
            Verdict::Deny => {
                if let Some(rst) = packet::tcp_reset_for(flow) {
                    frame::encode(&rst, &mut out.to_guest);
                    self.shared.stats.add(&self.shared.stats.c.resets_sent, 1);
                }
                Plan::Drop
            }
        }
    }

    /// Decides the new flows of a batch: rate limit, one ownership
    /// request, policy, dialog; audits each.
    fn decide(&mut self, flows: &[Flow], now: Instant) -> Vec<Decision> {
        let shared = self.shared.clone();
        let st = &shared.stats;
        let policy = &shared.policy;
        let mut decisions: Vec<Option<Decision>> = Vec::with_capacity(flows.len());
        let mut queries = Vec::new();
        let mut asked_for = Vec::new();
        for (i, f) in flows.iter().enumerate() {
            if self.bucket.take(now) {
                decisions.push(None);
                queries.push(SocketQuery {
                    transport: f.key.transport,
                    local: f.key.guest,
                    remote: Some(f.key.peer),
                });
                asked_for.push(i);
            } else {
                st.add(&st.c.rate_limited, 1);
                decisions.push(Some(Decision {
                    verdict: Verdict::Deny,
                    reason: "rate_limited",
                    detail: Some(format!(
                        "more than {} new flows per second",
                        policy.limits.new_flows_per_sec
                    )),
                    owner: None,
                    tainted: false,
                }));
            }
        }
        let owners = self.lookup(&queries);
        for (i, owner) in asked_for.into_iter().zip(owners) {
            let f = &flows[i];
            decisions[i] = Some(match owner {
                Err(why) => Decision {
                    verdict: policy.defaults.unknown_owner,
                    reason: "lookup_failed",
                    detail: Some(why),
                    owner: None,
                    tainted: false,
                },
                Ok(None) => {
                    st.add(&st.c.unknown_owner, 1);
                    Decision {
                        verdict: policy.defaults.unknown_owner,
                        reason: "unknown_owner",
                        detail: Some("no guest socket has this address and port".into()),
                        owner: None,
                        tainted: false,
                    }
                }
                Ok(Some(o)) => self.decide_known(f, o),
            });
        }
        let decisions: Vec<Decision> = decisions
            .into_iter()
            .map(|d| d.expect("every flow decided"))
            .collect();
        for (f, d) in flows.iter().zip(&decisions) {
            st.add(&st.c.new_flows, 1);
            match d.verdict {
                Verdict::Allow => st.add(&st.c.allowed, 1),
                Verdict::Deny => st.add(&st.c.denied, 1),
            }
            self.audit.record(
                Record {
                    ts_ms: audit::now_ms(),
                    vm: policy.vm.clone(),
                    event: "decision",
                    verdict: Some(d.verdict),
                    reason: d.reason,
                    detail: d.detail.clone(),
                    transport: Some(f.key.transport),
                    src: Some(f.key.guest),
                    dst: Some(f.key.peer),
                    owner: d.owner.clone(),
                    tainted: d.tainted,
                    suppressed_before: 0,
                },
                now,
            );
        }
        decisions
    }

    /// Owners of `queries`: one request with batching on, one per query
    /// with it off.
    fn lookup(&mut self, queries: &[SocketQuery]) -> Vec<Result<Option<SocketOwner>, String>> {
        if queries.is_empty() {
            return Vec::new();
        }
        let st = &self.shared.stats;
        let chunks: Vec<&[SocketQuery]> = if self.shared.switches.batching() {
            vec![queries]
        } else {
            queries.chunks(1).collect()
        };
        let mut out = Vec::with_capacity(queries.len());
        for chunk in chunks {
            st.add(&st.c.lookups, 1);
            st.add(&st.c.lookup_queries, chunk.len() as u64);
            match self.owners.owners(chunk) {
                Ok(v) => out.extend(v.into_iter().map(Ok)),
                Err(e) => {
                    st.add(&st.c.lookup_errors, 1);
                    log::warn!("ownership lookup failed: {e}");
                    out.extend(
                        chunk
                            .iter()
                            .map(|_| Err(format!("ownership lookup failed: {e}"))),
                    );
                }
            }
        }
        out
    }

    /// Policy, taint and dialog for a flow whose owner is known.
    fn decide_known(&mut self, f: &Flow, owner: SocketOwner) -> Decision {
        let shared = self.shared.clone();
        let policy = &shared.policy;
        let tainted = self.taint.is_tainted(&policy.vm, &owner);
        let (action, because) = policy.decide(&f.key, &owner, tainted);
        let detail = Some(because.to_string());
        let reason = match because {
            Because::Rule { .. } => "rule",
            Because::Default => "default",
        };
        let (verdict, reason, detail) = match action {
            Action::Allow => (Verdict::Allow, reason, detail),
            Action::Deny => (Verdict::Deny, reason, detail),
            Action::Ask => {
                let q = Question {
                    vm: policy.vm.clone(),
                    owner: owner.clone(),
                    transport: f.key.transport,
                    peer: f.key.peer,
                };
                if self.always.iter().any(|r| r.covers(&q)) {
                    (Verdict::Allow, "ask_remembered", detail)
                } else {
                    shared.stats.add(&shared.stats.c.asked, 1);
                    match self.asker.ask(&q, policy.defaults.ask_timeout) {
                        Answer::Once => (Verdict::Allow, "ask_once", detail),
                        Answer::Always => {
                            self.always.push(Remembered::from_question(&q));
                            (Verdict::Allow, "ask_always", detail)
                        }
                        Answer::Deny(why) => (
                            Verdict::Deny,
                            "ask_denied",
                            Some(format!("{}: {why}", because)),
                        ),
                    }
                }
            }
        };
        Decision {
            verdict,
            reason,
            detail,
            owner: Some(owner),
            tainted,
        }
    }
}

fn verdict_plan(v: Verdict) -> Plan {
    match v {
        Verdict::Allow => Plan::Forward,
        Verdict::Deny => Plan::Drop,
    }
}

/// Handles frames from the host side, appending what passes to `to_guest`.
pub fn ingress(shared: &Shared, frames: &[&[u8]], to_guest: &mut Vec<u8>) {
    let now = Instant::now();
    let st = &shared.stats;
    let conntrack = shared.switches.conntrack();
    st.add(&st.c.frames_in, frames.len() as u64);
    let mut table = shared.table();
    for f in frames {
        st.add(&st.c.bytes_in, f.len() as u64);
        let pass = match packet::classify(f, Direction::Ingress) {
            Kind::Flow(flow) => {
                let known = conntrack
                    .then(|| {
                        table.on_packet(&flow.key, Direction::Ingress, flow.flags, f.len(), now)
                    })
                    .flatten();
                known.unwrap_or(shared.policy.defaults.inbound) == Verdict::Allow
            }
            Kind::Malformed(_) => {
                st.add(&st.c.malformed, 1);
                false
            }
            // passt's own ARP, DHCP, NDP and ICMP answers.
            _ => true,
        };
        if pass {
            frame::encode(f, to_guest);
        } else {
            st.add(&st.c.dropped_in, 1);
        }
    }
}
