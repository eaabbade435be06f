//! A guest whose network goes through the filter: QEMU's `-netdev stream`
//! → `netfilter` → passt, with the monitor attached to the guest's RAM and
//! QMP, the share served by fsd (which tells the monitor who reads the
//! confidential `secret/`), and a command shell on a second serial port. A second NIC may go to
//! a passt of its own with no filter, for side-by-side measurements.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testrig::net::{self, GuestNet};
use testrig::shell::SerialShell;
use testrig::{Daemon, DaemonSpec, InitramfsBuilder, MemoryBackend, Need, QemuConfig, Sandbox};

/// What `/share/secret/plan.txt` holds: confidential, tracked by fsd's
/// policy and not protected, so any guest process may read it and becomes
/// tainted by doing so.
pub const SECRET: &str = "launch codes: 0000\n";

const FS_POLICY: &str = r#"
version = 1

[[principal]]
name = "alice"

[[vm]]
name = "guest"
principal = "alice"

[[rule]]
path = "secret/**"
owner = "alice"
protect = []
confidential = true
"#;

fn flag(name: &str, path: &Path) -> std::ffi::OsString {
    let mut f = std::ffi::OsString::from(name);
    f.push(path);
    f
}

/// The filtered network.
pub const NET: GuestNet = GuestNet {
    address: Ipv4Addr::new(192, 0, 2, 15),
    prefix: 24,
    gateway: Ipv4Addr::new(192, 0, 2, 1),
};

/// The unfiltered network of the second NIC (benchmarks only).
pub const DIRECT: GuestNet = GuestNet {
    address: Ipv4Addr::new(198, 51, 100, 15),
    prefix: 24,
    gateway: Ipv4Addr::new(198, 51, 100, 1),
};

/// A booted guest and everything around it; all killed on drop.
pub struct Rig {
    pub vm: testrig::Vm,
    shell: SerialShell,
    pub filter: Daemon,
    pub dir: tempfile::TempDir,
    pub control: PathBuf,
    pub audit: PathBuf,
    /// The monitor daemon's socket.
    pub monitor: PathBuf,
    /// What a second monitor needs to attach to the guest (a QMP socket
    /// of its own: QEMU serves one client per socket).
    pub spec: monitor::config::VmSpec,
    mem: PathBuf,
    _daemons: Vec<Daemon>,
}

/// Options of a boot.
pub struct Boot<'a> {
    pub policy: &'a str,
    /// A second NIC straight to a passt of its own.
    pub direct_nic: bool,
    pub memory_mib: u32,
}

impl Rig {
    /// Boots the guest, or prints SKIP and returns `None`.
    pub fn boot(b: Boot<'_>) -> Option<Rig> {
        let env = testrig::require(&[Need::Qemu, Need::Kernel, Need::Busybox, Need::Vmlinux])?;
        if let Some(why) =
            testrig::prereq::missing_program(&[&net::passt_program().to_string_lossy()])
        {
            return testrig::skip(why);
        }
        let (netfilter, monitor, fsd) = match (
            testrig::paths::netfilter(),
            testrig::paths::monitor(),
            testrig::paths::fsd(),
        ) {
            (Ok(n), Ok(m), Ok(f)) => (n, m, f),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return testrig::skip(e),
        };
        let tools = match testrig::guest_tools::build() {
            Ok(t) => t,
            Err(e) => return testrig::skip(format!("guest tools: {e}")),
        };
        let vmlinux = env.vmlinux.clone()?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let share = d.join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(share.join("secret")).unwrap();
        std::fs::write(share.join("secret/plan.txt"), SECRET).unwrap();
        let mut daemons = Vec::new();
        let fs_sock = d.join("fs.sock");
        let passt_dir = net::socket_dir(d).expect("passt's socket directory");
        let passt_sock = passt_dir.join("passt.sock");
        daemons.push(
            Daemon::spawn_on_path(
                &net::passt_spec(&passt_sock, &NET, d.join("passt.log")),
                &passt_sock,
            )
            .expect("start passt"),
        );
        let direct_sock = passt_dir.join("passt-direct.sock");
        if b.direct_nic {
            daemons.push(
                Daemon::spawn_on_path(
                    &net::passt_spec(&direct_sock, &DIRECT, d.join("passt-direct.log")),
                    &direct_sock,
                )
                .expect("start the second passt"),
            );
        }
        // The monitor, attached to the guest's RAM and QMP.
        let mem = PathBuf::from(format!(
            "/dev/shm/netfilter-test-{}-{}",
            std::process::id(),
            d.file_name().unwrap().to_string_lossy()
        ));
        let qmp = d.join("qmp.sock");
        let config = d.join("monitor.json");
        std::fs::write(
            &config,
            serde_json::json!({"vms": {"guest": {"qmp": qmp, "mem": mem, "vmlinux": &vmlinux}}})
                .to_string(),
        )
        .unwrap();
        let mon_sock = d.join("monitor.sock");
        daemons.push(
            Daemon::spawn_on_path(
                &DaemonSpec::monitor(
                    &monitor,
                    &config,
                    &d.join("profiles"),
                    &mon_sock,
                    d.join("monitor.log"),
                ),
                &mon_sock,
            )
            .expect("start the monitor"),
        );
        // fsd serves the share and tells the monitor who reads `secret/`
        // (a track-only rule): the taint the filter asks about.
        let fs_policy = d.join("fs-policy.toml");
        std::fs::write(&fs_policy, FS_POLICY).unwrap();
        let fsd_args = [
            flag("--policy=", &fs_policy),
            "--vm=guest".into(),
            flag("--monitor-socket=", &mon_sock),
            flag("--audit-log=", &d.join("fsd-audit.jsonl")),
        ];
        daemons.push(
            Daemon::spawn_on_path(
                &DaemonSpec::fsd(
                    &fsd,
                    &fs_sock,
                    &share,
                    Sandbox::Namespace,
                    &fsd_args,
                    d.join("fsd.log"),
                ),
                &fs_sock,
            )
            .expect("start fsd"),
        );
        // The filter.
        let policy = d.join("policy.toml");
        std::fs::write(&policy, b.policy).unwrap();
        let filter_sock = d.join("filter.sock");
        let control = d.join("filter-control.sock");
        let audit = d.join("audit.jsonl");
        let args = vec![
            "run".into(),
            "--policy".into(),
            policy.clone().into_os_string(),
            "--guest".into(),
            filter_sock.clone().into_os_string(),
            "--passt".into(),
            passt_sock.clone().into_os_string(),
            "--monitor".into(),
            mon_sock.clone().into_os_string(),
            "--audit".into(),
            audit.clone().into_os_string(),
            "--control".into(),
            control.clone().into_os_string(),
        ];
        let filter = Daemon::spawn_on_path(
            &DaemonSpec::new(&netfilter, args, d.join("netfilter.log")).rust_log("info"),
            &filter_sock,
        )
        .expect("start the filter");
        // The guest: copies under two directories, so that two programs
        // share a name (wget; udpsend, which is netprobe) but not an
        // executable.
        let busybox = testrig::paths::busybox();
        let netprobe = tools
            .binaries()
            .into_iter()
            .find(|(n, _)| *n == "netprobe")
            .map(|(_, p)| p)
            .expect("netprobe is a guest tool");
        let mut init =
            InitramfsBuilder::run_script("share", SerialShell::SCRIPT).guest_tools(&tools);
        for m in net::NET_MODULES {
            init = init.module(m);
        }
        for dir in ["good", "bad"] {
            init = init.host_file(&format!("/opt/{dir}/wget"), 0o755, &busybox);
            init = init.host_file(&format!("/opt/{dir}/udpsend"), 0o755, &netprobe);
        }
        // The network setup as a script in the image: command lines on the
        // serial shell are best kept short.
        let mut setup = NET.guest_setup("eth0", true);
        if b.direct_nic {
            setup.push_str(" && ");
            setup.push_str(&DIRECT.guest_setup("eth1", false));
        }
        init = init.file("/rig/net.sh", 0o755, format!("{setup}\n"));
        let initrd = init.build(&env.kernel).expect("build initramfs");
        let ctl = d.join("ctl.sock");
        let mut cfg = QemuConfig::new(&env.kernel, &initrd).fs(&fs_sock, "share");
        cfg.memory = MemoryBackend::File(mem.clone());
        cfg.memory_mib = b.memory_mib;
        cfg.qmp = Some(qmp);
        let qmp_test = d.join("qmp-test.sock");
        cfg.extra_args.push("-qmp".into());
        cfg.extra_args
            .push(format!("unix:{},server=on,wait=off", qmp_test.display()).into());
        cfg.append.push("loglevel=4".into());
        net::add_nic(&mut cfg, "filtered", &filter_sock, "52:54:00:12:34:56");
        if b.direct_nic {
            net::add_nic(&mut cfg, "direct", &direct_sock, "52:54:00:12:34:57");
        }
        SerialShell::attach(&mut cfg, &ctl);
        let mut vm = testrig::Vm::start(&cfg).expect("start QEMU");
        let shell = SerialShell::connect(&mut vm, &ctl, Duration::from_secs(240));
        let mut rig = Rig {
            vm,
            shell,
            filter,
            dir,
            control,
            audit,
            monitor: mon_sock,
            spec: monitor::config::VmSpec {
                qmp: qmp_test,
                gdb: None,
                mem: mem.clone(),
                vmlinux,
                system_map: None,
                uuid: None,
                addrs: Vec::new(),
                plugin: None,
            },
            mem,
            _daemons: daemons,
        };
        let out = rig.sh("sh /rig/net.sh </dev/null 2>&1; echo rc=$?");
        assert_eq!(out.trim(), "rc=0", "network setup: {out}");
        Some(rig)
    }

    /// Runs a command line in the guest and returns its output.
    pub fn sh(&mut self, cmd: &str) -> String {
        self.shell.sh(&self.vm, cmd, Duration::from_secs(300))
    }

    /// The filter's status.
    pub fn status(&self) -> serde_json::Value {
        netfilter::control::call(&self.control, &netfilter::control::Request::Status)
            .expect("filter status")
    }

    /// Switches the filter's optimisations.
    pub fn set(&self, batching: bool, conntrack: bool) {
        let r = netfilter::control::call(
            &self.control,
            &netfilter::control::Request::Set {
                batching: Some(batching),
                conntrack: Some(conntrack),
                reset_latencies: true,
            },
        )
        .expect("set switches");
        assert_eq!(r["ok"], true, "{r}");
    }

    /// The audit log's lines.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// The filter is still running (with its log when it is not).
    pub fn assert_filter_alive(&mut self) {
        assert!(
            self.filter.is_running(),
            "the filter exited:\n{}",
            self.filter.log_tail(40)
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.vm.kill();
        let _ = std::fs::remove_file(&self.mem);
    }
}

/// An HTTP server on the host's loopback answering every request with
/// `body` (plus `extra` bytes of padding when a path asks `/big`), counting
/// requests; it also swallows uploads (`POST`-less: anything sent after the
/// request line is read to the end and counted in `bytes`).
pub struct HostServer {
    pub port: u16,
    pub requests: Arc<AtomicU64>,
}

impl HostServer {
    pub fn start(body: &'static str) -> HostServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(AtomicU64::new(0));
        let r = requests.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                    let n = s.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    r.fetch_add(1, Ordering::Relaxed);
                    let reply = format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes());
                });
            }
        });
        HostServer { port, requests }
    }
}

/// A UDP socket on the host's loopback recording what arrives.
pub struct HostUdp {
    pub port: u16,
    pub got: Arc<Mutex<Vec<String>>>,
}

impl HostUdp {
    pub fn start() -> HostUdp {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                g.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
                let _ = s.send_to(b"pong\n", from);
            }
        });
        HostUdp { port, got }
    }
}
