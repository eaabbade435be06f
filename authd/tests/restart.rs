//! Restarts of the real daemon with the same runtime state directory: live
//! grants and failure counts survive SIGTERM and a new start, expired and
//! revoked grants do not, and a state file that cannot be trusted restores
//! no grant and locks every enrolled principal out. The grants come from
//! real dialogs on Xvfb, answered through xdotool; the rest needs no
//! display.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use authd::config::{FaillockConfig, FrontendKind};
use authd_client::client::{AuthRequest, ClientError, Decision, Denial};
use authd_client::protocol::{now_unix_ms, DenyReason, Grant, RevokeScope};
use common::{request, Daemon, Xvfb, PASSWORD};

const T: Duration = Duration::from_secs(10);

/// `principal`'s request for `vm`, asked on a thread.
fn ask(d: &Daemon, vm: &str, principal: &str, lifetime_secs: u64) -> JoinHandle<Decision> {
    let client = d.client();
    let req = AuthRequest {
        vm: vm.into(),
        principal: principal.into(),
        reason: common::reason(),
        lifetime: Duration::from_secs(lifetime_secs),
    };
    thread::spawn(move || client.authenticate(&req, Duration::from_secs(90)))
}

/// Plays the person: waits for the dialog, types `text` after the focus
/// delay, presses Enter and waits for the dialog to go.
fn answer(x: &Xvfb, d: &Daemon, pending: JoinHandle<Decision>, text: &str) -> Decision {
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    x.focus(&win);
    thread::sleep(Duration::from_millis(d.cfg.focus_delay_ms + 300));
    x.type_text(text);
    x.key("Return");
    let decision = pending.join().unwrap();
    assert!(
        x.wait_gone(&win, Duration::from_secs(10)),
        "dialog stayed up"
    );
    decision
}

fn granted(decision: Decision) -> Grant {
    decision
        .grant()
        .unwrap_or_else(|| panic!("not granted: {decision:?}"))
        .clone()
}

fn locked_for(decision: &Decision) -> Duration {
    match decision {
        Decision::Denied(Denial::ByDaemon {
            why: DenyReason::Locked,
            retry_after: Some(r),
        }) => *r,
        other => panic!("expected a lockout, got {other:?}"),
    }
}

fn state_file(d: &Daemon) -> std::path::PathBuf {
    d.cfg.state_dir.join("runtime.json")
}

#[test]
fn a_restart_keeps_live_grants_and_failure_counts() {
    let Some(x) = common::xvfb("a_restart_keeps_live_grants_and_failure_counts") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    cfg.focus_delay_ms = 300;
    cfg.faillock = FaillockConfig {
        deny: 3,
        fail_interval_secs: 900,
        unlock_time_secs: 600,
        delay_base_ms: 100,
        delay_max_ms: 1000,
    };
    let mut d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);
    d.enroll("bob", PASSWORD);

    let long = granted(answer(&x, &d, d.ask(600), PASSWORD));
    for attempt in 1..=2 {
        let decision = answer(&x, &d, ask(&d, "vm-bob", "bob", 60), "not the password");
        assert_eq!(
            decision.deny_reason(),
            Some(DenyReason::WrongPassword),
            "attempt {attempt}"
        );
    }
    // Ends while authd is down.
    let short = granted(answer(&x, &d, ask(&d, "vm-short", "alice", 3), PASSWORD));
    let mut sub = d.client().subscribe(T).unwrap();

    assert!(d.terminate().success(), "clean exit on SIGTERM");
    // A restart is no revocation: no grant-end event, the connection closes.
    match sub.next_event(Some(T)) {
        Err(ClientError::Disconnected) => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
    let file = state_file(&d);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    let mut ids: Vec<&str> = saved["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![long.id.as_str(), short.id.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "both grants saved: {saved}");
    assert_eq!(
        saved["faillock"]["bob"]["failures_ms"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    while now_unix_ms() <= short.expires_at_ms + 200 {
        thread::sleep(Duration::from_millis(100));
    }
    d.restart();
    let prompts = d.audit("prompt").len();

    // The live grant is back, the same grant, and serves without a prompt.
    assert_eq!(d.client().list_grants(T).unwrap(), vec![long.clone()]);
    let again = granted(d.client().authenticate(&request(600), T));
    assert_eq!(again, long);
    assert_eq!(d.audit("prompt").len(), prompts, "no new prompt");
    let last = d.audit("granted").pop().unwrap();
    assert_eq!(last["reused"], true, "{last}");
    // The short grant ran out while authd was down: gone, and its end is
    // in the audit log.
    assert!(d
        .audit("grant_ended")
        .iter()
        .any(|r| r["grant"]["id"] == short.id.as_str() && r["cause"] == "expired"));
    let restored = d.audit("state_restored");
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(
        (
            &restored[0]["grants"],
            &restored[0]["expired"],
            &restored[0]["principals"]
        ),
        (&1.into(), &1.into(), &1.into()),
        "{restored:?}"
    );

    // bob's two failures before the restart still count: the third locks.
    let decision = answer(&x, &d, ask(&d, "vm-bob", "bob", 60), "still not it");
    assert_eq!(decision.deny_reason(), Some(DenyReason::WrongPassword));
    let prompts = d.audit("prompt").len();
    let r = locked_for(&d.client().authenticate(
        &AuthRequest {
            principal: "bob".into(),
            ..request(60)
        },
        T,
    ));
    assert!(r > Duration::from_secs(500), "{r:?}");
    assert_eq!(d.audit("prompt").len(), prompts, "no prompt while locked");

    // Revocation ends a grant for good; the lockout outlives a restart too.
    assert_eq!(
        d.client()
            .revoke(RevokeScope::Grant(long.id.clone()), T)
            .unwrap(),
        1
    );
    assert!(d.terminate().success());
    d.restart();
    assert!(d.client().list_grants(T).unwrap().is_empty());
    let r = locked_for(&d.client().authenticate(
        &AuthRequest {
            principal: "bob".into(),
            ..request(60)
        },
        T,
    ));
    assert!(r > Duration::from_secs(500), "{r:?}");
    assert!(x.dialogs().is_empty());
}

/// A daemon without a way to prompt: whatever it grants or refuses comes
/// from its state.
fn headless(dir: &Path) -> authd::config::Config {
    let mut cfg = Daemon::config(dir);
    cfg.frontend = FrontendKind::Tty; // and no tty configured
    cfg
}

#[test]
fn an_unusable_state_file_restores_no_grant_and_locks_everyone_out() {
    let torn = format!(
        "{{\"version\":1,\"grants\":[{{\"id\":\"{}\",\"vm\":\"vm-test\",\"principal\":\"alice\",\"expires_at",
        "ab".repeat(16)
    );
    let newer = format!(
        "{{\"version\":99,\"grants\":[{{\"id\":\"{}\",\"vm\":\"vm-test\",\"principal\":\"alice\",\
         \"expires_at_ms\":{},\"lifetime_secs\":600}}]}}",
        "ab".repeat(16),
        now_unix_ms() + 600_000
    );
    for (what, content, mode) in [
        ("torn", torn.as_str(), 0o600),
        ("newer version", newer.as_str(), 0o600),
        ("readable by others", newer.as_str(), 0o644),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = headless(tmp.path());
        common::enroll(&cfg.state_dir, "alice", PASSWORD);
        common::enroll(&cfg.state_dir, "bob", PASSWORD);
        let file = cfg.state_dir.join("runtime.json");
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();

        let mut d = Daemon::start(tmp.path(), cfg);
        assert!(
            d.client().list_grants(T).unwrap().is_empty(),
            "{what}: no grant restored"
        );
        for principal in ["alice", "bob"] {
            let r = locked_for(&d.client().authenticate(
                &AuthRequest {
                    principal: principal.into(),
                    ..request(60)
                },
                T,
            ));
            assert!(r > Duration::from_secs(500), "{what}: {principal}: {r:?}");
        }
        let unusable = d.audit("state_unusable");
        assert_eq!(unusable.len(), 1, "{what}: {unusable:?}");
        assert_eq!(unusable[0]["locked"], serde_json::json!(["alice", "bob"]));
        // Kept for inspection; a sound file in its place.
        let bad = d.cfg.state_dir.join("runtime.json.bad");
        assert_eq!(std::fs::read_to_string(&bad).unwrap(), content, "{what}");
        let now: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(now["version"], 1, "{what}");
        assert!(now["grants"].as_array().unwrap().is_empty(), "{what}");

        // The lockouts are in the new file: a restart keeps them.
        assert!(d.terminate().success());
        d.restart();
        let r = locked_for(&d.client().authenticate(&request(60), T));
        assert!(r > Duration::from_secs(500), "{what}: {r:?}");
        assert!(
            d.audit("state_unusable").len() == 1,
            "{what}: read fine now"
        );
    }
}

#[test]
fn saved_grants_of_an_earlier_boot_are_not_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = headless(tmp.path());
    common::enroll(&cfg.state_dir, "alice", PASSWORD);
    let file = cfg.state_dir.join("runtime.json");
    let saved = serde_json::json!({
        "version": 1,
        "boot_id": "00000000-0000-0000-0000-000000000000",
        "saved_at_ms": now_unix_ms(),
        "grants": [{
            "id": "ab".repeat(16),
            "vm": "vm-test",
            "principal": "alice",
            "expires_at_ms": now_unix_ms() + 600_000,
            "lifetime_secs": 600,
        }],
        "faillock": {"alice": {"failures_ms": [now_unix_ms()], "locked_until_ms": null}},
        "prompts": {},
    });
    std::fs::write(&file, saved.to_string()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let d = Daemon::start(tmp.path(), cfg);
    assert!(d.client().list_grants(T).unwrap().is_empty());
    let restored = d.audit("state_restored");
    assert_eq!(restored[0]["dropped"], 1, "{restored:?}");
    assert_eq!(restored[0]["grants_dropped"], "rebooted", "{restored:?}");
    // Counters survive a reboot.
    assert_eq!(restored[0]["principals"], 1, "{restored:?}");
}
