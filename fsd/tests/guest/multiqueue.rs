//! More than one request queue (`num-request-queues` on the QEMU device),
//! which virtiofsd does not offer. The guest kernel sets up one virtqueue per
//! request queue (visible as `virtioN-requests.K` interrupt vectors) and
//! the share works through them.

use crate::common::{share_in, Server, TAG};
use testrig::{require, Daemon, InitramfsBuilder, QemuConfig, Vm};

const QUEUES: u32 = 2;

#[test]
fn guest_uses_a_device_with_two_request_queues() {
    let Some(env) = require(&[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let share = share_in(dir.path(), "share");
    std::fs::write(share.join("in.txt"), "multi-queue\n").unwrap();
    let sock = dir.path().join("fsd.sock");
    let spec = Server::Fsd.spec(&env, &sock, &share, &dir.path().join("fsd.log"), &[]);
    let daemon = Daemon::spawn_on_path(&spec, &sock).unwrap_or_else(|e| panic!("{e}"));

    let script = "echo \"request vectors: $(grep -c 'virtio0-requests' /proc/interrupts)\"\n\
                  cat in.txt\n\
                  seq 1 20000 > out.txt\n\
                  sync; echo 3 > /proc/sys/vm/drop_caches\n\
                  echo \"lines: $(wc -l < out.txt)\"\n";
    let initrd = InitramfsBuilder::run_script(TAG, script)
        .build(&env.kernel)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = QemuConfig::new(&env.kernel, &initrd).fs(&sock, TAG);
    cfg.fs[0].num_request_queues = Some(QUEUES);
    let t = Vm::start(&cfg)
        .unwrap()
        .wait()
        .unwrap_or_else(|e| panic!("{e}\n--- fsd log ---\n{}", daemon.log_text()));
    let out = t
        .output()
        .unwrap_or_else(|e| panic!("{e}\n--- fsd log ---\n{}", daemon.log_text()));
    assert_eq!(
        out,
        format!("request vectors: {QUEUES}\nmulti-queue\nlines: 20000\n")
    );
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(std::fs::read_to_string(share.join("out.txt")).unwrap() == expected);
}
