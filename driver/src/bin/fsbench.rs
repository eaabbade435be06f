//! `fsbench`: fsd and virtiofsd side by side on the same files.
//!
//! Starts both daemons on one scratch share, drives each through the same
//! workloads at queue depth 1 and 32 (`--depths`; and fsd also with 2 and
//! 4 request queues driven in parallel, 32 in flight in all), repeats, and prints a Markdown table of medians with the
//! ratio fsd/virtiofsd and the host's own `pread` ceiling beside the read
//! rows. `--smoke` uses tiny counts to check that everything works.
//! `--policy-rules N` compares fsd with an access-control policy of N rules
//! (none of which protects the benchmark's files, so every request pays the
//! policy check and none is refused) against fsd without a policy. After
//! the table, each daemon looks up `--held N` distinct files (100,000 by
//! default) that are kept, as a guest walking a big tree keeps them, and
//! its descriptors and memory are reported.

use std::process::ExitCode;

use clap::Parser;
use driver::bench::{self, median, Measurement, Prepared, Workload};
use driver::{Daemon, DaemonKind, DaemonSpec, Device, DeviceConfig, Session};

#[derive(Parser)]
#[command(about = "Benchmark fsd against virtiofsd through a host-side guest driver")]
struct Args {
    /// Tiny counts, one repetition: checks the harness, not speed.
    #[arg(long)]
    smoke: bool,
    /// Repetitions per figure (median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Only workloads whose label contains this.
    #[arg(long)]
    only: Option<String>,
    /// Daemons to run: fsd, virtiofsd or both.
    #[arg(long, default_value = "both")]
    daemon: String,
    /// Scale the operation counts.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Compare fsd with a policy of this many rules against fsd without one
    /// (instead of fsd against virtiofsd).
    #[arg(long)]
    policy_rules: Option<usize>,
    /// After the table: look up this many distinct files and keep them
    /// (no FORGET), then report each daemon's descriptors and memory (0:
    /// leave this out).
    #[arg(long, default_value_t = 100_000)]
    held: usize,
    /// Queue depths of the one-queue rows.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32])]
    depths: Vec<usize>,
    /// Extra arguments for fsd (e.g. `--fsd-arg=--thread-pool-size=2`).
    #[arg(long = "fsd-arg", allow_hyphen_values = true)]
    fsd_args: Vec<String>,
    /// Compare fsd with these extra arguments against fsd without them
    /// (instead of fsd against virtiofsd), e.g. `--variant=--thread-pool-size=2`.
    #[arg(long, allow_hyphen_values = true)]
    variant: Vec<String>,
}

/// Request queues fsd is driven through in parallel, 32 requests in
/// flight in all (each queue at 32/N): against the one-queue row at 32.
const PARALLEL_QUEUES: [usize; 2] = [2, 4];

struct Target {
    kind: DaemonKind,
    name: String,
    daemon: Daemon,
    dev: Device,
    prep: Vec<Prepared>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fsbench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ops_for(w: Workload, smoke: bool, scale: f64) -> u64 {
    let full: u64 = match w {
        Workload::Getattr => 20_000,
        Workload::LookupForget => 10_000,
        Workload::OpenRead4k => 5_000,
        Workload::SeqRead1m => 512,
        Workload::Write1m => 256,
        Workload::CreateUnlink => 2_000,
        Workload::Readdirplus => 5,
    };
    if smoke {
        (full / 200).max(2)
    } else {
        ((full as f64 * scale) as u64).max(1)
    }
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let reps = if a.smoke { 1 } else { a.reps.max(1) };
    let scratch = tempfile::Builder::new().prefix("fsbench-").tempdir()?;
    let share = scratch.path().join("share");
    std::fs::create_dir(&share)?;
    let (big_mib, entries) = if a.smoke { (4, 200) } else { (256, 10_000) };
    let held = if a.smoke { a.held.min(2_000) } else { a.held };
    eprintln!(
        "populating {} ({big_mib} MiB file, {entries} entries, {held} files to hold)",
        share.display()
    );
    bench::populate(&share, big_mib, entries)?;
    bench::populate_held(&share, held)?;

    // What to run: (kind, name in the table, extra flags).
    let plans: Vec<(DaemonKind, String, Vec<String>)> = match a.policy_rules {
        None if !a.variant.is_empty() => vec![
            (
                DaemonKind::Fsd,
                format!("fsd {}", a.variant.join(" ")),
                a.variant.iter().chain(&a.fsd_args).cloned().collect(),
            ),
            (DaemonKind::Fsd, "fsd".into(), a.fsd_args.clone()),
        ],
        Some(n) => {
            let policy = write_policy(scratch.path(), n)?;
            vec![
                (
                    DaemonKind::Fsd,
                    format!("fsd+{n} rules"),
                    [
                        format!("--policy={}", policy.display()),
                        "--vm=bench".into(),
                    ]
                    .into_iter()
                    .chain(a.fsd_args.iter().cloned())
                    .collect(),
                ),
                (DaemonKind::Fsd, "fsd".into(), a.fsd_args.clone()),
            ]
        }
        None => [DaemonKind::Fsd, DaemonKind::Virtiofsd]
            .into_iter()
            .filter(|k| a.daemon == "both" || a.daemon == k.name())
            .map(|k| {
                let extra = match k {
                    DaemonKind::Fsd => a.fsd_args.clone(),
                    _ => Vec::new(),
                };
                (k, k.name().to_string(), extra)
            })
            .collect(),
    };
    let mut targets = Vec::new();
    for (kind, name, extra) in plans {
        let mut spec = match DaemonSpec::new(kind, &share) {
            Ok(s) => s,
            Err(m) => {
                eprintln!("without {name}: {m}");
                continue;
            }
        };
        spec.extra_args = extra;
        let daemon = Daemon::spawn(spec)?;
        let cfg = DeviceConfig {
            request_queues: if kind == DaemonKind::Fsd { 4 } else { 1 },
            queue_size: 256,
            mem_size: 256 << 20,
            // As a Linux guest on QEMU does: no kick while the daemon is
            // still taking requests, no interrupt the guest did not ask for.
            event_idx: true,
            ..Default::default()
        };
        let mut dev = Device::connect(daemon.socket(), &cfg)?;
        let init = Session::new(dev.queue(1)?).init()?;
        eprintln!(
            "{name}: FUSE {}.{}, max_write {}, {} queues offered",
            init.major,
            init.minor,
            init.max_write,
            dev.backend_queues()
        );
        let mut prep = Vec::new();
        for q in 1..=cfg.request_queues {
            prep.push(bench::prepare(
                dev.queue(q)?,
                &format!("{}-q{q}", name.replace([' ', '+'], "-")),
            )?);
        }
        targets.push(Target {
            kind,
            name,
            daemon,
            dev,
            prep,
        });
    }
    if targets.is_empty() {
        return Err("neither fsd nor virtiofsd is available".into());
    }

    let ratio_name = match targets.as_slice() {
        [a, b, ..] => format!("{}/{}", a.name, b.name),
        _ => "ratio".into(),
    };
    let cpu_name = targets
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(" / ");
    println!(
        "| workload | depth | {} | {ratio_name} | host pread | daemon CPU µs/op ({cpu_name}) |",
        {
            targets
                .iter()
                .map(|t| format!("{0} ops/s | {0} MB/s", t.name))
                .collect::<Vec<_>>()
                .join(" | ")
        }
    );
    println!("|---|---|{}---|---|---|", "---|---|".repeat(targets.len()));
    for w in Workload::ALL {
        if a.only.as_deref().is_some_and(|o| !w.label().contains(o)) {
            continue;
        }
        let ops = ops_for(w, a.smoke, a.scale);
        for &depth in &a.depths {
            let mut per: Vec<Vec<Measurement>> = vec![Vec::new(); targets.len()];
            let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
            for _ in 0..reps {
                for (i, t) in targets.iter_mut().enumerate() {
                    let p = t.prep[0].clone();
                    let before = t.daemon.cpu_time();
                    let m = bench::run(t.dev.queue(1)?, &p, w, depth, ops, 0)
                        .map_err(|e| format!("{} {} depth {depth}: {e}", t.name, w.label()))?;
                    cpu[i].push(cpu_per_op(t.daemon.cpu_time() - before, &m));
                    per[i].push(m);
                }
            }
            let ceiling = bench::host_ceiling(&share, w, ops.max(100), depth);
            print_row(w, &depth.to_string(), &targets, &per, &cpu, ceiling);
        }
        // fsd with several request queues driven in parallel.
        let parallel_rows = a.policy_rules.is_none() && a.variant.is_empty();
        if let Some(ti) = targets
            .iter()
            .position(|t| t.kind == DaemonKind::Fsd)
            .filter(|_| parallel_rows)
        {
            for nq in PARALLEL_QUEUES {
                let mut ms = Vec::new();
                let mut cs = Vec::new();
                for _ in 0..reps {
                    let before = targets[ti].daemon.cpu_time();
                    let m = parallel(&mut targets[ti], w, ops, nq)?;
                    cs.push(cpu_per_op(targets[ti].daemon.cpu_time() - before, &m));
                    ms.push(m);
                }
                let mut per: Vec<Vec<Measurement>> = vec![Vec::new(); targets.len()];
                let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
                per[ti] = ms;
                cpu[ti] = cs;
                print_row(
                    w,
                    &format!("{nq} queues × {}", 32 / nq),
                    &targets,
                    &per,
                    &cpu,
                    None,
                );
            }
        }
    }
    if held > 0 {
        hold(&mut targets, held)?;
    }
    Ok(())
}

/// Looks up `n` distinct files through each daemon and keeps them, then
/// prints what each daemon holds: descriptors and resident memory, before
/// and while the lookups are held. A daemon that keeps one descriptor per
/// inode runs into its descriptor limit here (the failed lookups say so).
fn hold(targets: &mut [Target], n: usize) -> Result<(), Box<dyn std::error::Error>> {
    println!();
    println!("| {n} lookups held | fds before | fds held | RSS before MiB | RSS held MiB | lookups failed |");
    println!("|---|---|---|---|---|---|");
    for t in targets.iter_mut() {
        let (fds0, rss0) = t.daemon.footprint();
        let mut during = (0, 0);
        let daemon = &t.daemon;
        let h = bench::hold_lookups(t.dev.queue(1)?, n, |_| during = daemon.footprint())
            .map_err(|e| format!("{}: holding {n} lookups: {e}", t.name))?;
        let failed = match h.first_errno {
            Some(errno) => format!(
                "{} ({})",
                h.failed,
                std::io::Error::from_raw_os_error(errno)
            ),
            None => "0".into(),
        };
        println!(
            "| {} | {fds0} | {} | {:.0} | {:.0} | {failed} |",
            t.name,
            during.0,
            rss0 as f64 / 1024.0,
            during.1 as f64 / 1024.0
        );
    }
    Ok(())
}

/// `nq` threads, each driving one request queue at depth 32/`nq`.
fn parallel(t: &mut Target, w: Workload, ops: u64, nq: usize) -> Result<Measurement, String> {
    let prep = t.prep.clone();
    let queues = t.dev.queues_mut();
    let (_, req) = queues.split_at_mut(1);
    let nq = nq.min(req.len()).min(prep.len()).max(1);
    let depth = (32 / nq).max(1);
    let t0 = std::time::Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = req[..nq]
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                let p = &prep[i];
                let share = ops / nq as u64 + u64::from((i as u64) < ops % nq as u64);
                s.spawn(move || bench::run(q, p, w, depth, share, 1000 * i as u64))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut total = Measurement {
        ops: 0,
        bytes: 0,
        secs,
    };
    for r in results {
        let m = r
            .map_err(|_| "worker panicked")?
            .map_err(|e| e.to_string())?;
        total.ops += m.ops;
        total.bytes += m.bytes;
    }
    Ok(total)
}

/// Daemon CPU time per operation, in microseconds: what a speed-up costs
/// the host (polling, for one, trades CPU for latency).
fn cpu_per_op(cpu: std::time::Duration, m: &Measurement) -> f64 {
    cpu.as_secs_f64() * 1e6 / m.ops.max(1) as f64
}

fn print_row(
    w: Workload,
    depth: &str,
    targets: &[Target],
    per: &[Vec<Measurement>],
    cpu: &[Vec<f64>],
    ceiling: Option<Measurement>,
) {
    let mut cells = Vec::new();
    let mut ops_med = Vec::new();
    for ms in per {
        if ms.is_empty() {
            cells.push("n/a | n/a".to_string());
            ops_med.push(None);
            continue;
        }
        let o = median(ms.iter().map(Measurement::ops_per_sec).collect());
        let mb = median(ms.iter().map(Measurement::mb_per_sec).collect());
        let mb = if ms.iter().any(|m| m.bytes > 0) && w != Workload::Readdirplus {
            format!("{mb:.0}")
        } else if w == Workload::Readdirplus {
            let ents = median(
                ms.iter()
                    .map(|m| m.bytes as f64 / m.secs.max(1e-9))
                    .collect(),
            );
            format!("{ents:.0} entries/s")
        } else {
            "-".into()
        };
        cells.push(format!("{o:.0} | {mb}"));
        ops_med.push(Some(o));
    }
    // The first target over the second (fsd/virtiofsd, or policy/none).
    let ratio = match (targets.len() >= 2, ops_med.first(), ops_med.get(1)) {
        (true, Some(Some(a)), Some(Some(b))) if *b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let ceil = ceiling
        .map(|c| format!("{:.0} ops/s, {:.0} MB/s", c.ops_per_sec(), c.mb_per_sec()))
        .unwrap_or_else(|| "".into());
    let cpu = cpu
        .iter()
        .map(|c| {
            if c.is_empty() {
                "n/a".to_string()
            } else {
                format!("{:.1}", median(c.clone()))
            }
        })
        .collect::<Vec<_>>()
        .join(" / ");
    println!(
        "| {} | {depth} | {} | {ratio} | {ceil} | {cpu} |",
        w.label(),
        cells.join(" | ")
    );
}

/// A policy of `n` rules protecting paths the benchmark never touches, for
/// one principal and the VM `bench`.
fn write_policy(dir: &std::path::Path, n: usize) -> std::io::Result<std::path::PathBuf> {
    let mut text = String::from(
        "version = 1\n[[principal]]\nname = \"bench\"\n[[vm]]\nname = \"bench\"\nprincipal = \"bench\"\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[rule]]\npath = \"protected/area{i}/**\"\nowner = \"bench\"\nwithout_grant = \"deny\"\n"
        ));
    }
    let p = dir.join("policy.toml");
    std::fs::write(&p, text)?;
    Ok(p)
}
