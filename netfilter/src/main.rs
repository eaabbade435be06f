//! `netfilter`: the per-VM packet filter daemon and its status client.
//!
//! ```text
//! netfilter run --policy FILE --guest SOCK --passt SOCK [--monitor SOCK]
//!               [--authd SOCK] [--audit FILE] [--control SOCK] [--no-batching] [--no-conntrack]
//! netfilter check FILE                      # check a policy file
//! netfilter status --control SOCK [--json]  # connection table and counters
//! netfilter set --control SOCK [--batching on|off] [--conntrack on|off]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use netfilter::ask::{Asker, NoDialog};
use netfilter::audit::Audit;
use netfilter::control::{self, Request, Status};
use netfilter::daemon::{self, Endpoints};
use netfilter::dialog::AuthdAsker;
use netfilter::engine::{Shared, Switches};
use netfilter::owner::{MonitorOwners, NoOwners, OwnerSource};
use netfilter::policy::Policy;
use netfilter::taint::{MonitorSource, MonitorTaint, NamedTaint, TaintOracle};
use netfilter::{Error, Result};

#[derive(Parser)]
#[command(
    name = "netfilter",
    about = "Per-VM packet filter that decides by guest process and user"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum Cmd {
    /// Filter one VM's traffic between QEMU and passt.
    Run {
        /// The VM's policy (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Socket the filter listens on; QEMU connects with
        /// `-netdev stream,server=off,addr.type=unix,addr.path=SOCK`.
        #[arg(long)]
        guest: PathBuf,
        /// passt's socket (`passt --socket SOCK`).
        #[arg(long)]
        passt: PathBuf,
        /// The monitor daemon's socket, for socket ownership. Without it
        /// every owner is unknown.
        #[arg(long)]
        monitor: Option<PathBuf>,
        /// How long an ownership lookup may take.
        #[arg(long, default_value_t = 5)]
        monitor_timeout_secs: u64,
        /// authd's socket: `ask` rules are put to the policy's `[ask]
        /// principal` in authd's trusted dialog. Without it `ask` denies.
        #[arg(long)]
        authd: Option<PathBuf>,
        /// Audit log (JSON lines, appended).
        #[arg(long)]
        audit: Option<PathBuf>,
        /// Control socket for `netfilter status` and `netfilter set`.
        #[arg(long)]
        control: Option<PathBuf>,
        /// Read one frame per wakeup and look owners up one at a time.
        #[arg(long)]
        no_batching: bool,
        /// Inspect every packet instead of passing decided flows.
        #[arg(long)]
        no_conntrack: bool,
    },
    /// Check a policy file and print what it says.
    Check { policy: PathBuf },
    /// Print the connection table and counters of a running filter.
    Status {
        #[arg(long)]
        control: PathBuf,
        /// The whole status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch batching or the connection table of a running filter.
    Set {
        #[arg(long)]
        control: PathBuf,
        #[arg(long, value_enum)]
        batching: Option<OnOff>,
        #[arg(long, value_enum)]
        conntrack: Option<OnOff>,
    },
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run {
            policy,
            guest,
            passt,
            monitor,
            monitor_timeout_secs,
            authd,
            audit,
            control,
            no_batching,
            no_conntrack,
        } => {
            let policy = Arc::new(Policy::load(&policy)?);
            let audit = Audit::open(audit.as_deref(), policy.limits.audit_lines_per_sec)?;
            let timeout = Duration::from_secs(monitor_timeout_secs);
            let names = policy.taint_processes.clone();
            let (owners, taint): (Box<dyn OwnerSource>, Box<dyn TaintOracle>) = match monitor {
                Some(m) => (
                    Box::new(MonitorOwners::new(m.clone(), policy.vm.clone(), timeout)),
                    Box::new(MonitorTaint::new(MonitorSource::new(m, timeout), names)),
                ),
                None => {
                    log::warn!(
                        "no --monitor: every flow's owner is unknown, and only [taint] processes are tainted"
                    );
                    (Box::new(NoOwners), Box::new(NamedTaint::new(names)))
                }
            };
            let asker: Box<dyn Asker> = match (authd, &policy.ask_principal) {
                (Some(sock), Some(principal)) => Box::new(AuthdAsker::new(sock, principal.clone())),
                _ => Box::new(NoDialog),
            };
            let shared = Arc::new(Shared::new(
                policy,
                Switches::new(!no_batching, !no_conntrack),
            ));
            let ends = Endpoints {
                guest,
                passt,
                control,
            };
            daemon::run(&ends, shared, owners, taint, asker, audit)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { policy } => {
            let p = Policy::load(&policy)?;
            println!(
                "{}: VM {}, {} rules, default {:?}, unknown owners {:?}, at most {} flows",
                policy.display(),
                p.vm,
                p.rules.len(),
                p.defaults.action,
                p.defaults.unknown_owner,
                p.limits.table.max_flows
            );
            for r in &p.rules {
                println!("  line {:>3}: {:?} {}", r.line, r.action, r.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { control, json } => {
            let v = control::call(&control, &Request::Status)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(Error::Control)?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let s: Status = serde_json::from_value(v).map_err(Error::Control)?;
            print_status(&s);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Set {
            control,
            batching,
            conntrack,
        } => {
            let req = Request::Set {
                batching: batching.map(|b| b == OnOff::On),
                conntrack: conntrack.map(|c| c == OnOff::On),
                reset_latencies: true,
            };
            let v = control::call(&control, &req)?;
            println!("{v}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(s: &Status) {
    let c = &s.counters;
    println!(
        "VM {} (policy {}); batching {}, connection table {}",
        s.vm,
        s.policy,
        if s.switches.batching { "on" } else { "off" },
        if s.switches.conntrack { "on" } else { "off" }
    );
    println!(
        "frames out {} in {}; new flows {} (allowed {}, denied {}, unknown owner {}, rate-limited {}); fast path {}; malformed {}",
        c.frames_out, c.frames_in, c.new_flows, c.allowed, c.denied, c.unknown_owner, c.rate_limited, c.fast_path, c.malformed
    );
    println!(
        "table {}/{} flows (embryonic {}, established {}, closing {}); evicted {}+{}, expired {}",
        s.table.flows,
        s.table.capacity,
        s.table.embryonic,
        s.table.established,
        s.table.closing,
        s.table.evicted_embryonic,
        s.table.evicted_settled,
        s.table.expired
    );
    println!(
        "{:<5} {:<22} {:<22} {:<6} {:<11} {:>7} {:>5} PROCESS",
        "PROTO", "GUEST", "PEER", "VERDICT", "STATE", "PID", "UID"
    );
    for f in &s.flows {
        let (pid, uid, name) = match &f.owner {
            Some(o) => (
                o.pid.to_string(),
                o.uid.to_string(),
                o.exe.clone().unwrap_or_else(|| o.name.clone()),
            ),
            None => ("-".into(), "-".into(), "(unknown)".into()),
        };
        println!(
            "{:<5} {:<22} {:<22} {:<6} {:<11} {:>7} {:>5} {name}",
            format!("{:?}", f.transport).to_lowercase(),
            f.guest.to_string(),
            f.peer.to_string(),
            format!("{:?}", f.verdict).to_lowercase(),
            format!("{:?}", f.state).to_lowercase(),
            pid,
            uid
        );
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netfilter: {e}");
            ExitCode::FAILURE
        }
    }
}
