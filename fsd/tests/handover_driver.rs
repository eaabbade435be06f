//! Live handover (SIGUSR2) against a host-side driver, without a guest.
//!
//! The driver is the guest here: it holds node ids, an open file, an open
//! directory, a POSIX lock and a flock, and checks after every handover that
//! each still means what it meant, byte for byte. It also measures what a
//! guest would see (the longest wait for one small read while fsd hands
//! over) and whether handovers leak descriptors or memory (the daemon's
//! descriptor count and RSS after one handover and after many). A handover
//! to a binary that fails must leave the old fsd serving.
//!
//! The daemon runs from a copy of the fsd binary, so that the test can put
//! another binary in its place, as an upgrade does.

mod authd_stub;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use driver::session::read_request;
use driver::{DaemonKind, Device, DeviceConfig, Harness, Request, Session};
use fuse_backend_rs::abi::fuse_abi::{LkIn, LkOut, LK_FLOCK};
use testrig::rejuvenation::{handed_over, recovered, serving_daemon};
use testrig::Sandbox;

const GETLK: u32 = 31;
const SETLK: u32 = 32;
const SETLKW: u32 = 33;
const POSIX_OWNER: u64 = 7;

/// A running handover test: the daemon started from `exe`, its log, the
/// device, and the pid serving now.
struct Rig {
    first: testrig::Daemon,
    device: Device,
    exe: PathBuf,
    log: PathBuf,
    serving: u32,
    handovers: usize,
    _scratch: tempfile::TempDir,
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is gone for our purposes.
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn lock_req(node: u64, fh: u64, owner: u64, typ: i32, flock: bool, opcode: u32) -> Request {
    let mut a = LkIn {
        fh,
        owner,
        ..Default::default()
    };
    a.lk.type_ = typ as u32;
    a.lk.end = i64::MAX as u64;
    if flock {
        a.lk_flags = LK_FLOCK;
    }
    Request::new(opcode, node).arg(&a)
}

impl Rig {
    fn start(sandbox: Sandbox) -> Option<Rig> {
        Self::start_with(sandbox, &[], DeviceConfig::default(), |_| {})
    }

    fn start_with(
        sandbox: Sandbox,
        extra: &[&str],
        device: DeviceConfig,
        populate: impl FnOnce(&Path),
    ) -> Option<Rig> {
        if !Harness::require(DaemonKind::Fsd) {
            return None;
        }
        let scratch = tempfile::Builder::new()
            .prefix("fsd-handover-")
            .tempdir()
            .unwrap();
        let share = scratch.path().join("share");
        std::fs::create_dir_all(share.join("d")).unwrap();
        std::fs::write(share.join("a.txt"), b"0123456789").unwrap();
        for i in 0..5 {
            std::fs::write(share.join("d").join(format!("f{i}")), b"x").unwrap();
        }
        populate(&share);
        let exe = scratch.path().join("fsd");
        let built = DaemonKind::Fsd.locate().unwrap();
        testrig::process::install_executable(&built, &exe).unwrap();
        let socket = scratch.path().join("vhost.sock");
        let log = scratch.path().join("daemon.log");
        let spec = testrig::DaemonSpec::fsd(&exe, &socket, &share, sandbox, extra, &log);
        let first = testrig::Daemon::spawn_on_path(&spec, &socket).unwrap();
        let device = Device::connect(&socket, &device).unwrap();
        let serving = first.pid();
        Some(Rig {
            first,
            device,
            exe,
            log,
            serving,
            handovers: 0,
            _scratch: scratch,
        })
    }

    /// Replaces the binary on disk (rename over it, as a package upgrade does).
    fn install(&self, from: &Path) {
        testrig::process::install_executable(from, &self.exe).unwrap();
    }

    /// Asks the serving fsd to hand over; while it does, `during` runs in a
    /// loop (the guest's requests). Returns the new pid, or `None` when the
    /// old one goes on serving (it logged "handover failed").
    fn hand_over(&mut self, mut during: impl FnMut(&mut Device)) -> Option<u32> {
        let before = handed_over(&log_text(&self.log)).len();
        let failed_before = log_text(&self.log).matches("handover failed").count();
        // SAFETY: sending a signal to a process of this test.
        assert_eq!(unsafe { libc::kill(self.serving as i32, libc::SIGUSR2) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            during(&mut self.device);
            let log = log_text(&self.log);
            let done = handed_over(&log);
            if done.len() > before {
                let pid = done[before];
                let old = self.serving;
                let gone = Instant::now() + Duration::from_secs(10);
                while alive(old) {
                    assert!(Instant::now() < gone, "the predecessor exits");
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.serving = pid;
                self.handovers += 1;
                return Some(pid);
            }
            if log.matches("handover failed").count() > failed_before {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "no handover within 30 s; log:\n{log}"
            );
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The successors are not our children: end the one serving.
        if self.serving != self.first.pid() && alive(self.serving) {
            // SAFETY: a daemon this test started (through its predecessor).
            unsafe { libc::kill(self.serving as i32, libc::SIGTERM) };
        }
    }
}

/// What the "guest" holds and checks after each handover.
struct Held {
    file: u64,
    fh: u64,
    dir: u64,
    dfh: u64,
    /// The file's content as the guest wrote it.
    content: Vec<u8>,
}

fn setup(s: &mut Session<'_>) -> Held {
    s.init().unwrap();
    let file = s.lookup(1, b"a.txt").unwrap().nodeid;
    let fh = s.open(file, libc::O_RDWR as u32, false).unwrap().fh;
    let dir = s.lookup(1, b"d").unwrap().nodeid;
    let dfh = s.open(dir, libc::O_RDONLY as u32, true).unwrap().fh;
    let r = s
        .call(
            &lock_req(file, fh, POSIX_OWNER, libc::F_WRLCK, false, SETLK),
            64,
        )
        .unwrap();
    assert_eq!(r.errno(), 0, "POSIX lock");
    let r = s
        .call(&lock_req(file, fh, 0, libc::F_WRLCK, true, SETLK), 64)
        .unwrap();
    assert_eq!(r.errno(), 0, "flock");
    Held {
        file,
        fh,
        dir,
        dfh,
        content: b"0123456789".to_vec(),
    }
}

/// Everything the guest holds still works and means the same.
fn check(s: &mut Session<'_>, h: &mut Held, round: usize) {
    let data = s.read(h.file, h.fh, 0, 4096).unwrap();
    assert_eq!(data, h.content, "round {round}: the open file's bytes");
    let more = format!("<{round:03}>").into_bytes();
    let at = h.content.len() as u64;
    assert_eq!(s.write(h.file, h.fh, at, &more).unwrap(), more.len() as u32);
    h.content.extend_from_slice(&more);
    assert_eq!(
        s.getattr(h.file).unwrap().attr.size,
        h.content.len() as u64,
        "round {round}: the node id names the same file"
    );
    // The POSIX lock is still held: another owner sees it.
    let r = s
        .call(
            &lock_req(h.file, h.fh, POSIX_OWNER + 1, libc::F_WRLCK, false, GETLK),
            64,
        )
        .unwrap();
    assert_eq!(r.errno(), 0);
    let lk: LkOut = r.parse().unwrap();
    assert_eq!(
        lk.lk.type_,
        libc::F_WRLCK as u32,
        "round {round}: the POSIX lock survives"
    );
    // The flock is still held: another open file cannot take it.
    let other = s.open(h.file, libc::O_RDONLY as u32, false).unwrap().fh;
    let r = s
        .call(&lock_req(h.file, other, 0, libc::F_WRLCK, true, SETLK), 64)
        .unwrap();
    assert_eq!(r.errno(), libc::EAGAIN, "round {round}: the flock survives");
    s.release(h.file, other, false).unwrap();
    // The directory stream and lookups.
    let names: Vec<String> = s
        .readdir_all(h.dir, false, 4096)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "f4"), "round {round}: {names:?}");
    let _ = h.dfh;
    let e = s.lookup(h.dir, b"f0").unwrap();
    s.forget(e.nodeid, 1).unwrap();
}

/// Reads `dir/doc`; the errno of the step the daemon refused.
fn read_doc(s: &mut Session<'_>, dir: &[u8]) -> Result<Vec<u8>, i32> {
    s.read_path(&[dir, b"doc"], 100)
        .map_err(|e| e.errno().unwrap_or_else(|| panic!("{e}")))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn session_survives_handovers_and_a_failed_one() {
    survives_handovers(Sandbox::None);
}

/// The same under fsd's default sandbox (mount, PID, IPC and network
/// namespaces, pivot_root, seccomp): the broker parent starts successors.
#[test]
fn session_survives_handovers_in_the_namespace_sandbox() {
    if !testrig::prereq::is_root() {
        testrig::skip::<(), _>("the namespace sandbox needs root");
        return;
    }
    survives_handovers(Sandbox::Namespace);
}

fn survives_handovers(sandbox: Sandbox) {
    let Some(mut rig) = Rig::start(sandbox) else {
        return;
    };
    let mut held = {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        setup(&mut s)
    };
    let (file, fh) = (held.file, held.fh);
    // A tight loop of small reads stands for the guest while fsd hands over.
    let mut gaps = Vec::new();
    let log = rig.log.clone();
    let read_loop = |d: &mut Device, worst: &mut Duration| {
        let t = Instant::now();
        let r = Session::new(d.queue(1).unwrap())
            .call(&read_request(file, fh, 0, 8), 8)
            .unwrap_or_else(|e| {
                panic!("a read during the handover: {e}; log:\n{}", log_text(&log))
            });
        assert_eq!(r.errno(), 0, "a read during the handover");
        *worst = (*worst).max(t.elapsed());
    };
    let mut fds_after_1 = 0;
    let mut rss_after_1 = 0;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let mut worst = Duration::ZERO;
        let pid = rig
            .hand_over(|d| read_loop(d, &mut worst))
            .unwrap_or_else(|| panic!("handover {round} failed:\n{}", log_text(&rig.log)));
        gaps.push(worst);
        let mut s = Session::new(rig.device.queue(1).unwrap());
        check(&mut s, &mut held, round);
        if round == 0 {
            fds_after_1 = fds_of(pid);
            rss_after_1 = rss_kib(pid);
        }
    }
    println!(
        "handover ({sandbox:?}): longest read wait per handover: median {:?}, max {:?} ({} handovers)",
        median(&mut gaps.clone()),
        gaps.iter().max().unwrap(),
        gaps.len()
    );
    let (fds_n, rss_n) = (fds_of(rig.serving), rss_kib(rig.serving));
    println!(
        "handover ({sandbox:?}): after 1: {fds_after_1} fds, {rss_after_1} KiB RSS; after {ROUNDS}: {fds_n} fds, {rss_n} KiB RSS"
    );
    assert_eq!(
        fds_n, fds_after_1,
        "descriptors after {ROUNDS} handovers equal those after one"
    );

    // A successor that fails: the old fsd goes on serving, nothing lost.
    let good = rig.exe.with_extension("good");
    testrig::process::install_executable(&rig.exe, &good).unwrap();
    let broken = rig.exe.with_extension("broken");
    testrig::process::write_executable(&broken, b"#!/bin/sh\nexit 3\n").unwrap();
    rig.install(&broken);
    let before = rig.serving;
    assert_eq!(rig.hand_over(|_| {}), None, "a failing successor");
    assert_eq!(rig.serving, before);
    assert!(alive(before), "the old fsd still runs");
    {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        check(&mut s, &mut held, ROUNDS);
    }
    // And a good binary again (an upgrade after a failed one).
    rig.install(&good);
    rig.hand_over(|_| {}).expect("handover after a failed one");
    let mut s = Session::new(rig.device.queue(1).unwrap());
    check(&mut s, &mut held, ROUNDS + 1);
    println!("handover: {} handovers in all", rig.handovers);
}

#[test]
fn descriptors_do_not_leak_over_many_handovers() {
    let Some(mut rig) = Rig::start(Sandbox::None) else {
        return;
    };
    let mut held = {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        setup(&mut s)
    };
    let rounds: usize = std::env::var("FSD_HANDOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut after_1 = (0, 0);
    let mut gaps = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        let pid = rig.hand_over(|_| {}).expect("handover");
        gaps.push(t.elapsed());
        if round == 0 {
            // Measured after the guest's usual requests, as at the end.
            let mut s = Session::new(rig.device.queue(1).unwrap());
            check(&mut s, &mut held, round);
            after_1 = (fds_of(pid), rss_kib(pid));
        }
    }
    let mut s = Session::new(rig.device.queue(1).unwrap());
    check(&mut s, &mut held, rounds);
    let now = (fds_of(rig.serving), rss_kib(rig.serving));
    println!(
        "handover x{rounds}: after 1: {} fds, {} KiB RSS; after {rounds}: {} fds, {} KiB RSS; signal to successor serving: median {:?}",
        after_1.0,
        after_1.1,
        now.0,
        now.1,
        median(&mut gaps)
    );
    assert_eq!(now.0, after_1.0, "descriptors after {rounds} handovers");
}

/// The pause fsd reports for each handover ("requests paused D").
fn pauses(log: &str) -> Vec<Duration> {
    log.lines()
        .filter_map(|l| {
            l.split_once("(requests paused ")?
                .1
                .split_once(',')
                .map(|(d, _)| d)
        })
        .filter_map(|d| {
            let (num, unit) = d.find(|c: char| c.is_alphabetic()).map(|i| d.split_at(i))?;
            let v: f64 = num.parse().ok()?;
            Some(Duration::from_secs_f64(match unit {
                "s" => v,
                "ms" => v / 1e3,
                "µs" => v / 1e6,
                "ns" => v / 1e9,
                _ => return None,
            }))
        })
        .collect()
}

/// Benchmark: how the pause grows with the inodes the guest holds and with
/// the guest's memory size. Prints medians of five handovers each; asserts
/// only that the session survives. A measurement, run on request:
/// `cargo test --release -p fsd --test handover_driver -- --ignored`
/// (`FSD_HANDOVER_BENCH=N` for one inode count).
#[test]
#[ignore = "measurement; run explicitly with --ignored --release"]
fn pause_against_inodes_and_memory() {
    const MIB: u64 = 1 << 20;
    let only: Option<usize> = std::env::var("FSD_HANDOVER_BENCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 1);
    for (inodes, mem) in [
        (1_000usize, 128 * MIB),
        (10_000, 128 * MIB),
        (100_000, 128 * MIB),
        (1_000, 1024 * MIB),
        (1_000, 4096 * MIB),
    ] {
        if only.is_some_and(|n| n != inodes) {
            continue;
        }
        let device = DeviceConfig {
            mem_size: mem,
            ..DeviceConfig::default()
        };
        let Some(mut rig) = Rig::start_with(Sandbox::None, &[], device, |share| {
            std::fs::create_dir(share.join("many")).unwrap();
            for i in 0..inodes {
                std::fs::write(share.join("many").join(format!("{i}")), b"").unwrap();
            }
        }) else {
            return;
        };
        let mut held = {
            let mut s = Session::new(rig.device.queue(1).unwrap());
            let held = setup(&mut s);
            let many = s.lookup(1, b"many").unwrap().nodeid;
            for i in 0..inodes {
                s.lookup(many, format!("{i}").as_bytes()).unwrap();
            }
            held
        };
        let (file, fh) = (held.file, held.fh);
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let mut worst = Duration::ZERO;
            rig.hand_over(|d| {
                let t = Instant::now();
                let r = Session::new(d.queue(1).unwrap())
                    .call(&read_request(file, fh, 0, 8), 8)
                    .unwrap();
                assert_eq!(r.errno(), 0);
                worst = worst.max(t.elapsed());
            })
            .unwrap_or_else(|| {
                let log = log_text(&rig.log);
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                panic!("handover with {inodes} inodes failed: {tail:?}")
            });
            gaps.push(worst);
        }
        let mut s = Session::new(rig.device.queue(1).unwrap());
        check(&mut s, &mut held, 0);
        let mut paused = pauses(&log_text(&rig.log));
        println!(
            "bench handover: {inodes} inodes, {} MiB guest RAM: fsd's pause median {:?}; longest read wait median {:?} (5 handovers)",
            mem / MIB,
            median(&mut paused),
            median(&mut gaps)
        );
        drop(rig);
        // The same guest state, fsd killed instead (crash recovery).
        let device = DeviceConfig {
            mem_size: mem,
            ..DeviceConfig::default()
        };
        let Some(mut rig) =
            Rig::start_with(Sandbox::None, &["--crash-recovery"], device, |share| {
                std::fs::create_dir(share.join("many")).unwrap();
                for i in 0..inodes {
                    std::fs::write(share.join("many").join(format!("{i}")), b"").unwrap();
                }
            })
        else {
            return;
        };
        let held = {
            let mut s = Session::new(rig.device.queue(1).unwrap());
            let held = setup(&mut s);
            let many = s.lookup(1, b"many").unwrap().nodeid;
            for i in 0..inodes {
                s.lookup(many, format!("{i}").as_bytes()).unwrap();
            }
            held
        };
        let mut gaps = Vec::new();
        for round in 0..5u64 {
            std::thread::sleep(Duration::from_millis(400));
            let delay = Duration::from_micros(1000 + 3571 * round);
            gaps.push(kill_under_reads(
                &mut rig,
                Sandbox::None,
                held.file,
                held.fh,
                &held.content[..8],
                delay,
            ));
        }
        println!(
            "bench crash recovery: {inodes} inodes, {} MiB guest RAM: longest read wait median {:?} (5 kills)",
            mem / MIB,
            median(&mut gaps)
        );
    }
}

/// A request that waits (F_SETLKW on a lock another owner holds) cannot be
/// handed over: the handover is given up after a bound, the old fsd serves
/// on, the waiting request is answered once the lock is free, and the next
/// handover goes through with the lock where it belongs.
#[test]
fn a_waiting_lock_postpones_the_handover() {
    let Some(mut rig) = Rig::start(Sandbox::None) else {
        return;
    };
    let mut held = {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        setup(&mut s)
    };
    let (file, fh) = (held.file, held.fh);
    let waiter = POSIX_OWNER + 1;
    let token = {
        let q = rig.device.queue(1).unwrap();
        let req = lock_req(file, fh, waiter, libc::F_WRLCK, false, SETLKW);
        q.submit(&req.chain(driver::session::next_unique(), 64))
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(200));
    let before = rig.serving;
    // A read sent while fsd is paused (its kick consumed then): it must be
    // answered once fsd gives up and resumes, without another kick.
    let t0 = Instant::now();
    let mut paused_read = None;
    let outcome = rig.hand_over(|d| {
        if paused_read.is_none() && t0.elapsed() > Duration::from_millis(500) {
            let q = d.queue(1).unwrap();
            let chain = read_request(file, fh, 0, 4).chain(driver::session::next_unique(), 4);
            paused_read = Some(q.submit(&chain).unwrap());
        }
        std::thread::sleep(Duration::from_millis(5));
    });
    assert_eq!(outcome, None, "handover with a waiting lock");
    assert_eq!(rig.serving, before);
    let paused_read = paused_read.expect("a read was sent during the pause");
    let r = rig
        .device
        .queue(1)
        .unwrap()
        .wait_for(paused_read, Duration::from_secs(10))
        .expect("the read sent during the pause is answered");
    assert_eq!(driver::Reply::decode(&r).unwrap().errno(), 0);
    let log = log_text(&rig.log);
    assert!(
        log.contains("1 requests still waiting"),
        "the reason is logged:\n{log}"
    );
    // The lock's owner lets go; the waiter gets it.
    {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        let r = s
            .call(
                &lock_req(file, fh, POSIX_OWNER, libc::F_UNLCK, false, SETLK),
                64,
            )
            .unwrap();
        assert_eq!(r.errno(), 0);
    }
    let done = rig
        .device
        .queue(1)
        .unwrap()
        .wait_for(token, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        driver::Reply::decode(&done).unwrap().errno(),
        0,
        "the waiting lock was granted"
    );
    rig.hand_over(|_| {}).expect("handover once nothing waits");
    // The lock moved with the handover: it is the waiter's now.
    let mut s = Session::new(rig.device.queue(1).unwrap());
    let r = s
        .call(
            &lock_req(file, fh, POSIX_OWNER, libc::F_WRLCK, false, GETLK),
            64,
        )
        .unwrap();
    let lk: LkOut = r.parse().unwrap();
    assert_eq!(lk.lk.type_, libc::F_WRLCK as u32, "the waiter's lock holds");
    // Give the lock back to the first owner so that `check` finds it there.
    let r = s
        .call(&lock_req(file, fh, waiter, libc::F_UNLCK, false, SETLK), 64)
        .unwrap();
    assert_eq!(r.errno(), 0);
    let r = s
        .call(
            &lock_req(file, fh, POSIX_OWNER, libc::F_WRLCK, false, SETLK),
            64,
        )
        .unwrap();
    assert_eq!(r.errno(), 0);
    check(&mut s, &mut held, 0);
}

/// fsd (unsandboxed) with `policy` for the VM `vm1`, asking the stand-in
/// authd, with its own label database under `work`.
fn policy_rig(
    work: &Path,
    authd: &authd_stub::FakeAuthd,
    policy: &str,
    populate: impl FnOnce(&Path),
) -> Option<Rig> {
    let file = work.join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    let args = [
        format!("--policy={}", file.display()),
        "--vm=vm1".to_string(),
        format!("--authd-socket={}", authd.socket.display()),
        format!("--label-db={}", work.join("labels.db").display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Rig::start_with(Sandbox::None, &args, DeviceConfig::default(), populate)
}

/// A protected file read under a live grant stays readable after handovers
/// without a new prompt (the successor takes the grant over from authd's
/// list); a protected file of another principal, who has no grant, stays
/// refused; what the guest read under the grant before the handovers is
/// still flushed at its end; the grant's end still
/// reaches the successor.
#[test]
fn a_live_grant_survives_the_handover_without_a_prompt() {
    let work = tempfile::tempdir().unwrap();
    let authd = authd_stub::FakeAuthd::start(work.path());
    let Some(mut rig) = policy_rig(work.path(), &authd, "version = 1\n[[principal]]\nname = \"alice\"\n[[principal]]\nname = \"bob\"\n[[vm]]\nname = \"vm1\"\nprincipal = \"alice\"\n\
         [[rule]]\npath = \"vault/**\"\nowner = \"alice\"\nwithout_grant = \"ask\"\ngrant_secs = 3600\n\
         [[rule]]\npath = \"closed/**\"\nowner = \"bob\"\nwithout_grant = \"deny\"\n", |share| {
        std::fs::create_dir(share.join("vault")).unwrap();
        std::fs::write(share.join("vault/doc"), b"granted content").unwrap();
        std::fs::create_dir(share.join("vault/early")).unwrap();
        std::fs::write(share.join("vault/early/doc"), b"read before").unwrap();
        std::fs::create_dir(share.join("closed")).unwrap();
        std::fs::write(share.join("closed/doc"), b"never").unwrap();
    }) else {
        return;
    };
    authd.grant.store(true, Ordering::SeqCst);
    {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        s.init().unwrap();
        assert_eq!(read_doc(&mut s, b"vault").unwrap(), b"granted content");
        assert_eq!(read_doc(&mut s, b"closed"), Err(libc::EACCES));
        // Read only before the handovers: its flush at the grant's end
        // needs the predecessor's record of it.
        let v = s.lookup(1, b"vault").unwrap().nodeid;
        let e = s.lookup(v, b"early").unwrap().nodeid;
        let f = s.lookup(e, b"doc").unwrap().nodeid;
        let fh = s.open(f, libc::O_RDONLY as u32, false).unwrap().fh;
        assert_eq!(s.read(f, fh, 0, 100).unwrap(), b"read before");
        s.release(f, fh, false).unwrap();
    }
    assert_eq!(authd.asked.load(Ordering::SeqCst), 1, "one prompt");
    // From now on a prompt would be refused: what follows must not ask.
    authd.grant.store(false, Ordering::SeqCst);
    for round in 0..3 {
        rig.hand_over(|_| {}).expect("handover");
        let mut s = Session::new(rig.device.queue(1).unwrap());
        assert_eq!(
            read_doc(&mut s, b"vault").unwrap(),
            b"granted content",
            "round {round}: the live grant holds"
        );
        assert_eq!(
            read_doc(&mut s, b"closed"),
            Err(libc::EACCES),
            "round {round}"
        );
    }
    assert_eq!(
        authd.asked.load(Ordering::SeqCst),
        1,
        "no new prompt after the handovers"
    );
    assert!(log_text(&rig.log).contains("1 live grants of VM vm1 taken over from authd"));
    // The grant's end reaches the successor.
    authd.revoke_all();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        if read_doc(&mut s, b"vault") == Err(libc::EACCES) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the grant's end reaches the successor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Both files the guest read under the grant are to be flushed, also the
    // one read only before the handovers.
    let log = log_text(&rig.log);
    assert!(
        log.contains("the guest read 2 protected inodes under it"),
        "{log}"
    );
}

/// Labels follow inodes: a protected file the guest moved out of its
/// protected directory (under a grant) stays protected after the grant and
/// across handovers (the successor reads the label database once the
/// predecessor has paused).
#[test]
fn a_moved_protected_file_stays_protected_across_handovers() {
    let work = tempfile::tempdir().unwrap();
    let authd = authd_stub::FakeAuthd::start(work.path());
    let Some(mut rig) = policy_rig(work.path(), &authd, "version = 1\n[[principal]]\nname = \"alice\"\n[[vm]]\nname = \"vm1\"\nprincipal = \"alice\"\n\
         [[rule]]\npath = \"vault/**\"\nowner = \"alice\"\nwithout_grant = \"ask\"\ngrant_secs = 3600\n", |share| {
        std::fs::create_dir(share.join("vault")).unwrap();
        std::fs::write(share.join("vault/secret"), b"protected").unwrap();
        std::fs::create_dir(share.join("pub")).unwrap();
    }) else {
        return;
    };
    let refused = |s: &mut Session<'_>, dir: &[u8], name: &[u8]| -> bool {
        let d = s.lookup(1, dir).unwrap().nodeid;
        let f = s.lookup(d, name).unwrap().nodeid;
        match s.open(f, libc::O_RDONLY as u32, false) {
            Err(driver::Error::Fuse { errno, .. }) => errno == libc::EACCES,
            Ok(o) => {
                let r = s.read(f, o.fh, 0, 100);
                s.release(f, o.fh, false).unwrap();
                matches!(r, Err(driver::Error::Fuse { errno, .. }) if errno == libc::EACCES)
            }
            Err(e) => panic!("{e}"),
        }
    };
    {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        s.init().unwrap();
        authd.grant.store(true, Ordering::SeqCst);
        let v = s.lookup(1, b"vault").unwrap().nodeid;
        let p = s.lookup(1, b"pub").unwrap().nodeid;
        s.rename(v, b"secret", p, b"moved").unwrap();
        authd.grant.store(false, Ordering::SeqCst);
        authd.revoke_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !refused(&mut s, b"pub", b"moved") {
            assert!(Instant::now() < deadline, "moved, still protected");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for round in 0..3 {
        rig.hand_over(|_| {}).expect("handover");
        let mut s = Session::new(rig.device.queue(1).unwrap());
        assert!(
            refused(&mut s, b"pub", b"moved"),
            "round {round}: the moved file stays protected"
        );
    }
    assert!(log_text(&rig.log).contains("labels from the label database"));
}

/// Kills the serving daemon after `delay` while reading `file` in a tight
/// loop, until a new fsd has taken over; every read must be answered with
/// `expect`. Returns the longest wait for one read.
fn kill_under_reads(
    rig: &mut Rig,
    sandbox: Sandbox,
    file: u64,
    fh: u64,
    expect: &[u8],
    delay: Duration,
) -> Duration {
    let before = recovered(&log_text(&rig.log)).len();
    let victim = serving_daemon(rig.serving, sandbox)
        .unwrap_or_else(|| panic!("the sandboxed daemon of {}", rig.serving));
    let killer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        // SAFETY: killing a daemon this test started.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut worst = Duration::ZERO;
    let new = loop {
        let t = Instant::now();
        let r = Session::new(rig.device.queue(1).unwrap())
            .call(
                &read_request(file, fh, 0, expect.len() as u32),
                expect.len() as u32,
            )
            .unwrap_or_else(|e| {
                panic!("a read across the crash: {e}; log:\n{}", log_text(&rig.log))
            });
        assert_eq!(r.errno(), 0, "a read across the crash");
        assert_eq!(
            &r.body[..expect.len()],
            expect,
            "the bytes read across the crash"
        );
        worst = worst.max(t.elapsed());
        if let Some(&pid) = recovered(&log_text(&rig.log)).get(before) {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within 30 s; log:\n{}",
            log_text(&rig.log)
        );
    };
    killer.join().unwrap();
    rig.serving = new;
    worst
}

#[test]
fn a_killed_fsd_is_replaced_and_the_session_goes_on() {
    crash_rounds(Sandbox::None);
}

#[test]
fn a_killed_sandboxed_fsd_is_replaced_and_the_session_goes_on() {
    if !testrig::prereq::is_root() {
        testrig::skip::<(), _>("the namespace sandbox needs root");
        return;
    }
    crash_rounds(Sandbox::Namespace);
}

/// SIGKILL at varying moments while the "guest" reads in a tight loop: each
/// time a new fsd takes the session over from the supervisor, every read
/// is answered (those in flight at the kill are run again), and the node
/// ids, the open file, the directory stream and both locks keep working.
fn crash_rounds(sandbox: Sandbox) {
    let Some(mut rig) = Rig::start_with(
        sandbox,
        &["--crash-recovery"],
        DeviceConfig::default(),
        |_| {},
    ) else {
        return;
    };
    let mut held = {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        setup(&mut s)
    };
    let (file, fh) = (held.file, held.fh);
    let mut gaps = Vec::new();
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        // The device's setup reaches the supervisor within 200 ms of a change.
        std::thread::sleep(Duration::from_millis(400));
        let delay = Duration::from_micros(1000 + 7919 * round as u64 % 20_000);
        let expect = held.content[..8].to_vec();
        gaps.push(kill_under_reads(
            &mut rig, sandbox, file, fh, &expect, delay,
        ));
        let mut s = Session::new(rig.device.queue(1).unwrap());
        check(&mut s, &mut held, round);
    }
    // Killed again the moment the supervisor says the new fsd serves: the
    // supervisor already holds everything, device setup included, before
    // the new fsd answers its first request.
    for round in ROUNDS..ROUNDS + 3 {
        let expect = held.content[..8].to_vec();
        gaps.push(kill_under_reads(
            &mut rig,
            sandbox,
            file,
            fh,
            &expect,
            Duration::ZERO,
        ));
        let mut s = Session::new(rig.device.queue(1).unwrap());
        check(&mut s, &mut held, round);
    }
    println!(
        "crash recovery ({sandbox:?}): longest read wait per SIGKILL: median {:?}, max {:?} ({} kills)",
        median(&mut gaps.clone()),
        gaps.iter().max().unwrap(),
        gaps.len(),
    );
}

/// A request fsd had taken and not answered when it was killed gets its
/// answer from the new fsd: a blocking lock request (SETLKW, waiting for a
/// lock another owner holds) is answered EINTR, as docs/rejuvenation.md
/// lists, and the lock it waited for is still held by its owner.
#[test]
fn a_request_in_flight_at_the_kill_is_answered_by_the_new_fsd() {
    let Some(mut rig) = Rig::start_with(
        Sandbox::None,
        &["--crash-recovery"],
        DeviceConfig::default(),
        |_| {},
    ) else {
        return;
    };
    let held = {
        let mut s = Session::new(rig.device.queue(1).unwrap());
        setup(&mut s)
    };
    // Another owner waits for the POSIX lock `setup` took.
    let waiting = lock_req(
        held.file,
        held.fh,
        POSIX_OWNER + 9,
        libc::F_WRLCK,
        false,
        SETLKW,
    );
    let token = rig
        .device
        .queue(1)
        .unwrap()
        .submit(&waiting.chain(driver::session::next_unique(), 64))
        .unwrap();
    // Taken by fsd (a waiter thread) and the device's setup with the
    // supervisor.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rig.device
            .queue(1)
            .unwrap()
            .wait(Duration::ZERO)
            .unwrap_or_default()
            .is_empty(),
        "the lock request waits"
    );
    let before = recovered(&log_text(&rig.log)).len();
    // SAFETY: killing the daemon this test started.
    assert_eq!(unsafe { libc::kill(rig.serving as i32, libc::SIGKILL) }, 0);
    let c = rig
        .device
        .queue(1)
        .unwrap()
        .wait_for(token, Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "no answer after the kill: {e}; log:\n{}",
                log_text(&rig.log)
            )
        });
    let r = driver::fuse::Reply::decode(&c).unwrap();
    assert_eq!(r.errno(), libc::EINTR, "the waiting lock request");
    // The supervisor logs the recovery once the new fsd said it serves,
    // which may come after the new fsd's first answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while recovered(&log_text(&rig.log)).len() <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = log_text(&rig.log);
    assert!(recovered(&log).len() > before, "{log}");
    assert!(
        log.contains("0 requests in flight run again, 1 answered with an error"),
        "{log}"
    );
    rig.serving = recovered(&log)[before];
    // The owner's lock is still held: the other owner still cannot take it.
    let mut s = Session::new(rig.device.queue(1).unwrap());
    let r = s
        .call(
            &lock_req(
                held.file,
                held.fh,
                POSIX_OWNER + 9,
                libc::F_WRLCK,
                false,
                SETLK,
            ),
            64,
        )
        .unwrap();
    assert_eq!(r.errno(), libc::EAGAIN, "the lock survives the crash");
}
