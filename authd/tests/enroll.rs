//! `authd enroll` through the real binary: who may change a password.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use authd::store::Store;
use common::{PASSWORD, PHRASE};

const NOBODY: u32 = 65534;

/// Runs `authd enroll alice --password-stdin` as `uid` with `stdin` lines.
fn enroll_as(uid: u32, state: &Path, lines: &[&str]) -> bool {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authd"));
    cmd.args(["enroll", "alice", "--password-stdin", "--state-dir"])
        .arg(state)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .uid(uid)
        .gid(uid);
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    child.wait().unwrap().success()
}

fn chown_r(path: &Path, uid: u32) {
    for entry in std::fs::read_dir(path).unwrap() {
        let p = entry.unwrap().path();
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
    }
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

#[test]
fn changing_a_password_needs_the_old_one_unless_root() {
    if !rustix::process::getuid().is_root() {
        testrig::skip::<(), _>(
            "changing_a_password_needs_the_old_one_unless_root: needs root to switch uids",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_authd"));
    if exe
        .ancestors()
        .any(|d| std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.mode() & 0o001 == 0))
    {
        // Where the checkout lives, not something the install step provides:
        // a skip even under CI.
        println!(
            "SKIP: changing_a_password_needs_the_old_one_unless_root: {} is not reachable by other users",
            exe.display()
        );
        return;
    }
    let state = tmp.path().join("state");
    common::enroll(&state, "alice", PASSWORD);
    let store = Store::new(&state);
    let verify = |pw: &str| {
        let u = store.user("alice").unwrap().unwrap();
        authd::password::verify(pw.as_bytes(), &u.phc).unwrap()
    };

    // The store is root-only: hand it to an unprivileged user who "owns" it.
    chown_r(&state, NOBODY);
    assert!(
        !enroll_as(NOBODY, &state, &["wrong old", "new1"]),
        "wrong old password accepted"
    );
    assert!(
        !enroll_as(NOBODY, &state, &["new1"]),
        "change without the old password accepted"
    );
    chown_r(&state, 0);
    assert!(verify(PASSWORD), "a refused change altered the store");
    chown_r(&state, NOBODY);
    assert!(enroll_as(NOBODY, &state, &[PASSWORD, "new1"]));
    chown_r(&state, 0);
    assert!(verify("new1"));
    // Root needs no old password; the seal is kept.
    assert!(enroll_as(0, &state, &["new2"]));
    assert!(verify("new2"));
    assert_eq!(store.user("alice").unwrap().unwrap().seal.phrase, PHRASE);
}
