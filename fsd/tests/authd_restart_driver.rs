//! authd restarts under a running fsd, against a host-side driver.
//!
//! authd keeps its live grants across a restart (docs/authd.md); fsd drops
//! every grant the moment its link to authd breaks (their ends could not be
//! heard) and, once authd is back, takes over the grants authd lists as
//! live for its VM. The stand-in authd (tests/authd_stub) stops, closing
//! every connection, and starts again on the same socket with the grants
//! it issued, as the real one does.

mod authd_stub;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use authd_stub::RestartableAuthd;
use driver::session::read_request;
use driver::{Daemon, DaemonKind, Harness, HarnessOptions, Session};

/// `vault/**` is alice's and asks for a grant; `closed/**` is bob's, who
/// never has one.
const POLICY: &str =
    "version = 1\n[[principal]]\nname = \"alice\"\n[[principal]]\nname = \"bob\"\n\
    [[vm]]\nname = \"vm1\"\nprincipal = \"alice\"\n\
    [[rule]]\npath = \"vault/**\"\nowner = \"alice\"\nwithout_grant = \"ask\"\ngrant_secs = 3600\n\
    [[rule]]\npath = \"closed/**\"\nowner = \"bob\"\nwithout_grant = \"ask\"\ngrant_secs = 3600\n";

/// Reads `dir/doc`; the errno of the step the daemon refused.
fn read_doc(s: &mut Session<'_>, dir: &[u8]) -> Result<Vec<u8>, i32> {
    s.read_path(&[dir, b"doc"], 100)
        .map_err(|e| e.errno().unwrap_or_else(|| panic!("{e}")))
}

/// Reads through a handle already open: 0 when it reads, else the errno.
fn read_handle(s: &mut Session<'_>, node: u64, fh: u64) -> i32 {
    s.call(&read_request(node, fh, 0, 100), 100)
        .unwrap()
        .errno()
}

fn wait_until(what: &str, fsd: &Daemon, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}; fsd's log ends:\n{}",
            fsd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A guest reading alice's file under her live grant, through a handle it
/// keeps open and through new opens, reads on after authd restarts,
/// without a second prompt; while authd is away nothing protected is
/// served; bob, who has no grant, stays refused throughout; and a
/// revocation after the restart still reaches fsd.
#[test]
fn reads_under_a_live_grant_go_on_after_authd_restarts_without_a_prompt() {
    let work = tempfile::tempdir().unwrap();
    let authd = RestartableAuthd::start(work.path());
    if !Harness::require(DaemonKind::Fsd) {
        return;
    }
    let policy = work.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let opts = HarnessOptions {
        extra_args: vec![
            format!("--policy={}", policy.display()),
            "--vm=vm1".into(),
            format!("--authd-socket={}", authd.socket.display()),
            format!("--label-db={}", work.path().join("labels.db").display()),
        ],
        ..Default::default()
    };
    let h = Harness::start(DaemonKind::Fsd, &opts, |share| {
        std::fs::create_dir(share.join("vault"))?;
        std::fs::write(share.join("vault/doc"), b"granted content")?;
        std::fs::create_dir(share.join("closed"))?;
        std::fs::write(share.join("closed/doc"), b"never")
    })
    .unwrap();
    // Apart, so that the log can be read while a session holds the device.
    let (fsd, mut device, _scratch) = h.into_parts();
    let mut s = Session::new(device.queue(1).unwrap());
    s.init().unwrap();
    // Prompts the stand-in was asked for, for files under `dir`.
    let asked_for = |dir: &str| {
        authd
            .reasons
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| r.path.starts_with(dir))
            .count()
    };

    authd.grant.store(true, Ordering::SeqCst);
    assert_eq!(read_doc(&mut s, b"vault").unwrap(), b"granted content");
    assert_eq!(asked_for("vault/"), 1, "one prompt");
    // A handle the guest keeps open across the restart.
    let v = s.lookup(1, b"vault").unwrap().nodeid;
    let doc = s.lookup(v, b"doc").unwrap().nodeid;
    let fh = s.open(doc, libc::O_RDONLY as u32, false).unwrap().fh;
    assert_eq!(read_handle(&mut s, doc, fh), 0);
    // From now on the stand-in refuses every prompt and counts it.
    authd.grant.store(false, Ordering::SeqCst);
    assert_eq!(read_doc(&mut s, b"closed"), Err(libc::EACCES));
    assert_eq!(asked_for("closed/"), 1, "bob's request was refused");

    authd.stop();
    // fsd fails closed while authd is away: the grant's end cannot be heard.
    wait_until("fsd drops the grant when authd goes", &fsd, || {
        read_handle(&mut s, doc, fh) == libc::EACCES
    });
    assert_eq!(read_doc(&mut s, b"vault"), Err(libc::EACCES));
    assert_eq!(read_doc(&mut s, b"closed"), Err(libc::EACCES));

    authd.restart();
    wait_until(
        "the open handle reads again once authd is back",
        &fsd,
        || read_handle(&mut s, doc, fh) == 0,
    );
    assert_eq!(read_doc(&mut s, b"vault").unwrap(), b"granted content");
    assert_eq!(read_doc(&mut s, b"closed"), Err(libc::EACCES), "bob");
    assert_eq!(asked_for("vault/"), 1, "alice was not asked again");
    assert_eq!(asked_for("closed/"), 2, "bob's request was refused again");

    // The grant's end still reaches fsd over the new subscription.
    authd.revoke_all();
    wait_until("the revocation reaches fsd", &fsd, || {
        read_handle(&mut s, doc, fh) == libc::EACCES
    });
    s.release(doc, fh, false).unwrap();
}
