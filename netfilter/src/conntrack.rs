//! The per-VM connection table: once a flow is decided, its later packets
//! (both ways) are matched here by their flow key and pass or drop without
//! being inspected again.
//!
//! Flows end on a TCP reset at once, after both FINs a little later, and
//! otherwise when idle for longer than their class allows. The table is
//! bounded: when it is full, a new flow evicts the oldest *embryonic* flow
//! (a TCP connection that never got an answer, a UDP flow that never got a
//! reply, or a denied flow), and only when there is none the least recently
//! used settled flow. A SYN flood or a port scan therefore churns through
//! its own embryonic entries and does not push out the connections that
//! work. An evicted flow that sends again is simply decided afresh.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use monitor_client::taint::{SocketOwner, Transport};
use serde::{Deserialize, Serialize};

use crate::packet::{Direction, FlowKey, TcpFlags};

/// What happens to a flow's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// Only the guest has spoken (or the flow is denied).
    Embryonic,
    /// Both ends have spoken.
    Established,
    /// A FIN was seen.
    Closing,
}

/// Bounds and timeouts of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Flows kept at most.
    pub max_flows: usize,
    /// Idle time after which an established TCP flow is forgotten.
    pub tcp_idle: Duration,
    /// Idle time after which an answered UDP flow is forgotten.
    pub udp_idle: Duration,
    /// Idle time after which an embryonic or denied flow is forgotten.
    pub embryonic_idle: Duration,
    /// Time a flow stays after its first FIN.
    pub closing_idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_flows: 4096,
            tcp_idle: Duration::from_secs(600),
            udp_idle: Duration::from_secs(60),
            embryonic_idle: Duration::from_secs(20),
            closing_idle: Duration::from_secs(10),
        }
    }
}

/// One decided flow.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub verdict: Verdict,
    pub state: FlowState,
    /// Why: the rule's name, or the default that applied.
    pub reason: String,
    pub owner: Option<SocketOwner>,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    #[serde(skip)]
    last_seen: Instant,
    #[serde(skip)]
    fin_out: bool,
    #[serde(skip)]
    fin_in: bool,
    /// Position in its eviction queue.
    #[serde(skip)]
    order: u64,
}

impl Entry {
    fn embryonic(&self) -> bool {
        self.verdict == Verdict::Deny || self.state == FlowState::Embryonic
    }
}

/// Counters of the table's own events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TableCounters {
    pub inserted: u64,
    pub evicted_embryonic: u64,
    pub evicted_settled: u64,
    pub expired: u64,
    pub reset: u64,
}

/// The table.
#[derive(Debug)]
pub struct ConnTable {
    limits: Limits,
    flows: HashMap<FlowKey, Entry>,
    /// Embryonic and denied flows, oldest first.
    embryonic: BTreeMap<u64, FlowKey>,
    /// Established and closing flows, least recently used first.
    settled: BTreeMap<u64, FlowKey>,
    next_order: u64,
    last_sweep: Option<Instant>,
    pub counters: TableCounters,
}

impl ConnTable {
    pub fn new(limits: Limits) -> ConnTable {
        ConnTable {
            limits,
            flows: HashMap::new(),
            embryonic: BTreeMap::new(),
            settled: BTreeMap::new(),
            next_order: 0,
            last_sweep: None,
            counters: TableCounters::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows by state (embryonic, established, closing).
    pub fn by_state(&self) -> (usize, usize, usize) {
        let mut n = (0, 0, 0);
        for e in self.flows.values() {
            match e.state {
                FlowState::Embryonic => n.0 += 1,
                FlowState::Established => n.1 += 1,
                FlowState::Closing => n.2 += 1,
            }
        }
        n
    }

    fn queue(&mut self, embryonic: bool) -> &mut BTreeMap<u64, FlowKey> {
        if embryonic {
            &mut self.embryonic
        } else {
            &mut self.settled
        }
    }

    /// Records a decided flow, evicting one when the table is full.
    pub fn insert(
        &mut self,
        key: FlowKey,
        verdict: Verdict,
        reason: String,
        owner: Option<SocketOwner>,
        now: Instant,
    ) {
        if let Some(old) = self.flows.remove(&key) {
            let q = old.embryonic();
            self.queue(q).remove(&old.order);
        }
        while self.flows.len() >= self.limits.max_flows.max(1) {
            let (victim, embryonic) = match self.embryonic.pop_first() {
                Some((_, k)) => (k, true),
                None => match self.settled.pop_first() {
                    Some((_, k)) => (k, false),
                    None => break,
                },
            };
            self.flows.remove(&victim);
            if embryonic {
                self.counters.evicted_embryonic += 1;
            } else {
                self.counters.evicted_settled += 1;
            }
        }
        let order = self.next_order;
        self.next_order += 1;
        self.embryonic.insert(order, key);
        self.flows.insert(
            key,
            Entry {
                verdict,
                state: FlowState::Embryonic,
                reason,
                owner,
                packets_out: 0,
                packets_in: 0,
                bytes_out: 0,
                bytes_in: 0,
                last_seen: now,
                fin_out: false,
                fin_in: false,
                order,
            },
        );
        self.counters.inserted += 1;
    }

    /// A packet of flow `key`: its verdict when the flow is known, with the
    /// flow's state brought up to date (a reset removes it).
    pub fn on_packet(
        &mut self,
        key: &FlowKey,
        dir: Direction,
        flags: TcpFlags,
        bytes: usize,
        now: Instant,
    ) -> Option<Verdict> {
        let e = self.flows.get_mut(key)?;
        let verdict = e.verdict;
        let was_embryonic = e.embryonic();
        let old_order = e.order;
        e.last_seen = now;
        match dir {
            Direction::Egress => {
                e.packets_out += 1;
                e.bytes_out += bytes as u64;
                e.fin_out |= flags.fin;
            }
            Direction::Ingress => {
                e.packets_in += 1;
                e.bytes_in += bytes as u64;
                e.fin_in |= flags.fin;
                if e.state == FlowState::Embryonic && verdict == Verdict::Allow {
                    e.state = FlowState::Established;
                }
            }
        }
        if e.fin_out || e.fin_in {
            e.state = FlowState::Closing;
        }
        if flags.rst {
            let e = self.flows.remove(key).expect("present");
            self.queue(was_embryonic).remove(&e.order);
            self.counters.reset += 1;
            return Some(verdict);
        }
        // Move to the back of its (possibly new) queue.
        let now_embryonic = e.embryonic();
        let order = self.next_order;
        self.next_order += 1;
        e.order = order;
        self.queue(was_embryonic).remove(&old_order);
        self.queue(now_embryonic).insert(order, *key);
        Some(verdict)
    }

    /// Forgets flows idle beyond their class's timeout; runs at most once a
    /// second, so it can be called for every batch.
    pub fn expire(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let l = self.limits;
        let dead: Vec<(FlowKey, bool, u64)> = self
            .flows
            .iter()
            .filter(|(k, e)| {
                let idle = match (e.state, k.transport) {
                    _ if e.verdict == Verdict::Deny => l.embryonic_idle,
                    (FlowState::Embryonic, _) => l.embryonic_idle,
                    (FlowState::Closing, _) => l.closing_idle,
                    (FlowState::Established, Transport::Tcp) => l.tcp_idle,
                    (FlowState::Established, Transport::Udp) => l.udp_idle,
                };
                now.duration_since(e.last_seen) > idle
            })
            .map(|(k, e)| (*k, e.embryonic(), e.order))
            .collect();
        for (k, embryonic, order) in dead {
            self.flows.remove(&k);
            self.queue(embryonic).remove(&order);
            self.counters.expired += 1;
        }
    }

    /// The flows, most recently used last, at most `limit` of them.
    pub fn snapshot(&self, limit: usize) -> Vec<(FlowKey, Entry)> {
        let mut v: Vec<(FlowKey, Entry)> =
            self.flows.iter().map(|(k, e)| (*k, e.clone())).collect();
        v.sort_by_key(|(_, e)| e.order);
        let skip = v.len().saturating_sub(limit);
        v.drain(..skip);
        v
    }

    /// Forgets everything (the conntrack switch is turned off or the guest
    /// reconnected).
    pub fn clear(&mut self) {
        self.flows.clear();
        self.embryonic.clear();
        self.settled.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            transport: Transport::Tcp,
            guest: format!("192.0.2.15:{port}").parse().unwrap(),
            peer: "192.0.2.1:80".parse().unwrap(),
        }
    }

    const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    };
    const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
    };

    #[test]
    fn a_flood_evicts_its_own_embryonic_flows_not_working_connections() {
        let now = Instant::now();
        let mut t = ConnTable::new(Limits {
            max_flows: 8,
            ..Limits::default()
        });
        // Two working connections.
        for p in [1, 2] {
            t.insert(key(p), Verdict::Allow, "r".into(), None, now);
            t.on_packet(&key(p), Direction::Ingress, ACK, 60, now);
        }
        // A flood of 10,000 new flows.
        for p in 1000..11000 {
            t.insert(key(p), Verdict::Deny, "default".into(), None, now);
            assert!(t.len() <= 8);
        }
        assert_eq!(t.len(), 8);
        assert_eq!(
            t.on_packet(&key(1), Direction::Egress, ACK, 60, now),
            Some(Verdict::Allow)
        );
        assert_eq!(
            t.on_packet(&key(2), Direction::Egress, ACK, 60, now),
            Some(Verdict::Allow)
        );
        assert_eq!(t.counters.evicted_embryonic, 10_000 - 6);
        assert_eq!(t.counters.evicted_settled, 0);
        assert_eq!(t.embryonic.len() + t.settled.len(), t.len());
        // With nothing embryonic left, the least recently used settled flow goes.
        let mut t = ConnTable::new(Limits {
            max_flows: 2,
            ..Limits::default()
        });
        for p in [1, 2] {
            t.insert(key(p), Verdict::Allow, "r".into(), None, now);
            t.on_packet(&key(p), Direction::Ingress, ACK, 60, now);
        }
        t.on_packet(&key(1), Direction::Egress, ACK, 60, now);
        t.insert(key(3), Verdict::Allow, "r".into(), None, now);
        assert!(t
            .on_packet(&key(2), Direction::Egress, ACK, 0, now)
            .is_none());
        assert!(t
            .on_packet(&key(1), Direction::Egress, ACK, 0, now)
            .is_some());
    }

    #[test]
    fn resets_fins_and_idle_flows_end() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(Limits::default());
        t.insert(key(1), Verdict::Allow, "r".into(), None, t0);
        t.on_packet(&key(1), Direction::Egress, SYN, 60, t0);
        let rst = TcpFlags { rst: true, ..ACK };
        assert_eq!(
            t.on_packet(&key(1), Direction::Ingress, rst, 60, t0),
            Some(Verdict::Allow)
        );
        assert!(t.is_empty());
        assert_eq!(t.counters.reset, 1);

        t.insert(key(2), Verdict::Allow, "r".into(), None, t0);
        t.on_packet(&key(2), Direction::Ingress, ACK, 60, t0);
        assert_eq!(t.by_state(), (0, 1, 0));
        let fin = TcpFlags { fin: true, ..ACK };
        t.on_packet(&key(2), Direction::Egress, fin, 60, t0);
        assert_eq!(t.by_state(), (0, 0, 1));
        t.insert(key(3), Verdict::Deny, "d".into(), None, t0);
        t.insert(key(4), Verdict::Allow, "r".into(), None, t0);
        t.on_packet(&key(4), Direction::Ingress, ACK, 60, t0);
        t.expire(t0 + Duration::from_secs(30));
        // The closing and the denied flows are gone, the established one stays.
        assert_eq!(t.len(), 1);
        assert_eq!(t.counters.expired, 2);
        t.expire(t0 + Duration::from_secs(700));
        assert!(t.is_empty());
        assert!(t.embryonic.is_empty() && t.settled.is_empty());
    }
}
