//! `fsdrive`: talk to a virtio-fs daemon from the host.
//!
//! ```text
//! fsdrive --socket /run/fsd.sock ls /etc
//! fsdrive --socket /run/fsd.sock stat /etc/passwd
//! fsdrive --socket /run/fsd.sock cat /etc/hostname
//! fsdrive hostile --shared-dir-parent /tmp     # battery against fsd and virtiofsd
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use driver::fuse::ROOT_ID;
use driver::{Device, DeviceConfig, Session};

#[derive(Parser)]
#[command(about = "Host-side virtio-fs guest driver")]
struct Cli {
    /// vhost-user socket of a running daemon (for ls/stat/cat).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List a directory (READDIRPLUS).
    Ls {
        /// Path inside the share.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show the attributes of a path.
    Stat {
        /// Path inside the share.
        path: String,
    },
    /// Print a file.
    Cat {
        /// Path inside the share.
        path: String,
    },
    /// Run the hostile-guest battery against fsd and/or virtiofsd and print
    /// a Markdown comparison table.
    Hostile {
        /// Daemons to test: fsd, virtiofsd or both.
        #[arg(long, default_value = "both")]
        daemon: String,
        /// Only cases whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fsdrive: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Cmd::Hostile { daemon, filter } = &cli.cmd {
        let kinds = match daemon.as_str() {
            "fsd" => vec![driver::DaemonKind::Fsd],
            "virtiofsd" => vec![driver::DaemonKind::Virtiofsd],
            _ => vec![driver::DaemonKind::Fsd, driver::DaemonKind::Virtiofsd],
        };
        let table = driver::hostile::compare(&kinds, filter.as_deref())?;
        print!("{table}");
        return Ok(());
    }
    let socket = cli.socket.ok_or("--socket is required")?;
    let mut dev = Device::connect(&socket, &DeviceConfig::default())?;
    let mut s = Session::new(dev.queue(1)?);
    s.init()?;
    match cli.cmd {
        Cmd::Ls { path } => {
            let node = walk(&mut s, &path)?;
            for e in s.readdir_all(node, true, 64 << 10)? {
                let (mode, size) = e
                    .entry
                    .map(|en| (en.attr.mode, en.attr.size))
                    .unwrap_or_default();
                println!(
                    "{:o} {:>12} {}",
                    mode,
                    size,
                    String::from_utf8_lossy(&e.name)
                );
            }
        }
        Cmd::Stat { path } => {
            let node = walk(&mut s, &path)?;
            let a = s.getattr(node)?.attr;
            println!(
                "node {node} ino {} mode {:o} nlink {} uid {} gid {} size {}",
                a.ino, a.mode, a.nlink, a.uid, a.gid, a.size
            );
        }
        Cmd::Cat { path } => {
            use std::io::Write;
            let node = walk(&mut s, &path)?;
            let fh = s.open(node, libc::O_RDONLY as u32, false)?.fh;
            let mut off = 0u64;
            let mut out = std::io::stdout().lock();
            loop {
                let b = s.read(node, fh, off, 128 << 10)?;
                if b.is_empty() {
                    break;
                }
                off += b.len() as u64;
                out.write_all(&b)?;
            }
            s.release(node, fh, false)?;
        }
        Cmd::Hostile { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Looks up each component of `path` from the root.
fn walk(s: &mut Session<'_>, path: &str) -> driver::Result<u64> {
    let mut node = ROOT_ID;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        node = s.lookup(node, comp.as_bytes())?.nodeid;
    }
    Ok(node)
}
