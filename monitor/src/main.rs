//! `monitor`: look into a running QEMU guest from the host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use monitor::config::{Config, VmSpec};
use monitor::kernel::{KernelImage, Profile};
use monitor::vm::Vm;
use monitor::{freeze, pagecache, process, smbios};

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
            let state = std::sync::Arc::new(monitor::daemon::State::new(
                config,
                cli.profile_cache.clone(),
            ));
            monitor::daemon::serve(listener, state)?;
        }
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
