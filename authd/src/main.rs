//! `authd`: the daemon and its command line.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use authd::config::Config;
use authd::seal::{Rgb, Seal};
use authd::server::Daemon;
use authd::store::{Authority, Store};
use authd_client::client::{AuthRequest, Client, Decision, Denial};
use authd_client::protocol::{Reason, RevokeScope};
use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(version, about = "Host authentication daemon with a trusted dialog")]
struct Cli {
    /// Configuration file (JSON); every field is optional.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Socket path (overrides the configuration).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Serve {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Terminal for the fallback prompt, e.g. /dev/tty8 or /dev/pts/3.
        #[arg(long)]
        tty: Option<PathBuf>,
        /// X display for the dialog (default: $DISPLAY).
        #[arg(long)]
        display: Option<String>,
    },
    /// Set a principal's password and seal (new principal, or a change).
    Enroll(EnrollArgs),
    /// Ask for a grant, as fsd would (exit status 0 when granted).
    Authenticate {
        #[arg(long)]
        vm: String,
        #[arg(long)]
        principal: String,
        /// The operation, shown as the caller's own fact.
        #[arg(long, default_value = "open")]
        operation: String,
        /// The file's path relative to the VM's shared directory, shown as
        /// the caller's own fact.
        #[arg(long, default_value = "")]
        path: String,
        /// Process id, shown as reported by the guest.
        #[arg(long, default_value_t = 0)]
        pid: u32,
        /// Process name, shown as reported by the guest.
        #[arg(long, default_value = "")]
        process: String,
        /// Requested grant lifetime in seconds.
        #[arg(long, default_value_t = 300)]
        lifetime: u64,
        /// Give up (deny) after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// List live grants.
    Grants,
    /// End grants early.
    Revoke {
        #[arg(long, conflicts_with_all = ["vm", "all"])]
        grant: Option<String>,
        #[arg(long, conflicts_with = "all")]
        vm: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// End every grant.
    Lock,
    /// Print grant-end events as they happen.
    Watch,
}

#[derive(Args)]
struct EnrollArgs {
    principal: String,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Read passwords from stdin, one per line: the old one first when a
    /// non-root user changes an existing password, then the new one.
    #[arg(long)]
    password_stdin: bool,
    /// Seal phrase shown by the genuine dialog (required for a new principal).
    #[arg(long)]
    seal_phrase: Option<String>,
    /// Seal colour as #rrggbb.
    #[arg(long)]
    seal_color: Option<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("authd: {e}");
            ExitCode::from(2)
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn run(cli: Cli) -> AnyResult<ExitCode> {
    let mut cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(s) = cli.socket {
        cfg.socket = s;
    }
    let client = Client::new(cfg.socket.clone());
    let t = Duration::from_secs(10);
    match cli.cmd {
        Cmd::Serve {
            state_dir,
            audit_log,
            tty,
            display,
        } => {
            cfg.state_dir = state_dir.unwrap_or(cfg.state_dir);
            cfg.audit_log = audit_log.unwrap_or(cfg.audit_log);
            cfg.tty = tty.or(cfg.tty);
            cfg.display = display.or(cfg.display);
            Daemon::new(cfg)?.serve()?;
        }
        Cmd::Enroll(args) => {
            let dir = args.state_dir.clone().unwrap_or(cfg.state_dir);
            enroll(&Store::new(dir), args)?;
        }
        Cmd::Authenticate {
            vm,
            principal,
            operation,
            path,
            pid,
            process,
            lifetime,
            timeout,
        } => {
            let req = AuthRequest {
                vm,
                principal,
                reason: Reason {
                    operation,
                    path,
                    pid,
                    process,
                    pid_verified: false,
                },
                lifetime: Duration::from_secs(lifetime),
            };
            return Ok(
                match client.authenticate(&req, Duration::from_secs(timeout)) {
                    Decision::Granted(g) => {
                        println!("{}", serde_json::to_string(&g)?);
                        ExitCode::SUCCESS
                    }
                    Decision::Denied(Denial::ByDaemon { why, .. }) => {
                        println!("denied: {}", serde_json::to_string(&why)?);
                        ExitCode::from(1)
                    }
                    Decision::Denied(Denial::Failed(e)) => {
                        println!("denied: {e}");
                        ExitCode::from(1)
                    }
                },
            );
        }
        Cmd::Grants => {
            for g in client.list_grants(t)? {
                println!("{}", serde_json::to_string(&g)?);
            }
        }
        Cmd::Revoke { grant, vm, all } => {
            let scope = match (grant, vm, all) {
                (Some(g), None, false) => RevokeScope::Grant(g),
                (None, Some(v), false) => RevokeScope::Vm(v),
                (None, None, true) => RevokeScope::All,
                _ => return Err("give exactly one of --grant ID, --vm VM, --all".into()),
            };
            println!("revoked {}", client.revoke(scope, t)?);
        }
        Cmd::Lock => println!("ended {}", client.lock(t)?),
        Cmd::Watch => {
            let mut sub = client.subscribe(t)?;
            while let Some(ev) = sub.next_event(None)? {
                println!(
                    "{} {}",
                    serde_json::to_string(&ev.cause)?,
                    serde_json::to_string(&ev.grant)?
                );
                std::io::stdout().flush()?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn enroll(store: &Store, args: EnrollArgs) -> AnyResult<()> {
    let root = rustix::process::getuid().is_root();
    let exists = store.user(&args.principal)?.is_some();
    let seal = match (&args.seal_phrase, &args.seal_color) {
        (Some(p), Some(c)) => Some(Seal::new(p, c.parse::<Rgb>()?)?),
        (None, None) if exists => None,
        (None, None) if !args.password_stdin => {
            let p = prompt_line("Seal phrase (shown only by the genuine dialog): ")?;
            let c = prompt_line("Seal colour (#rrggbb): ")?;
            Some(Seal::new(&p, c.parse::<Rgb>()?)?)
        }
        _ => return Err("give both --seal-phrase and --seal-color".into()),
    };
    let need_old = exists && !root;
    let (old, new) = if args.password_stdin {
        let mut lines = std::io::stdin().lock().lines();
        let mut next = || -> AnyResult<Zeroizing<String>> {
            Ok(Zeroizing::new(
                lines.next().ok_or("missing password line on stdin")??,
            ))
        };
        let old = if need_old { Some(next()?) } else { None };
        (old, next()?)
    } else {
        let old = if need_old {
            Some(read_secret("Current password: ")?)
        } else {
            None
        };
        let new = read_secret("New password: ")?;
        if *read_secret("Repeat new password: ")? != *new {
            return Err("passwords differ".into());
        }
        (old, new)
    };
    if new.is_empty() {
        return Err("empty password".into());
    }
    let authority = if root {
        Authority::Root
    } else {
        Authority::OldPassword(old.as_ref().map(|o| o.as_bytes()))
    };
    store.set(&args.principal, new.as_bytes(), seal, authority)?;
    eprintln!(
        "{} {}",
        if exists { "updated" } else { "enrolled" },
        args.principal
    );
    Ok(())
}

fn prompt_line(prompt: &str) -> AnyResult<String> {
    eprint!("{prompt}");
    let mut s = String::new();
    std::io::stdin().lock().read_line(&mut s)?;
    Ok(s.trim().to_owned())
}

/// Reads a line from the controlling terminal with echo off.
fn read_secret(prompt: &str) -> AnyResult<Zeroizing<String>> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    (&tty).write_all(prompt.as_bytes())?;
    let saved = tcgetattr(&tty)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&tty, OptionalActions::Now, &quiet)?;
    let mut line = Zeroizing::new(String::new());
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    tcsetattr(&tty, OptionalActions::Now, &saved)?;
    r?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}
