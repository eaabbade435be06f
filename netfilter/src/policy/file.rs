//! The policy file (TOML), checked as a whole: a file that does not parse
//! or does not make sense is refused with the file, the line and the
//! problem, as fsd's policy is.
//!
//! ```toml
//! version = 1
//! vm = "web"                       # the monitor's name for the VM
//!
//! [defaults]
//! action = "deny"                  # no rule matched: allow, deny or ask
//! unknown_owner = "deny"           # socket not found in the guest
//! icmp = "deny"
//! other = "deny"                   # non-IP frames (ARP always passes)
//! inbound = "allow"                # host-side packets of no known flow
//! ask_timeout_secs = 60
//!
//! [limits]
//! max_flows = 4096
//! new_flows_per_sec = 500
//! audit_lines_per_sec = 200
//! tcp_idle_secs = 600
//! udp_idle_secs = 60
//! embryonic_idle_secs = 20
//!
//! [taint]
//! processes = ["exfil"]            # stand-in until the taint tracker answers
//!
//! [ask]
//! principal = "alice"              # who answers `ask` in authd's dialog
//!
//! [[rule]]
//! name = "tainted processes stay inside"
//! tainted = true
//! action = "deny"
//!
//! [[rule]]
//! name = "package fetches"
//! exe = "/usr/bin/apt*"            # glob on the executable's path
//! process = "http"                 # glob on the process name (comm)
//! uid = [0]                        # one uid or a list
//! dest = ["192.0.2.1/32"]          # one network or a list
//! port = "80-443"                  # a port, a range, or a list of them
//! protocol = "tcp"                 # or "udp"
//! action = "allow"                 # allow, deny or ask
//! ```

use std::collections::HashSet;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobBuilder;
use ipnet::IpNet;
use monitor_client::taint::Transport;
use serde::Deserialize;
use toml::Spanned;

use super::{Action, Defaults, Limits, Policy, Rule};
use crate::conntrack::{self, Verdict};

/// A policy refused, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    vm: Spanned<String>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    taint: RawTaint,
    #[serde(default)]
    ask: RawAsk,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    action: Option<Action>,
    unknown_owner: Option<Spanned<Action>>,
    icmp: Option<Spanned<Action>>,
    other: Option<Spanned<Action>>,
    inbound: Option<Spanned<Action>>,
    ask_timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_flows: Option<Spanned<u64>>,
    new_flows_per_sec: Option<Spanned<u64>>,
    audit_lines_per_sec: Option<Spanned<u64>>,
    tcp_idle_secs: Option<Spanned<u64>>,
    udp_idle_secs: Option<Spanned<u64>>,
    embryonic_idle_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTaint {
    #[serde(default)]
    processes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAsk {
    principal: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    process: Option<Spanned<String>>,
    exe: Option<Spanned<String>>,
    uid: Option<OneOrMany<u32>>,
    dest: Option<Spanned<OneOrMany<String>>>,
    port: Option<Spanned<OneOrMany<RawPort>>>,
    protocol: Option<Transport>,
    tainted: Option<bool>,
    action: Action,
}

/// Limits a policy may set, to keep a typo from asking for a huge table.
const MAX_FLOWS: u64 = 1 << 20;

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parses `"80"`, `"8000-8100"` or a number.
fn port_range(p: &RawPort) -> Result<RangeInclusive<u16>, String> {
    let one = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("{s:?} is not a port (0-65535)"))
    };
    match p {
        RawPort::Number(n) => u16::try_from(*n)
            .map(|n| n..=n)
            .map_err(|_| format!("{n} is not a port (0-65535)")),
        RawPort::Text(t) => match t.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(a)?, one(b)?);
                if a > b {
                    return Err(format!("port range {t:?} runs backwards"));
                }
                Ok(a..=b)
            }
            None => one(t).map(|n| n..=n),
        },
    }
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: path.into(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &src)
    }

    /// Checks a policy given as text (`path` names it in errors).
    pub fn parse(path: &Path, src: &str) -> Result<Policy, PolicyError> {
        let err = |span: Option<std::ops::Range<usize>>, message: String| PolicyError {
            file: path.into(),
            line: span.map(|s| line_of(src, s.start)),
            message,
        };
        let raw: RawPolicy =
            toml::from_str(src).map_err(|e| err(e.span(), e.message().to_string()))?;
        if *raw.version.get_ref() != 1 {
            return Err(err(
                Some(raw.version.span()),
                format!(
                    "version {} is not understood (this filter reads version 1)",
                    raw.version.get_ref()
                ),
            ));
        }
        if raw.vm.get_ref().is_empty() {
            return Err(err(Some(raw.vm.span()), "vm must name the VM".into()));
        }
        // Defaults without a dialog behind them: allow or deny only.
        let verdict = |a: &Option<Spanned<Action>>, what: &str, dflt: Verdict| match a {
            None => Ok(dflt),
            Some(s) => match s.get_ref() {
                Action::Allow => Ok(Verdict::Allow),
                Action::Deny => Ok(Verdict::Deny),
                Action::Ask => Err(err(
                    Some(s.span()),
                    format!("{what} can be allow or deny, not ask (there is no flow to show)"),
                )),
            },
        };
        let d = &raw.defaults;
        let defaults = Defaults {
            action: d.action.unwrap_or(Action::Deny),
            unknown_owner: verdict(&d.unknown_owner, "unknown_owner", Verdict::Deny)?,
            icmp: verdict(&d.icmp, "icmp", Verdict::Deny)?,
            other: verdict(&d.other, "other", Verdict::Deny)?,
            inbound: verdict(&d.inbound, "inbound", Verdict::Allow)?,
            ask_timeout: Duration::from_secs(match &d.ask_timeout_secs {
                None => 60,
                Some(s) if (1..=3600).contains(s.get_ref()) => *s.get_ref(),
                Some(s) => {
                    return Err(err(
                        Some(s.span()),
                        "ask_timeout_secs must be between 1 and 3600".into(),
                    ))
                }
            }),
        };
        let l = &raw.limits;
        let bounded = |v: &Option<Spanned<u64>>, what: &str, dflt: u64, max: u64| match v {
            None => Ok(dflt),
            Some(s) if (1..=max).contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(err(
                Some(s.span()),
                format!("{what} must be between 1 and {max}"),
            )),
        };
        let t = conntrack::Limits::default();
        let secs = |v, what, d: Duration| {
            bounded(v, what, d.as_secs(), 7 * 24 * 3600).map(Duration::from_secs)
        };
        let limits = Limits {
            table: conntrack::Limits {
                max_flows: bounded(&l.max_flows, "max_flows", t.max_flows as u64, MAX_FLOWS)?
                    as usize,
                tcp_idle: secs(&l.tcp_idle_secs, "tcp_idle_secs", t.tcp_idle)?,
                udp_idle: secs(&l.udp_idle_secs, "udp_idle_secs", t.udp_idle)?,
                embryonic_idle: secs(
                    &l.embryonic_idle_secs,
                    "embryonic_idle_secs",
                    t.embryonic_idle,
                )?,
                closing_idle: t.closing_idle,
            },
            new_flows_per_sec: bounded(&l.new_flows_per_sec, "new_flows_per_sec", 500, 1_000_000)?
                as u32,
            audit_lines_per_sec: bounded(
                &l.audit_lines_per_sec,
                "audit_lines_per_sec",
                200,
                1_000_000,
            )? as u32,
        };
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        for spanned in &raw.rule {
            let line = line_of(src, spanned.span().start);
            let r = spanned.get_ref();
            let here = |message: String| PolicyError {
                file: path.into(),
                line: Some(line),
                message,
            };
            let name = r
                .name
                .clone()
                .unwrap_or_else(|| format!("rule at line {line}"));
            if !names.insert(name.clone()) {
                return Err(here(format!("two rules are named {name:?}")));
            }
            let glob = |g: &Option<Spanned<String>>, what: &str| {
                g.as_ref()
                    .map(|s| {
                        GlobBuilder::new(s.get_ref())
                            .literal_separator(true)
                            .build()
                            .map(|g| g.compile_matcher())
                            .map_err(|e| err(Some(s.span()), format!("{what}: {e}")))
                    })
                    .transpose()
            };
            let dest = match &r.dest {
                None => None,
                Some(s) => {
                    let mut nets = Vec::new();
                    for d in s.get_ref().clone_texts() {
                        let net = d
                            .parse::<IpNet>()
                            .or_else(|_| d.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map_err(|_| {
                                err(
                                    Some(s.span()),
                                    format!(
                                        "dest {d:?} is not an address or a network (a.b.c.d/n)"
                                    ),
                                )
                            })?;
                        nets.push(net);
                    }
                    Some(nets)
                }
            };
            let ports = match &r.port {
                None => None,
                Some(s) => Some(
                    s.get_ref()
                        .ports()
                        .into_iter()
                        .map(port_range)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|m| err(Some(s.span()), m))?,
                ),
            };
            if r.exe
                .as_ref()
                .is_some_and(|e| !e.get_ref().starts_with('/'))
            {
                return Err(here(
                    "exe must be an absolute path (or a glob that starts with /)".into(),
                ));
            }
            rules.push(Rule {
                name,
                line,
                process: glob(&r.process, "process")?,
                exe: glob(&r.exe, "exe")?,
                uids: r.uid.as_ref().map(|u| match u {
                    OneOrMany::One(u) => vec![*u],
                    OneOrMany::Many(v) => v.clone(),
                }),
                dest,
                ports,
                transport: r.protocol,
                tainted: r.tainted,
                action: r.action,
            });
        }
        let ask_principal = match &raw.ask.principal {
            Some(p) if p.get_ref().is_empty() => {
                return Err(err(
                    Some(p.span()),
                    "ask principal must not be empty".into(),
                ))
            }
            p => p.as_ref().map(|p| p.get_ref().clone()),
        };
        if ask_principal.is_none() {
            let first_ask = rules
                .iter()
                .find(|r| r.action == Action::Ask)
                .map(|r| r.line);
            if first_ask.is_some() || defaults.action == Action::Ask {
                return Err(PolicyError {
                    file: path.into(),
                    line: first_ask,
                    message: "ask needs [ask] principal = \"…\" (who answers in authd's dialog)"
                        .into(),
                });
            }
        }
        Ok(Policy {
            source: path.into(),
            vm: raw.vm.into_inner(),
            rules,
            defaults,
            limits,
            taint_processes: raw.taint.processes,
            ask_principal,
        })
    }
}

impl OneOrMany<String> {
    fn clone_texts(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

impl OneOrMany<RawPort> {
    fn ports(&self) -> Vec<&RawPort> {
        match self {
            OneOrMany::One(p) => vec![p],
            OneOrMany::Many(v) => v.iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::FlowKey;
    use monitor_client::taint::SocketOwner;

    fn parse(src: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("/etc/netfilter/web.toml"), src)
    }

    fn owner(name: &str, exe: &str, uid: u32) -> SocketOwner {
        SocketOwner {
            pid: 10,
            name: name.into(),
            uid,
            exe: Some(exe.into()),
            task: 1,
        }
    }

    fn key(t: Transport, peer: &str) -> FlowKey {
        FlowKey {
            transport: t,
            guest: "192.0.2.15:40000".parse().unwrap(),
            peer: peer.parse().unwrap(),
        }
    }

    const EXAMPLE: &str = r#"version = 1
vm = "web"

[defaults]
action = "deny"
unknown_owner = "deny"

[taint]
processes = ["exfil"]

[ask]
principal = "alice"

[[rule]]
name = "tainted"
tainted = true
action = "deny"

[[rule]]
name = "good wget"
exe = "/opt/good/*"
uid = [1000, 1001]
dest = "192.0.2.1/32"
port = ["8000-8100", 9000]
protocol = "tcp"
action = "allow"

[[rule]]
process = "nc"
protocol = "udp"
port = 5353
action = "ask"
"#;

    #[test]
    fn rules_match_in_order() {
        let p = parse(EXAMPLE).unwrap();
        assert_eq!(p.vm, "web");
        assert_eq!(p.taint_processes, ["exfil"]);
        let good = owner("wget", "/opt/good/wget", 1000);
        let bad = owner("wget", "/opt/bad/wget", 1000);
        let k = key(Transport::Tcp, "192.0.2.1:8080");
        assert_eq!(p.decide(&k, &good, false).0, Action::Allow);
        assert_eq!(p.decide(&k, &good, true).0, Action::Deny);
        let (a, why) = p.decide(&k, &bad, false);
        assert_eq!((a, why), (Action::Deny, super::super::Because::Default));
        assert_eq!(
            p.decide(&key(Transport::Tcp, "192.0.2.1:9000"), &good, false)
                .0,
            Action::Allow
        );
        assert_eq!(
            p.decide(&key(Transport::Tcp, "192.0.2.1:9001"), &good, false)
                .0,
            Action::Deny
        );
        assert_eq!(
            p.decide(&key(Transport::Tcp, "192.0.2.2:8080"), &good, false)
                .0,
            Action::Deny
        );
        assert_eq!(
            p.decide(&k, &owner("wget", "/opt/good/wget", 0), false).0,
            Action::Deny
        );
        let (a, why) = p.decide(
            &key(Transport::Udp, "192.0.2.1:5353"),
            &owner("nc", "/bin/busybox", 0),
            false,
        );
        assert_eq!(a, Action::Ask);
        assert_eq!(why.to_string(), "rule \"rule at line 28\" (line 28)");
        // Directories do not match a `*`.
        assert_eq!(
            p.decide(&k, &owner("wget", "/opt/good/sub/wget", 1000), false)
                .0,
            Action::Deny
        );
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        let cases = [
            ("version = 2\nvm = \"a\"\n", 1, "version 2"),
            ("version = 1\nvm = \"a\"\n[[rule]]\naction = \"maybe\"\n", 4, "unknown variant"),
            ("version = 1\nvm = \"a\"\n\n[[rule]]\nport = \"90-80\"\naction = \"allow\"\n", 5, "backwards"),
            ("version = 1\nvm = \"a\"\n[[rule]]\ndest = \"10.0.0.0/33\"\naction = \"deny\"\n", 4, "not an address"),
            ("version = 1\nvm = \"a\"\n[[rule]]\nexe = \"wget\"\naction = \"deny\"\n", 3, "absolute"),
            ("version = 1\nvm = \"a\"\n[defaults]\nunknown_owner = \"ask\"\n", 4, "not ask"),
            ("version = 1\nvm = \"a\"\n[limits]\nmax_flows = 0\n", 4, "max_flows"),
            ("version = 1\nvm = \"a\"\nwhat = 1\n", 3, "unknown field"),
            ("version = 1\nvm = \"a\"\n[[rule]]\naction = \"ask\"\n", 3, "[ask] principal"),
            ("version = 1\nvm = \"a\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\n", 6, "two rules"),
        ];
        for (src, line, text) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!(e.line, Some(line), "{src}: {e}");
            assert!(e.message.contains(text), "{src}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("/etc/netfilter/web.toml:{line}: ")),
                "{e}"
            );
        }
        let e = Policy::load(Path::new("/nonexistent/p.toml")).unwrap_err();
        assert_eq!(e.line, None);
    }
}
