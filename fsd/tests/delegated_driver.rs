//! How fsd shows a delegated program (`[[delegate]]`, docs/delegation.md),
//! against raw FUSE messages from the host-side guest driver: LOOKUP and
//! READDIRPLUS of the program's name give the client's entry (not setuid,
//! the client's content), the real binary stays out of reach under any
//! other name, and the same name elsewhere is left alone.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use driver::{DaemonKind, Harness, HarnessOptions, Session};

const REAL: &[u8] = b"the administrator's setuid binary";
const CLIENT: &[u8] = b"the delegation client, nothing else";

fn populate(share: &Path) -> std::io::Result<()> {
    for d in ["usr/bin", "usr/libexec/fsd", "tmp"] {
        std::fs::create_dir_all(share.join(d))?;
    }
    std::fs::write(share.join("usr/bin/passwd"), REAL)?;
    std::fs::set_permissions(
        share.join("usr/bin/passwd"),
        std::fs::Permissions::from_mode(0o4755),
    )?;
    std::fs::hard_link(
        share.join("usr/bin/passwd"),
        share.join("usr/bin/passwd.hard"),
    )?;
    std::fs::write(share.join("usr/libexec/fsd/delegate-client"), CLIENT)?;
    std::fs::set_permissions(
        share.join("usr/libexec/fsd/delegate-client"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::fs::write(share.join("tmp/passwd"), b"just a file")?;
    Ok(())
}

fn start(work: &Path) -> Option<Harness> {
    if !Harness::require(DaemonKind::Fsd) {
        return None;
    }
    let policy = work.join("policy.toml");
    std::fs::write(
        &policy,
        r#"version = 1
[delegation]
client = "usr/libexec/fsd/delegate-client"
[[principal]]
name = "alice"
uid = 1000
[[principal]]
name = "admin"
[[vm]]
name = "vm1"
principal = "alice"
[[rule]]
path = "usr/bin/passwd"
owner = "admin"
without_grant = "deny"
[[delegate]]
program = "usr/bin/passwd"
helper = "helper1"
run_as_uid = 0
"#,
    )
    .unwrap();
    let opts = HarnessOptions {
        extra_args: vec![
            format!("--policy={}", policy.display()),
            "--vm=vm1".into(),
            format!("--audit-log={}", work.join("audit.log").display()),
        ],
        ..Default::default()
    };
    Some(Harness::start(DaemonKind::Fsd, &opts, populate).unwrap())
}

fn read_all(s: &mut Session, node: u64) -> driver::Result<Vec<u8>> {
    let fh = s.open(node, libc::O_RDONLY as u32, false)?.fh;
    let data = s.read(node, fh, 0, 4096);
    s.release(node, fh, false)?;
    data
}

#[test]
fn the_user_vm_sees_the_client_in_place_of_the_program() {
    let work = tempfile::tempdir().unwrap();
    let Some(mut h) = start(work.path()) else {
        return;
    };
    let share = h.share();
    let client_ino = std::fs::metadata(share.join("usr/libexec/fsd/delegate-client"))
        .unwrap()
        .ino();
    let real_ino = std::fs::metadata(share.join("usr/bin/passwd"))
        .unwrap()
        .ino();
    let mut s = Session::new(h.device.queue(1).unwrap());
    s.init().unwrap();
    let usr = s.lookup(1, b"usr").unwrap().nodeid;
    let bin = s.lookup(usr, b"bin").unwrap().nodeid;

    // READDIRPLUS first, before any LOOKUP of the name: its entry too.
    let listed = s.readdir_all(bin, true, 4096).unwrap();
    let e = listed
        .iter()
        .find(|d| d.name == b"passwd")
        .and_then(|d| d.entry)
        .expect("passwd is listed with an entry");
    assert_eq!(e.attr.ino, client_ino, "READDIRPLUS gave the real binary");
    assert_eq!(e.attr.mode & 0o7777, 0o755);

    let e = s.lookup(bin, b"passwd").unwrap();
    assert_eq!(e.attr.ino, client_ino, "LOOKUP gave the real binary");
    assert_eq!(
        e.attr.mode & libc::S_ISUID,
        0,
        "the program is shown setuid"
    );
    assert_eq!(e.attr.size, CLIENT.len() as u64);
    assert_eq!(read_all(&mut s, e.nodeid).unwrap(), CLIENT);

    // The real inode under another name: labelled by the rule, refused.
    let hard = s.lookup(bin, b"passwd.hard").unwrap();
    assert_eq!(hard.attr.ino, real_ino);
    match read_all(&mut s, hard.nodeid) {
        Err(driver::Error::Fuse { errno, .. }) => assert_eq!(errno, libc::EACCES),
        other => panic!("the real binary was readable: {other:?}"),
    }

    // The same file name elsewhere is an ordinary file.
    let tmp = s.lookup(1, b"tmp").unwrap().nodeid;
    let other = s.lookup(tmp, b"passwd").unwrap();
    assert_eq!(read_all(&mut s, other.nodeid).unwrap(), b"just a file");
}

#[test]
fn without_its_client_the_program_is_refused_not_shown() {
    let work = tempfile::tempdir().unwrap();
    let Some(mut h) = start(work.path()) else {
        return;
    };
    std::fs::remove_file(h.share().join("usr/libexec/fsd/delegate-client")).unwrap();
    let mut s = Session::new(h.device.queue(1).unwrap());
    s.init().unwrap();
    let usr = s.lookup(1, b"usr").unwrap().nodeid;
    let bin = s.lookup(usr, b"bin").unwrap().nodeid;
    match s.lookup(bin, b"passwd") {
        Err(driver::Error::Fuse { errno, .. }) => assert_eq!(errno, libc::EACCES),
        other => panic!("a missing client showed something: {other:?}"),
    }
}
