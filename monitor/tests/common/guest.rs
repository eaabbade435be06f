//! A real guest for the monitor's tests: Debian's kernel under QEMU TCG
//! (booted by testrig) with a virtio-fs share served by virtiofsd, guest RAM
//! in a named file under /dev/shm, QMP, a gdbstub, a fixed `-uuid`, and a
//! second serial port carrying a command loop so a test can run guest
//! commands while the monitor looks at the same guest from outside.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use monitor::config::VmSpec;
use testrig::{Daemon, DaemonSpec, InitramfsBuilder, MemoryBackend, Need, QemuConfig};

/// The UUID every test guest is started with.
pub const UUID: &str = "5f3c9a2e-7b41-4d8e-9c06-1a2b3c4d5e6f";

/// The in-guest script: run lines from /dev/ttyS1 and answer there.
const SCRIPT: &str = r#"
stty -F /dev/ttyS1 raw -echo
echo CTL-READY
while IFS= read -r line; do eval "$line"; done </dev/ttyS1 >/dev/ttyS1 2>&1
"#;

/// A booted guest; QEMU and the daemon are killed on drop.
pub struct Guest {
    pub vm: testrig::Vm,
    pub spec: VmSpec,
    pub share: PathBuf,
    ctl: UnixStream,
    seq: u64,
    _daemon: Daemon,
    dir: tempfile::TempDir,
    mem: PathBuf,
}

impl Guest {
    /// Boot a guest whose share is served with `cache` (virtiofsd's
    /// `--cache=`). Returns `None` after printing SKIP when something is
    /// missing.
    pub fn boot(cache: &str) -> Option<Guest> {
        let env = testrig::require(&[Need::Qemu, Need::Kernel, Need::Busybox, Need::Virtiofsd])?;
        let vmlinux = env
            .kernel
            .vmlinux
            .clone()
            .filter(|p| p.is_file())
            .or_else(super::vmlinux);
        let Some(vmlinux) = vmlinux else {
            println!("SKIP: no decompressed guest vmlinux (scripts/install-deps.sh makes one)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let sock = dir.path().join("fs.sock");
        let daemon = Daemon::spawn_on_path(
            &DaemonSpec::virtiofsd(&sock, &share, cache, dir.path().join("virtiofsd.log")),
            &sock,
        )
        .expect("start virtiofsd");
        let initrd = InitramfsBuilder::run_script("share", SCRIPT)
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
        for a in [
            "-chardev".to_string(),
            format!("socket,id=ctl,path={},server=on,wait=off", ctl.display()),
            "-device".to_string(),
            "isa-serial,chardev=ctl".to_string(),
        ] {
            cfg.extra_args.push(a.into());
        }
        let mut vm = testrig::Vm::start(&cfg).expect("start QEMU");
        wait_path(&ctl);
        let ctl = UnixStream::connect(&ctl).expect("connect control serial");
        assert!(
            vm.wait_for_console("CTL-READY", Duration::from_secs(240)),
            "guest did not come up:\n{}",
            vm.console()
        );
        let spec = VmSpec {
            qmp,
            gdb: Some(gdb),
            mem: mem.clone(),
            vmlinux,
            system_map: None,
            uuid: None,
            addrs: Vec::new(),
        };
        let mut g = Guest {
            vm,
            spec,
            share,
            ctl,
            seq: 0,
            _daemon: daemon,
            dir,
            mem,
        };
        // Drain anything the port emitted while the loop started.
        g.sh("true");
        Some(g)
    }

    /// A private directory for the test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run a shell command line in the guest and return its output.
    pub fn sh(&mut self, cmd: &str) -> String {
        self.sh_timeout(cmd, Duration::from_secs(120))
    }

    /// [`Guest::sh`] with an explicit limit.
    pub fn sh_timeout(&mut self, cmd: &str, timeout: Duration) -> String {
        self.seq += 1;
        let end = format!("@@END{}@@", self.seq);
        // `cmd &; echo` would be a syntax error, which ends the guest loop.
        let sep = if cmd.trim_end().ends_with('&') {
            " "
        } else {
            "; "
        };
        let line = format!("{cmd}{sep}echo {end}\n");
        self.ctl.write_all(line.as_bytes()).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&out).replace('\r', "");
            if let Some(i) = text.find(&end) {
                return text[..i].to_string();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "guest command {cmd:?} timed out; got {text:?}\nconsole:\n{}",
                self.vm.console()
            );
            self.ctl.set_read_timeout(Some(left)).unwrap();
            match self.ctl.read(&mut buf) {
                Ok(0) => panic!("control serial closed; console:\n{}", self.vm.console()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("control serial: {e}"),
            }
        }
    }

    /// Write a line to the control port without waiting for an answer (for
    /// commands that are expected to block).
    pub fn send(&mut self, cmd: &str) {
        self.ctl.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.vm.kill();
        let _ = std::fs::remove_file(&self.mem);
    }
}

fn wait_path(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
