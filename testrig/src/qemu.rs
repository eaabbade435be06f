//! Booting the guest: QEMU TCG with shared guest RAM and a vhost-user-fs
//! device, console on a pipe, as in ARCHITECTURE.md section 4.
//!
//! Guest RAM must be shared (`share=on`) so the vhost-user daemon can map it.
//! [`MemoryBackend::File`] puts it in a named file (e.g. under `/dev/shm`) so
//! that an outside process such as the monitor can map it too.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::initramfs::{BEGIN_MARKER, END_PREFIX};
use crate::kernel::GuestKernel;
use crate::paths;

/// Default time a guest may take from start to power-off. TCG boots take
/// 10–20 s on an idle machine; CI machines are slower and shared.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// How guest RAM is backed (always shared, for the vhost-user daemon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBackend {
    /// Anonymous memfd (`memory-backend-memfd`): nothing left behind on disk.
    Memfd,
    /// A file QEMU creates at this path (`memory-backend-file,mem-path=`), so
    /// another process can map guest RAM. Put it under `/dev/shm`.
    File(PathBuf),
}

/// One `vhost-user-fs-pci` device.
#[derive(Debug, Clone)]
pub struct VhostUserFs {
    /// The daemon's listening socket.
    pub socket: PathBuf,
    /// Mount tag seen by the guest.
    pub tag: String,
    /// `num-request-queues` (QEMU default 1).
    pub num_request_queues: Option<u32>,
    /// `queue-size` (QEMU default 128).
    pub queue_size: Option<u32>,
}

/// One `virtserialport` whose host side is a socket QEMU connects to as a
/// client, reconnecting every second while the other end is away (how a
/// daemon such as the delegation broker hears a guest: the socket names
/// the VM).
#[derive(Debug, Clone)]
pub struct VirtioSerialPort {
    /// The port's name in the guest (`/dev/virtio-ports/NAME`).
    pub name: String,
    /// The daemon's listening socket.
    pub socket: PathBuf,
}

/// Everything that goes on the QEMU command line.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// QEMU binary (default from [`paths::qemu`]).
    pub qemu: PathBuf,
    /// `-kernel`.
    pub kernel: PathBuf,
    /// `-initrd`.
    pub initrd: PathBuf,
    /// Extra kernel command-line words, after the rig's own.
    pub append: Vec<String>,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Shared RAM backend.
    pub memory: MemoryBackend,
    /// vhost-user-fs devices.
    pub fs: Vec<VhostUserFs>,
    /// `-uuid` (SMBIOS system UUID).
    pub uuid: Option<String>,
    /// `-qmp unix:PATH,server=on,wait=off`.
    pub qmp: Option<PathBuf>,
    /// `-gdb unix:PATH,server=on,wait=off`.
    pub gdb: Option<PathBuf>,
    /// Firmware directories, one `-L` each (searched before QEMU's own).
    pub data_dirs: Vec<PathBuf>,
    /// Environment for the QEMU process (e.g. `QEMU_MODULE_DIR`).
    pub env: Vec<(OsString, OsString)>,
    /// TCG plugins, one `-plugin` each: the shared object and its
    /// `key=value` arguments.
    pub plugins: Vec<Plugin>,
    /// virtio-serial ports on sockets (one `virtio-serial-pci` for all).
    pub serial_ports: Vec<VirtioSerialPort>,
    /// Appended verbatim at the end of the command line.
    pub extra_args: Vec<OsString>,
    /// Start-to-power-off limit for [`Vm::wait`].
    pub timeout: Duration,
    /// Also write the console to this file as it arrives.
    pub console_log: Option<PathBuf>,
    /// [`Vm::start`]: QEMU gets SIGKILL when the thread that started it
    /// ends (`PR_SET_PDEATHSIG`), so a command-line caller killed by a
    /// signal leaves no guest behind. Only for callers whose starting
    /// thread lives as long as the guest (fsd-rig), not test threads.
    pub die_with_parent: bool,
}

impl QemuConfig {
    /// A 512 MiB, 1-vCPU, memfd-backed guest booting `kernel` with `initrd`,
    /// on the system QEMU, or on QEMU 10 when `FSD_GUEST_QEMU=10`
    /// ([`paths::guests_on_qemu10`]).
    pub fn new(kernel: &GuestKernel, initrd: &Path) -> Self {
        let cfg = QemuConfig {
            qemu: paths::qemu(),
            kernel: kernel.vmlinuz.clone(),
            initrd: initrd.to_path_buf(),
            append: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            memory: MemoryBackend::Memfd,
            fs: Vec::new(),
            uuid: None,
            qmp: None,
            gdb: None,
            data_dirs: Vec::new(),
            env: Vec::new(),
            plugins: Vec::new(),
            serial_ports: Vec::new(),
            extra_args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            console_log: None,
            die_with_parent: false,
        };
        if paths::guests_on_qemu10() && std::env::var_os("FSD_QEMU").is_none() {
            cfg.qemu10()
        } else {
            cfg
        }
    }

    /// Adds a vhost-user-fs device with default queues.
    pub fn fs(mut self, socket: &Path, tag: &str) -> Self {
        self.fs.push(VhostUserFs {
            socket: socket.to_path_buf(),
            tag: tag.to_string(),
            num_request_queues: None,
            queue_size: None,
        });
        self
    }

    /// Adds a virtio-serial port `name` whose host side connects to
    /// `socket` (see [`VirtioSerialPort`]). The guest needs the
    /// `virtio_console` module.
    pub fn serial_port(mut self, name: &str, socket: &Path) -> Self {
        self.serial_ports.push(VirtioSerialPort {
            name: name.to_string(),
            socket: socket.to_path_buf(),
        });
        self
    }

    /// Runs QEMU 10 ([`paths::qemu10`]) instead of the system QEMU, with its
    /// own firmware and modules, so TCG plugins can read registers and memory.
    pub fn qemu10(mut self) -> Self {
        self.qemu = paths::qemu10();
        self.data_dirs = paths::qemu10_data_dirs();
        if let Some(dir) = paths::qemu10_module_dir() {
            self.env
                .push(("QEMU_MODULE_DIR".into(), dir.into_os_string()));
        }
        self
    }

    /// Loads a TCG plugin: `-plugin SO,key=value,...`.
    pub fn plugin(mut self, so: &Path, args: &[(&str, String)]) -> Self {
        self.plugins.push(Plugin {
            path: so.to_path_buf(),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        });
        self
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        let mut words = vec!["console=ttyS0", "panic=-1", "rdinit=/init"];
        words.extend(self.append.iter().map(String::as_str));
        words.join(" ")
    }

    /// The QEMU arguments; `interactive` multiplexes the monitor onto the
    /// console (Ctrl-A X quits) instead of disabling it.
    pub fn args(&self, interactive: bool) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| a.push(s.into());
        let mib = self.memory_mib;
        for s in [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ] {
            push(s.to_string());
        }
        for dir in &self.data_dirs {
            push("-L".into());
            push(dir.display().to_string());
        }
        push("-m".into());
        push(format!("{mib}M"));
        push("-smp".into());
        push(self.cpus.to_string());
        push("-object".into());
        push(match &self.memory {
            MemoryBackend::Memfd => format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
            MemoryBackend::File(p) => {
                format!(
                    "memory-backend-file,id=mem,size={mib}M,mem-path={},share=on",
                    p.display()
                )
            }
        });
        push("-numa".into());
        push("node,memdev=mem".into());
        for (i, fs) in self.fs.iter().enumerate() {
            push("-chardev".into());
            push(format!("socket,id=fs{i},path={}", fs.socket.display()));
            let mut dev = format!("vhost-user-fs-pci,chardev=fs{i},tag={}", fs.tag);
            if let Some(n) = fs.num_request_queues {
                dev.push_str(&format!(",num-request-queues={n}"));
            }
            if let Some(n) = fs.queue_size {
                dev.push_str(&format!(",queue-size={n}"));
            }
            push("-device".into());
            push(dev);
        }
        if !self.serial_ports.is_empty() {
            push("-device".into());
            push("virtio-serial-pci,id=vser0".into());
        }
        for (i, p) in self.serial_ports.iter().enumerate() {
            push("-chardev".into());
            push(format!(
                "socket,id=vport{i},path={},reconnect=1",
                p.socket.display()
            ));
            push("-device".into());
            push(format!(
                "virtserialport,bus=vser0.0,chardev=vport{i},name={}",
                p.name
            ));
        }
        push("-kernel".into());
        push(self.kernel.display().to_string());
        push("-initrd".into());
        push(self.initrd.display().to_string());
        push("-append".into());
        push(self.cmdline());
        push("-serial".into());
        push(if interactive { "mon:stdio" } else { "stdio" }.into());
        if !interactive {
            push("-monitor".into());
            push("none".into());
        }
        if let Some(u) = &self.uuid {
            push("-uuid".into());
            push(u.clone());
        }
        if let Some(p) = &self.qmp {
            push("-qmp".into());
            push(format!("unix:{},server=on,wait=off", p.display()));
        }
        if let Some(p) = &self.gdb {
            push("-gdb".into());
            push(format!("unix:{},server=on,wait=off", p.display()));
        }
        for p in &self.plugins {
            a.push("-plugin".into());
            a.push(p.arg());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// One TCG plugin on the QEMU command line.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// The plugin's shared object.
    pub path: PathBuf,
    /// Its arguments, in order (QEMU hands them to the plugin as `key=value`).
    pub args: Vec<(String, String)>,
}

impl Plugin {
    /// The `-plugin` option value. QEMU splits it at commas, so a comma in a
    /// path or value is doubled.
    pub fn arg(&self) -> OsString {
        let mut s = self.path.display().to_string().replace(',', ",,");
        for (k, v) in &self.args {
            s.push_str(&format!(",{k}={}", v.replace(',', ",,")));
        }
        s.into()
    }
}

/// What a guest left on its console.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// The whole serial console, `\r\n` folded to `\n`.
    pub console: String,
    /// QEMU's own stderr (connection errors and the like).
    pub qemu_stderr: String,
    /// The script's output, between the markers, when it ran to completion.
    pub output: Option<String>,
    /// The script's exit code, when it ran to completion.
    pub exit_code: Option<i32>,
}

impl Transcript {
    /// Splits the script result out of a console log.
    pub fn parse(console: &str, qemu_stderr: &str) -> Self {
        let console = console.replace("\r\n", "\n").replace('\r', "");
        let mut output = None;
        let mut exit_code = None;
        if let Some(begin) = console.find(&format!("{BEGIN_MARKER}\n")) {
            let body_start = begin + BEGIN_MARKER.len() + 1;
            if let Some(end_rel) = console[body_start..].rfind(END_PREFIX) {
                let end = body_start + end_rel;
                let rest = &console[end + END_PREFIX.len()..];
                exit_code = rest.split("@@").next().and_then(|n| n.trim().parse().ok());
                output = Some(console[body_start..end].to_string());
            }
        }
        Transcript {
            console,
            qemu_stderr: qemu_stderr.to_string(),
            output,
            exit_code,
        }
    }

    /// The last `lines` lines of the console (for error messages).
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.console, lines)
    }

    /// The script output, or an error showing the console when there is none.
    pub fn output(&self) -> Result<&str> {
        self.output.as_deref().ok_or_else(|| Error::NoResult {
            status: "no end marker".into(),
            tail: format!(
                "{}\n--- qemu stderr ---\n{}",
                self.tail(40),
                self.qemu_stderr
            ),
        })
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running QEMU; killed when dropped.
pub struct Vm {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    timeout: Duration,
}

impl Vm {
    /// Starts QEMU with its console on a pipe.
    pub fn start(cfg: &QemuConfig) -> Result<Vm> {
        let mut cmd = Command::new(&cfg.qemu);
        cmd.args(cfg.args(false))
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if cfg.die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no memory of
            // this process.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: cfg.qemu.display().to_string(),
            source,
        })?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let log = match &cfg.console_log {
            Some(p) => Some(std::fs::File::create(p).map_err(Error::io(p))?),
            None => None,
        };
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump(out, console.clone(), log));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(err, stderr.clone(), None));
        }
        Ok(Vm {
            child,
            console,
            stderr,
            readers,
            started: Instant::now(),
            timeout: cfg.timeout,
        })
    }

    /// Runs QEMU in the foreground on this terminal (for `--shell` demos).
    pub fn interactive(cfg: &QemuConfig) -> Result<std::process::ExitStatus> {
        Command::new(&cfg.qemu)
            .args(cfg.args(true))
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .status()
            .map_err(|source| Error::Spawn {
                program: cfg.qemu.display().to_string(),
                source,
            })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&lock(&self.console)).replace("\r\n", "\n")
    }

    /// Waits until the console contains `needle`; false when QEMU exits or
    /// `timeout` passes first.
    pub fn wait_for_console(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline || !matches!(self.child.try_wait(), Ok(None)) {
                return self.console().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for QEMU to exit (the guest powers off) and returns the console.
    /// Kills QEMU and fails when the configured timeout passes first.
    pub fn wait(mut self) -> Result<Transcript> {
        let deadline = self.started + self.timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    self.kill();
                    return Err(Error::BootTimeout {
                        secs: self.timeout.as_secs(),
                        tail: format!(
                            "{}\n--- qemu stderr ---\n{}",
                            tail(&self.console(), 40),
                            self.stderr_text()
                        ),
                    });
                }
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(Transcript::parse(&self.console(), &self.stderr_text()))
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Kills QEMU (idempotent).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Boots, waits for power-off and requires the script result markers.
pub fn run(cfg: &QemuConfig) -> Result<Transcript> {
    let t = Vm::start(cfg)?.wait()?;
    t.output()?;
    Ok(t)
}

fn lock(m: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pump(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
    mut log: Option<std::fs::File>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            lock(&into).extend_from_slice(&buf[..n]);
            if let Some(f) = log.as_mut() {
                let _ = std::io::Write::write_all(f, &buf[..n]);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_output_and_exit_code() {
        let console = format!("boot noise\r\n{BEGIN_MARKER}\r\nline 1\r\nline 2\r\n{END_PREFIX}3@@\r\nreboot: Power down\r\n");
        let t = Transcript::parse(&console, "");
        assert_eq!(t.output.as_deref(), Some("line 1\nline 2\n"));
        assert_eq!(t.exit_code, Some(3));
    }

    #[test]
    fn missing_end_marker_is_no_result() {
        let t = Transcript::parse(&format!("{BEGIN_MARKER}\nhalf"), "");
        assert!(t.output.is_none());
        assert!(matches!(t.output(), Err(Error::NoResult { .. })));
    }

    #[test]
    fn command_line_has_shared_memory_and_device() {
        let k = GuestKernel {
            release: "r".into(),
            vmlinuz: "/k".into(),
            modules_dir: "/m".into(),
            config: None,
            vmlinux: None,
        };
        let mut cfg = QemuConfig::new(&k, Path::new("/i")).fs(Path::new("/s.sock"), "t");
        cfg.fs[0].num_request_queues = Some(2);
        cfg.memory = MemoryBackend::File("/dev/shm/g".into());
        cfg.uuid = Some("00000000-0000-0000-0000-000000000001".into());
        let args: Vec<String> = cfg
            .args(false)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg"));
        assert!(
            joined.contains("memory-backend-file,id=mem,size=512M,mem-path=/dev/shm/g,share=on")
        );
        assert!(joined.contains("vhost-user-fs-pci,chardev=fs0,tag=t,num-request-queues=2"));
        assert!(joined.contains("-uuid 00000000-0000-0000-0000-000000000001"));
        assert!(joined.contains("-no-reboot"));
        assert!(!joined.contains("-plugin"));
        assert!(!joined.contains("virtio-serial"));
        let cfg = cfg.serial_port("org.x", Path::new("/run/x.sock"));
        let joined = cfg
            .args(false)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains("-device virtio-serial-pci,id=vser0"));
        assert!(joined.contains("-chardev socket,id=vport0,path=/run/x.sock,reconnect=1"));
        assert!(joined.contains("-device virtserialport,bus=vser0.0,chardev=vport0,name=org.x"));
    }

    #[test]
    fn plugin_and_firmware_options() {
        let k = GuestKernel {
            release: "r".into(),
            vmlinuz: "/k".into(),
            modules_dir: "/m".into(),
            config: None,
            vmlinux: None,
        };
        let mut cfg = QemuConfig::new(&k, Path::new("/i")).plugin(
            Path::new("/p/libx.so"),
            &[("sock", "/run/a,b.sock".into()), ("ring", "64".into())],
        );
        cfg.data_dirs.push("/fw".into());
        let args: Vec<String> = cfg
            .args(false)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-plugin /p/libx.so,sock=/run/a,,b.sock,ring=64"));
        assert!(joined.contains("-L /fw"));
    }
}
