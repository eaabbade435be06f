//! Freeze/thaw and page-cache flush against one real booted guest.
//!
//! One boot serves both checks (boots cost 10–30 s of a shared 2-core
//! machine). The share is served with `--cache=always` so file data stays
//! in the guest's page cache.

use std::time::{Duration, Instant};

use crate::common::Guest;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use monitor::config::Config;
use monitor::vm::Vm;
use monitor::{daemon, freeze, pagecache};
use monitor_client::Client;

/// A marker no earlier run or other file can contain.
fn unique_marker(tag: &str) -> Vec<u8> {
    let mut r = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut r).unwrap();
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("MONMARK-{tag}-{hex}").into_bytes()
}

/// A file of `size` bytes whose every 4 KiB block carries `marker`.
fn marked_file(path: &std::path::Path, marker: &[u8], size: usize) {
    let mut data = Vec::with_capacity(size);
    let mut block = 0u64;
    while data.len() < size {
        let mut b = Vec::with_capacity(4096);
        b.extend_from_slice(marker);
        b.extend_from_slice(format!(" block {block} ").as_bytes());
        b.resize(4096, b'.');
        data.extend_from_slice(&b);
        block += 1;
    }
    data.truncate(size);
    std::fs::write(path, data).unwrap();
}

fn md5(path: &std::path::Path) -> String {
    let out = std::process::Command::new("md5sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Read `name` in the guest (through the page cache), flush it from outside,
/// and check that no copy of its marker is left in guest RAM.
fn cache_and_flush(g: &mut Guest, vm: &mut Vm, name: &str, size: usize) {
    let marker = unique_marker(name);
    let path = g.share.join(name);
    marked_file(&path, &marker, size);
    let ino = std::fs::metadata(&path).unwrap().ino();
    assert!(pagecache::scan_ram(&vm.ram, &marker).is_empty());
    // busybox cat copies with sendfile: the data goes into the page cache
    // and nowhere else.
    g.sh(&format!("cat {name} >/dev/null"));
    let hits = pagecache::scan_ram(&vm.ram, &marker);
    let blocks = size.div_ceil(4096);
    assert!(
        hits.len() >= blocks,
        "{name}: {} copies of the marker before the flush, expected >= {blocks}",
        hits.len()
    );

    let t = Instant::now();
    let r = pagecache::flush(vm, &BTreeSet::from([ino]), Duration::from_secs(60)).unwrap();
    println!(
        "flush {name} ({} KiB): {:?} {r:?}",
        size / 1024,
        t.elapsed()
    );
    assert_eq!(r.inodes, 1, "{r:?}");
    assert!(r.pages_before >= blocks as u64, "{r:?}");
    assert_eq!(r.still_cached, 0, "{r:?}");
    let left = pagecache::scan_ram(&vm.ram, &marker);
    assert!(
        left.is_empty(),
        "{name}: marker still at {left:x?} after {r:?}"
    );

    // The guest still works and still reads the file correctly.
    let sum = g.sh(&format!("md5sum {name}"));
    assert_eq!(
        sum.split_whitespace().next(),
        Some(md5(&path).as_str()),
        "{sum}"
    );
}

/// `HB <n> <utime>` lines the guest heartbeat printed so far.
fn heartbeats(g: &Guest) -> Vec<(u64, u64)> {
    g.vm.console()
        .lines()
        .filter_map(|l| {
            let mut it = l.trim().strip_prefix("HB ")?.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// Wait for `n` more heartbeats and return the utime values they carried.
fn next_heartbeats(g: &Guest, n: usize) -> Vec<u64> {
    let start = heartbeats(g).len();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let hb = heartbeats(g);
        if hb.len() >= start + n {
            return hb[start..start + n].iter().map(|h| h.1).collect();
        }
        assert!(
            Instant::now() < deadline,
            "heartbeat stopped:\n{}",
            g.vm.console()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True when /proc/PID/wchan shows the freezer trap.
fn parked(wchan: &str) -> bool {
    wchan.contains("do_freezer_trap") || wchan.contains("get_signal")
}

fn stat_field(g: &mut Guest, pid: u32, field: usize) -> String {
    g.sh(&format!("cut -d' ' -f{field} /proc/{pid}/stat"))
        .trim()
        .to_string()
}

#[test]
fn freeze_thaw_and_page_cache_flush() {
    let Some(mut g) = Guest::boot("always") else {
        return;
    };
    let mut vm = Vm::attach(g.spec.clone(), Some(g.dir().join("profiles"))).unwrap();

    // ---- freeze / thaw -------------------------------------------------
    let burn: u32 = g
        .sh("sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & echo $!")
        .trim()
        .parse()
        .unwrap();
    g.sh(&format!(
        "(n=0; while :; do n=$((n+1)); echo \"HB $n $(cut -d' ' -f14 /proc/{burn}/stat)\"; sleep 1; done) \
         </dev/null >/dev/console 2>&1 &"
    ));
    let before = next_heartbeats(&g, 3);
    assert!(before[2] > before[0], "burner does not burn: {before:?}");

    let t = Instant::now();
    let r = freeze::freeze(&mut vm, burn, true, Duration::from_secs(60)).unwrap();
    println!(
        "freeze: {:?} ({} threads, {} attempts)",
        t.elapsed(),
        r.threads,
        r.attempts
    );
    // The first heartbeat may have sampled before the trap took effect.
    let frozen = next_heartbeats(&g, 4);
    assert!(
        frozen[1] == frozen[2] && frozen[2] == frozen[3],
        "still running: {frozen:?}"
    );
    assert_eq!(stat_field(&mut g, burn, 3), "S");
    let wchan = g.sh(&format!("cat /proc/{burn}/wchan"));
    assert!(parked(&wchan), "burner sleeps in {wchan:?}");

    // A guest SIGCONT must not wake it.
    g.sh(&format!("kill -CONT {burn}"));
    let after_cont = next_heartbeats(&g, 3);
    assert!(
        after_cont.iter().all(|&u| u == frozen[3]),
        "SIGCONT woke it: {frozen:?} then {after_cont:?}"
    );

    let t = Instant::now();
    let r = freeze::thaw(&mut vm, burn, Duration::from_secs(60)).unwrap();
    println!(
        "thaw: {:?} ({} threads, {} woken; {} us waiting for a safe point, {} us calls)",
        t.elapsed(),
        r.threads,
        r.woken,
        r.wait_us,
        r.work_us
    );
    assert_eq!(r.woken, 1);
    let thawed = next_heartbeats(&g, 3);
    assert!(
        thawed[2] > after_cont[2],
        "not running after thaw: {after_cont:?} then {thawed:?}"
    );
    // Reaped here, so that its end does not reach the command loop while it
    // waits for the next line.
    g.sh(&format!("kill -9 {burn}; wait {burn} 2>/dev/null; true"));

    // An interruptible sleeper parks at once (woken into the trap by
    // injected wake_up_state), and resumes its sleep after thaw.
    let sleeper: u32 = g
        .sh("sleep 100000 </dev/null >/dev/null 2>&1 & echo $!")
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let wchan = g.sh(&format!("cat /proc/{sleeper}/wchan"));
    assert!(
        !parked(&wchan) && wchan.contains("sleep"),
        "sleeper in {wchan:?}"
    );
    let r = freeze::freeze(&mut vm, sleeper, true, Duration::from_secs(60)).unwrap();
    println!("freeze of a sleeper: {r:?}");
    assert_eq!(r.woken, 1, "{r:?}");
    let wchan = g.sh(&format!("cat /proc/{sleeper}/wchan"));
    assert!(parked(&wchan), "sleeper not parked: {wchan:?}");
    freeze::thaw(&mut vm, sleeper, Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let wchan = g.sh(&format!("cat /proc/{sleeper}/wchan"));
    // Back asleep in the restarted nanosleep (reached through
    // restart_syscall, so wchan names the syscall path, not nanosleep).
    assert!(
        !parked(&wchan),
        "sleeper still parked after thaw: {wchan:?}"
    );
    assert_eq!(stat_field(&mut g, sleeper, 3), "S");
    g.sh(&format!(
        "kill -9 {sleeper}; wait {sleeper} 2>/dev/null; true"
    ));
    let dmesg = g.sh("dmesg");
    for bad in ["WARNING", "BUG:", "Oops", "sleeping function called"] {
        assert!(!dmesg.contains(bad), "guest kernel complained:\n{dmesg}");
    }

    // ---- page cache ----------------------------------------------------
    g.sh("kill %1 2>/dev/null; true");
    cache_and_flush(&mut g, &mut vm, "small.bin", 1 << 20);
    cache_and_flush(&mut g, &mut vm, "large.bin", 64 << 20);

    // ---- the same through the daemon's socket --------------------------
    // QEMU serves one client per QMP socket: hand it over to the daemon.
    drop(vm);
    let marker = unique_marker("daemon");
    let path = g.share.join("daemon.bin");
    marked_file(&path, &marker, 256 << 10);
    let ino = std::fs::metadata(&path).unwrap().ino();
    g.sh("cat daemon.bin >/dev/null");
    let ram = monitor::mem::GuestRam::open(&g.spec.mem).unwrap();
    assert!(pagecache::scan_ram(&ram, &marker).len() >= 64);
    let sock = g.dir().join("monitor.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut config = Config::default();
    config.vms.insert("guest".into(), g.spec.clone());
    let state = Arc::new(daemon::State::new(config, Some(g.dir().join("profiles"))));
    std::thread::spawn(move || daemon::serve(listener, state));
    let mut client = Client::connect(&sock).unwrap();
    let report = client
        .flush("guest", &[ino], Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("flush through the daemon: {e}"));
    println!("flush through the daemon: {report}");
    assert_eq!(report.zeroed, 64, "{report:?}");
    assert_eq!(report.pages_left(), 0, "{report:?}");
    assert!(pagecache::scan_ram(&ram, &marker).is_empty(), "{report:?}");

    let dmesg = g.sh("dmesg");
    for bad in ["WARNING", "BUG:", "Oops", "sleeping function called"] {
        assert!(!dmesg.contains(bad), "guest kernel complained:\n{dmesg}");
    }
}
