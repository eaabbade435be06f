//! The rig end to end against the reference daemon: boot a real guest, mount
//! the share, run a script, read its output; and boot a diskless guest whose
//! root is the share.

use std::time::Duration;

use testrig::{require, rootfs, Daemon, DaemonSpec, InitramfsBuilder, Need, QemuConfig, Vm};

#[test]
fn script_runs_on_a_virtiofsd_share() {
    let Some(env) = require(&[Need::Virtiofsd]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("from-host"), "written on the host\n").unwrap();
    let sock = dir.path().join("vfsd.sock");
    let spec = DaemonSpec::virtiofsd(&sock, &share, "auto", dir.path().join("virtiofsd.log"));
    let _daemon = Daemon::spawn_on_path(&spec, &sock).unwrap();

    let script = "cat from-host\necho from-guest > from-guest\ngrep virtiofs /proc/mounts | cut -d' ' -f1-3\nexit 7\n";
    let initrd = InitramfsBuilder::run_script("share", script)
        .build(&env.kernel)
        .unwrap();
    let cfg = QemuConfig::new(&env.kernel, &initrd).fs(&sock, "share");
    let t = Vm::start(&cfg).unwrap().wait().unwrap();
    let out = t.output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "written on the host\nshare /mnt virtiofs\n");
    assert_eq!(t.exit_code, Some(7));
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest")).unwrap(),
        "from-guest\n"
    );
}

#[test]
fn diskless_guest_boots_with_root_on_virtiofsd() {
    let Some(env) = require(&[Need::Virtiofsd]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    rootfs::populate_busybox_root(&root).unwrap();
    rootfs::set_script(
        &root,
        "grep ' / ' /proc/mounts | cut -d' ' -f1-3\ncat /etc/hostname\n",
    )
    .unwrap();
    let sock = dir.path().join("vfsd.sock");
    let spec = DaemonSpec::virtiofsd(&sock, &root, "auto", dir.path().join("virtiofsd.log"));
    let _daemon = Daemon::spawn_on_path(&spec, &sock).unwrap();

    let initrd = InitramfsBuilder::switch_root("rootfs")
        .build(&env.kernel)
        .unwrap();
    let mut cfg = QemuConfig::new(&env.kernel, &initrd).fs(&sock, "rootfs");
    cfg.timeout = Duration::from_secs(240);
    let t = Vm::start(&cfg).unwrap().wait().unwrap();
    let out = t.output().unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("rootfs / virtiofs"), "{out}");
    assert!(out.contains("fsd-guest"), "{out}");
    assert_eq!(t.exit_code, Some(0));
}

/// The hooks an outside observer uses: guest RAM in a named file it can
/// map, QMP and gdbstub sockets, and the SMBIOS UUID the guest sees.
#[test]
fn monitor_hooks_are_reachable_while_the_guest_runs() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use testrig::MemoryBackend;

    let Some(env) = require(&[Need::Virtiofsd]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let sock = dir.path().join("vfsd.sock");
    let spec = DaemonSpec::virtiofsd(&sock, &share, "auto", dir.path().join("virtiofsd.log"));
    let _daemon = Daemon::spawn_on_path(&spec, &sock).unwrap();

    // The guest reports its UUID, then waits for the host to say "go".
    let script = "cat /sys/class/dmi/id/product_uuid\necho waiting\nuntil [ -e go ]; do sleep 0.2; done\necho done\n";
    let initrd = InitramfsBuilder::run_script("share", script)
        .build(&env.kernel)
        .unwrap();
    /// Removes the RAM file QEMU leaves behind, also when an assertion fails.
    struct Unlink(std::path::PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let ram = std::path::PathBuf::from(format!("/dev/shm/fsd-rig-test-{}", std::process::id()));
    let _unlink = Unlink(ram.clone());
    let uuid = "6b1f4a53-63a2-4c5e-9d3e-0123456789ab";
    let mut cfg = QemuConfig::new(&env.kernel, &initrd).fs(&sock, "share");
    cfg.memory = MemoryBackend::File(ram.clone());
    cfg.qmp = Some(dir.path().join("qmp.sock"));
    cfg.gdb = Some(dir.path().join("gdb.sock"));
    cfg.uuid = Some(uuid.to_string());
    let mut vm = Vm::start(&cfg).unwrap();
    assert!(
        vm.wait_for_console("waiting\n", cfg.timeout),
        "guest never got to its script:\n{}",
        vm.console()
    );

    let ram_len = std::fs::metadata(&ram).map(|m| m.len());
    let qmp = UnixStream::connect(dir.path().join("qmp.sock")).unwrap();
    let mut greeting = String::new();
    BufReader::new(qmp).read_line(&mut greeting).unwrap();
    // Connecting a debugger would stop the vCPUs; only check it listens.
    let gdb_is_socket = std::os::unix::fs::FileTypeExt::is_socket(
        &std::fs::metadata(dir.path().join("gdb.sock"))
            .unwrap()
            .file_type(),
    );
    std::fs::write(share.join("go"), "").unwrap();
    let t = vm.wait().unwrap();

    assert_eq!(ram_len.unwrap(), 512 << 20, "guest RAM file size");
    assert!(greeting.starts_with("{\"QMP\""), "QMP greeting: {greeting}");
    assert!(gdb_is_socket, "gdbstub socket missing");
    assert_eq!(t.output().unwrap(), format!("{uuid}\nwaiting\ndone\n"));
}
