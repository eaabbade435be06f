//! One daemon per VM: when the guest powers off and QEMU disconnects, the
//! daemon exits by itself with success, as virtiofsd does (management layers
//! such as libvirt rely on it instead of tracking the process).

use std::time::Duration;

use crate::common::{boot, share_in, Server, TAG};
use testrig::{require, Daemon, InitramfsBuilder, Need};

#[test]
fn daemon_exits_when_the_vmm_disconnects() {
    let Some(env) = require(&[Need::Virtiofsd]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for server in [Server::Virtiofsd, Server::Fsd] {
        let share = share_in(dir.path(), server.name());
        let sock = dir.path().join(format!("{}.sock", server.name()));
        let log = dir.path().join(format!("{}.log", server.name()));
        let spec = server.spec(&env, &sock, &share, &log, &[]);
        let mut daemon = Daemon::spawn_on_path(&spec, &sock).unwrap_or_else(|e| panic!("{e}"));
        let t = boot(
            &env,
            &InitramfsBuilder::run_script(TAG, "echo up\n"),
            &sock,
            &daemon,
            server,
        );
        assert_eq!(t.output().unwrap_or_else(|e| panic!("{e}")), "up\n");
        // Generous bound: this checks that it exits, not how fast.
        let status = daemon.wait_exit(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not exit cleanly after the VMM disconnected ({status:?}); log:\n{}",
            server.name(),
            daemon.log_text()
        );
    }
}
