//! File locks from a real guest: two guest processes contend on `flock`,
//! POSIX (`fcntl`) and OFD locks, and a guest contends with a lock held by a
//! host process on the shared file.
//!
//! fsd turns guest locks into host locks, so both kinds of contention show
//! exclusion. The same script is run against virtiofsd and its transcript
//! printed for comparison: there, guest processes still exclude each other
//! (the guest kernel falls back to local locks when the daemon does not
//! implement FUSE locks), but a lock held on the host, or by another guest
//! sharing the directory, is invisible to the guest.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::{assert_lines_in_order, run_script, share_in, Server};
use testrig::guest_tools::GuestTools;
use testrig::{require, Need};

/// Each round: A takes the lock and holds it until told to release; once
/// A reports "locked", B asks without waiting and C asks with waiting. All
/// append to one log, so its line order is the order of events. Then the
/// guest tries the locks a host process holds.
const SCRIPT: &str = r#"
log=/tmp/locks.log
: > lk
for kind in flock posix ofd; do
  : > $log
  rm -f /tmp/release
  lockprobe --label A --until /tmp/release $kind lk >> $log &
  until grep -q '^A: ' $log; do sleep 0.1; done
  lockprobe --label B $kind lk >> $log
  lockprobe --label C --wait $kind lk >> $log &
  # Usually lets C block first; the order of lines does not depend on it.
  sleep 1
  touch /tmp/release
  wait
  echo "== guest vs guest: $kind"
  cat $log
done
echo "== guest vs host"
lockprobe --label host-flock flock host-flock
lockprobe --label host-posix posix host-posix
lockprobe --label host-posix-query --query host-posix
"#;

/// A host process holding a lock on `path` until dropped.
struct HostLock(Child);

impl HostLock {
    fn take(tools: &GuestTools, kind: &str, path: &Path) -> HostLock {
        let probe = tools.dir().join("lockprobe");
        let mut child = Command::new(probe)
            .args(["--label", "host", "--hold", "600000", kind])
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "host: locked\n", "host lock on {}", path.display());
        HostLock(child)
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(env: &testrig::Prereqs, tools: &GuestTools, server: Server, dir: &Path) -> String {
    let share = share_in(dir, server.name());
    let _flock = HostLock::take(tools, "flock", &share.join("host-flock"));
    let _posix = HostLock::take(tools, "posix", &share.join("host-posix"));
    let run = run_script(env, server, &share, SCRIPT, Some(tools));
    let out = run.output().to_string();
    println!("--- {} lock transcript ---\n{out}", server.name());
    out
}

#[test]
fn fsd_locks_exclude_between_guest_processes_and_against_the_host() {
    let Some(env) = require(&[Need::Virtiofsd]) else {
        return;
    };
    let tools = crate::common::guest_tools();
    let dir = tempfile::tempdir().unwrap();

    let reference = run(&env, &tools, Server::Virtiofsd, dir.path());
    // virtiofsd does not see the host's locks: the guest gets them too.
    assert_lines_in_order(
        &reference,
        &[
            "== guest vs host",
            "host-flock: locked",
            "host-posix: locked",
        ],
        "virtiofsd transcript",
    );

    let out = run(&env, &tools, Server::Fsd, dir.path());
    let mut expected = Vec::new();
    for kind in ["flock", "posix", "ofd"] {
        expected.push(format!("== guest vs guest: {kind}"));
        // C cannot get the lock before A starts releasing it; whether A's
        // "released" or C's "locked" is printed first is up to the scheduler.
        for line in [
            "A: locked",
            "B: busy EAGAIN",
            "A: releasing",
            "C: locked",
            "C: released",
        ] {
            expected.push(line.to_string());
        }
    }
    expected.extend(
        [
            "== guest vs host",
            "host-flock: busy EAGAIN",
            "host-posix: busy EAGAIN",
            "host-posix-query: query write-locked",
        ]
        .map(String::from),
    );
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_lines_in_order(&out, &expected, "fsd lock transcript");
}
