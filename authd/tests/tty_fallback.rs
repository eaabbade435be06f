//! The terminal fallback on a real pseudo-terminal, and grant revocation
//! through the command line. No display needed.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use authd::config::{Config, FrontendKind};
use authd_client::client::AuthRequest;
use authd_client::protocol::{DenyReason, EndCause};
use common::{Daemon, PASSWORD, PHRASE};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};

/// A pty whose master side is read continuously into a buffer.
struct Pty {
    master: Arc<OwnedFd>,
    path: String,
    out: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    _slave: std::fs::File,
}

impl Pty {
    fn open() -> Pty {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let path = ptsname(&master, Vec::new()).unwrap().into_string().unwrap();
        // Held open so the master never sees a hang-up between prompts.
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let master = Arc::new(master);
        let out = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, o, s) = (master.clone(), out.clone(), stop.clone());
        thread::spawn(move || {
            let mut f = std::fs::File::from(m.as_fd().try_clone_to_owned().unwrap());
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => thread::sleep(Duration::from_millis(20)),
                    Ok(n) => o.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        Pty {
            master,
            path,
            out,
            stop,
            _slave: slave,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until the n-th password prompt has been printed.
    fn wait_prompt(&self, n: usize) {
        assert!(
            common::wait_for(Duration::from_secs(20), || self
                .text()
                .matches("Password: ")
                .count()
                >= n),
            "prompt {n} did not appear; terminal shows: {}",
            self.text()
        );
    }

    fn type_line(&self, s: &str) {
        let mut f = std::fs::File::from(self.master.as_fd().try_clone_to_owned().unwrap());
        f.write_all(format!("{s}\n").as_bytes()).unwrap();
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// authd asking on a pseudo-terminal, with `tune` applied to its
/// configuration, and alice enrolled.
fn tty_daemon(tune: impl FnOnce(&mut Config)) -> (Pty, tempfile::TempDir, Daemon) {
    let pty = Pty::open();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.frontend = FrontendKind::Tty;
    cfg.tty = Some(pty.path.clone().into());
    tune(&mut cfg);
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);
    (pty, tmp, d)
}

fn req(vm: &str, lifetime: u64) -> AuthRequest {
    AuthRequest {
        vm: vm.into(),
        principal: "alice".into(),
        reason: common::reason(),
        lifetime: Duration::from_secs(lifetime),
    }
}

fn authd_cli(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_authd"))
        .arg("--socket")
        .arg(&d.cfg.socket)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "authd {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tty_prompt_grants_then_revoke_and_lock_push_events() {
    let (pty, _tmp, d) = tty_daemon(|c| c.max_grant_secs = 30);
    let mut sub = d.client().subscribe(Duration::from_secs(5)).unwrap();

    let ask = |vm: &str, lifetime| {
        let c = d.client();
        let r = req(vm, lifetime);
        thread::spawn(move || c.authenticate(&r, Duration::from_secs(60)))
    };

    let pending = ask("vm-a", 600);
    pty.wait_prompt(1);
    let shown = pty.text();
    assert!(shown.contains(PHRASE), "seal phrase missing: {shown}");
    // #6a1b9a as a 24-bit background colour, and as text.
    assert!(
        shown.contains("48;2;106;27;154"),
        "seal colour missing: {shown}"
    );
    assert!(shown.contains("#6a1b9a"));
    // Operation and path are the host's facts, above what the guest says.
    let said = shown.find("Reported by the guest").expect("guest section");
    let path = shown.find("notes/secret.txt").expect("path shown");
    assert!(path < said, "path shown as the guest's word: {shown}");
    assert!(shown[said..].contains("cat (pid 4242)"), "{shown}");
    pty.type_line(PASSWORD);
    let a = pending
        .join()
        .unwrap()
        .grant()
        .cloned()
        .expect("granted on the tty");
    assert_eq!(a.lifetime_secs, 30, "lifetime capped by max_grant_secs");

    let pending = ask("vm-b", 600);
    pty.wait_prompt(2);
    pty.type_line(PASSWORD);
    let b = pending
        .join()
        .unwrap()
        .grant()
        .cloned()
        .expect("granted for vm-b");
    assert!(
        !pty.text().contains(PASSWORD),
        "password echoed on the terminal"
    );

    // A second request while the grant lives is answered without a prompt.
    let again = d
        .client()
        .authenticate(&req("vm-a", 60), Duration::from_secs(10));
    assert_eq!(again.grant().map(|g| g.id.clone()), Some(a.id.clone()));
    assert_eq!(pty.text().matches("Password: ").count(), 2);

    assert_eq!(
        authd_cli(&d, &["revoke", "--grant", &a.id]).trim(),
        "revoked 1"
    );
    let ev = sub
        .next_event(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.grant.id.as_str(), ev.cause),
        (a.id.as_str(), EndCause::Revoked)
    );

    assert_eq!(authd_cli(&d, &["lock"]).trim(), "ended 1");
    let ev = sub
        .next_event(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.grant.id.as_str(), ev.cause),
        (b.id.as_str(), EndCause::Locked)
    );
    assert_eq!(authd_cli(&d, &["grants"]), "");

    // Wrong password, then an empty line (which denies).
    let pending = ask("vm-a", 60);
    pty.wait_prompt(3);
    pty.type_line("wrong");
    assert_eq!(
        pending.join().unwrap().deny_reason(),
        Some(DenyReason::WrongPassword)
    );
    let pending = ask("vm-a", 60);
    pty.wait_prompt(4);
    pty.type_line("");
    assert_eq!(
        pending.join().unwrap().deny_reason(),
        Some(DenyReason::Cancelled)
    );
}

#[test]
fn grant_cache_follows_revokes_and_fails_closed_when_authd_dies() {
    use authd_client::grant_cache::{Ended, GrantCache};

    let (pty, _tmp, mut d) = tty_daemon(|_| {});

    let ended: Arc<Mutex<Vec<Ended>>> = Arc::default();
    let log = ended.clone();
    let cache = GrantCache::start(d.client(), Duration::from_millis(100), move |e| {
        log.lock().unwrap().push(e.clone())
    });
    assert!(cache.wait_subscribed(Duration::from_secs(10)));
    let ensure = |vm: &str| {
        let (c, r) = (cache.clone(), req(vm, 600));
        thread::spawn(move || c.ensure(&r, Duration::from_secs(60)))
    };

    let pending = ensure("vm-a");
    pty.wait_prompt(1);
    pty.type_line(PASSWORD);
    let g1 = pending.join().unwrap().grant().cloned().expect("granted");
    assert_eq!(cache.live("vm-a", "alice"), Some(g1.clone()));
    assert!(cache.live("vm-b", "alice").is_none());
    // Served from the cache: no second prompt.
    let again = cache.ensure(&req("vm-a", 600), Duration::from_secs(5));
    assert_eq!(again.grant(), Some(&g1));
    assert_eq!(pty.text().matches("Password: ").count(), 1);

    authd_cli(&d, &["revoke", "--vm", "vm-a"]);
    // The grant leaves the cache before its end is reported: wait for both.
    assert!(common::wait_for(Duration::from_secs(10), || cache
        .live("vm-a", "alice")
        .is_none()
        && !ended.lock().unwrap().is_empty()));
    assert!(matches!(
        &ended.lock().unwrap()[..],
        [Ended::Reported(e)] if e.grant == g1 && e.cause == EndCause::Revoked
    ));

    let pending = ensure("vm-a");
    pty.wait_prompt(2);
    pty.type_line(PASSWORD);
    let g2 = pending
        .join()
        .unwrap()
        .grant()
        .cloned()
        .expect("granted again");

    // authd dies: every grant goes at once, and nothing new is granted.
    d.kill();
    dropped_while_away(&cache, &ended, &g2);

    d.restart();
    assert!(
        cache.wait_subscribed(Duration::from_secs(10)),
        "resubscribed after restart"
    );
    cache.stop();
}

/// authd keeps its grants across a restart (SIGTERM, then a new start); a
/// cache that takes over authd's list on each subscription drops its grant
/// while authd is away and has it back, without a prompt, once authd is;
/// another VM's grant it leaves alone.
#[test]
fn grant_cache_takes_back_the_grants_authd_kept_across_a_restart() {
    use authd_client::grant_cache::{Ended, GrantCache};

    let (pty, _tmp, mut d) = tty_daemon(|_| {});

    let ended: Arc<Mutex<Vec<Ended>>> = Arc::default();
    let log = ended.clone();
    let cache = GrantCache::start_adopting(
        d.client(),
        Duration::from_millis(100),
        |g| g.vm == "vm-a",
        move |e| log.lock().unwrap().push(e.clone()),
    );
    assert!(cache.wait_subscribed(Duration::from_secs(10)));
    let c = d.client();
    let pending = thread::spawn(move || c.authenticate(&req("vm-b", 600), Duration::from_secs(60)));
    pty.wait_prompt(1);
    pty.type_line(PASSWORD);
    let other = pending.join().unwrap().grant().cloned().expect("granted");
    let (c, r) = (cache.clone(), req("vm-a", 600));
    let pending = thread::spawn(move || c.ensure(&r, Duration::from_secs(60)));
    pty.wait_prompt(2);
    pty.type_line(PASSWORD);
    let grant = pending.join().unwrap().grant().cloned().expect("granted");

    assert!(d.terminate().success());
    dropped_while_away(&cache, &ended, &grant);

    d.restart();
    assert!(
        common::wait_for(Duration::from_secs(10), || cache.live("vm-a", "alice")
            == Some(grant.clone())),
        "the grant is taken back"
    );
    assert_eq!(cache.live_grants(), vec![grant.clone()], "not {other:?}");
    let again = cache.ensure(&req("vm-a", 600), Duration::from_secs(5));
    assert_eq!(again.grant(), Some(&grant));
    assert_eq!(pty.text().matches("Password: ").count(), 2, "no new prompt");
    cache.stop();
}

/// With memory-only runtime state a stop loses the grants, so SIGTERM ends
/// them and says so. (With the default, persistent, state SIGTERM keeps
/// them for the next start: tests/restart.rs.)
#[test]
fn memory_only_sigterm_ends_every_grant_and_tells_subscribers() {
    let (pty, _tmp, mut d) = tty_daemon(|c| c.persist_runtime_state = false);
    let mut sub = d.client().subscribe(Duration::from_secs(5)).unwrap();

    let c = d.client();
    let pending = thread::spawn(move || c.authenticate(&req("vm-a", 600), Duration::from_secs(60)));
    pty.wait_prompt(1);
    pty.type_line(PASSWORD);
    let grant = pending.join().unwrap().grant().cloned().expect("granted");

    assert!(d.terminate().success(), "clean exit on SIGTERM");
    let ev = sub
        .next_event(Some(Duration::from_secs(10)))
        .unwrap()
        .expect("end event");
    assert_eq!((ev.grant, ev.cause), (grant, EndCause::Locked));
    assert!(!d.cfg.socket.exists(), "socket removed on exit");
    assert!(
        !d.cfg.state_dir.join("runtime.json").exists(),
        "memory-only: no runtime state file"
    );
}

#[test]
fn version_1_client_is_answered_in_version_1_and_its_reason_shown_as_the_guests() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;

    let (pty, _tmp, d) = tty_daemon(|_| {});
    // A client of version 1, as fsd was before version 2: raw JSON lines.
    let connect = || {
        let s = UnixStream::connect(&d.cfg.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        (BufReader::new(s.try_clone().unwrap()), s)
    };
    let read = |r: &mut BufReader<UnixStream>| {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        serde_json::from_str::<serde_json::Value>(&l).unwrap()
    };
    let (mut sub, mut sub_w) = connect();
    sub_w
        .write_all(b"{\"v\":1,\"id\":1,\"op\":\"subscribe\"}\n")
        .unwrap();
    assert_eq!(read(&mut sub)["result"], "subscribed");

    let (mut r, mut w) = connect();
    w.write_all(
        b"{\"v\":1,\"id\":2,\"op\":\"authenticate\",\"vm\":\"vm-old\",\"principal\":\"alice\",\
          \"reason\":{\"operation\":\"open\",\"path\":\"notes/secret.txt\",\"pid\":4242,\
          \"process\":\"cat\",\"pid_verified\":true},\"lifetime_secs\":60}\n",
    )
    .unwrap();
    pty.wait_prompt(1);
    let shown = pty.text();
    // Version 1 vouched for nothing: all of the reason is the guest's word,
    // and a pid_verified it cannot have meant is ignored.
    let said = shown.find("Reported by the guest").expect("guest section");
    let path = shown.find("notes/secret.txt").expect("path shown");
    assert!(said < path, "a version 1 path shown as the host's: {shown}");
    assert!(shown[said..].contains("Operation:"), "{shown}");
    assert!(shown[said..].contains("cat (pid 4242)"), "{shown}");
    pty.type_line(PASSWORD);
    let reply = read(&mut r);
    assert_eq!(
        (
            reply["v"].as_u64(),
            reply["id"].as_u64(),
            reply["result"].as_str()
        ),
        (Some(1), Some(2), Some("granted")),
        "{reply}"
    );
    let prompt = d.audit("prompt");
    assert_eq!(prompt[0]["provenance"], "guest", "{prompt:?}");
    assert_eq!(prompt[0]["reason"]["pid_verified"], false, "{prompt:?}");

    // Its subscription hears the end in version 1 too.
    authd_cli(&d, &["lock"]);
    let ev = read(&mut sub);
    assert_eq!(
        (ev["v"].as_u64(), ev["event"].as_str(), ev["cause"].as_str()),
        (Some(1), Some("grant_ended"), Some("locked")),
        "{ev}"
    );
}

/// With authd away, the cache drops vm-a's `grant` and reports it dropped,
/// and grants nothing new.
fn dropped_while_away(
    cache: &authd_client::grant_cache::GrantCache,
    ended: &Mutex<Vec<authd_client::grant_cache::Ended>>,
    grant: &authd_client::protocol::Grant,
) {
    use authd_client::grant_cache::Ended;
    // The grant leaves the cache before its end is reported: wait for both.
    assert!(common::wait_for(Duration::from_secs(10), || cache
        .live("vm-a", "alice")
        .is_none()
        && ended
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Ended::Disconnected(g) if g == grant))));
    assert!(cache
        .ensure(&req("vm-a", 600), Duration::from_secs(5))
        .grant()
        .is_none());
}
