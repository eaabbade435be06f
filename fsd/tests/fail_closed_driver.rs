//! Access control that fails closed, against raw FUSE messages.
//!
//! Each test is one class of ways through the policy that an attacker with a
//! host-side guest driver (guest root, forged headers) tried, and what fsd
//! must do instead:
//!
//! * descriptors run out: every decision that cannot be made denies, and the
//!   guest cannot run fsd out in the first place (bounded nodes and handles);
//! * the host changes the share after fsd started (files saved or moved into
//!   protected directories, an ancestor swapped by the guest): protection
//!   follows the host's truth at the moment of access;
//! * inode numbers reused by the host file system do not inherit a decision;
//! * requests before FUSE_INIT are refused;
//! * OPEN with access mode 3 is refused; every handle operation needs its
//!   right once the grant ended (lseek, fsync, locks, `user.*` values);
//! * labels persist across restarts by default;
//! * guest-chosen allocation sizes are capped;
//! * a guest may unmount and mount again (DESTROY, INIT) under every sandbox.

mod authd_stub;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use authd_stub::FakeAuthd;
use driver::fuse::op;
use driver::{DaemonKind, Harness, HarnessOptions, Request, Session};
use fuse_backend_rs::abi::fuse_abi::{FsyncIn, GetxattrIn, LkIn, LseekIn, OpenIn, Rename2In};

const EACCES: i32 = libc::EACCES;
const SECRET: &[u8] = b"the-protected-content";

/// `vault/**` protected, `etc/shadow` protected in an unprotected `etc`,
/// `box/secret/x` protected by an exact path whose directories are not,
/// `spool/*.key` protected among public files of the same directory.
fn policy(dir: &Path, mode: &str) -> PathBuf {
    let p = dir.join("policy.toml");
    let rule = |path: &str| {
        format!(
            "[[rule]]\npath = \"{path}\"\nowner = \"alice\"\nwithout_grant = \"{mode}\"\ngrant_secs = 3600\n"
        )
    };
    std::fs::write(
        &p,
        format!(
            "version = 1\n[[principal]]\nname = \"alice\"\n[[vm]]\nname = \"vm1\"\nprincipal = \"alice\"\n{}{}{}{}",
            rule("vault/**"),
            rule("etc/shadow"),
            rule("box/secret/x"),
            rule("spool/*.key"),
        ),
    )
    .unwrap();
    p
}

fn populate(share: &Path) -> std::io::Result<()> {
    for d in ["vault/sub", "etc", "pub/dir", "box", "spool"] {
        std::fs::create_dir_all(share.join(d))?;
    }
    std::fs::write(share.join("vault/doc"), SECRET)?;
    std::fs::write(share.join("vault/sub/deep"), SECRET)?;
    std::fs::write(share.join("etc/shadow"), SECRET)?;
    std::fs::write(share.join("etc/passwd"), b"public")?;
    std::fs::write(share.join("pub/open"), b"public")?;
    std::fs::write(share.join("pub/moving"), SECRET)?;
    Ok(())
}

struct Started {
    h: Harness,
    work: tempfile::TempDir,
}

fn start(mode: &str, authd: Option<&FakeAuthd>, more: &[String]) -> Option<Started> {
    let work = tempfile::tempdir().unwrap();
    start_in(work, mode, authd, more, populate)
}

fn start_in(
    work: tempfile::TempDir,
    mode: &str,
    authd: Option<&FakeAuthd>,
    more: &[String],
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Option<Started> {
    if !Harness::require(DaemonKind::Fsd) {
        return None;
    }
    let mut extra = vec![
        format!("--policy={}", policy(work.path(), mode).display()),
        "--vm=vm1".into(),
        format!("--audit-log={}", work.path().join("audit.log").display()),
    ];
    if !more.iter().any(|m| m.starts_with("--label-db")) {
        extra.push(format!(
            "--label-db={}",
            work.path().join("labels.db").display()
        ));
    }
    if let Some(a) = authd {
        extra.push(format!("--authd-socket={}", a.socket.display()));
    }
    extra.extend(more.iter().cloned());
    let opts = HarnessOptions {
        extra_args: extra,
        ..Default::default()
    };
    let h = Harness::start(DaemonKind::Fsd, &opts, fill).unwrap();
    Some(Started { h, work })
}

fn errno<T: std::fmt::Debug>(r: driver::Result<T>) -> i32 {
    match r {
        Err(driver::Error::Fuse { errno, .. }) => errno,
        other => panic!("expected a FUSE error, got {other:?}"),
    }
}

/// Opens `node` read-only and reads it; the errno if refused.
fn read_all(s: &mut Session, node: u64) -> Result<Vec<u8>, i32> {
    let fh = match s.open(node, libc::O_RDONLY as u32, false) {
        Ok(o) => o.fh,
        Err(driver::Error::Fuse { errno, .. }) => return Err(errno),
        Err(e) => panic!("{e}"),
    };
    let r = s.read(node, fh, 0, 4096);
    s.release(node, fh, false).unwrap();
    r.map_err(|e| match e {
        driver::Error::Fuse { errno, .. } => errno,
        e => panic!("{e}"),
    })
}

fn lookup_path(s: &mut Session, path: &str) -> u64 {
    let mut node = 1;
    for c in path.split('/') {
        node = s
            .lookup(node, c.as_bytes())
            .unwrap_or_else(|e| panic!("lookup {path}: {e}"))
            .nodeid;
    }
    node
}

fn rename2(s: &mut Session, from: (u64, &[u8]), to: (u64, &[u8]), flags: u32) -> i32 {
    let req = Request::new(op::RENAME2, from.0)
        .arg(&Rename2In {
            newdir: to.0,
            flags,
            padding: 0,
        })
        .name(from.1)
        .name(to.1);
    s.call(&req, 0).unwrap().errno()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The daemon's pid inside (the namespace sandbox forks one).
fn daemon_pids(h: &Harness) -> Vec<u32> {
    let top = h.daemon.pid();
    let mut pids = vec![top];
    if let Ok(c) = std::fs::read_to_string(format!("/proc/{top}/task/{top}/children")) {
        pids.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    pids
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Exhausting descriptors or nodes never opens the policy: the guest's own
/// requests fail, protected entries stay untouched, everything else is
/// still answered. Run with one descriptor per inode (`never`, the worst
/// case) at a small limit, and with the default (file handles).
#[test]
fn exhaustion_fails_closed() {
    for handles in ["never", "prefer"] {
        let more = vec![
            "--rlimit-nofile=1024".to_string(),
            format!("--inode-file-handles={handles}"),
        ];
        let Some(mut st) = start("deny", None, &more) else {
            return;
        };
        // Many files to look up, more than the descriptor limit.
        let many = st.h.share().join("many");
        std::fs::create_dir(&many).unwrap();
        for i in 0..1500 {
            std::fs::write(many.join(format!("f{i}")), b"x").unwrap();
        }
        let share = st.h.share();
        let pids = daemon_pids(&st.h);
        let mut s = Session::new(st.h.device.queue(1).unwrap());
        s.init().unwrap();
        let etc = lookup_path(&mut s, "etc");
        let vault = lookup_path(&mut s, "vault");
        let open = lookup_path(&mut s, "pub/open");
        let many_node = lookup_path(&mut s, "many");

        // Hold handles until fsd refuses more.
        let mut held = Vec::new();
        let mut refused_open = 0;
        for _ in 0..2000 {
            match s.open(open, libc::O_RDONLY as u32, false) {
                Ok(o) => held.push(o.fh),
                Err(driver::Error::Fuse { errno, .. }) => {
                    assert!(
                        errno == libc::EMFILE || errno == libc::ENFILE,
                        "{handles}: open refused with {errno}"
                    );
                    refused_open += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused_open, 1, "{handles}: fsd bounds the open handles");
        // And nodes, until fsd refuses more.
        let mut refused_lookup = 0;
        let mut nodes = Vec::new();
        for i in 0..1500 {
            match s.lookup(many_node, format!("f{i}").as_bytes()) {
                Ok(e) => nodes.push(e.nodeid),
                Err(e) => {
                    let got = errno::<()>(Err(e));
                    assert!(
                        got == libc::ENFILE || got == libc::EMFILE,
                        "{handles}: lookup refused with {got}"
                    );
                    refused_lookup += 1;
                }
            }
        }
        if handles == "never" {
            assert!(refused_lookup > 0, "never: 1500 nodes pass a 1024 limit");
        } else {
            // The O_PATH descriptors kept for recently used inodes stay
            // within their bound however many nodes are used.
            let before: usize = pids.iter().map(|&p| fd_count(p)).sum();
            for &n in &nodes {
                s.getattr(n).unwrap();
            }
            let after: usize = pids.iter().map(|&p| fd_count(p)).sum();
            assert!(
                after <= before + fsd::fs::PATH_SHARED,
                "prefer: GETATTR of {} nodes took {before} to {after} descriptors",
                nodes.len()
            );
        }
        let fds: usize = pids.iter().map(|&p| fd_count(p)).sum();
        println!(
            "{handles}: {} handles held, {refused_lookup} lookups refused, {fds} descriptors open",
            held.len()
        );
        assert!(fds < 1024, "{handles}: fsd stays below its limit ({fds})");

        // Every attack on a protected entry in an unprotected directory.
        let before = std::fs::read(share.join("etc/shadow")).unwrap();
        let pubdir = lookup_path(&mut s, "pub");
        assert_ne!(
            errno(s.rename(etc, b"shadow", pubdir, b"stolen")),
            0,
            "rename out"
        );
        assert_ne!(
            errno(s.rename(etc, b"passwd", etc, b"shadow")),
            0,
            "rename over"
        );
        assert_ne!(
            rename2(
                &mut s,
                (etc, b"passwd"),
                (etc, b"shadow"),
                libc::RENAME_EXCHANGE
            ),
            0,
            "exchange"
        );
        assert_ne!(errno(s.unlink(etc, b"shadow")), 0, "unlink");
        let root = 1;
        assert_ne!(
            errno(s.rename(root, b"vault", pubdir, b"vault")),
            0,
            "move the protected directory"
        );
        assert_eq!(
            std::fs::read(share.join("etc/shadow")).unwrap(),
            before,
            "{handles}: etc/shadow untouched"
        );
        assert!(share.join("vault/doc").exists());
        // The rest is still answered.
        assert!(s.getattr(vault).is_ok());
        assert_eq!(s.read(open, held[0], 0, 100).unwrap(), b"public");
        // Giving back makes room again.
        for fh in held.drain(..) {
            s.release(open, fh, false).unwrap();
        }
        assert_eq!(read_all(&mut s, open).unwrap(), b"public");
        let audit = std::fs::read_to_string(st.work.path().join("audit.log")).unwrap();
        assert!(audit.contains("denied"), "{audit}");
        assert!(st.h.escaped().is_empty());
    }
}

/// Files saved or moved into protected places by the host after fsd
/// started are protected; so is a file saved at a protected path behind an
/// ancestor the guest swapped.
#[test]
fn protection_follows_the_host() {
    let Some(mut st) = start("deny", None, &[]) else {
        return;
    };
    let share = st.h.share();
    let mut s = Session::new(st.h.device.queue(1).unwrap());
    s.init().unwrap();
    let vault = lookup_path(&mut s, "vault");
    // Known to the guest while public.
    let moving = lookup_path(&mut s, "pub/moving");
    let dir = lookup_path(&mut s, "pub/dir");
    assert_eq!(read_all(&mut s, moving).unwrap(), SECRET, "public at first");

    // 1. A file the host creates in a protected directory.
    std::fs::write(share.join("vault/new"), SECRET).unwrap();
    let new = s.lookup(vault, b"new").unwrap().nodeid;
    assert_eq!(read_all(&mut s, new), Err(EACCES), "host-created");
    // 2. A file the guest knew while public, moved in by the host.
    std::fs::rename(share.join("pub/moving"), share.join("vault/moved")).unwrap();
    assert_eq!(read_all(&mut s, moving), Err(EACCES), "host-moved file");
    // 3. A directory moved in, then a new file inside it.
    std::fs::rename(share.join("pub/dir"), share.join("vault/dir")).unwrap();
    std::fs::write(share.join("vault/dir/inner"), SECRET).unwrap();
    let inner = s.lookup(dir, b"inner").unwrap().nodeid;
    assert_eq!(
        read_all(&mut s, inner),
        Err(EACCES),
        "new file in moved dir"
    );
    // 4. A protected directory the host moves out of the rule's path: what
    //    is saved in it later is still protected (its label).
    std::fs::rename(share.join("vault/sub"), share.join("pub/sub")).unwrap();
    std::fs::write(share.join("pub/sub/later"), SECRET).unwrap();
    let later = lookup_path(&mut s, "pub/sub/later");
    assert_eq!(read_all(&mut s, later), Err(EACCES), "under a moved label");
    // 5. Ancestor swap: the guest renames `box` away, builds decoy/secret,
    //    renames decoy to box; the host saves exactly at box/secret/x.
    let root = 1;
    s.rename(root, b"box", root, b"box_old").unwrap();
    let decoy = s.mkdir(root, b"decoy", 0o755).unwrap().nodeid;
    let dsecret = s.mkdir(decoy, b"secret", 0o755).unwrap().nodeid;
    s.rename(root, b"decoy", root, b"box").unwrap();
    std::fs::write(share.join("box/secret/x"), SECRET).unwrap();
    let x = s.lookup(dsecret, b"x").unwrap().nodeid;
    assert_eq!(
        read_all(&mut s, x),
        Err(EACCES),
        "saved behind a swapped ancestor"
    );
    // Moving any of them away is refused too.
    assert_eq!(errno(s.rename(dsecret, b"x", root, b"x")), EACCES);
    // The remembered "public" answers were in use, and every host rename
    // above invalidated them (fs/hostwatch.rs).
    let log = st.h.daemon.log_tail();
    assert!(!log.contains("cannot watch renames"), "{log}");
    let audit = std::fs::read_to_string(st.work.path().join("audit.log")).unwrap();
    for p in [
        "vault/new",
        "vault/moved",
        "vault/dir/inner",
        "pub/sub/later",
        "box/secret/x",
    ] {
        assert!(audit.contains(p), "audit names {p}:\n{audit}");
    }
}

/// New protected files that get the inode numbers of forgotten public ones
/// do not inherit their decision. The guest creates and deletes public
/// files in `spool`; the host then saves `spool/*.key` files there, which
/// ext4 gives the freed inode numbers.
#[test]
fn reused_inode_numbers_inherit_nothing() {
    let Some(mut st) = start("deny", None, &[]) else {
        return;
    };
    let share = st.h.share();
    let mut s = Session::new(st.h.device.queue(1).unwrap());
    s.init().unwrap();
    let spool = lookup_path(&mut s, "spool");
    let mut inos = std::collections::HashSet::new();
    for i in 0..64 {
        let name = format!("tmp{i}");
        let (e, fh) = s
            .create(spool, name.as_bytes(), libc::O_RDWR as u32, 0o644)
            .unwrap();
        // Looked at by the guest, decided public.
        assert_eq!(read_all(&mut s, e.nodeid).unwrap(), b"", "public");
        s.release(e.nodeid, fh.fh, false).unwrap();
        s.unlink(spool, name.as_bytes()).unwrap();
        s.forget(e.nodeid, 1).unwrap();
        inos.insert(e.attr.ino);
    }
    let mut reused = 0;
    for i in 0..64 {
        let p = share.join(format!("spool/n{i}.key"));
        std::fs::write(&p, SECRET).unwrap();
        use std::os::unix::fs::MetadataExt;
        if inos.contains(&std::fs::metadata(&p).unwrap().ino()) {
            reused += 1;
        }
        let node = s
            .lookup(spool, format!("n{i}.key").as_bytes())
            .unwrap()
            .nodeid;
        assert_eq!(read_all(&mut s, node), Err(EACCES), "spool/n{i}.key");
    }
    // Again, with the guest still holding the nodes of the deleted files:
    // with file handles the host frees their inodes at once, and a new
    // file with a freed number must still be a new node.
    let mut held = Vec::new();
    for i in 0..64 {
        let name = format!("held{i}");
        let (e, fh) = s
            .create(spool, name.as_bytes(), libc::O_RDWR as u32, 0o644)
            .unwrap();
        assert_eq!(read_all(&mut s, e.nodeid).unwrap(), b"", "public");
        s.release(e.nodeid, fh.fh, false).unwrap();
        s.unlink(spool, name.as_bytes()).unwrap();
        held.push((e.nodeid, e.attr.ino));
    }
    let held_inos: std::collections::HashSet<u64> = held.iter().map(|h| h.1).collect();
    let mut reused_held = 0;
    for i in 0..64 {
        let p = share.join(format!("spool/m{i}.key"));
        std::fs::write(&p, SECRET).unwrap();
        use std::os::unix::fs::MetadataExt;
        if held_inos.contains(&std::fs::metadata(&p).unwrap().ino()) {
            reused_held += 1;
        }
        let e = s.lookup(spool, format!("m{i}.key").as_bytes()).unwrap();
        assert!(
            !held.iter().any(|h| h.0 == e.nodeid),
            "m{i}.key got the node id of a deleted file"
        );
        assert_eq!(read_all(&mut s, e.nodeid), Err(EACCES), "spool/m{i}.key");
    }
    println!("{reused_held} of 64 protected files reused a number the guest still held");
    println!("{reused} of 64 protected files got a freed inode number");
}

/// Nothing but INIT is served before INIT: a LOOKUP then would record a
/// protected directory without its place.
#[test]
fn nothing_before_init() {
    let Some(mut st) = start("deny", None, &[]) else {
        return;
    };
    let share = st.h.share();
    let mut s = Session::new(st.h.device.queue(1).unwrap());
    let r = s
        .call(&Request::new(op::LOOKUP, 1).name(b"vault"), 128)
        .unwrap();
    assert_ne!(r.errno(), 0, "LOOKUP before INIT");
    let r = s
        .call(&Request::new(op::GETATTR, 1).arg(&[0u8; 16]), 128)
        .unwrap();
    assert_ne!(r.errno(), 0, "GETATTR before INIT");
    s.init().unwrap();
    std::fs::write(share.join("vault/after"), SECRET).unwrap();
    let node = lookup_path(&mut s, "vault/after");
    assert_eq!(read_all(&mut s, node), Err(EACCES));
}

/// OPEN with access mode 3 (with or without O_PATH) is refused, on
/// protected and public files alike; once a grant ends, every operation on
/// a handle opened under it needs the grant again: lseek (SEEK_DATA/HOLE
/// reveal layout), fsync, locks, `user.*` values. FLUSH and unlocking
/// always work.
#[test]
fn invalid_opens_and_handle_operations() {
    let work = tempfile::tempdir().unwrap();
    let authd = FakeAuthd::start(work.path());
    let Some(mut st) = start_in(work, "ask", Some(&authd), &["--xattr".into()], populate) else {
        return;
    };
    let share = st.h.share();
    let xattrs = xattr_set(&share.join("vault/doc"), "user.note", b"secret-note");
    let mut s = Session::new(st.h.device.queue(1).unwrap());
    s.init().unwrap();
    let doc = lookup_path(&mut s, "vault/doc");
    let open = lookup_path(&mut s, "pub/open");
    for node in [doc, open] {
        for flags in [3u32, 3 | libc::O_PATH as u32] {
            let r = s
                .call(
                    &Request::new(op::OPEN, node).arg(&OpenIn {
                        flags,
                        fuse_flags: 0,
                    }),
                    64,
                )
                .unwrap();
            assert_eq!(
                r.errno(),
                libc::EINVAL,
                "open flags {flags:#x} on node {node}"
            );
        }
    }
    authd.grant.store(true, Ordering::SeqCst);
    let fh = s.open(doc, libc::O_RDWR as u32, false).unwrap().fh;
    let lk = |typ: i32, opcode: u32| {
        let mut a = LkIn {
            fh,
            owner: 7,
            ..Default::default()
        };
        a.lk.type_ = typ as u32;
        a.lk.end = i64::MAX as u64;
        Request::new(opcode, doc).arg(&a)
    };
    assert_eq!(
        s.call(&lk(libc::F_WRLCK, 32), 64).unwrap().errno(),
        0,
        "lock under the grant"
    );
    authd.grant.store(false, Ordering::SeqCst);
    authd.revoke_all();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .call(&driver::session::read_request(doc, fh, 0, 10), 10)
        .unwrap()
        .errno()
        != EACCES
    {
        assert!(Instant::now() < deadline, "the grant's end reaches fsd");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lseek = Request::new(op_lseek(), doc).arg(&LseekIn {
        fh,
        offset: 0,
        whence: 3, // SEEK_DATA
        padding: 0,
    });
    assert_eq!(s.call(&lseek, 16).unwrap().errno(), EACCES, "lseek");
    let fsync = Request::new(op::FSYNC, doc).arg(&FsyncIn {
        fh,
        fsync_flags: 0,
        padding: 0,
    });
    assert_eq!(s.call(&fsync, 0).unwrap().errno(), EACCES, "fsync");
    assert_eq!(
        s.call(&lk(libc::F_WRLCK, 32), 64).unwrap().errno(),
        EACCES,
        "setlk"
    );
    assert_eq!(
        s.call(&lk(libc::F_RDLCK, 31), 64).unwrap().errno(),
        EACCES,
        "getlk"
    );
    if xattrs {
        let get = Request::new(op_getxattr(), doc)
            .arg(&GetxattrIn {
                size: 100,
                padding: 0,
            })
            .name(b"user.note");
        assert_eq!(s.call(&get, 100).unwrap().errno(), EACCES, "user.* value");
        let sec = Request::new(op_getxattr(), doc)
            .arg(&GetxattrIn {
                size: 100,
                padding: 0,
            })
            .name(b"security.selinux");
        assert_ne!(
            s.call(&sec, 100).unwrap().errno(),
            EACCES,
            "security.* stays readable"
        );
    }
    // Unlocking, flushing and closing always work.
    assert_eq!(
        s.call(&lk(libc::F_UNLCK, 32), 64).unwrap().errno(),
        0,
        "unlock"
    );
    s.release(doc, fh, false).unwrap();
    let audit = std::fs::read_to_string(st.work.path().join("audit.log")).unwrap();
    for what in ["\"lseek\"", "\"fsync\"", "\"lock\"", "\"getlk\""] {
        assert!(audit.contains(what), "audit has {what}:\n{audit}");
    }
}

fn op_lseek() -> u32 {
    46
}

fn op_getxattr() -> u32 {
    22
}

fn op_listxattr() -> u32 {
    23
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> bool {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    if r != 0 {
        println!("note: no user xattrs on this file system; the xattr cases are left out");
    }
    r == 0
}

/// A protected directory the host moves elsewhere stays protected after a
/// restart, without any --label-db: labels persist by default.
#[test]
fn labels_persist_by_default() {
    if !Harness::require(DaemonKind::Fsd) {
        return;
    }
    // A VM name of its own, so the default database is this test's alone.
    let vm = format!("persist-{}-{}", std::process::id(), nanos());
    let db = PathBuf::from("/var/lib/fsd/labels").join(format!("{vm}.db"));
    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[[principal]]\nname = \"alice\"\n[[vm]]\nname = \"{vm}\"\nprincipal = \"alice\"\n\
             [[rule]]\npath = \"vault/**\"\nowner = \"alice\"\nwithout_grant = \"deny\"\n"
        ),
    )
    .unwrap();
    let opts = HarnessOptions {
        extra_args: vec![
            format!("--policy={}", policy.display()),
            format!("--vm={vm}"),
        ],
        default_label_db: true,
        ..Default::default()
    };
    if !Harness::require(DaemonKind::Fsd) {
        return;
    }
    // Between the runs the moved tree waits here (same file system, so a
    // rename keeps its inodes).
    let parked = work.path().join("parked");
    let log;
    {
        let mut h = Harness::start(DaemonKind::Fsd, &opts, |p| {
            std::fs::create_dir_all(p.join("vault/sub"))?;
            std::fs::write(p.join("vault/sub/f"), SECRET)
        })
        .unwrap();
        let share = h.share();
        let mut s = Session::new(h.device.queue(1).unwrap());
        s.init().unwrap();
        let f = lookup_path(&mut s, "vault/sub/f");
        assert_eq!(read_all(&mut s, f), Err(EACCES));
        // The host moves the protected directory out of the rule's path.
        std::fs::create_dir(share.join("pub")).unwrap();
        std::fs::rename(share.join("vault/sub"), share.join("pub/sub")).unwrap();
        std::fs::rename(share.join("pub"), &parked).unwrap();
        log = h.daemon.log_tail();
    }
    assert!(
        db.exists(),
        "the default label database {} exists; fsd said:\n{log}",
        db.display()
    );
    let mut h = Harness::start(DaemonKind::Fsd, &opts, |p| {
        std::fs::rename(&parked, p.join("pub"))
    })
    .unwrap();
    let mut s = Session::new(h.device.queue(1).unwrap());
    s.init().unwrap();
    let f = lookup_path(&mut s, "pub/sub/f");
    let got = read_all(&mut s, f);
    let _ = std::fs::remove_file(&db);
    assert_eq!(got, Err(EACCES), "still protected after the restart");
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// GETXATTR and LISTXATTR with a size of 4 GiB allocate at most 64 KiB.
#[test]
fn guest_sizes_are_capped() {
    let Some(mut st) = start("deny", None, &["--xattr".into()]) else {
        return;
    };
    let share = st.h.share();
    let has = xattr_set(&share.join("pub/open"), "user.x", b"v");
    let pids = daemon_pids(&st.h);
    let peak_before: u64 = pids
        .iter()
        .map(|&p| status_kib(p, "VmPeak:"))
        .max()
        .unwrap();
    let mut s = Session::new(st.h.device.queue(1).unwrap());
    s.init().unwrap();
    let open = lookup_path(&mut s, "pub/open");
    for _ in 0..4 {
        let get = Request::new(op_getxattr(), open)
            .arg(&GetxattrIn {
                size: u32::MAX,
                padding: 0,
            })
            .name(b"user.x");
        let r = s.call(&get, 4096).unwrap();
        if has {
            assert_eq!(r.errno(), 0, "getxattr answered");
        }
        let list = Request::new(op_listxattr(), open).arg(&GetxattrIn {
            size: u32::MAX,
            padding: 0,
        });
        s.call(&list, 4096).unwrap();
    }
    assert!(s.getattr(open).is_ok(), "the daemon still answers");
    let peak_after: u64 = pids
        .iter()
        .map(|&p| status_kib(p, "VmPeak:"))
        .max()
        .unwrap();
    println!("VmPeak {peak_before} KiB -> {peak_after} KiB");
    assert!(
        peak_after < peak_before + 1024 * 1024,
        "no 4 GiB allocation: VmPeak {peak_before} -> {peak_after} KiB"
    );
}

/// The guest unmounts (DESTROY) and mounts again (INIT): the share works in
/// the new session, under every sandbox, and protection holds.
#[test]
fn remount_under_every_sandbox() {
    for sandbox in ["namespace", "chroot", "none"] {
        let more = vec![format!("--sandbox={sandbox}")];
        let Some(mut st) = start("deny", None, &more) else {
            return;
        };
        let mut s = Session::new(st.h.device.queue(1).unwrap());
        for round in 0..3 {
            s.init().unwrap();
            let open = lookup_path(&mut s, "pub/open");
            assert_eq!(
                read_all(&mut s, open).unwrap(),
                b"public",
                "{sandbox}, session {round}"
            );
            let doc = lookup_path(&mut s, "vault/doc");
            assert_eq!(
                read_all(&mut s, doc),
                Err(EACCES),
                "{sandbox}, session {round}"
            );
            let r = s.call(&Request::new(op::DESTROY, 0), 0).unwrap();
            assert_eq!(r.errno(), 0, "{sandbox}: DESTROY");
        }
        // After DESTROY, nodes of the old session are gone.
        s.init().unwrap();
        let r = s.getattr(1);
        assert!(r.is_ok(), "{sandbox}: root after remount");
        assert!(st.h.escaped().is_empty());
    }
}
