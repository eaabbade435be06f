//! Per-file access control against raw FUSE messages.
//!
//! The host-side guest driver sends what no guest kernel would: forged uid 0
//! in every header, node ids of protected files reached through hard links
//! and renames, reads on handles opened while a grant was live, READDIRPLUS
//! to harvest attributes. fsd serves a share with a policy; a stand-in for
//! authd speaks authd's real wire protocol (authd-client's types) so the
//! test decides when a grant exists and when it ends.

mod authd_stub;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authd_client::protocol::DenyReason;
use authd_stub::FakeAuthd;
use driver::{DaemonKind, Harness, HarnessOptions, Session};
use fuse_backend_rs::abi::fuse_abi::SetattrIn;

const EACCES: i32 = libc::EACCES;
const SECRET: &[u8] = b"the-protected-content";

fn policy(dir: &Path, mode: &str) -> PathBuf {
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        format!(
            "version = 1\n[[principal]]\nname = \"alice\"\n[[vm]]\nname = \"vm1\"\nprincipal = \"alice\"\n\
             [[rule]]\npath = \"secret/**\"\nowner = \"alice\"\nwithout_grant = \"{mode}\"\ngrant_secs = 3600\n"
        ),
    )
    .unwrap();
    p
}

fn populate(share: &Path) -> std::io::Result<()> {
    std::fs::create_dir(share.join("secret"))?;
    std::fs::create_dir(share.join("public"))?;
    std::fs::write(share.join("secret/doc"), SECRET)?;
    std::fs::write(share.join("public/open"), b"public")?;
    Ok(())
}

fn start(work: &Path, mode: &str, authd: Option<&FakeAuthd>) -> Option<Harness> {
    start_with(work, mode, authd, &[])
}

fn start_with(
    work: &Path,
    mode: &str,
    authd: Option<&FakeAuthd>,
    more: &[&str],
) -> Option<Harness> {
    if !Harness::require(DaemonKind::Fsd) {
        return None;
    }
    let mut extra = vec![
        format!("--policy={}", policy(work, mode).display()),
        "--vm=vm1".into(),
        format!("--audit-log={}", work.join("audit.log").display()),
    ];
    if let Some(a) = authd {
        extra.push(format!("--authd-socket={}", a.socket.display()));
    }
    extra.extend(more.iter().map(|m| m.to_string()));
    let opts = HarnessOptions {
        extra_args: extra,
        ..Default::default()
    };
    Some(Harness::start(DaemonKind::Fsd, &opts, populate).unwrap())
}

fn errno<T: std::fmt::Debug>(r: driver::Result<T>) -> i32 {
    match r {
        Err(driver::Error::Fuse { errno, .. }) => errno,
        other => panic!("expected a FUSE error, got {other:?}"),
    }
}

#[test]
fn raw_fuse_bypass_attempts_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let Some(mut h) = start(work.path(), "deny", None) else {
        return;
    };
    let share = h.share();
    let mut s = Session::new(h.device.queue(1).unwrap());
    s.init().unwrap();
    let root = 1;
    let secret = s.lookup(root, b"secret").unwrap().nodeid;
    let public = s.lookup(root, b"public").unwrap().nodeid;
    let doc = s.lookup(secret, b"doc").unwrap();
    let mut refused = 0;
    let mut expect = |name: &str, got: i32| {
        assert_eq!(got, EACCES, "{name}: expected EACCES");
        refused += 1;
    };

    // Reading, with and without a forged uid 0 in the header.
    expect(
        "open for read",
        errno(s.open(doc.nodeid, libc::O_RDONLY as u32, false)),
    );
    let forged = driver::Request::new(driver::fuse::op::OPEN, doc.nodeid)
        .arg(&fuse_backend_rs::abi::fuse_abi::OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        })
        .with_creds(0, 0);
    expect("open, forged uid 0", s.call(&forged, 64).unwrap().errno());
    // READ on a handle never opened for it (guessing fh values).
    for fh in 0..4 {
        let r = s
            .call(
                &driver::session::read_request(doc.nodeid, fh, 0, 4096),
                4096,
            )
            .unwrap();
        assert_ne!(r.errno(), 0, "read on guessed fh {fh} must fail");
    }
    // Moving it out, linking it out.
    expect(
        "hard link out",
        errno(s.link(doc.nodeid, public, b"stolen")),
    );
    expect(
        "rename out",
        errno(s.rename(secret, b"doc", public, b"moved")),
    );
    // Changing it.
    expect(
        "open for write",
        errno(s.open(doc.nodeid, libc::O_WRONLY as u32, false)),
    );
    expect(
        "open with O_TRUNC",
        errno(s.open(doc.nodeid, (libc::O_RDONLY | libc::O_TRUNC) as u32, false)),
    );
    let trunc = SetattrIn {
        valid: 1 << 3, // FATTR_SIZE
        ..Default::default()
    };
    expect("truncate", errno(s.setattr(doc.nodeid, &trunc)));
    let chmod = SetattrIn {
        valid: 1, // FATTR_MODE
        mode: 0o100666,
        ..Default::default()
    };
    expect("chmod", errno(s.setattr(doc.nodeid, &chmod)));
    let chown = SetattrIn {
        valid: 2 | 4, // FATTR_UID | FATTR_GID
        ..Default::default()
    };
    expect("chown", errno(s.setattr(doc.nodeid, &chown)));
    expect("unlink", errno(s.unlink(secret, b"doc")));
    // Adding to the protected tree.
    expect(
        "create inside",
        errno(s.create(secret, b"new", 0o100644, libc::O_WRONLY as u32)),
    );
    expect("mkdir inside", errno(s.mkdir(secret, b"d", 0o755)));
    expect(
        "symlink inside",
        errno(s.symlink(secret, b"l", b"/etc/passwd")),
    );
    // A symlink made elsewhere resolves in the guest; the inode it reaches
    // by lookup is still the protected one.
    let again = s.lookup(secret, b"doc").unwrap();
    assert_eq!(again.attr.ino, doc.attr.ino);
    expect(
        "open via second lookup",
        errno(s.open(again.nodeid, libc::O_RDONLY as u32, false)),
    );
    // READDIRPLUS shows names and sizes (docs/policy.md) but opens nothing.
    let entries = s.readdir_all(secret, true, 4096).unwrap();
    assert!(entries.iter().any(|e| e.name == b"doc"));
    // READDIRPLUS naming the public directory's node with the protected
    // directory's stream: refused, never the protected entries looked up
    // as if they were the public directory's.
    let stream = s.open(secret, libc::O_RDONLY as u32, true).unwrap().fh;
    let mixed = driver::Request::new(driver::fuse::op::READDIRPLUS, public).arg(
        &fuse_backend_rs::abi::fuse_abi::ReadIn {
            fh: stream,
            size: 4096,
            ..Default::default()
        },
    );
    assert_eq!(
        s.call(&mixed, 4096).unwrap().errno(),
        libc::EBADF,
        "READDIRPLUS with another directory's stream"
    );
    s.release(secret, stream, true).unwrap();
    // Unprotected files keep working.
    let open = s.lookup(public, b"open").unwrap();
    let fh = s
        .open(open.nodeid, libc::O_RDONLY as u32, false)
        .unwrap()
        .fh;
    assert_eq!(s.read(open.nodeid, fh, 0, 100).unwrap(), b"public");

    // Host side: untouched, nothing moved or created, nothing escaped.
    assert_eq!(std::fs::read(share.join("secret/doc")).unwrap(), SECRET);
    for p in [
        "public/stolen",
        "public/moved",
        "secret/new",
        "secret/d",
        "secret/l",
    ] {
        assert!(!share.join(p).exists(), "{p} must not exist");
    }
    assert!(h.escaped().is_empty(), "escaped: {:?}", h.escaped());
    let audit = std::fs::read_to_string(work.path().join("audit.log")).unwrap();
    assert!(audit.lines().count() >= refused, "{audit}");
    assert!(!audit.contains("the-protected-content"));
    println!("raw-FUSE bypass attempts refused: {refused}");
}

#[test]
fn grants_open_access_and_their_end_closes_it() {
    let work = tempfile::tempdir().unwrap();
    let authd = FakeAuthd::start(work.path());
    let Some(mut h) = start(work.path(), "ask", Some(&authd)) else {
        return;
    };
    let mut s = Session::new(h.device.queue(1).unwrap());
    s.init().unwrap();
    let secret = s.lookup(1, b"secret").unwrap().nodeid;
    let doc = s.lookup(secret, b"doc").unwrap();

    // Refused by the person: EACCES, and authd was asked.
    let r = s.open(doc.nodeid, libc::O_RDONLY as u32, false);
    if !matches!(r, Err(driver::Error::Fuse { .. })) {
        panic!("{r:?}\n--- fsd log ---\n{}", h.daemon.log_tail());
    }
    expect_errno(errno(r), "refused");
    assert_eq!(authd.asked.load(Ordering::SeqCst), 1);
    // fsd vouches for the operation and the path (its own decoding, its
    // own resolution on the host); the pid is the guest's and unchecked.
    let (v, reason) = authd.reasons.lock().unwrap()[0].clone();
    assert_eq!(v, authd_client::protocol::VERSION);
    assert_eq!(
        (reason.operation.as_str(), reason.path.as_str()),
        ("open", "secret/doc")
    );
    assert!(!reason.pid_verified, "{reason:?}");

    // Granted: reads and writes work normally.
    authd.grant.store(true, Ordering::SeqCst);
    let fh = s.open(doc.nodeid, libc::O_RDWR as u32, false).unwrap().fh;
    assert_eq!(s.read(doc.nodeid, fh, 0, 100).unwrap(), SECRET);
    assert_eq!(s.write(doc.nodeid, fh, 0, b"THE").unwrap(), 3);
    let asked = authd.asked.load(Ordering::SeqCst);
    // Within the grant nothing more is asked.
    let fh2 = s.open(doc.nodeid, libc::O_RDONLY as u32, false).unwrap().fh;
    assert_eq!(authd.asked.load(Ordering::SeqCst), asked);

    // The grant ends (authd pushes the end): the handles opened under it
    // stop working at once, and new opens are asked again (and refused).
    authd.grant.store(false, Ordering::SeqCst);
    authd.revoke_all();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s
            .call(&driver::session::read_request(doc.nodeid, fh2, 0, 100), 100)
            .unwrap();
        if r.errno() == EACCES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read still allowed after the grant ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let w = s
        .call(
            &driver::session::write_request(doc.nodeid, fh, 0, b"X".to_vec()),
            64,
        )
        .unwrap();
    assert_eq!(w.errno(), EACCES, "write on a handle from the ended grant");
    expect_errno(
        errno(s.open(doc.nodeid, libc::O_RDONLY as u32, false)),
        "after end",
    );
    assert_eq!(
        std::fs::read(h.share().join("secret/doc")).unwrap(),
        b"THE-protected-content"
    );
    let audit = std::fs::read_to_string(work.path().join("audit.log")).unwrap();
    assert!(audit.contains("granted by authd"), "{audit}");
    assert!(audit.contains("grant-end"), "{audit}");
}

#[test]
fn authd_down_fails_closed_and_the_rest_keeps_flowing() {
    let work = tempfile::tempdir().unwrap();
    // A socket path nobody listens on.
    let dead = FakeAuthd {
        socket: work.path().join("nobody.sock"),
        grant: Arc::default(),
        asked: Arc::default(),
        reasons: Arc::default(),
        subscribers: Arc::default(),
        issued: Arc::default(),
    };
    let Some(mut h) = start(work.path(), "ask", Some(&dead)) else {
        return;
    };
    let mut s = Session::new(h.device.queue(1).unwrap());
    s.init().unwrap();
    let secret = s.lookup(1, b"secret").unwrap().nodeid;
    let doc = s.lookup(secret, b"doc").unwrap();
    let t = Instant::now();
    expect_errno(
        errno(s.open(doc.nodeid, libc::O_RDONLY as u32, false)),
        "authd down",
    );
    println!("denied with authd down after {:?}", t.elapsed());
    let public = s.lookup(1, b"public").unwrap().nodeid;
    let open = s.lookup(public, b"open").unwrap();
    let fh = s
        .open(open.nodeid, libc::O_RDONLY as u32, false)
        .unwrap()
        .fh;
    assert_eq!(s.read(open.nodeid, fh, 0, 100).unwrap(), b"public");
}

fn expect_errno(got: i32, what: &str) {
    assert_eq!(got, EACCES, "{what}: expected EACCES");
}

#[test]
fn stand_in_authd_speaks_the_protocol() {
    let work = tempfile::tempdir().unwrap();
    let authd = FakeAuthd::start(work.path());
    let client = authd_client::client::Client::new(&authd.socket);
    let req = authd_client::client::AuthRequest {
        vm: "vm1".into(),
        principal: "alice".into(),
        reason: Default::default(),
        lifetime: Duration::from_secs(5),
    };
    let d = client.authenticate(&req, Duration::from_secs(3));
    assert!(d.grant().is_none(), "{d:?}");
    assert_eq!(d.deny_reason(), Some(DenyReason::Cancelled), "{d:?}");
    authd.grant.store(true, Ordering::SeqCst);
    let d = client.authenticate(&req, Duration::from_secs(3));
    assert!(d.grant().is_some(), "{d:?}");
}

/// Replaces a file the way editors and config tools do (write, rename).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_errno(s: &mut Session, node: u64, want: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = match s.open(node, libc::O_RDONLY as u32, false) {
            Ok(o) => {
                s.release(node, o.fh, false).unwrap();
                0
            }
            Err(driver::Error::Fuse { errno, .. }) => errno,
            Err(e) => panic!("{what}: {e}"),
        };
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: errno {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_reloads_and_a_bad_policy_keeps_the_old_one() {
    let work = tempfile::tempdir().unwrap();
    let Some(mut h) = start_with(
        work.path(),
        "deny",
        None,
        // As deployed: the namespace sandbox, where the signal reaches the
        // daemon through its parent and the policy is read through the broker.
        &["--sandbox=namespace"],
    ) else {
        return;
    };
    let pid = h.daemon.pid() as i32;
    let policy_path = work.path().join("policy.toml");
    let good = std::fs::read_to_string(&policy_path).unwrap();
    let mut s = Session::new(h.device.queue(1).unwrap());
    s.init().unwrap();
    let secret = s.lookup(1, b"secret").unwrap().nodeid;
    let doc = s.lookup(secret, b"doc").unwrap().nodeid;
    let public = s.lookup(1, b"public").unwrap().nodeid;
    let open = s.lookup(public, b"open").unwrap().nodeid;
    wait_errno(&mut s, doc, EACCES, "protected at start");
    wait_errno(&mut s, open, 0, "public at start");

    // Protection removed by a reload.
    let rule_at = good.find("[[rule]]").unwrap();
    replace(&policy_path, &good[..rule_at]);
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_errno(&mut s, doc, 0, "rule removed");

    // A bad policy is refused and the one in force stays.
    replace(
        &policy_path,
        "version = 1\n[[rule]]\npath = \"secret/**\"\nowner = \"nobody\"\n",
    );
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    wait_errno(&mut s, doc, 0, "bad policy refused, old one kept");

    // Protecting a public file the guest already knows takes effect at once.
    replace(
        &policy_path,
        &format!("{good}\n[[rule]]\npath = \"public/open\"\nowner = \"alice\"\nwithout_grant = \"deny\"\n"),
    );
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_errno(&mut s, open, EACCES, "rule added for a known file");
    wait_errno(&mut s, doc, EACCES, "secret protected again");

    let log = h.daemon.log_tail();
    assert!(log.contains("policy reload refused"), "{log}");
    assert!(
        log.contains("not a declared [[principal]]"),
        "the log says why:\n{log}"
    );
}
