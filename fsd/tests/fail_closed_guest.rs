//! Access control that fails closed, against root in a real guest.
//!
//! One boot, with fsd as deployed (namespace sandbox, seccomp, file handles
//! by default) at a small descriptor limit, runs three attacks a guest can
//! make with ordinary tools:
//!
//! 1. an ancestor swap: the guest renames `box` away and puts its own
//!    `box/secret` in place; the host then saves exactly at the protected
//!    path `box/secret/x`, which the guest must not read;
//! 2. descriptor exhaustion: hundreds of processes each hold the public
//!    file open until fsd refuses more; then moves, replacements and
//!    removals of protected entries in an unprotected directory are tried,
//!    while requests that need no descriptor (stat) must still work;
//! 3. a remount (`umount; mount`): the share works again and protection
//!    holds.
//!
//! Each attempt prints `<name> ok|FAIL`; the host side is checked after.

mod common;

use std::time::{Duration, Instant};

use common::{boot, share_in, Server, TAG};
use testrig::{require, Daemon, DaemonSpec, InitramfsBuilder, Need};

const MARKER: &str = "TOPSECRET-5d1e-MARKER";

const POLICY: &str = r#"
version = 1

[[principal]]
name = "alice"

[[vm]]
name = "vm1"
principal = "alice"

[[rule]]
path = "vault/**"
owner = "alice"
without_grant = "deny"

[[rule]]
path = "etc/shadow"
owner = "alice"
without_grant = "deny"

[[rule]]
path = "box/secret/x"
owner = "alice"
without_grant = "deny"
"#;

const SCRIPT: &str = r##"
t() { name=$1; shift; if out=$("$@" 2>&1); then echo "$name ok"; else echo "$name FAIL"; fi; echo "# $name: $(echo $out | head -c 120)"; }
# 1. Ancestor swap, then the host saves at the protected path.
mv box box_old && mkdir -p decoy/secret && mv decoy box && touch .step-swapped
i=0; while [ ! -e .step-saved ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i+1)); done
t swap-saved-seen test -e box/secret/x
t swap-read cat box/secret/x
t swap-copy cp box/secret/x /tmp/x
# 2. Hold the public file open from many processes until fsd refuses.
for i in $(seq 1 300); do sleep 600 < pub/open 2>/dev/null & done
sleep 3
echo "holders: $(ps | grep -c '[s]leep 600')"
t exhausted-open cat pub/open
t shadow-mv-out mv etc/shadow pub/stolen
t shadow-replace mv etc/passwd etc/shadow
t shadow-rm rm -f etc/shadow
t vault-mv mv vault pub/vault
t vault-read cat vault/doc
t pub-stat stat pub/open
t etc-ls-d ls -ld etc
kill $(jobs -p) 2>/dev/null; wait 2>/dev/null
sleep 1
t pub-read-after cat pub/open
# 3. Unmount and mount again.
cd /
t umount umount /mnt
t mount mount -t virtiofs share /mnt
t remount-pub-read cat /mnt/pub/open
t remount-vault-read cat /mnt/vault/doc
t remount-shadow-read cat /mnt/etc/shadow
echo "script done"
"##;

#[test]
fn guest_root_cannot_get_through_by_exhaustion_swaps_or_remounts() {
    let Some(env) = require(&[Need::Qemu, Need::Kernel, Need::Busybox]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let share = share_in(work.path(), "share");
    for d in ["vault", "etc", "pub", "box"] {
        std::fs::create_dir_all(share.join(d)).unwrap();
    }
    std::fs::write(share.join("vault/doc"), MARKER).unwrap();
    std::fs::write(share.join("etc/shadow"), MARKER).unwrap();
    std::fs::write(share.join("etc/passwd"), "root:x:0:0\n").unwrap();
    std::fs::write(share.join("pub/open"), "public\n").unwrap();
    let policy = work.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let audit = work.path().join("audit.log");
    let socket = work.path().join("fsd.sock");
    let log = work.path().join("fsd.log");
    let mut args: Vec<std::ffi::OsString> = vec![
        format!("--socket-path={}", socket.display()).into(),
        format!("--shared-dir={}", share.display()).into(),
        format!("--policy={}", policy.display()).into(),
        "--vm=vm1".into(),
        format!("--audit-log={}", audit.display()).into(),
        format!("--label-db={}", work.path().join("labels.db").display()).into(),
        "--rlimit-nofile=512".into(),
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("note: not root, fsd runs with --sandbox=none");
        args.push("--sandbox=none".into());
    }
    let mut spec = DaemonSpec::new(env!("CARGO_BIN_EXE_fsd"), args, &log);
    spec.env.push(("RUST_LOG".into(), "info".into()));
    let daemon = Daemon::spawn_on_path(&spec, &socket).unwrap_or_else(|e| panic!("{e}"));

    // The host's part of the swap: once the guest has swapped, save a file
    // exactly at the protected path.
    let host_share = share.clone();
    let host = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !host_share.join(".step-swapped").exists() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::fs::write(host_share.join("box/secret/x"), MARKER).unwrap();
        std::fs::write(host_share.join(".step-saved"), b"").unwrap();
        true
    });
    let builder = InitramfsBuilder::run_script(TAG, SCRIPT);
    let transcript = boot(&env, &builder, &socket, &daemon, Server::Fsd);
    let out = transcript
        .output()
        .unwrap_or_else(|e| panic!("{e}\n--- fsd log ---\n{}", daemon.log_text()));
    println!("{out}");
    assert!(host.join().unwrap(), "the guest never swapped:\n{out}");
    assert!(out.contains("script done"), "{out}");

    let outcome = |name: &str| -> &str {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
    };
    for must_work in [
        "swap-saved-seen",
        "pub-stat",
        "etc-ls-d",
        "pub-read-after",
        "umount",
        "mount",
        "remount-pub-read",
    ] {
        assert_eq!(
            outcome(must_work),
            "ok",
            "{must_work}:\n{out}\n{}",
            daemon.log_text()
        );
    }
    for must_fail in [
        "swap-read",
        "swap-copy",
        "exhausted-open",
        "shadow-mv-out",
        "shadow-replace",
        "shadow-rm",
        "vault-mv",
        "vault-read",
        "remount-vault-read",
        "remount-shadow-read",
    ] {
        assert_eq!(outcome(must_fail), "FAIL", "{must_fail}:\n{out}");
    }
    assert!(
        !out.contains(MARKER),
        "protected content reached the guest:\n{out}"
    );
    // The host side is untouched.
    assert_eq!(
        std::fs::read_to_string(share.join("etc/shadow")).unwrap(),
        MARKER
    );
    assert_eq!(
        std::fs::read_to_string(share.join("etc/passwd")).unwrap(),
        "root:x:0:0\n"
    );
    assert!(share.join("vault/doc").exists());
    assert!(!share.join("pub/stolen").exists() && !share.join("pub/vault").exists());
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.contains("box/secret/x"), "{audit}");
    assert!(audit.contains("etc/shadow"), "{audit}");
    let log = daemon.log_text();
    assert!(log.contains("a guest may hold"), "{log}");
}
