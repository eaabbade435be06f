//! The end of a grant flushes the guest's cached copy of protected files,
//! end to end, in one real guest.
//!
//! A rule with `cache = "flush"` lets the guest keep protected content in
//! its page cache while a grant lasts. When the grant ends, fsd hands the
//! host inode numbers of what the guest read under it to the monitor
//! (`--monitor-socket`), and the monitor drops those pages from the guest's
//! page cache and scrubs the freed frames (docs/policy.md, docs/monitor.md).
//!
//! The parts are the real ones: a Debian guest kernel under QEMU TCG whose
//! RAM is a file under /dev/shm (so it can be searched from outside), fsd
//! with its default namespace sandbox (it reaches authd and the monitor
//! through its unsandboxed parent), and `monitor daemon` attached to the
//! guest through QMP, the gdbstub and the RAM file. Only authd is the
//! stand-in (`authd_stub`), so that the test decides when the grant ends.
//!
//! The guest reads a 1 MiB protected file whose every 4 KiB block carries
//! a marker no other run can contain, then waits for the test (testrig's
//! step handshake). The test finds the marker in guest
//! RAM, ends the grant, and waits until no copy is left anywhere in guest
//! RAM; then the guest reads a public file, runs a command, and is refused
//! the protected file, which no grant covers any more.
//!
//! Needs QEMU, the guest kernel (with its decompressed vmlinux, which the
//! monitor reads symbols from), busybox (testrig) and the `monitor` binary
//! from the same target directory (`cargo build -p monitor`, or
//! `MONITOR_BIN=/path/to/monitor`). Without one of them the test prints
//! `SKIP: …` and returns, except under `CI=true`, where it fails.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use testrig::script::with_prelude;
use testrig::{
    require, skip, Daemon, DaemonSpec, InitramfsBuilder, MemoryBackend, Need, QemuConfig, Sandbox,
    ScriptedGuest,
};

use crate::authd_stub::FakeAuthd;
use crate::common::{asking_policy, fsd_spec, TAG};
use monitor_client::report::FlushReport;

/// Size of the protected file: 256 blocks of 4 KiB, each with the marker.
const FILE_SIZE: usize = 1 << 20;
const BLOCK: usize = 4096;
const PUBLIC: &str = "public-text-ok";
/// Longest the test waits for the guest to reach a step (boot included):
/// generous, for a loaded 2-core machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest from the end of the grant until no copy is left in guest RAM
/// (the monitor's first request also builds the kernel profile).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(240);

/// The guest's side (after testrig's prelude). Each attempt prints one line
/// `<name>: ok|fail <output>`; nothing the guest prints contains file
/// content. The protected file is read with busybox cat into /dev/null
/// (sendfile): its content goes into the page cache and nowhere else, so the
/// page cache is the only place a copy can be left.
const SCRIPT: &str = r#"
t read-granted sh -c 'cat secret/marker.txt >/dev/null'
step cached
await revoked
echo "public-read: $(cat public/ok.txt)"
echo "command: $(uname -s)"
t read-revoked sh -c 'cat secret/marker.txt >/dev/null'
step done
"#;

/// A marker no earlier run or other file can contain.
fn unique_marker() -> String {
    let mut r = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut r).unwrap();
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("FLUSHMARK-{hex}")
}

/// A file of [`FILE_SIZE`] bytes whose every 4 KiB block starts with `marker`.
fn marked_file(path: &Path, marker: &str) {
    let mut data = Vec::with_capacity(FILE_SIZE);
    for block in 0..FILE_SIZE / BLOCK {
        let mut b = format!("{marker} block {block} ").into_bytes();
        b.resize(BLOCK, b'.');
        data.extend_from_slice(&b);
    }
    std::fs::write(path, data).unwrap();
}

/// Guest RAM's backing file, removed when the test ends.
struct ShmFile(PathBuf);

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Everything one run holds; dropped (QEMU, fsd, monitor killed) at the end.
struct Rig {
    work: tempfile::TempDir,
    share: PathBuf,
    monitor_bin: PathBuf,
    mem: ShmFile,
    authd: FakeAuthd,
    _monitor: Daemon,
    fsd: Daemon,
    guest: ScriptedGuest,
}

impl Rig {
    /// Fails the test with everything needed to see why.
    fn fail(&self, what: &str) -> ! {
        self.guest.fail(what)
    }

    /// Guest-physical addresses of every copy of `marker` in guest RAM,
    /// found by `monitor scan` from outside the guest.
    fn scan(&self, marker: &str) -> Vec<String> {
        let out = Command::new(&self.monitor_bin)
            .arg("scan")
            .arg(marker)
            .arg("--mem")
            .arg(&self.mem.0)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.monitor_bin.display()));
        let hits: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("0x"))
            .map(str::to_owned)
            .collect();
        // It exits non-zero when it finds copies, and also on errors.
        if !out.status.success() && hits.is_empty() {
            self.fail(&format!(
                "monitor scan failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        hits
    }
}

/// Writes the share (`secret/marker.txt` carries `marker`), starts the
/// stand-in authd (granting), the monitor daemon naming the guest, fsd with
/// the flushing policy, and boots the guest.
fn start(test: &str, marker: &str) -> Option<Rig> {
    let env = require(&[Need::Qemu, Need::Kernel, Need::Busybox, Need::Vmlinux])?;
    let vmlinux = env.vmlinux.clone()?;
    let monitor_bin = match testrig::paths::monitor() {
        Ok(p) => p,
        Err(e) => return skip(e),
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    let share = crate::common::share_in(dir, "share");
    std::fs::create_dir_all(share.join("secret")).unwrap();
    std::fs::create_dir_all(share.join("public")).unwrap();
    std::fs::write(share.join("public/ok.txt"), PUBLIC).unwrap();
    marked_file(&share.join("secret/marker.txt"), marker);
    let policy_path = dir.join("policy.toml");
    // The guest may cache while a grant lasts; the grant outlives the test.
    std::fs::write(&policy_path, asking_policy(30, "flush", 3600)).unwrap();

    let authd = FakeAuthd::start(dir);
    authd.grant.store(true, Ordering::SeqCst);

    let mem = ShmFile(PathBuf::from(format!(
        "/dev/shm/fsd-flush-test-{}-{}",
        std::process::id(),
        dir.file_name().unwrap().to_string_lossy()
    )));
    let qmp = dir.join("qmp.sock");
    let gdb = dir.join("gdb.sock");
    let monitor_config = dir.join("monitor.json");
    std::fs::write(
        &monitor_config,
        serde_json::to_vec_pretty(&serde_json::json!({
            "vms": { "vm1": { "qmp": qmp, "gdb": gdb, "mem": mem.0, "vmlinux": vmlinux } }
        }))
        .unwrap(),
    )
    .unwrap();
    // The daemon attaches to the VM on its first request, long after boot.
    let monitor_socket = dir.join("monitor.sock");
    let spec = DaemonSpec::monitor(
        &monitor_bin,
        &monitor_config,
        &dir.join("profiles"),
        &monitor_socket,
        dir.join("monitor.log"),
    );
    let monitor = Daemon::spawn_on_path(&spec, &monitor_socket).unwrap_or_else(|e| panic!("{e}"));

    let socket = dir.join("fsd.sock");
    let spec = fsd_spec(
        Sandbox::Namespace,
        &socket,
        &share,
        &dir.join("fsd.log"),
        &[
            format!("--policy={}", policy_path.display()),
            "--vm=vm1".into(),
            format!("--audit-log={}", dir.join("fsd-audit.jsonl").display()),
            format!("--authd-socket={}", authd.socket.display()),
            format!("--monitor-socket={}", monitor_socket.display()),
        ],
    );
    let fsd = Daemon::spawn_on_path(&spec, &socket).unwrap_or_else(|e| panic!("{e}"));

    let initrd = InitramfsBuilder::run_script(TAG, &with_prelude(SCRIPT))
        .build(&env.kernel)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = QemuConfig::new(&env.kernel, &initrd).fs(&socket, TAG);
    cfg.memory = MemoryBackend::File(mem.0.clone());
    cfg.qmp = Some(qmp);
    cfg.gdb = Some(gdb);
    cfg.append.push("loglevel=4".into());
    // The test bounds each wait itself; this only catches a guest that
    // never powers off.
    cfg.timeout = Duration::from_secs(900);
    cfg.console_log = Some(dir.join("console.log"));
    let guest = ScriptedGuest::start(&cfg, &share)
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(STEP_TIMEOUT)
        .log("fsd log", fsd.log_path())
        .log("monitor log", monitor.log_path())
        .log("fsd audit", &dir.join("fsd-audit.jsonl"));
    println!("{test}: files in {}", dir.display());
    Some(Rig {
        work,
        share,
        monitor_bin,
        mem,
        authd,
        _monitor: monitor,
        fsd,
        guest,
    })
}

#[test]
fn grant_end_flushes_the_guest_page_cache() {
    let marker = unique_marker();
    let Some(mut rig) = start("grant_end_flushes_the_guest_page_cache", &marker) else {
        return;
    };
    let ino = std::fs::metadata(rig.share.join("secret/marker.txt"))
        .unwrap()
        .ino();
    let blocks = FILE_SIZE / BLOCK;

    // 1. The guest reads the protected file under a live grant.
    let booted = Instant::now();
    rig.guest.step("cached");
    println!(
        "guest read the protected file {:?} after start",
        booted.elapsed()
    );
    let read = rig.guest.attempt("read-granted");
    if !read.ok {
        rig.fail(&format!("read under the grant: {read:?}"));
    }
    if rig.authd.asked.load(Ordering::SeqCst) == 0 {
        rig.fail("fsd never asked authd");
    }

    // 2. Its content is in guest RAM (the page cache), seen from outside.
    let hits = rig.scan(&marker);
    println!("before the grant ends: {} copies of the marker", hits.len());
    if hits.len() < blocks {
        rig.fail(&format!(
            "{} copies of the marker in guest RAM under the grant, expected >= {blocks} \
             (cache = \"flush\" lets the guest cache the file)",
            hits.len()
        ));
    }

    // 3. The grant ends; fsd asks the monitor, which flushes. The wait
    //    ends when a scan of all guest RAM finds no copy; the time fsd
    //    logged the monitor's answer is noted on the way.
    rig.authd.grant.store(false, Ordering::SeqCst);
    let ended = Instant::now();
    rig.authd.revoke_all();
    let answered = loop {
        let log = rig.fsd.log_text();
        if log.contains("monitor flushed ")
            || log.contains("monitor could not flush")
            || log.contains("monitor unreachable")
        {
            break ended.elapsed();
        }
        if ended.elapsed() > FLUSH_TIMEOUT {
            rig.fail(&format!(
                "fsd logged no answer from the monitor {FLUSH_TIMEOUT:?} after the grant ended"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut scans = 0;
    let gone = loop {
        scans += 1;
        let t = Instant::now();
        let left = rig.scan(&marker);
        let took = t.elapsed();
        if left.is_empty() {
            println!("one scan of guest RAM: {took:?}");
            break ended.elapsed();
        }
        if ended.elapsed() > FLUSH_TIMEOUT {
            rig.fail(&format!(
                "{} copies of the marker still in guest RAM {FLUSH_TIMEOUT:?} after the \
                 grant ended, e.g. at {:?}",
                left.len(),
                &left[..left.len().min(8)]
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!(
        "grant end -> monitor's answer in fsd's log: {answered:?}; \
         -> no copy found in guest RAM: {gone:?} ({scans} scans)"
    );

    // 4. The guest still works; the file is refused without a grant.
    rig.guest.go("revoked");
    rig.guest.step("done");
    let public = rig.guest.line("public-read");
    if public != PUBLIC {
        rig.fail(&format!("public read after the flush: {public:?}"));
    }
    let command = rig.guest.line("command");
    if command != "Linux" {
        rig.fail(&format!("command after the flush: {command:?}"));
    }
    let refused = rig.guest.attempt("read-revoked");
    if refused.ok || !refused.output.contains("Permission denied") {
        rig.fail(&format!("read after the grant ended: {refused:?}"));
    }
    if rig.guest.console().contains(&marker) {
        rig.fail("the guest printed protected content");
    }

    // 5. fsd's log: it asked the monitor about this file, and the monitor
    //    flushed it and reported nothing left cached.
    let log = rig.fsd.log_text();
    let ended_line = "ended; the guest read 1 protected inodes under it";
    if !log.contains(ended_line) {
        rig.fail(&format!("fsd did not log {ended_line:?}"));
    }
    let audit = std::fs::read_to_string(rig.work.path().join("fsd-audit.jsonl")).unwrap();
    if !audit.contains("\"op\":\"grant-end\"") || audit.contains(&marker) {
        rig.fail("the audit log lacks the grant's end (or holds content)");
    }
    let prefix = "monitor flushed 1 inodes of vm1: ";
    let Some(logged) = log
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, r)| r.to_owned()))
    else {
        rig.fail(&format!("fsd did not log {prefix:?}"));
    };
    let report: FlushReport = serde_json::from_str(&logged)
        .unwrap_or_else(|e| rig.fail(&format!("monitor report {logged:?}: {e}")));
    println!("monitor report as logged by fsd: {report}");
    if report.inodes != 1 || report.pages_before < blocks as u64 || report.pages_left() != 0 {
        rig.fail(&format!("monitor report for inode {ino}: {report:?}"));
    }

    // The guest powers off by itself once the script ends.
    let transcript = rig.guest.finish();
    // The injected calls left the guest kernel without complaint.
    for bad in ["WARNING", "BUG:", "Oops", "sleeping function called"] {
        assert!(
            !transcript.console.contains(bad),
            "guest kernel complained:\n{}",
            transcript.console
        );
    }
}
