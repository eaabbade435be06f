//! libvirt's way of starting the daemon: the management layer creates the
//! listening socket, passes it as an inherited descriptor (`--fd=N`) and
//! points QEMU at the same path. Shown with virtiofsd first (the reference
//! behaviour), then with fsd.

use std::os::unix::net::UnixListener;

use crate::common::{boot, share_in, Server, TAG};
use testrig::{require, Daemon, DaemonSpec, InitramfsBuilder, Need};

const FD: i32 = 3;

#[test]
fn daemon_serves_a_listening_socket_passed_as_fd() {
    let Some(env) = require(&[Need::Virtiofsd]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for server in [Server::Virtiofsd, Server::Fsd] {
        let share = share_in(dir.path(), server.name());
        std::fs::write(share.join("hello.txt"), "served over an inherited fd\n").unwrap();
        let sock = dir.path().join(format!("{}.sock", server.name()));
        let listener = UnixListener::bind(&sock).unwrap();
        let spec = DaemonSpec::new(
            server.program(&env),
            vec![
                format!("--fd={FD}").into(),
                format!("--shared-dir={}", share.display()).into(),
                "--cache=auto".into(),
                "--sandbox=none".into(),
            ],
            dir.path().join(format!("{}.log", server.name())),
        );
        let daemon =
            Daemon::spawn_on_listener(&spec, listener, FD).unwrap_or_else(|e| panic!("{e}"));
        let builder =
            InitramfsBuilder::run_script(TAG, "cat hello.txt\necho from-guest > back.txt\n");
        let t = boot(&env, &builder, &sock, &daemon, server);
        let out = t.output().unwrap_or_else(|e| {
            panic!("{}: {e}\n--- log ---\n{}", server.name(), daemon.log_text())
        });
        assert_eq!(out, "served over an inherited fd\n", "{}", server.name());
        assert_eq!(
            std::fs::read_to_string(share.join("back.txt")).unwrap(),
            "from-guest\n",
            "{}",
            server.name()
        );
    }
}
