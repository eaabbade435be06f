//! The question dialog (`confirm`: a host service such as the packet filter
//! asks "process X (uid U) in VM V wants to connect to D:P") on a real X
//! server, driven by xdotool: Allow always by a click, Allow once by Enter
//! after the focus delay, Esc denies; the live window equals the renderer
//! and the answers are audited. Missing programs make it print `SKIP: …`.

mod common;

use std::thread;
use std::time::Duration;

use authd::dialog::render::{render, View, ALWAYS_BUTTON, DENY_BUTTON, ONCE_BUTTON};
use authd::dialog::{load_font, DialogRequest, FONT_PATH};
use authd::seal::Seal;
use authd_client::client::Denial;
use authd_client::protocol::{Choice, DenyReason, Provenance, Reason};
use common::{Daemon, PASSWORD};

const QUESTION: &str =
    "process wget [731] (/usr/bin/wget) (uid 1000) in VM vm-test wants to connect to 192.0.2.1:80 over TCP";

fn confirm(d: &Daemon) -> thread::JoinHandle<Result<Choice, Denial>> {
    let client = d.client();
    thread::spawn(move || client.confirm("vm-test", "alice", QUESTION, Duration::from_secs(90)))
}

fn centre(r: authd::dialog::render::Rect) -> (i32, i32) {
    (r.x + r.w / 2, r.y + r.h / 2)
}

#[test]
fn questions_are_answered_once_always_or_denied() {
    let Some(x) = common::xvfb("questions_are_answered_once_always_or_denied") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    cfg.focus_delay_ms = 300;
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);

    // Allow always, by a click after the focus delay; the window is the
    // renderer's picture.
    let pending = confirm(&d);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    x.focus(&win);
    thread::sleep(Duration::from_millis(900));
    let shot = std::env::var_os("CONFIRM_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("question.png"));
    let live = x.screenshot(&win, &shot);
    let font = load_font(std::path::Path::new(FONT_PATH)).unwrap();
    let font = ab_glyph::FontRef::try_from_slice(&font).unwrap();
    let dreq = DialogRequest {
        vm: "vm-test".into(),
        principal: "alice".into(),
        reason: Reason {
            operation: "confirm".into(),
            ..Reason::default()
        },
        seal: Seal::new(common::PHRASE, common::COLOR.parse().unwrap()).unwrap(),
        timeout_secs: d.cfg.prompt_timeout_secs,
        focus_delay_ms: d.cfg.focus_delay_ms,
        question: Some(QUESTION.into()),
        vm_window_titles: Vec::new(),
        provenance: Provenance::Host,
    };
    let expected = render(
        &View {
            request: &dreq,
            password_len: 0,
            ok_armed: true,
        },
        &font,
    );
    let differ = live
        .pixels
        .iter()
        .zip(&expected.pixels)
        .filter(|(a, b)| {
            (0..3).any(|i| ((**a >> (8 * i)) & 0xff).abs_diff((**b >> (8 * i)) & 0xff) > 2)
        })
        .count();
    println!(
        "live question dialog vs renderer: {:.4}% of pixels differ",
        differ as f64 * 100.0 / expected.pixels.len() as f64
    );
    assert!(
        differ * 100 < expected.pixels.len(),
        "{differ} pixels differ"
    );
    let (cx, cy) = centre(ALWAYS_BUTTON);
    x.click(&win, cx, cy);
    assert_eq!(pending.join().unwrap().unwrap(), Choice::Always);

    // Allow once, by Enter.
    let pending = confirm(&d);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    x.focus(&win);
    thread::sleep(Duration::from_millis(900));
    x.key("Return");
    assert_eq!(pending.join().unwrap().unwrap(), Choice::Once);

    // Deny, by the Deny button; and Esc.
    let pending = confirm(&d);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    x.focus(&win);
    thread::sleep(Duration::from_millis(900));
    let (cx, cy) = centre(DENY_BUTTON);
    x.click(&win, cx, cy);
    match pending.join().unwrap() {
        Err(Denial::ByDaemon {
            why: DenyReason::Cancelled,
            ..
        }) => {}
        other => panic!("expected a denial, got {other:?}"),
    }
    let pending = confirm(&d);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    x.focus(&win);
    x.key("Escape");
    assert!(pending.join().unwrap().is_err());

    let confirmed = d.audit("confirmed");
    assert_eq!(confirmed.len(), 2, "{confirmed:?}");
    assert_eq!(confirmed[0]["choice"], "always");
    assert_eq!(confirmed[0]["question"], QUESTION);
    assert_eq!(confirmed[1]["choice"], "once");
    assert_eq!(d.audit("confirm_denied").len(), 2);
    // Typing a password into a question does nothing; no grant was made.
    assert!(d
        .client()
        .list_grants(Duration::from_secs(5))
        .unwrap()
        .is_empty());
    let _ = ONCE_BUTTON;
}

#[test]
fn questions_without_a_principal_or_a_display_are_denied() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    // The terminal only, and no terminal: nowhere to ask, whatever $DISPLAY says.
    cfg.frontend = authd::config::FrontendKind::Tty;
    cfg.tty = None;
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);
    let c = d.client();
    let t = Duration::from_secs(10);
    let why = |r: Result<Choice, Denial>| match r {
        Err(Denial::ByDaemon { why, .. }) => why,
        other => panic!("expected a denial, got {other:?}"),
    };
    assert_eq!(
        why(c.confirm("vm-test", "bob", QUESTION, t)),
        DenyReason::UnknownPrincipal
    );
    assert_eq!(
        why(c.confirm("vm-test", "alice", "", t)),
        DenyReason::BadRequest
    );
    assert_eq!(
        why(c.confirm("vm-test", "alice", "two\nlines", t)),
        DenyReason::BadRequest
    );
    // This daemon has neither a display nor a terminal.
    assert_eq!(
        why(c.confirm("vm-test", "alice", QUESTION, t)),
        DenyReason::NoFrontend
    );
}
