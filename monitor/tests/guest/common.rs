//! A real guest for the monitor's tests: Debian's kernel under QEMU TCG
//! (booted by testrig) with a virtio-fs share served by virtiofsd, guest RAM
//! in a named file under /dev/shm, QMP, a gdbstub, a fixed `-uuid`, and a
//! second serial port carrying a command loop (testrig's [`SerialShell`]) so
//! a test can run guest commands while the monitor looks at the same guest
//! from outside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor::config::VmSpec;
use testrig::shell::SerialShell;
use testrig::{Daemon, DaemonSpec, InitramfsBuilder, MemoryBackend, Need, QemuConfig};

/// The UUID every test guest is started with.
pub const UUID: &str = "5f3c9a2e-7b41-4d8e-9c06-1a2b3c4d5e6f";

/// A booted guest; QEMU and the daemon are killed on drop.
pub struct Guest {
    pub vm: testrig::Vm,
    pub spec: VmSpec,
    pub share: PathBuf,
    shell: SerialShell,
    _daemon: Daemon,
    dir: tempfile::TempDir,
    mem: PathBuf,
}

impl Guest {
    /// Boot a guest whose share is served with `cache` (virtiofsd's
    /// `--cache=`). Returns `None` after printing SKIP when something is
    /// missing.
    pub fn boot(cache: &str) -> Option<Guest> {
        let env = testrig::require(&[
            Need::Qemu,
            Need::Kernel,
            Need::Busybox,
            Need::Virtiofsd,
            Need::Vmlinux,
        ])?;
        let vmlinux = env.vmlinux.clone()?;
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let sock = dir.path().join("fs.sock");
        let daemon = Daemon::spawn_on_path(
            &DaemonSpec::virtiofsd(&sock, &share, cache, dir.path().join("virtiofsd.log")),
            &sock,
        )
        .expect("start virtiofsd");
        let initrd = InitramfsBuilder::run_script("share", SerialShell::SCRIPT)
            .build(&env.kernel)
            .expect("build initramfs");
        let mem = PathBuf::from(format!(
            "/dev/shm/monitor-test-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        let qmp = dir.path().join("qmp.sock");
        let gdb = dir.path().join("gdb.sock");
        let ctl = dir.path().join("ctl.sock");
        let mut cfg = QemuConfig::new(&env.kernel, &initrd).fs(&sock, "share");
        cfg.memory = MemoryBackend::File(mem.clone());
        cfg.uuid = Some(UUID.to_string());
        cfg.qmp = Some(qmp.clone());
        cfg.gdb = Some(gdb.clone());
        cfg.append.push("loglevel=4".into());
        SerialShell::attach(&mut cfg, &ctl);
        let mut vm = testrig::Vm::start(&cfg).expect("start QEMU");
        let shell = SerialShell::connect(&mut vm, &ctl, Duration::from_secs(240));
        let spec = VmSpec {
            qmp,
            gdb: Some(gdb),
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
            share,
            shell,
            _daemon: daemon,
            dir,
            mem,
        })
    }

    /// A private directory for the test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run a shell command line in the guest and return its output.
    pub fn sh(&mut self, cmd: &str) -> String {
        self.shell.sh(&self.vm, cmd, Duration::from_secs(120))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.vm.kill();
        let _ = std::fs::remove_file(&self.mem);
    }
}
