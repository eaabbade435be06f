//! Side-by-side measurements in one boot (printed, never asserted):
//! bulk TCP throughput guest → host through the filter and passt against
//! passt alone (a second NIC on a passt of its own), with batching and the
//! connection table each off and on; the latency a new connection's first
//! packet spends in the filter (median); and ownership lookups per second
//! against the live guest, answered from remembered sockets and by walks.
//! docs/benchmarks.md records a run.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use monitor::sockets::SocketTable;
use monitor_client::taint::{SocketQuery, Transport};

use crate::common::{Boot, Rig, DIRECT, NET};

const POLICY: &str = r#"
version = 1
vm = "guest"
[defaults]
action = "deny"
unknown_owner = "deny"
[limits]
new_flows_per_sec = 100000
audit_lines_per_sec = 100000
[[rule]]
name = "to the host"
dest = "192.0.2.1/32"
action = "allow"
"#;

/// Bytes each bulk run sends.
const BULK: u64 = 24 << 20;

/// A server on the host's loopback. Each connection is read until `want`
/// bytes arrived (then closed, so the guest's nc ends) or the peer closes;
/// (bytes, seconds from the first byte to the last) is reported.
fn sink(want: u64) -> (u16, mpsc::Receiver<(u64, f64)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0u64;
                let mut first = None;
                while n < want {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            first.get_or_insert_with(Instant::now);
                            n += k as u64;
                        }
                    }
                }
                let secs = first.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                let _ = tx.send((n, secs));
            });
        }
    });
    (port, rx)
}

/// One bulk transfer from the guest to `gw:port`; MB/s as the host saw it.
fn bulk(g: &mut Rig, rx: &mpsc::Receiver<(u64, f64)>, gw: Ipv4Addr, port: u16) -> f64 {
    let out = g.sh(&format!("netprobe send {gw} {port} {BULK} </dev/null 2>&1"));
    let (n, secs) = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("the sink saw the transfer end");
    if n != BULK {
        let audit = g.audit_lines();
        panic!(
            "short transfer to {gw}:{port}: {n} of {BULK} bytes ({out})\nstatus: {}\naudit tail: {:#?}\nfilter log: {}",
            g.status(),
            &audit[audit.len().saturating_sub(5)..],
            g.filter.log_tail(20)
        );
    }
    n as f64 / secs / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Queries answered per second by `f` (each call answers `per_call`),
/// run for about a second.
fn rate(per_call: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    let mut calls = 0;
    while t.elapsed() < Duration::from_secs(1) || calls < 5 {
        f();
        calls += 1;
    }
    (calls * per_call) as f64 / t.elapsed().as_secs_f64()
}

#[test]
fn throughput_latency_and_lookups_side_by_side() {
    let (port, rx) = sink(BULK);
    let (short_port, short_rx) = sink(2);
    let Some(mut g) = Rig::boot(Boot {
        policy: POLICY,
        direct_nic: true,
        memory_mib: 512,
    }) else {
        return;
    };
    // Warm up both paths (the first lookup attaches the monitor).
    bulk(&mut g, &rx, NET.gateway, port);
    bulk(&mut g, &rx, DIRECT.gateway, port);

    // Throughput: each configuration three times, interleaved with passt
    // alone so that both see the same machine load.
    let configs = [(true, true), (false, true), (true, false), (false, false)];
    let mut rows = Vec::new();
    let mut direct = Vec::new();
    for (batching, conntrack) in configs {
        g.set(batching, conntrack);
        let before = g.status()["counters"].clone();
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(bulk(&mut g, &rx, NET.gateway, port));
            direct.push(bulk(&mut g, &rx, DIRECT.gateway, port));
        }
        let after = g.status()["counters"].clone();
        let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
        rows.push((
            batching,
            conntrack,
            median(runs),
            d("lookups"),
            d("batches"),
            d("frames_out"),
        ));
    }
    let alone = median(direct);
    println!(
        "bulk TCP guest -> host, {} MiB per run, median of 3 (passt alone: median of all 12)",
        BULK >> 20
    );
    println!("  passt alone:                          {alone:7.1} MB/s");
    for (b, c, mbs, lookups, batches, frames) in &rows {
        println!(
            "  filter+passt, batching {:<3} table {:<3}: {mbs:7.1} MB/s = {:.2}x  ({frames} frames in {batches} wakeups, {lookups} ownership requests)",
            if *b { "on" } else { "off" },
            if *c { "on" } else { "off" },
            mbs / alone
        );
    }

    // Added latency of a new connection: how long its first packet is held
    // in the filter (ownership lookup and decision), over 30 connections.
    g.set(true, true);
    g.sh(&format!(
        "for i in $(seq 30); do echo xy | nc {} {short_port} >/dev/null 2>&1; done </dev/null",
        NET.gateway
    ));
    for _ in 0..30 {
        let _ = short_rx.recv_timeout(Duration::from_secs(60));
    }
    let lat = g.status()["decision_latency"].clone();
    println!(
        "new connection, first packet held in the filter: median {} us, p90 {} us ({} connections)",
        lat["median_us"], lat["p90_us"], lat["samples"]
    );

    // Ownership lookups per second against the live guest: a guest process
    // holds a connection open, and its socket is looked up.
    g.sh(&format!(
        "(sleep 600 | nc {} {short_port}) </dev/null >/dev/null 2>&1 &",
        NET.gateway
    ));
    std::thread::sleep(Duration::from_secs(3));
    let status = g.status();
    let held: SocketAddr = status["flows"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|f| f["peer"] == format!("{}:{short_port}", NET.gateway) && f["verdict"] == "allow")
        .and_then(|f| f["guest"].as_str()?.parse().ok())
        .expect("the held connection is in the table");
    let q = SocketQuery {
        transport: Transport::Tcp,
        local: held,
        remote: Some(SocketAddr::from((NET.gateway, short_port))),
    };
    // Through the monitor daemon, as the filter asks.
    let mut client = monitor_client::Client::connect(&g.monitor).unwrap();
    let t = Duration::from_secs(10);
    let owner = client.socket_owners("guest", vec![q], t).unwrap()[0]
        .clone()
        .expect("owner of the held socket");
    println!(
        "held socket {held} belongs to {} [{}] uid {} ({:?})",
        owner.name, owner.pid, owner.uid, owner.exe
    );
    for n in [1, 16] {
        let r = rate(n, || {
            let o = client.socket_owners("guest", vec![q; n], t).unwrap();
            assert!(o.iter().all(|o| o.is_some()));
        });
        println!("ownership lookups via the monitor daemon, {n:>2} per request: {r:8.0}/s");
    }
    // In this process, the daemon's own code without the socket: checked
    // in place (remembered sockets) against a full walk every time.
    let mut vm = monitor::vm::Vm::attach(g.spec.clone(), Some(g.dir().join("profiles"))).unwrap();
    let mut table = SocketTable::new();
    table.owners(&mut vm, &[q]).unwrap();
    println!("sockets in the guest: {}", table.sockets().len());
    for always_walk in [false, true] {
        table.always_walk = always_walk;
        for n in [1, 16] {
            let r = rate(n, || {
                let o = table.owners(&mut vm, &vec![q; n]).unwrap();
                assert!(o.iter().all(|o| o.is_some()));
            });
            println!(
                "ownership lookups in process, {}, {n:>2} per request: {r:8.0}/s",
                if always_walk {
                    "full walk each request"
                } else {
                    "remembered socket checked in place"
                }
            );
        }
    }
    g.assert_filter_alive();
}
