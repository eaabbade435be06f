//! `monitor`: look into a running QEMU guest from the host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use monitor::config::{Config, VmSpec};
use monitor::kernel::{KernelImage, Profile};
use monitor::taint::{graph, TaintService};
use monitor::taint_report::{TaintNotice, TaintStatus};
use monitor::vm::Vm;
use monitor::{freeze, pagecache, process, smbios};
use monitor_client::{Client, ClientError};

/// Why a command ends unsuccessfully.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// Looking into the guest failed.
    #[error(transparent)]
    Monitor(#[from] monitor::Error),
    /// The command line lacks something the command needs.
    #[error("{0}")]
    Usage(&'static str),
    /// `uuid` found the guest's SMBIOS copy rewritten or missing.
    #[error("SMBIOS identity tampered")]
    Tampered,
    /// `scan` found copies of the text in guest RAM.
    #[error("{0} copies found")]
    CopiesFound(usize),
    /// `--json` output could not be encoded.
    #[error("encoding JSON output: {0}")]
    Output(#[source] serde_json::Error),
    /// The daemon could not be asked, or refused.
    #[error(transparent)]
    Daemon(#[from] ClientError),
    /// Taint tracking's state or output failed.
    #[error(transparent)]
    Taint(#[from] monitor::taint::TaintError),
    /// Output could not be written.
    #[error("writing {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CliError>;

#[derive(Parser)]
#[command(
    name = "monitor",
    about = "VMM-side introspection of Linux guests under QEMU"
)]
struct Cli {
    /// JSON file naming VMs (see docs/monitor.md).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where kernel profiles are cached.
    #[arg(long, global = true)]
    profile_cache: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which VM to look at: a name from the config, or the endpoints directly.
#[derive(Args, Clone)]
struct Target {
    /// VM name from the config file.
    #[arg(long)]
    vm: Option<String>,
    /// QMP socket.
    #[arg(long)]
    qmp: Option<PathBuf>,
    /// gdbstub socket.
    #[arg(long)]
    gdb: Option<PathBuf>,
    /// Guest RAM backing file.
    #[arg(long)]
    mem: Option<PathBuf>,
    /// Guest kernel (vmlinux or vmlinuz).
    #[arg(long)]
    vmlinux: Option<PathBuf>,
    /// System.map, if a real one exists.
    #[arg(long)]
    system_map: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or load) the profile of a kernel image and print a summary.
    Profile {
        vmlinux: PathBuf,
        #[arg(long)]
        system_map: Option<PathBuf>,
    },
    /// Print the VM's SMBIOS UUID, cross-checked with QEMU's.
    Uuid(Target),
    /// List guest processes.
    Ps(Target),
    /// Freeze a guest process (it parks; guest SIGCONT does not wake it).
    Freeze {
        pid: u32,
        #[command(flatten)]
        target: Target,
        /// Do not wake interruptible sleepers into the trap (no gdbstub
        /// use); they then park when their sleep ends.
        #[arg(long)]
        no_kick: bool,
        /// Seconds to wait for a safe point in the guest.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Drop the guest page cache of host files (by host inode number) and
    /// scrub the freed frames (needs --gdb).
    Flush {
        /// Host inode numbers (`stat -c %i FILE`).
        #[arg(required = true)]
        inos: Vec<u64>,
        #[command(flatten)]
        target: Target,
        /// Seconds to wait for a safe point in the guest.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Search all of guest RAM for a string (e.g. to check that no copy of
    /// a protected file is left); prints the guest-physical addresses.
    Scan {
        /// The bytes to look for (UTF-8 text).
        text: String,
        /// Guest RAM backing file.
        #[arg(long)]
        mem: PathBuf,
    },
    /// Serve JSON-lines requests on a Unix socket (needs --config).
    Daemon {
        /// Socket path; a stale socket file there is replaced.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Taint tracking, as the daemon keeps it (docs/taint.md).
    Taint {
        #[command(subcommand)]
        cmd: TaintCmd,
        /// The daemon's socket.
        #[arg(long, global = true, default_value = "/run/monitor.sock")]
        socket: PathBuf,
    },
    /// Thaw a frozen guest process (needs --gdb).
    Thaw {
        pid: u32,
        #[command(flatten)]
        target: Target,
        /// Seconds to wait for a safe point in the guest.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum TaintCmd {
    /// What is tainted per VM, and whether tracking is complete.
    Status {
        /// One VM (name or UUID); default: all.
        #[arg(long)]
        vm: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print taint notices and leak alerts as they happen.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The VM's taint graph: files, processes and sockets as nodes, the
    /// events that carried taint as edges.
    Graph {
        /// The VM (name or UUID).
        #[arg(long)]
        vm: String,
        /// `svg` (through Graphviz's dot) or `dot`.
        #[arg(long, value_enum, default_value_t = GraphFormat::Svg)]
        format: GraphFormat,
        /// Write here instead of to standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GraphFormat {
    Svg,
    Dot,
}

/// How long the command line waits for the daemon's answer.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

fn vm_names(status: &TaintStatus) -> std::collections::BTreeMap<String, String> {
    status
        .vms
        .iter()
        .map(|v| (v.vm.clone(), v.name.clone()))
        .collect()
}

fn taint(cmd: &TaintCmd, socket: &std::path::Path) -> Result<()> {
    let mut c = Client::connect(socket)?;
    match cmd {
        TaintCmd::Status { vm, json } => {
            let s = c.taint_status(vm.as_deref(), DAEMON_TIMEOUT)?;
            if *json {
                return print_json(&s);
            }
            println!(
                "{:<12} {:<36} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  TRACKING",
                "VM", "UUID", "FILES", "PROCS", "UNVER", "UNIX", "INET", "ALERTS"
            );
            for v in &s.vms {
                println!(
                    "{:<12} {:<36} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
                    v.name,
                    v.vm,
                    v.files,
                    v.processes,
                    v.unverified,
                    v.unix_sockets,
                    v.inet_flows,
                    v.alerts,
                    if v.complete { "complete" } else { "INCOMPLETE" }
                );
                for why in &v.incomplete {
                    println!("    incomplete: {why}");
                }
            }
            println!(
                "about {} KiB of taint state, {}",
                s.approx_bytes / 1024,
                if s.persistent {
                    "kept across restarts"
                } else {
                    "in memory only (no taint.state_dir)"
                }
            );
        }
        TaintCmd::Watch { json } => {
            let mut names = vm_names(&c.taint_status(None, DAEMON_TIMEOUT)?);
            let mut w = Client::connect(socket)?.taint_watch(DAEMON_TIMEOUT)?;
            loop {
                let n = w.next_notice(None)?;
                let vm = match &n {
                    TaintNotice::Tainted { vm, .. } | TaintNotice::Freeze { vm, .. } => Some(vm),
                    _ => None,
                };
                if vm.is_some_and(|vm| !names.contains_key(vm)) {
                    // A VM that appeared since: learn its name.
                    names = vm_names(&c.taint_status(None, DAEMON_TIMEOUT)?);
                }
                if *json {
                    println!("{}", serde_json::to_string(&n).map_err(CliError::Output)?);
                } else {
                    println!("{}", notice_line(&n, &names));
                }
            }
        }
        TaintCmd::Graph { vm, format, output } => {
            let names = vm_names(&c.taint_status(None, DAEMON_TIMEOUT)?);
            let (_, nodes) = c.taint_graph(vm, DAEMON_TIMEOUT)?;
            let dot = graph::dot(&nodes, &names);
            let bytes = match format {
                GraphFormat::Dot => dot.into_bytes(),
                GraphFormat::Svg => graph::svg(&dot)?,
            };
            let write_err = |what: String| move |source| CliError::Write { what, source };
            match output {
                Some(p) => std::fs::write(p, &bytes).map_err(write_err(p.display().to_string()))?,
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .write_all(&bytes)
                        .map_err(write_err("standard output".into()))?
                }
            }
        }
    }
    Ok(())
}

/// A notice on one line, for people.
fn notice_line(n: &TaintNotice, names: &std::collections::BTreeMap<String, String>) -> String {
    let name = |uuid: &str| names.get(uuid).cloned().unwrap_or_else(|| uuid.to_string());
    match n {
        TaintNotice::Tainted { vm, entry } => {
            let from = match &entry.origin.from {
                Some(_) => format!(" by {}", graph::carrier(entry.origin.by)),
                None => " (source)".into(),
            };
            format!(
                "{} tainted {}{from}{}",
                name(vm),
                graph::one_line(entry),
                entry
                    .rule
                    .as_ref()
                    .map_or(String::new(), |r| format!(", rule {r}"))
            )
        }
        TaintNotice::Leak { alert } => {
            let chain: Vec<String> = alert
                .chain
                .iter()
                .map(|l| graph::one_line(&l.entry))
                .collect();
            format!(
                "LEAK {} pid {} ({}) -> {} {}{}; chain: {}{}",
                alert.vm_name,
                alert.pid,
                alert.name,
                alert.destination,
                graph::transport(alert.transport),
                if alert.freeze { ", freezing" } else { "" },
                chain.join(" <- "),
                if alert.chain_complete {
                    ""
                } else {
                    " <- (evicted)"
                }
            )
        }
        TaintNotice::Freeze {
            vm,
            pid,
            ok,
            message,
        } => format!(
            "{} pid {} {}: {message}",
            name(vm),
            pid,
            if *ok { "frozen" } else { "NOT frozen" }
        ),
        TaintNotice::Lagged { missed } => format!("(this watcher missed {missed} notices)"),
    }
}

fn resolve(cli: &Cli, t: &Target) -> Result<VmSpec> {
    if let Some(name) = &t.vm {
        let path = cli
            .config
            .clone()
            .ok_or(CliError::Usage("--vm needs --config"))?;
        let mut spec = Config::load(&path)?.vm(name)?.clone();
        if let Some(g) = &t.gdb {
            spec.gdb = Some(g.clone());
        }
        return Ok(spec);
    }
    let need =
        |o: &Option<PathBuf>, missing: &'static str| o.clone().ok_or(CliError::Usage(missing));
    Ok(VmSpec {
        qmp: need(&t.qmp, "give --vm NAME or --qmp")?,
        gdb: t.gdb.clone(),
        mem: need(&t.mem, "give --vm NAME or --mem")?,
        vmlinux: need(&t.vmlinux, "give --vm NAME or --vmlinux")?,
        system_map: t.system_map.clone(),
        uuid: None,
        addrs: Vec::new(),
        plugin: None,
    })
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(CliError::Output)?
    );
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Profile {
            vmlinux,
            system_map,
        } => {
            let image = KernelImage::load(vmlinux)?;
            let p = Profile::build(&image, system_map.as_deref())?;
            let cache = cli
                .profile_cache
                .clone()
                .unwrap_or_else(monitor::kernel::profile::default_cache_dir);
            let path = p.store(&cache)?;
            println!("banner:   {}", p.banner.trim_end());
            println!("build id: {}", p.build_id);
            println!("symbols:  {} from {}", p.symbol_count, p.symbol_source);
            println!("cached:   {}", path.display());
        }
        Cmd::Uuid(t) => {
            let mut vm = Vm::attach(resolve(cli, t)?, cli.profile_cache.clone())?;
            let qmp_uuid = vm.qmp.uuid()?;
            let found = smbios::read_uuid(&vm.ram).ok();
            let id = smbios::identity(&qmp_uuid, found.as_ref());
            if t.json {
                print_json(&id)?;
            } else {
                println!("qemu:   {}", id.qmp_uuid);
                println!(
                    "smbios: {}",
                    id.smbios_uuid.as_deref().unwrap_or("(not found)")
                );
                if id.tampered {
                    println!("TAMPERED: the guest's SMBIOS UUID does not match QEMU's");
                }
            }
            if id.tampered {
                return Err(CliError::Tampered);
            }
        }
        Cmd::Ps(t) => {
            let mut vm = Vm::attach(resolve(cli, t)?, cli.profile_cache.clone())?;
            let procs = vm.paused(|vm| {
                let paging = vm.paging()?;
                let k = vm.kernel(paging)?;
                process::list(&k)
            })?;
            if t.json {
                print_json(&procs)?;
            } else {
                println!("{:>7} {:>7} {:>6} S NAME", "PID", "PPID", "UID");
                for p in procs {
                    let name = if p.kernel_thread {
                        format!("[{}]", p.name)
                    } else {
                        p.name
                    };
                    println!(
                        "{:>7} {:>7} {:>6} {} {}",
                        p.pid, p.ppid, p.uid, p.state, name
                    );
                }
            }
        }
        Cmd::Freeze {
            pid,
            target,
            no_kick,
            timeout,
        } => {
            let mut vm = Vm::attach(resolve(cli, target)?, cli.profile_cache.clone())?;
            let r = freeze::freeze(&mut vm, *pid, !no_kick, Duration::from_secs(*timeout))?;
            report(&r, target.json, "frozen")?;
        }
        Cmd::Flush {
            inos,
            target,
            timeout,
        } => {
            let mut vm = Vm::attach(resolve(cli, target)?, cli.profile_cache.clone())?;
            let set = inos.iter().copied().collect();
            let r = pagecache::flush(&mut vm, &set, Duration::from_secs(*timeout))?;
            if target.json {
                print_json(&r)?;
            } else {
                println!("{r}");
            }
        }
        Cmd::Scan { text, mem } => {
            let ram = monitor::mem::GuestRam::open(mem)?;
            let hits = pagecache::scan_ram(&ram, text.as_bytes());
            for h in &hits {
                println!("{h:#x}");
            }
            if !hits.is_empty() {
                return Err(CliError::CopiesFound(hits.len()));
            }
        }
        Cmd::Daemon { socket } => {
            // Before any thread starts, so that none of them takes them.
            let stop_signals = monitor::shutdown::block()?;
            let path = cli
                .config
                .clone()
                .ok_or(CliError::Usage("daemon needs --config"))?;
            let config = Config::load(&path)?;
            if std::fs::symlink_metadata(socket)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false)
            {
                std::fs::remove_file(socket)
                    .map_err(|e| monitor::Error::io("remove stale socket", e))?;
            }
            let listener = std::os::unix::net::UnixListener::bind(socket)
                .map_err(|e| monitor::Error::io(format!("bind {}", socket.display()), e))?;
            let (taint, restored) = TaintService::open(&config.taint, config.internal_addrs())?;
            if let Some(r) = restored {
                log::info!(
                    "taint state restored ({} snapshot, {} journal batches replayed, {} skipped{}); \
                     {} VMs must show what they missed while the monitor was down",
                    if r.from_snapshot { "from a" } else { "no" },
                    r.replayed,
                    r.skipped,
                    if r.stale_journal {
                        ", the journal was in the snapshot already"
                    } else {
                        ""
                    },
                    r.vms
                );
                if r.host_crashed {
                    log::error!(
                        "the monitor before did not stop, and the host booted since: the taint \
                         journal's last batches may not have reached the disk; every VM's \
                         tracking is marked incomplete"
                    );
                }
                if r.missing > 0 {
                    log::error!(
                        "{} VMs had taint state that is not there any more: brought back empty, \
                         marked incomplete",
                        r.missing
                    );
                }
                if let Some(d) = &r.damage {
                    log::error!(
                        "taint journal damaged at line {} (offset {}): {}; loaded what came \
                         before, every VM's tracking is marked incomplete; the damaged journal \
                         is kept as {}",
                        d.line,
                        d.offset,
                        d.what,
                        d.kept.display()
                    );
                }
            }
            let freeze_on_leak = config.taint.freeze_on_leak;
            let state = std::sync::Arc::new(monitor::daemon::State::with_taint(
                config,
                cli.profile_cache.clone(),
                std::sync::Arc::new(taint),
            ));
            monitor::shutdown::stop_on(stop_signals, state.clone())?;
            if freeze_on_leak {
                monitor::daemon::start_freezer(state.clone())?;
            }
            monitor::daemon::start_hook_feeds(state.clone())?;
            monitor::daemon::serve(listener, state)?;
        }
        Cmd::Taint { cmd, socket } => taint(cmd, socket)?,
        Cmd::Thaw {
            pid,
            target,
            timeout,
        } => {
            let mut vm = Vm::attach(resolve(cli, target)?, cli.profile_cache.clone())?;
            let r = freeze::thaw(&mut vm, *pid, Duration::from_secs(*timeout))?;
            report(&r, target.json, "thawed")?;
        }
    }
    Ok(())
}

fn report(r: &monitor::report::FreezeReport, json: bool, what: &str) -> Result<()> {
    if json {
        return print_json(r);
    }
    println!(
        "{what} pid {} ({} threads, woken {})",
        r.pid, r.threads, r.woken
    );
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitor: {e}");
            ExitCode::FAILURE
        }
    }
}
