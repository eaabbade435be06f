//! How many events per second the taint engine takes, host-side, with
//! synthetic events (docs/benchmarks.md, "Taint engine"). It prints figures
//! and asserts nothing:
//!
//! ```text
//! cargo run -p monitor --release --example taint_throughput -- [--events N] [--batch B] [--runs R]
//! ```
//!
//! Workloads, each `--events` events in batches of `--batch`:
//!
//! * **public files**: fsd's opens, reads and writes of files nothing
//!   taints, by processes the hooks named (the common case: most of what
//!   fsd reports moves nothing confidential);
//! * **propagation**: every event taints something (reads of sources,
//!   writes, forks, sends and receives on loopback TCP and UNIX sockets);
//! * **flood at the bounds**: a tainted process forks without end, so every
//!   event taints a child and evicts the least recently used entry;
//! * **daemon path**: the propagation mix as request lines, parsed from
//!   JSON and applied through the service with its journal on disk (no
//!   socket), as `monitor daemon` does.
//!
//! Each figure is the median of `--runs` runs on a fresh engine.

use std::collections::HashSet;
use std::time::Instant;

use clap::Parser;
use monitor::protocol::{to_line, Op, Request};
use monitor::taint::{Engine, EngineConfig, Input, Record, TaintConfig, TaintService, VmId};
use monitor_client::taint::{
    FileAccess, FileEvent, GuestEvent, GuestEventKind, SocketInfo, Transport,
};

/// Measure the taint engine's event throughput.
#[derive(Parser)]
struct Args {
    /// Events per workload and run.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per batch (fsd sends up to 512, the plugin what it has).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Runs per workload; the median is printed.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn vm() -> VmId {
    VmId {
        uuid: "6f1c3e2a-0000-4000-8000-000000000001".into(),
        name: "bench".into(),
    }
}

fn task(pid: u32) -> u64 {
    0xffff_8880_0000_0000 + u64::from(pid) * 0x4000
}

fn guest(pid: u32, kind: GuestEventKind) -> GuestEvent {
    GuestEvent {
        vm: "bench".into(),
        kind,
        pid,
        tgid: pid,
        task: task(pid),
        start_time: u64::from(pid),
        comm: "worker".into(),
    }
}

fn file(pid: u32, ino: u64, access: FileAccess, rule: bool) -> FileEvent {
    FileEvent {
        pid,
        dev: 2051,
        ino,
        access,
        path: None,
        rule: rule.then(|| "secret/**".into()),
    }
}

/// Names 1000 processes to the engine.
fn known() -> Input {
    Input::Guest {
        events: (1..=1000)
            .map(|pid| {
                guest(
                    pid,
                    GuestEventKind::Exec {
                        filename: "/bin/worker".into(),
                    },
                )
            })
            .collect(),
        dropped: 0,
        seq: None,
    }
}

fn public_files(n: usize, batch: usize) -> Vec<Input> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| Input::Files {
            events: c
                .iter()
                .map(|&i| {
                    let access = [FileAccess::Open, FileAccess::Read, FileAccess::Write][i % 3];
                    file(
                        1 + (i % 1000) as u32,
                        10_000 + (i % 50_000) as u64,
                        access,
                        false,
                    )
                })
                .collect(),
            dropped: 0,
        })
        .collect()
}

/// Batches whose every event taints something: a chain of processes, each
/// reading a source or receiving from the one before, writing, forking and
/// sending on.
fn propagation(n: usize, batch: usize) -> Vec<Input> {
    let mut out = Vec::new();
    let mut i = 0usize;
    let mut next_pid = 2000u32;
    while i < n {
        let mut files = Vec::new();
        let mut hooks = Vec::new();
        while files.len() + hooks.len() < batch {
            let reader = next_pid;
            let child = next_pid + 1;
            let peer = next_pid + 2;
            next_pid += 3;
            hooks.push(guest(
                reader,
                GuestEventKind::Exec {
                    filename: "/bin/cat".into(),
                },
            ));
            files.push(file(reader, 1 + (i % 1000) as u64, FileAccess::Read, true));
            files.push(file(reader, 100_000 + i as u64, FileAccess::Write, false));
            hooks.push(guest(
                reader,
                GuestEventKind::Fork {
                    child_pid: child,
                    child_tgid: child,
                    child_task: task(child),
                    child_start_time: u64::from(child),
                },
            ));
            let port = 10_000 + (i % 50_000) as u16;
            let (a, b) = (
                format!("127.0.0.1:{port}").parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap(),
            );
            hooks.push(guest(
                child,
                GuestEventKind::Send {
                    socket: SocketInfo::Inet {
                        transport: Transport::Tcp,
                        local: a,
                        peer: Some(b),
                    },
                },
            ));
            hooks.push(guest(
                peer,
                GuestEventKind::Recv {
                    socket: SocketInfo::Inet {
                        transport: Transport::Tcp,
                        local: b,
                        peer: Some(a),
                    },
                },
            ));
            hooks.push(guest(
                peer,
                GuestEventKind::Send {
                    socket: SocketInfo::Unix {
                        local: None,
                        peer: Some(format!("/run/s{}", i % 100)),
                        sock: None,
                        peer_sock: None,
                    },
                },
            ));
            i += 7;
        }
        // Hooks first: the processes are named before fsd reports them.
        out.push(Input::Guest {
            events: hooks,
            dropped: 0,
            seq: None,
        });
        out.push(Input::Files {
            events: files,
            dropped: 0,
        });
    }
    out
}

fn flood(n: usize, batch: usize) -> Vec<Input> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| Input::Guest {
            events: c
                .iter()
                .map(|&i| {
                    let child = 100_000 + i as u32;
                    guest(
                        1,
                        GuestEventKind::Fork {
                            child_pid: child,
                            child_tgid: child,
                            child_task: task(child),
                            child_start_time: i as u64,
                        },
                    )
                })
                .collect(),
            dropped: 0,
            seq: None,
        })
        .collect()
}

fn count(inputs: &[Input]) -> usize {
    inputs
        .iter()
        .map(|i| match i {
            Input::Files { events, .. } => events.len(),
            Input::Guest { events, .. } => events.len(),
            Input::Processes { .. } => 1,
            Input::Restarted { .. } => 0,
        })
        .sum()
}

fn records(inputs: Vec<Input>) -> Vec<Record> {
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| Record {
            at_ms: 1_700_000_000_000 + i as u64,
            vm: vm(),
            input,
        })
        .collect()
}

/// Events per second applying `recs` to an engine primed by `prime`.
fn engine_rate(prime: &[Record], recs: &[Record], events: usize) -> f64 {
    let mut e = Engine::new(EngineConfig::default());
    for r in prime {
        e.apply_with(r, false).unwrap();
    }
    let t = Instant::now();
    for r in recs {
        e.apply_with(r, false).unwrap();
    }
    events as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let a = Args::parse();
    let prime = records(vec![known()]);
    let mut tainted_source = records(vec![Input::Files {
        events: vec![file(1, 1, FileAccess::Read, true)],
        dropped: 0,
    }]);
    tainted_source.insert(0, prime[0].clone());

    memory(&a, &tainted_source);

    let workloads: Vec<(&str, Vec<Record>, &[Record])> = vec![
        (
            "public files",
            records(public_files(a.events, a.batch)),
            &prime,
        ),
        (
            "propagation",
            records(propagation(a.events, a.batch)),
            &prime,
        ),
        (
            "flood at the bounds",
            records(flood(a.events, a.batch)),
            &tainted_source,
        ),
    ];
    println!(
        "taint engine, {} events per run in batches of {}, median of {} runs",
        a.events, a.batch, a.runs
    );
    for (name, recs, prime) in &workloads {
        let n = count(&recs.iter().map(|r| r.input.clone()).collect::<Vec<_>>());
        let rates: Vec<f64> = (0..a.runs).map(|_| engine_rate(prime, recs, n)).collect();
        println!("{name:>22}: {:>10.0} events/s", median(rates));
    }

    // The daemon's path: JSON request lines parsed, applied, journaled.
    let inputs = propagation(a.events, a.batch);
    let n = count(&inputs);
    let lines: Vec<Vec<u8>> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let op = match input {
                Input::Files { events, dropped } => Op::FileEvents {
                    vm: "bench".into(),
                    events,
                    dropped,
                },
                Input::Guest {
                    events,
                    dropped,
                    seq,
                } => Op::GuestEvents {
                    vm: "bench".into(),
                    events,
                    dropped,
                    seq,
                },
                Input::Processes { .. } | Input::Restarted { .. } => unreachable!(),
            };
            to_line(&Request::new(i as u64 + 1, op)).unwrap()
        })
        .collect();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let rates: Vec<f64> = (0..a.runs)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let (svc, _) = TaintService::open(
                &TaintConfig {
                    state_dir: Some(dir.path().to_owned()),
                    ..TaintConfig::default()
                },
                HashSet::new(),
            )
            .unwrap();
            svc.ingest(vm(), known()).unwrap();
            let t = Instant::now();
            for line in &lines {
                let req = Request::from_line(line).unwrap();
                let input = match req.op {
                    Op::FileEvents {
                        events, dropped, ..
                    } => Input::Files { events, dropped },
                    Op::GuestEvents {
                        events,
                        dropped,
                        seq,
                        ..
                    } => Input::Guest {
                        events,
                        dropped,
                        seq,
                    },
                    _ => unreachable!(),
                };
                svc.ingest(vm(), input).unwrap();
            }
            n as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "{:>22}: {:>10.0} events/s ({} bytes of JSON per event)",
        "daemon path",
        median(rates),
        bytes / n
    );
}

/// Memory at the bounds, measured first (before other allocations muddle
/// the resident set).
fn memory(a: &Args, tainted_source: &[Record]) {
    // Memory at the bounds: one VM flooded with forks and files, each
    // batch made just before it is applied (so that the resident set grows
    // by the tables, not by the input).
    let before = rss_kib();
    let mut e = Engine::new(EngineConfig::default());
    for r in tainted_source {
        e.apply_with(r, false).unwrap();
    }
    for start in (0..a.events).step_by(a.batch) {
        let end = (start + a.batch).min(a.events);
        let forks = Input::Guest {
            events: (start..end)
                .map(|i| {
                    let child = 100_000 + i as u32;
                    guest(
                        1,
                        GuestEventKind::Fork {
                            child_pid: child,
                            child_tgid: child,
                            child_task: task(child),
                            child_start_time: i as u64,
                        },
                    )
                })
                .collect(),
            dropped: 0,
            seq: None,
        };
        let writes = Input::Files {
            events: (start..end)
                .map(|i| file(1, 1_000_000 + i as u64, FileAccess::Write, false))
                .collect(),
            dropped: 0,
        };
        for r in records(vec![forks, writes]) {
            e.apply_with(&r, false).unwrap();
        }
    }
    let s = e.status(None);
    let v = &s.vms[0];
    println!(
        "at the bounds after {} forks and {} files: {} processes, {} files, {} known, {} evicted; \
         estimate {} KiB, resident set grew {} KiB",
        a.events,
        a.events,
        v.processes,
        v.files,
        v.known_processes,
        v.evicted,
        s.approx_bytes / 1024,
        rss_kib().saturating_sub(before)
    );
}
