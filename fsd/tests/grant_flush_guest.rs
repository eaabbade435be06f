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
//! a marker no other run can contain, then waits for the test (it polls for
//! `public/.go-<step>` on the share). The test finds the marker in guest
//! RAM, ends the grant, and waits until no copy is left anywhere in guest
//! RAM; then the guest reads a public file, runs a command, and is refused
//! the protected file, which no grant covers any more.
//!
//! Needs QEMU, the guest kernel (with its decompressed vmlinux, which the
//! monitor reads symbols from), busybox (testrig) and the `monitor` binary
//! from the same target directory (`cargo build -p monitor`, or
//! `MONITOR_BIN=/path/to/monitor`). Without one of them the test prints
//! `SKIP: …` and returns, except under `CI=true`, where it fails.

mod authd_stub;
mod common;

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use authd_stub::FakeAuthd;
use common::TAG;
use monitor_client::report::FlushReport;
use testrig::initramfs::{END_PREFIX, ERROR_PREFIX};
use testrig::{require, Daemon, DaemonSpec, InitramfsBuilder, MemoryBackend, Need, QemuConfig, Vm};

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

/// The guest's side. Each attempt prints one line `<name> ok|FAIL <output>`;
/// nothing the guest prints contains file content. The protected file is
/// read with busybox cat into /dev/null (sendfile): its content goes into
/// the page cache and nowhere else, so the page cache is the only place a
/// copy can be left.
const SCRIPT: &str = r#"
step() { echo "@@STEP $1"; }
# Waits for the test to create public/.go-NAME: its turn is over.
await() {
    i=0
    until [ -e "public/.go-$1" ]; do
        i=$((i+1))
        if [ $i -gt 3000 ]; then echo "no go for $1"; exit 1; fi
        sleep 0.2
    done
}
# One line per attempt: NAME ok|FAIL OUTPUT (stdout discarded).
t() {
    name=$1; shift
    if "$@" >/dev/null 2>/tmp/err; then r=ok; else r=FAIL; fi
    echo "$name $r $(head -c 160 /tmp/err | tr '\n' ' ')"
}
t read-granted cat secret/marker.txt
step cached
await revoked
echo "public-read $(cat public/ok.txt)"
echo "command $(uname -s)"
t read-revoked cat secret/marker.txt
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

/// Prints why the test cannot run and returns None; fails under `CI=true`.
fn skip<T>(why: &str) -> Option<T> {
    if testrig::prereq::in_ci() {
        panic!("CI=true and {why}");
    }
    println!("SKIP: {why}");
    eprintln!("SKIP: {why}");
    None
}

/// The `monitor` binary: `$MONITOR_BIN`, else beside fsd's.
fn monitor_program() -> Option<PathBuf> {
    let p = std::env::var_os("MONITOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_fsd"))
                .parent()
                .expect("fsd's binary has a directory")
                .join("monitor")
        });
    if p.is_file() {
        Some(p)
    } else {
        skip(&format!(
            "no monitor binary at {} (`cargo build -p monitor` with the same \
             CARGO_TARGET_DIR, or set MONITOR_BIN)",
            p.display()
        ))
    }
}

/// The decompressed guest kernel the monitor reads symbols from.
fn vmlinux(env: &testrig::Prereqs) -> Option<PathBuf> {
    let candidates = [
        env.kernel.vmlinux.clone(),
        std::env::var_os("MONITOR_VMLINUX").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fsd/guest/vmlinux")),
    ];
    match candidates.into_iter().flatten().find(|p| p.is_file()) {
        Some(p) => Some(p),
        None => skip("no decompressed guest vmlinux (scripts/install-deps.sh makes one)"),
    }
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
    monitor: Daemon,
    fsd: Daemon,
    vm: Vm,
}

impl Rig {
    /// Fails the test with everything needed to see why.
    fn fail(&self, what: &str) -> ! {
        let console = self.vm.console();
        let tail: Vec<&str> = console.lines().collect();
        let tail = tail[tail.len().saturating_sub(60)..].join("\n");
        panic!(
            "{what}\n--- guest console (tail) ---\n{tail}\n--- fsd log ---\n{}\n\
             --- monitor log ---\n{}\n--- fsd audit ---\n{}",
            self.fsd.log_text(),
            self.monitor.log_text(),
            std::fs::read_to_string(self.work.path().join("fsd-audit.jsonl")).unwrap_or_default()
        )
    }

    /// Waits for the guest to print `@@STEP name`.
    fn step(&mut self, name: &str) {
        let needle = format!("@@STEP {name}\n");
        if !self.vm.wait_for_console(&needle, STEP_TIMEOUT) {
            self.fail(&format!("the guest did not reach step {name:?}"));
        }
    }

    /// Ends the test's turn: the guest's `await name` returns.
    fn go(&self, name: &str) {
        std::fs::write(self.share.join(format!("public/.go-{name}")), "").unwrap();
    }

    /// The rest of the guest's console line that starts with `name `.
    fn line(&mut self, name: &str) -> String {
        let prefix = format!("\n{name} ");
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let console = self.vm.console();
            if let Some(at) = console.find(&prefix) {
                let rest = &console[at + prefix.len()..];
                if let Some((line, _)) = rest.split_once('\n') {
                    return line.trim_end().to_owned();
                }
            }
            let ended = [END_PREFIX, ERROR_PREFIX, "Kernel panic"]
                .iter()
                .any(|m| console.contains(m));
            if ended || Instant::now() >= deadline {
                self.fail(&format!("the guest did not print {name:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// `secret/**` belongs to alice, is asked for, and may be cached by the
/// guest while a grant lasts (the grant outlives the test).
const POLICY: &str = r#"version = 1

[defaults]
ask_timeout_secs = 30

[[principal]]
name = "alice"

[[vm]]
name = "vm1"
principal = "alice"

[[rule]]
path = "secret/**"
owner = "alice"
without_grant = "ask"
cache = "flush"
grant_secs = 3600
"#;

/// Writes the share (`secret/marker.txt` carries `marker`), starts the
/// stand-in authd (granting), the monitor daemon naming the guest, fsd with
/// the flushing policy, and boots the guest.
fn start(test: &str, marker: &str) -> Option<Rig> {
    let env = require(&[Need::Qemu, Need::Kernel, Need::Busybox])?;
    let vmlinux = vmlinux(&env)?;
    let monitor_bin = monitor_program()?;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    let share = common::share_in(dir, "share");
    std::fs::create_dir_all(share.join("secret")).unwrap();
    std::fs::create_dir_all(share.join("public")).unwrap();
    std::fs::write(share.join("public/ok.txt"), PUBLIC).unwrap();
    marked_file(&share.join("secret/marker.txt"), marker);
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, POLICY).unwrap();

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
    let mut spec = DaemonSpec::new(
        &monitor_bin,
        vec![
            format!("--config={}", monitor_config.display()).into(),
            format!("--profile-cache={}", dir.join("profiles").display()).into(),
            "daemon".into(),
            format!("--socket={}", monitor_socket.display()).into(),
        ],
        dir.join("monitor.log"),
    );
    spec.env.push(("RUST_LOG".into(), "info".into()));
    let monitor = Daemon::spawn_on_path(&spec, &monitor_socket).unwrap_or_else(|e| panic!("{e}"));

    let socket = dir.join("fsd.sock");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut args: Vec<OsString> = vec![
        format!("--socket-path={}", socket.display()).into(),
        format!("--shared-dir={}", share.display()).into(),
        "--cache=auto".into(),
        format!("--policy={}", policy_path.display()).into(),
        "--vm=vm1".into(),
        format!("--audit-log={}", dir.join("fsd-audit.jsonl").display()).into(),
        format!("--authd-socket={}", authd.socket.display()).into(),
        format!("--monitor-socket={}", monitor_socket.display()).into(),
    ];
    if !root {
        // The namespace sandbox needs root.
        println!("note: not root, fsd runs with --sandbox=none");
        args.push("--sandbox=none".into());
    }
    let mut spec = DaemonSpec::new(env!("CARGO_BIN_EXE_fsd"), args, dir.join("fsd.log"));
    spec.env.push(("RUST_LOG".into(), "info".into()));
    let fsd = Daemon::spawn_on_path(&spec, &socket).unwrap_or_else(|e| panic!("{e}"));

    let initrd = InitramfsBuilder::run_script(TAG, SCRIPT)
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
    let vm = Vm::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{test}: fsd sandbox {}, files in {}",
        if root { "namespace" } else { "none" },
        dir.display()
    );
    Some(Rig {
        work,
        share,
        monitor_bin,
        mem,
        authd,
        monitor,
        fsd,
        vm,
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
    rig.step("cached");
    println!(
        "guest read the protected file {:?} after start",
        booted.elapsed()
    );
    let line = rig.line("read-granted");
    if !line.starts_with("ok") {
        rig.fail(&format!("read under the grant: {line:?}"));
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
    rig.go("revoked");
    rig.step("done");
    let public = rig.line("public-read");
    if public != PUBLIC {
        rig.fail(&format!("public read after the flush: {public:?}"));
    }
    let command = rig.line("command");
    if command != "Linux" {
        rig.fail(&format!("command after the flush: {command:?}"));
    }
    let refused = rig.line("read-revoked");
    if !(refused.starts_with("FAIL") && refused.contains("Permission denied")) {
        rig.fail(&format!("read after the grant ended: {refused:?}"));
    }
    if rig.vm.console().contains(&marker) {
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
    let transcript = match rig.vm.wait() {
        Ok(t) => t,
        Err(e) => panic!("guest did not end cleanly: {e}"),
    };
    // The injected calls left the guest kernel without complaint.
    for bad in ["WARNING", "BUG:", "Oops", "sleeping function called"] {
        assert!(
            !transcript.console.contains(bad),
            "guest kernel complained:\n{}",
            transcript.console
        );
    }
}
