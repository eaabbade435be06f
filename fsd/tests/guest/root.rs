//! The diskless deployment: a guest whose root filesystem is served by fsd.
//! The initramfs only loads the virtio-fs modules, mounts the share and
//! switches root into it; everything after that runs from fsd. Run once with
//! fsd unconfined (like the other guest tests) and once as it is deployed
//! (default namespace sandbox and seccomp filter).

use std::path::Path;

use crate::common::{boot, fsd_spec, Server, TAG};
use testrig::{require, rootfs, Daemon, DaemonSpec, InitramfsBuilder, Need, Sandbox};

const SCRIPT: &str = "echo \"root: $(grep ' / ' /proc/mounts | cut -d' ' -f1-3)\"\n\
                      echo \"init: $(readlink /proc/1/exe)\"\n\
                      echo \"kernel: $(uname -s)\"\n\
                      echo \"hostname: $(hostname)\"\n\
                      echo written-by-guest > /root/note\n\
                      echo \"note: $(cat /root/note)\"\n\
                      echo \"bin entries: $(ls /bin | wc -l)\"\n\
                      echo \"top: $(ls / | tr '\\n' ' ')\"\n\
                      echo \"df: $(df / | tail -n 1 | tr -s ' ' | cut -d' ' -f1,6)\"\n";

#[test]
fn guest_boots_and_runs_with_root_on_fsd() {
    let Some(env) = require(&[Need::Busybox]) else {
        return;
    };
    boot_root_and_check(&env, |sock, root, log| {
        Server::Fsd.spec(&env, sock, root, log, &[])
    });
}

#[test]
fn guest_boots_with_root_on_fsd_as_deployed() {
    let Some(env) = require(&[Need::Busybox]) else {
        return;
    };
    boot_root_and_check(&env, |sock, root, log| {
        fsd_spec(Sandbox::Namespace, sock, root, log, &[] as &[&str])
    });
}

fn boot_root_and_check(env: &testrig::Prereqs, spec: impl Fn(&Path, &Path, &Path) -> DaemonSpec) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    rootfs::populate_busybox_root(&root).unwrap();
    rootfs::set_script(&root, SCRIPT).unwrap();
    let sock = dir.path().join("fsd.sock");
    let spec = spec(&sock, &root, &dir.path().join("fsd.log"));
    let daemon = Daemon::spawn_on_path(&spec, &sock).unwrap_or_else(|e| panic!("{e}"));

    let t = boot(
        env,
        &InitramfsBuilder::switch_root(TAG),
        &sock,
        &daemon,
        Server::Fsd,
    );
    let out = t
        .output()
        .unwrap_or_else(|e| panic!("{e}\n--- fsd log ---\n{}", daemon.log_text()));
    let bin_entries = std::fs::read_dir(root.join("bin")).unwrap().count();
    crate::common::assert_lines_in_order(
        out,
        &[
            &format!("root: {TAG} / virtiofs"),
            "init: /bin/busybox",
            "kernel: Linux",
            "hostname: fsd-guest",
            "note: written-by-guest",
            &format!("bin entries: {bin_entries}"),
            &format!("top: {}", top_entries(&root)),
            &format!("df: {TAG} /"),
        ],
        &format!("root-on-fsd transcript ({:?})", spec.args),
    );
    assert_eq!(t.exit_code, Some(0));
    assert_eq!(
        std::fs::read_to_string(root.join("root/note")).unwrap(),
        "written-by-guest\n"
    );
}

/// `ls /` of the root directory as the guest prints it, from the host's view.
fn top_entries(root: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.iter().map(|n| format!("{n} ")).collect()
}
