//! The per-VM policy: which guest process, user and taint state may open
//! which flows. Rules are tried in file order and the first that matches
//! decides; the defaults cover what no rule matches, flows whose owner
//! could not be found, and traffic without ports.
//!
//! The file format and its checks are in [`file`]; this module is the
//! checked form and the decision.

pub mod file;

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use globset::GlobMatcher;
use ipnet::IpNet;
use monitor_client::taint::{SocketOwner, Transport};
use serde::Serialize;

pub use file::PolicyError;

use crate::conntrack;
use crate::packet::FlowKey;

/// What a rule or default does with a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Ask the person at the host through authd's dialog.
    Ask,
}

/// One checked rule: every condition given must hold.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name, or `rule at line N`.
    pub name: String,
    pub line: usize,
    /// `comm` of the owning process (a glob).
    pub process: Option<GlobMatcher>,
    /// Path of its executable (a glob).
    pub exe: Option<GlobMatcher>,
    pub uids: Option<Vec<u32>>,
    /// Peer networks.
    pub dest: Option<Vec<IpNet>>,
    /// Peer ports.
    pub ports: Option<Vec<RangeInclusive<u16>>>,
    pub transport: Option<Transport>,
    /// Matches only processes that are (or are not) tainted.
    pub tainted: Option<bool>,
    pub action: Action,
}

impl Rule {
    /// Whether the rule applies to flow `key` of `owner`.
    pub fn matches(&self, key: &FlowKey, owner: &SocketOwner, tainted: bool) -> bool {
        let peer = key.peer;
        self.transport.is_none_or(|t| t == key.transport)
            && self.tainted.is_none_or(|t| t == tainted)
            && self.uids.as_ref().is_none_or(|u| u.contains(&owner.uid))
            && self
                .process
                .as_ref()
                .is_none_or(|g| g.is_match(&owner.name))
            && self
                .exe
                .as_ref()
                .is_none_or(|g| owner.exe.as_deref().is_some_and(|exe| g.is_match(exe)))
            && self
                .dest
                .as_ref()
                .is_none_or(|nets| nets.iter().any(|n| net_contains(n, peer.ip())))
            && self
                .ports
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|r| r.contains(&peer.port())))
    }
}

/// A network contains an address; a v4-mapped IPv6 address counts as IPv4.
fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    net.contains(&ip)
}

/// What applies when no rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// A flow whose owner is known and that no rule matches.
    pub action: Action,
    /// A flow whose socket was not found in the guest (closed before the
    /// lookup, a raw socket, or the monitor unreachable): allow or deny.
    pub unknown_owner: conntrack::Verdict,
    /// ICMP and ICMPv6 from the guest.
    pub icmp: conntrack::Verdict,
    /// Frames that are neither IP nor ARP, and IP with other transports.
    pub other: conntrack::Verdict,
    /// TCP or UDP from the host side that belongs to no known flow (passt
    /// forwards inbound connections only for the ports it was told to).
    pub inbound: conntrack::Verdict,
    /// How long an `ask` waits for the person's answer.
    pub ask_timeout: Duration,
}

/// Bounds of the filter's state and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub table: conntrack::Limits,
    /// New flows decided per second at most; beyond it new flows are
    /// dropped without a lookup (a flood must not turn into guest walks).
    pub new_flows_per_sec: u32,
    /// Audit lines per second at most; the rest are counted and the count
    /// is written with the next line that gets through.
    pub audit_lines_per_sec: u32,
}

/// A checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub source: PathBuf,
    /// The VM's name: the monitor's name for it, and what audit lines and
    /// dialogs show.
    pub vm: String,
    pub rules: Vec<Rule>,
    pub defaults: Defaults,
    pub limits: Limits,
    /// Process names treated as tainted until the taint tracker answers
    /// (see [`crate::taint`]).
    pub taint_processes: Vec<String>,
    /// Who answers `ask` in authd's dialog (the VM's user, as enrolled in
    /// authd); required when anything asks.
    pub ask_principal: Option<String>,
}

/// Why a flow got its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Because {
    /// This rule matched.
    Rule { name: String, line: usize },
    /// No rule matched.
    Default,
}

impl std::fmt::Display for Because {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Because::Rule { name, line } => write!(f, "rule {name:?} (line {line})"),
            Because::Default => f.write_str("default"),
        }
    }
}

impl Policy {
    /// The action for a new flow of a known owner.
    pub fn decide(&self, key: &FlowKey, owner: &SocketOwner, tainted: bool) -> (Action, Because) {
        for r in &self.rules {
            if r.matches(key, owner, tainted) {
                return (
                    r.action,
                    Because::Rule {
                        name: r.name.clone(),
                        line: r.line,
                    },
                );
            }
        }
        (self.defaults.action, Because::Default)
    }
}
