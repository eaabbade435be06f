//! What the plugin's real-guest tests share: building the plugin, booting
//! the Debian guest under QEMU 10 (testrig) with guest RAM in a file and QMP
//! for the monitor, a control serial port the guest script waits on, and the
//! monitor's view of the running kernel (KASLR slide, hook addresses).
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use monitor::config::VmSpec;
use monitor::hooks::HookPlan;
use monitor::vm::Vm;
use testrig::{Daemon, DaemonSpec, InitramfsBuilder, MemoryBackend, Need, QemuConfig};

/// Shell lines every test script starts with: the control port opened
/// once (so a line the test sends before `read` runs is kept), loopback up,
/// and `READY` on the console.
pub const PREAMBLE: &str = r#"
exec 3</dev/ttyS1
stty -F /dev/ttyS1 -echo
ip link set lo up
echo "SHELL $$"
echo READY
"#;

/// What every test here needs; `None` after printing SKIP (a panic in CI).
pub fn require() -> Option<testrig::Prereqs> {
    testrig::require(&[Need::Qemu10, Need::Kernel, Need::Busybox, Need::Virtiofsd])
}

/// The plugin's shared object: `FSD_TAINT_PLUGIN`, else a release build
/// into `<target>/taint-plugin` (a target directory of its own, so the
/// build does not wait on the lock of the `cargo test` that runs this).
/// `None` after printing SKIP (or a panic in CI) when it cannot be built.
pub fn plugin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FSD_TAINT_PLUGIN").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let target = testrig::paths::target_dir().join("taint-plugin");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t = Instant::now();
    let out = Command::new(&cargo)
        .current_dir(testrig::paths::workspace_root())
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .args(["build", "--release", "--quiet", "-p", "taint-plugin"])
        .output();
    let why = match out {
        Ok(o) if o.status.success() => {
            let so = target.join("release/libtaint_plugin.so");
            if so.is_file() {
                println!("plugin: {} (build check {:?})", so.display(), t.elapsed());
                return Some(so);
            }
            format!("the build left no {}", so.display())
        }
        Ok(o) => format!(
            "cargo build -p taint-plugin failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("cannot run cargo: {e}"),
    };
    if testrig::prereq::in_ci() {
        panic!("CI=true and the TCG plugin is missing: {why}");
    }
    println!("SKIP: {why}");
    None
}

/// A booted guest under QEMU 10; QEMU and virtiofsd are killed on drop.
pub struct Guest {
    pub vm: testrig::Vm,
    pub spec: VmSpec,
    /// The plugin's socket, when the plugin is loaded.
    pub plugin_sock: Option<PathBuf>,
    pub booted_in: Duration,
    ctl: UnixStream,
    _daemon: Daemon,
    dir: tempfile::TempDir,
    mem: PathBuf,
}

/// Boots the guest with `script` (after [`PREAMBLE`]) and, when `plugin` is
/// given, the plugin loaded with `plugin_args` besides its socket. Returns
/// when QEMU runs (not when the guest is up: see [`Guest::wait_ready`]).
/// `None` after printing SKIP when QEMU 10, the guest kernel, busybox,
/// virtiofsd or the guest helpers are missing (a panic in CI).
pub fn boot(
    script: &str,
    plugin: Option<&Path>,
    plugin_args: &[(String, String)],
) -> Option<Guest> {
    let env = testrig::require(&[Need::Qemu10, Need::Kernel, Need::Busybox, Need::Virtiofsd])?;
    let Some(vmlinux) = env.kernel.vmlinux.clone() else {
        let why = "no decompressed guest vmlinux (scripts/install-deps.sh makes one)";
        if testrig::prereq::in_ci() {
            panic!("CI=true and {why}");
        }
        println!("SKIP: {why}");
        return None;
    };
    let tools = match testrig::guest_tools::build() {
        Ok(t) => t,
        Err(e) if testrig::prereq::in_ci() => panic!("CI=true and the guest helpers fail: {e}"),
        Err(e) => {
            println!("SKIP: guest helpers: {e}");
            return None;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let sock = dir.path().join("fs.sock");
    let daemon = Daemon::spawn_on_path(
        &DaemonSpec::virtiofsd(&sock, &share, "auto", dir.path().join("virtiofsd.log")),
        &sock,
    )
    .expect("start virtiofsd");
    let initrd = InitramfsBuilder::run_script("share", &format!("{PREAMBLE}{script}"))
        .guest_tools(&tools)
        .build(&env.kernel)
        .expect("build initramfs");
    let mem = PathBuf::from(format!(
        "/dev/shm/taint-plugin-test-{}-{}",
        std::process::id(),
        dir.path().file_name().unwrap().to_string_lossy()
    ));
    let qmp = dir.path().join("qmp.sock");
    let ctl = dir.path().join("ctl.sock");
    let mut cfg = QemuConfig::new(&env.kernel, &initrd)
        .fs(&sock, "share")
        .qemu10();
    cfg.memory = MemoryBackend::File(mem.clone());
    cfg.qmp = Some(qmp.clone());
    cfg.append.push("loglevel=4".into());
    cfg.timeout = Duration::from_secs(600);
    for a in [
        "-chardev".to_string(),
        format!("socket,id=ctl,path={},server=on,wait=off", ctl.display()),
        "-device".to_string(),
        "isa-serial,chardev=ctl".to_string(),
    ] {
        cfg.extra_args.push(a.into());
    }
    let plugin_sock = match plugin {
        Some(so) => {
            let p = dir.path().join("plugin.sock");
            let mut args = vec![("sock", p.display().to_string())];
            args.extend(plugin_args.iter().map(|(k, v)| (k.as_str(), v.clone())));
            cfg = cfg.plugin(so, &args);
            Some(p)
        }
        None => None,
    };
    let t = Instant::now();
    let vm = testrig::Vm::start(&cfg).expect("start QEMU 10");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !testrig::daemon::listens(&ctl) {
        assert!(
            Instant::now() < deadline,
            "QEMU does not listen on its control socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ctl = UnixStream::connect(&ctl).expect("connect control serial");
    let spec = VmSpec {
        qmp,
        gdb: None,
        mem: mem.clone(),
        vmlinux,
        system_map: None,
        uuid: None,
        addrs: Vec::new(),
        plugin: None,
    };
    Some(Guest {
        vm,
        spec,
        plugin_sock,
        booted_in: t.elapsed(),
        ctl,
        _daemon: daemon,
        dir,
        mem,
    })
}

impl Guest {
    /// Waits for the script's `READY` line.
    pub fn wait_ready(&mut self) {
        let t = Instant::now();
        assert!(
            self.vm.wait_for_console("READY", Duration::from_secs(300)),
            "guest did not come up:\n{}",
            self.vm.console()
        );
        self.booted_in += t.elapsed();
    }

    /// Sends one line to the script (`read -r x <&3`).
    pub fn send(&mut self, line: &str) {
        self.ctl
            .write_all(format!("{line}\n").as_bytes())
            .expect("write control serial");
    }

    /// Waits for the script's end line and returns its transcript (QEMU
    /// powers off after it).
    pub fn wait_end(&mut self, limit: Duration) -> testrig::Transcript {
        let deadline = Instant::now() + limit;
        loop {
            let t = testrig::Transcript::parse(&self.vm.console(), "");
            if t.exit_code.is_some() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the guest script did not end:\n{}",
                t.tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A private directory for the test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The monitor's look at the running guest: KASLR slide and the plan for
    /// `functions` (paused while it looks).
    pub fn plan(&self, functions: &[&str]) -> (u64, HookPlan) {
        let mut vm = Vm::attach(self.spec.clone(), Some(self.dir().join("profiles")))
            .expect("monitor attaches to the guest");
        HookPlan::for_vm(&mut vm, functions).expect("monitor locates the kernel")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.vm.kill();
        let _ = std::fs::remove_file(&self.mem);
    }
}

/// The link-time address of any kallsyms symbol of the guest kernel (the
/// profile keeps only those the monitor uses).
pub fn kallsyms_addr(vmlinux: &Path, name: &str) -> u64 {
    let image = monitor::kernel::KernelImage::load(vmlinux).expect("load vmlinux");
    let syms = monitor::kernel::kallsyms::parse(&image.rodata, image.rodata_addr)
        .expect("kallsyms of the guest kernel");
    syms.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} is not in this kernel's kallsyms"))
        .addr
}

/// `KEY value` lines of the script output: the first value of each key.
pub fn facts(output: &str) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    for line in output.lines() {
        if let Some((k, v)) = line.trim().split_once(' ') {
            m.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    m
}

/// `key=value` pairs of one line.
pub fn fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
