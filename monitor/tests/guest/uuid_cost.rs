//! What finding a VM's UUID costs, against a real guest (a measurement:
//! `cargo test -p monitor --test guest uuid_lookup_cost -- --ignored
//! --nocapture`; it prints medians and asserts no time).
//!
//! The taint engine keys every VM by its SMBIOS UUID. The daemon gets it
//! from the configuration (`uuid`) or, once per VM, from QEMU (QMP
//! `query-uuid`), and then from its own table for every batch of events;
//! the identity check reads the SMBIOS table from guest RAM. Each is timed
//! N times; the medians go to docs/benchmarks.md.

use std::time::{Duration, Instant};

use crate::common::{Guest, UUID};
use monitor::config::Config;
use monitor::daemon::State;
use monitor::smbios;
use monitor::vm::Vm;

const N: usize = 200;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<R>(n: usize, mut f: impl FnMut() -> R) -> Duration {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn uuid_lookup_cost() {
    let Some(g) = Guest::boot("auto") else {
        return;
    };
    let cache = g.dir().join("profiles");
    {
        let mut vm = Vm::attach(g.spec.clone(), Some(cache.clone())).unwrap();
        assert_eq!(vm.qmp.uuid().unwrap(), UUID);
        let qmp = time(N, || vm.qmp.uuid().unwrap());
        let scan = time(N, || smbios::read_uuid(&vm.ram).unwrap());
        let both = time(N, || {
            let found = smbios::read_uuid(&vm.ram).ok();
            smbios::identity(&vm.qmp.uuid().unwrap(), found.as_ref())
        });
        println!("UUID qmp_query_uuid median={qmp:?} n={N}");
        println!("UUID smbios_scan_of_guest_ram median={scan:?} n={N}");
        println!("UUID identity_check (scan + query-uuid) median={both:?} n={N}");
    }
    // The daemon's lookup: the first request of a VM without `uuid` in the
    // configuration asks QEMU (attaching the VM), later ones hit its table.
    let mut config = Config::default();
    config.vms.insert("g".into(), g.spec.clone());
    let state = State::new(config, Some(cache));
    let t = Instant::now();
    assert_eq!(state.vm_id("g").unwrap().uuid, UUID);
    let first = t.elapsed();
    let warm = time(N * 100, || state.vm_id("g").unwrap());
    let mut config = Config::default();
    let mut spec = g.spec.clone();
    spec.uuid = Some(UUID.into());
    config.vms.insert("g".into(), spec);
    let configured = State::new(config, None);
    let conf = time(N * 100, || configured.vm_id("g").unwrap());
    println!("UUID daemon_first_lookup (attach + query-uuid) {first:?}");
    println!("UUID daemon_lookup_cached median={warm:?} n={}", N * 100);
    println!(
        "UUID daemon_lookup_configured median={conf:?} n={}",
        N * 100
    );
}
