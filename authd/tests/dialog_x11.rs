//! End-to-end tests of the trusted dialog on a real X server (Xvfb), driven
//! by xdotool as a person would drive it. Each test starts its own Xvfb and
//! its own `authd serve`. Missing programs make a test print `SKIP: …` and
//! return (under `CI=true` they fail instead).

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use authd::config::{FaillockConfig, PromptRateConfig};
use authd::dialog::render::{render, View};
use authd::dialog::{load_font, FONT_PATH};
use authd_client::client::{Decision, Denial};
use authd_client::protocol::{now_unix_ms, DenyReason, EndCause};
use common::{pixel_difference, request, Daemon, PASSWORD};

#[test]
fn right_password_after_focus_delay_grants_and_expiry_is_pushed() {
    let Some(x) = common::xvfb("right_password_after_focus_delay_grants_and_expiry_is_pushed")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    // Long enough that "typed at once" surely falls inside it.
    cfg.focus_delay_ms = 3000;
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);

    let mut sub = d.client().subscribe(Duration::from_secs(5)).unwrap();
    let pending = d.ask(2);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window appears");
    x.focus(&win);
    let focused = Instant::now();

    // Keystrokes aimed elsewhere: Enter right after focus must do nothing.
    x.type_text(PASSWORD);
    x.key("Return");
    assert!(
        Instant::now() < focused + Duration::from_millis(3000),
        "machine too slow to test the focus delay"
    );
    thread::sleep(Duration::from_millis(200));
    assert!(
        x.dialogs().contains(&win),
        "Enter inside the focus delay was not inert"
    );
    assert!(!pending.is_finished());

    // After the delay: compare the live window with the pure renderer.
    thread::sleep(
        (focused + Duration::from_millis(3600)).saturating_duration_since(Instant::now()),
    );
    let shot_path = tmp.path().join("live.png");
    let live = x.screenshot(&win, &shot_path);
    let font = load_font(std::path::Path::new(FONT_PATH)).unwrap();
    let font = ab_glyph::FontRef::try_from_slice(&font).unwrap();
    let dreq = d.shown_request();
    let expected = render(
        &View {
            request: &dreq,
            password_len: PASSWORD.chars().count(),
            ok_armed: true,
        },
        &font,
    );
    assert_eq!(
        (live.width, live.height),
        (expected.width, expected.height),
        "window size"
    );
    let diff = pixel_difference(&live.pixels, &expected.pixels);
    println!(
        "live dialog vs renderer: {:.4}% of pixels differ",
        diff * 100.0
    );
    if let Some(dest) = std::env::var_os("AUTHD_SCREENSHOT") {
        std::fs::copy(&shot_path, PathBuf::from(dest)).unwrap();
    }
    assert!(
        diff <= 0.001,
        "live window differs from the renderer in {:.3}% of pixels (see {})",
        diff * 100.0,
        shot_path.display()
    );

    x.key("Return");
    let decision = pending.join().unwrap();
    let grant = decision
        .grant()
        .unwrap_or_else(|| panic!("not granted: {decision:?}"))
        .clone();
    assert_eq!(
        (grant.vm.as_str(), grant.principal.as_str()),
        ("vm-test", "alice")
    );
    assert_eq!(grant.lifetime_secs, 2);
    assert_eq!(
        d.client().list_grants(Duration::from_secs(5)).unwrap(),
        vec![grant.clone()]
    );

    // The grant ends by itself, and the subscriber hears of it.
    let ev = sub
        .next_event(Some(Duration::from_secs(30)))
        .unwrap()
        .expect("grant-end event");
    assert_eq!(ev.grant, grant);
    assert_eq!(ev.cause, EndCause::Expired);
    assert!(now_unix_ms() >= grant.expires_at_ms);
    assert!(d
        .client()
        .list_grants(Duration::from_secs(5))
        .unwrap()
        .is_empty());

    let audit = std::fs::read_to_string(&d.cfg.audit_log).unwrap();
    assert!(
        !audit.contains(PASSWORD),
        "password leaked into the audit log"
    );
    assert_eq!(d.audit("granted").len(), 1);
}

#[test]
fn wrong_password_denies_and_leads_to_lockout() {
    let Some(x) = common::xvfb("wrong_password_denies_and_leads_to_lockout") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    cfg.focus_delay_ms = 300;
    cfg.faillock = FaillockConfig {
        deny: 2,
        fail_interval_secs: 900,
        unlock_time_secs: 600,
        delay_base_ms: 100,
        delay_max_ms: 1000,
    };
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);

    for attempt in 1..=2 {
        let pending = d.ask(60);
        let win = x
            .wait_dialog(Duration::from_secs(30))
            .expect("dialog window");
        x.focus(&win);
        thread::sleep(Duration::from_millis(600));
        x.type_text("not the password");
        x.key("Return");
        let decision = pending.join().unwrap();
        assert_eq!(
            decision.deny_reason(),
            Some(DenyReason::WrongPassword),
            "attempt {attempt}: {decision:?}"
        );
        assert!(common::wait_for(Duration::from_secs(10), || x
            .dialogs()
            .is_empty()));
    }
    // Locked: denied at once, without a prompt, even with the right password.
    let decision = d
        .client()
        .authenticate(&request(60), Duration::from_secs(30));
    match decision {
        Decision::Denied(Denial::ByDaemon {
            why: DenyReason::Locked,
            retry_after: Some(r),
        }) => assert!(r > Duration::from_secs(500), "{r:?}"),
        other => panic!("expected lockout, got {other:?}"),
    }
    assert_eq!(d.audit("prompt").len(), 2, "no prompt while locked");
    assert_eq!(d.audit("verified").len(), 2);
}

#[test]
fn prompt_flood_is_coalesced_and_rate_limited() {
    let Some(x) = common::xvfb("prompt_flood_is_coalesced_and_rate_limited") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    cfg.prompt_timeout_secs = 2;
    cfg.prompt_rate = PromptRateConfig {
        max_prompts: 3,
        window_secs: 600,
    };
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);

    // Six requests at once for the same VM and principal share one dialog.
    let burst: Vec<_> = (0..6).map(|_| d.ask(60)).collect();
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(x.dialogs().len(), 1, "one dialog per VM");
    x.focus(&win);
    x.key("Escape");
    for h in burst {
        assert_eq!(h.join().unwrap().deny_reason(), Some(DenyReason::Cancelled));
    }
    assert_eq!(d.audit("prompt").len(), 1);

    // A guest looping on authenticate gets at most max_prompts prompts.
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let decision = d
            .client()
            .authenticate(&request(60), Duration::from_secs(30));
        outcomes.push(decision.deny_reason().expect("denied"));
    }
    let timeouts = outcomes
        .iter()
        .filter(|w| **w == DenyReason::Timeout)
        .count();
    let limited = outcomes
        .iter()
        .filter(|w| **w == DenyReason::RateLimited)
        .count();
    assert_eq!((timeouts, limited), (2, 8), "{outcomes:?}");
    assert_eq!(d.audit("prompt").len(), 3);
    assert_eq!(d.audit("prompt_shown").len(), 3);
}

#[test]
fn killed_daemon_denies_and_restarts_with_store_intact() {
    let Some(x) = common::xvfb("killed_daemon_denies_and_restarts_with_store_intact") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    cfg.focus_delay_ms = 300;
    let mut d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);

    let pending = d.ask(60);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    d.kill();
    match pending.join().unwrap() {
        Decision::Denied(Denial::Failed(e)) => println!("fail closed: {e}"),
        other => panic!("expected a fail-closed denial, got {other:?}"),
    }
    assert!(
        common::wait_for(Duration::from_secs(10), || !x.dialogs().contains(&win)),
        "dialog outlived the daemon"
    );
    // While it is down, every request is denied.
    assert!(matches!(
        d.client()
            .authenticate(&request(60), Duration::from_secs(5)),
        Decision::Denied(Denial::Failed(_))
    ));

    d.restart();
    let pending = d.ask(60);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window after restart");
    x.focus(&win);
    thread::sleep(Duration::from_millis(600));
    x.type_text(PASSWORD);
    x.key("Return");
    let decision = pending.join().unwrap();
    assert!(
        decision.grant().is_some(),
        "store lost across the kill: {decision:?}"
    );
}

#[test]
fn under_a_window_manager_the_dialog_is_on_top_and_takes_focus() {
    let test = "under_a_window_manager_the_dialog_is_on_top_and_takes_focus";
    if let Some(m) = testrig::prereq::missing_program(&["openbox", "xmessage", "xprop"]) {
        testrig::skip::<(), _>(format!("{test}: {m}"));
        return;
    }
    let Some(x) = common::xvfb(test) else {
        return;
    };
    let _wm = x.run("openbox", &[]);
    let wm_up = || {
        let out = std::process::Command::new("xprop")
            .args(["-root", "_NET_SUPPORTING_WM_CHECK"])
            .env("DISPLAY", &x.display)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("window id")
    };
    assert!(
        common::wait_for(Duration::from_secs(60), wm_up),
        "openbox did not start"
    );
    // Another application has the focus when the prompt comes. A decoy
    // that does not show up is started again (at most three times), and
    // what it said is kept for the failure message.
    let mut tries = Vec::new();
    let mut decoy_proc = None;
    let mut decoy = None;
    for attempt in 0..3 {
        let log = std::env::temp_dir().join(format!("decoy-{}-{attempt}.log", std::process::id()));
        let err = std::fs::File::create(&log).unwrap();
        let mut child = testrig::Proc(
            std::process::Command::new("xmessage")
                .args(["-name", "decoy", "another application"])
                .env("DISPLAY", &x.display)
                .stdout(std::process::Stdio::null())
                .stderr(err)
                .spawn()
                .expect("spawn xmessage"),
        );
        common::wait_for(Duration::from_secs(20), || {
            let out = x.xdotool(&["search", "--onlyvisible", "--classname", "decoy"]);
            decoy = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .map(str::to_owned);
            decoy.is_some()
        });
        if decoy.is_some() {
            decoy_proc = Some(child);
            break;
        }
        let exited = child.0.try_wait().ok().flatten();
        let any = x.xdotool(&["search", "--classname", "decoy"]);
        tries.push(format!(
            "attempt {attempt}: exited {exited:?}, said {:?}, windows of that class (visible or not): {:?}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            String::from_utf8_lossy(&any.stdout)
        ));
        let _ = child.terminate(Duration::from_secs(2));
        let _ = std::fs::remove_file(&log);
    }
    let _decoy = decoy_proc;
    let decoy = decoy.unwrap_or_else(|| panic!("decoy window never shown: {tries:#?}"));
    let out = x.xdotool(&["windowactivate", "--sync", &decoy]);
    assert!(out.status.success(), "activating the decoy");
    assert!(common::wait_for(Duration::from_secs(10), || x
        .active_window()
        .as_deref()
        == Some(&decoy)));

    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);
    let pending = d.ask(60);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    assert!(
        common::wait_for(Duration::from_secs(10), || x.active_window().as_deref()
            == Some(&win)),
        "the dialog did not take focus from the decoy"
    );
    assert!(
        x.wm_state(&win).contains("_NET_WM_STATE_ABOVE"),
        "not always on top: {}",
        x.wm_state(&win)
    );

    // No explicit focusing by the test: the keyboard already goes to the dialog.
    thread::sleep(Duration::from_millis(d.cfg.focus_delay_ms + 500));
    x.type_text(PASSWORD);
    // Confirm with the mouse on OK this time.
    let ok = authd::dialog::render::OK_BUTTON;
    x.click(&win, ok.x + ok.w / 2, ok.y + ok.h / 2);
    let decision = pending.join().unwrap();
    assert!(decision.grant().is_some(), "{decision:?}");

    // Closing the window through the window manager (Alt+F4) denies.
    let pending = {
        let c = d.client();
        let mut r = request(60);
        r.vm = "vm-other".into();
        thread::spawn(move || c.authenticate(&r, Duration::from_secs(90)))
    };
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("second dialog");
    assert!(common::wait_for(Duration::from_secs(10), || x
        .active_window()
        .as_deref()
        == Some(&win)));
    x.key("alt+F4");
    assert_eq!(
        pending.join().unwrap().deny_reason(),
        Some(DenyReason::Cancelled)
    );
}
