//! Command-line face of the rig, for scripts (scripts/demo.sh) and people:
//! populate a busybox root directory, boot a diskless guest on a running
//! vhost-user-fs daemon (optionally with a NIC and virtio-serial ports),
//! show where the guest kernel and the static in-guest helpers live.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use testrig::{rootfs, GuestKernel, InitramfsBuilder, MemoryBackend, QemuConfig, Vm};

#[derive(Parser)]
#[command(
    name = "fsd-rig",
    about = "Real-guest rig for fsd: root filesystems and QEMU guests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Populate DIR as a minimal busybox root filesystem.
    Rootfs {
        dir: PathBuf,
        /// Run this shell script at boot instead of an interactive shell.
        #[arg(long)]
        script: Option<PathBuf>,
    },
    /// Boot a guest whose root filesystem is the share of a running daemon.
    BootRoot(Box<BootRoot>),
    /// Build (or find) the static in-guest helpers and print their directory.
    GuestTools,
    /// Print the guest kernel, vmlinux and virtiofsd paths.
    Paths,
}

/// What `boot-root` takes.
#[derive(clap::Args)]
struct BootRoot {
    /// The daemon's vhost-user socket.
    #[arg(long)]
    socket: PathBuf,
    /// Mount tag.
    #[arg(long, default_value = "rootfs")]
    tag: String,
    /// Interactive console on this terminal (Ctrl-A X quits QEMU).
    #[arg(long)]
    shell: bool,
    /// Seconds before the guest is killed (non-interactive).
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Also write the console to this file.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Print the whole console, not only the script output.
    #[arg(long)]
    verbose: bool,
    /// Print the QEMU command line first.
    #[arg(long)]
    show_command: bool,
    /// What the monitor attaches to.
    #[command(flatten)]
    looks: Looks,
    /// Devices beyond the root file system.
    #[command(flatten)]
    devices: Devices,
}

/// The openings the monitor looks into a guest through (docs/monitor.md).
#[derive(clap::Args)]
struct Looks {
    /// A QMP socket; repeat for more clients (QEMU serves one per socket).
    #[arg(long)]
    qmp: Vec<PathBuf>,
    /// A gdbstub socket.
    #[arg(long)]
    gdb: Option<PathBuf>,
    /// Guest RAM in this file (put it under /dev/shm) instead of a memfd.
    #[arg(long)]
    mem_file: Option<PathBuf>,
    /// The VM's SMBIOS UUID.
    #[arg(long)]
    uuid: Option<String>,
    /// A second serial port (the guest's /dev/ttyS1) as a listening Unix
    /// socket: a host script can send the guest's tour lines to wait on.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long)]
    memory_mib: Option<u32>,
}

/// Devices a guest may have beyond its root file system.
#[derive(clap::Args)]
struct Devices {
    /// A virtio-net NIC whose back end is this stream socket (QEMU's
    /// `-netdev stream`, e.g. the packet filter's guest socket); the
    /// guest sees it as eth0.
    #[arg(long, value_name = "SOCK")]
    net_stream: Option<PathBuf>,
    /// A virtio-serial port NAME (the guest's /dev/virtio-ports/NAME) on
    /// the listening Unix socket SOCK; repeatable.
    #[arg(long, value_name = "NAME=SOCK", value_parser = name_and_path)]
    serial_port: Vec<(String, PathBuf)>,
}

fn name_and_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), PathBuf::from(p))),
        _ => Err(format!("{s}: want NAME=SOCK")),
    }
}

impl Devices {
    /// The modules the devices need in the initramfs.
    fn modules(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.net_stream.is_some() {
            m.extend_from_slice(testrig::net::NET_MODULES);
        }
        if !self.serial_port.is_empty() {
            m.push("virtio_console");
        }
        m
    }

    fn apply(self, mut cfg: QemuConfig) -> QemuConfig {
        if let Some(s) = &self.net_stream {
            testrig::net::add_nic(&mut cfg, "net0", s, "52:54:00:12:34:56");
        }
        for (name, sock) in &self.serial_port {
            cfg = cfg.serial_port(name, sock);
        }
        cfg
    }
}

impl Looks {
    fn apply(self, cfg: &mut QemuConfig) {
        let mut qmp = self.qmp.into_iter();
        cfg.qmp = qmp.next();
        for p in qmp {
            cfg.extra_args.push("-qmp".into());
            cfg.extra_args
                .push(format!("unix:{},server=on,wait=off", p.display()).into());
        }
        cfg.gdb = self.gdb;
        if let Some(m) = self.mem_file {
            cfg.memory = MemoryBackend::File(m);
        }
        cfg.uuid = self.uuid;
        if let Some(c) = self.control {
            testrig::shell::SerialShell::attach(cfg, &c);
        }
        if let Some(m) = self.memory_mib {
            cfg.memory_mib = m;
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fsd-rig: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> testrig::Result<ExitCode> {
    match cli.cmd {
        Cmd::Rootfs { dir, script } => {
            rootfs::populate_busybox_root(&dir)?;
            match script {
                Some(p) => {
                    let text = std::fs::read_to_string(&p)
                        .map_err(|source| testrig::Error::Io { path: p, source })?;
                    rootfs::set_script(&dir, &text)?;
                }
                None => rootfs::clear_script(&dir)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BootRoot(b) => {
            let BootRoot {
                socket,
                tag,
                shell,
                timeout,
                console_log,
                verbose,
                show_command,
                looks,
                devices,
            } = *b;
            let kernel = GuestKernel::locate()?;
            let mut initrd = InitramfsBuilder::switch_root(&tag);
            for m in devices.modules() {
                initrd = initrd.module(m);
            }
            let initrd = initrd.build(&kernel)?;
            let mut cfg = devices.apply(QemuConfig::new(&kernel, &initrd).fs(&socket, &tag));
            looks.apply(&mut cfg);
            cfg.timeout = Duration::from_secs(timeout);
            cfg.console_log = console_log;
            // Killed (the demo's cleanup), fsd-rig takes its guest along.
            cfg.die_with_parent = true;
            if show_command {
                let args: Vec<String> = cfg
                    .args(shell)
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                println!("{} {}", cfg.qemu.display(), args.join(" "));
            }
            if shell {
                let status = Vm::interactive(&cfg)?;
                return Ok(if status.success() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let t = Vm::start(&cfg)?.wait()?;
            if verbose {
                print!("{}", t.console);
            } else {
                print!("{}", t.output()?);
            }
            let code = t.exit_code.unwrap_or(1);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Cmd::GuestTools => {
            println!("{}", testrig::guest_tools::build()?.dir().display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Paths => {
            let kernel = GuestKernel::locate()?;
            println!("release   {}", kernel.release);
            println!("vmlinuz   {}", kernel.vmlinuz.display());
            println!("modules   {}", kernel.modules_dir.display());
            if let Some(v) = &kernel.vmlinux {
                println!("vmlinux   {}", v.display());
            }
            println!("virtiofsd {}", testrig::paths::virtiofsd().display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
