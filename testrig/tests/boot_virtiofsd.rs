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
