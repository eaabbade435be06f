//! The dialog overlays the asking VM's own window on X11: two real QEMU
//! windows (`-display gtk`, titled "QEMU (vm-test) [Paused]" and
//! "QEMU (other-vm) [Paused]") on a private Xvfb, bare and under openbox,
//! a prompt for vm-test, and the dialog must appear centred on vm-test's
//! window (not the other VM's, not the screen's centre) and above it: the
//! screen's pixels where the dialog sits equal the pure renderer's
//! picture. Missing programs make it print `SKIP: …`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use authd::dialog::anchor::{centred, Rect};
use authd::dialog::render::{render, View, HEIGHT, WIDTH};
use authd::dialog::{load_font, FONT_PATH};
use common::{pixel_difference, qemu_has_gtk, Daemon, PASSWORD, QEMU};
use testrig::x11::windows_on;

/// A paused QEMU (no CPU spent) showing an empty machine in a GTK window
/// titled "QEMU (name) [Paused]".
fn vm_window(x: &common::Xvfb, name: &str) -> (testrig::process::Proc, String) {
    let qemu = x.run(
        QEMU,
        &[
            "-name", name, "-display", "gtk", "-machine", "pc", "-accel", "tcg",
        ]
        .iter()
        .chain(&["-m", "32", "-nodefaults", "-vga", "std", "-S"])
        .copied()
        .collect::<Vec<_>>(),
    );
    // -S: paused, so GTK titles it "QEMU (name) [Paused]".
    let title = format!("QEMU \\({name}\\).*");
    let mut win = None;
    assert!(
        common::wait_for(Duration::from_secs(60), || {
            win = windows_on(&x.display, &title).into_iter().next();
            win.is_some()
        }),
        "QEMU's window for {name} did not appear"
    );
    (qemu, win.unwrap())
}

#[test]
fn dialog_is_centred_over_the_asking_vms_window() {
    overlay("dialog_is_centred_over_the_asking_vms_window", false);
}

#[test]
fn under_a_window_manager_the_dialog_is_centred_over_the_vms_window() {
    overlay(
        "under_a_window_manager_the_dialog_is_centred_over_the_vms_window",
        true,
    );
}

/// The window manager's frame around `win`: (left, right, top, bottom).
fn frame_extents(x: &common::Xvfb, win: &str) -> (i32, i32, i32, i32) {
    let out = Command::new("xprop")
        .args(["-id", win, "_NET_FRAME_EXTENTS"])
        .env("DISPLAY", &x.display)
        .output()
        .expect("xprop");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<i32> = text
        .split('=')
        .nth(1)
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    match v[..] {
        [l, r, t, b] => (l, r, t, b),
        _ => (0, 0, 0, 0),
    }
}

/// Two QEMU windows, a prompt for vm-test; under openbox when `with_wm`.
fn overlay(test: &str, with_wm: bool) {
    if let Some(m) = testrig::prereq::missing_program(&[QEMU]) {
        testrig::skip::<(), _>(format!("{test}: {m}"));
        return;
    }
    if !qemu_has_gtk() {
        testrig::skip::<(), _>(format!(
            "{test}: {QEMU} has no GTK display (qemu-system-gui)"
        ));
        return;
    }
    if with_wm {
        if let Some(m) = testrig::prereq::missing_program(&["openbox", "xprop"]) {
            testrig::skip::<(), _>(format!("{test}: {m}"));
            return;
        }
    }
    let Some(x) = common::xvfb(test) else {
        return;
    };
    let _wm = with_wm.then(|| {
        let wm = x.run("openbox", &[]);
        let wm_up = || {
            let out = Command::new("xprop")
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
        wm
    });
    // Two VMs: the other one's window first, at the origin; vm-test's
    // moved away from both the origin and the screen's centre.
    let (_other, other_win) = vm_window(&x, "other-vm");
    let (_vm, vm_win) = vm_window(&x, "vm-test");
    assert!(x
        .xdotool(&["windowmove", &vm_win, "330", "220"])
        .status
        .success());
    // A window manager puts its frame there, and the window inside it.
    let mut at = (0, 0, 0, 0);
    assert!(
        common::wait_for(Duration::from_secs(10), || {
            at = x.geometry(&vm_win);
            (330..=360).contains(&at.0) && (220..=290).contains(&at.1)
        }),
        "vm-test's window did not move: {at:?}"
    );
    let (vx, vy, vw, vh) = x.geometry(&vm_win);
    let (ox, oy, ow, oh) = x.geometry(&other_win);
    println!("VM windows: vm-test {vw}x{vh} at {vx},{vy}; other-vm {ow}x{oh} at {ox},{oy}");

    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    cfg.focus_delay_ms = 300;
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);

    let pending = d.ask(60);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window appears");

    // Where it must be: centred on vm-test's window, which differs from
    // centred on the other VM's window and from the screen's centre.
    let screen = Rect {
        x: 0,
        y: 0,
        width: 1024,
        height: 768,
    };
    let size = (WIDTH, HEIGHT);
    let vm_rect = Rect {
        x: vx,
        y: vy,
        width: vw,
        height: vh,
    };
    let want = centred(size, vm_rect, screen);
    let elsewhere = [
        centred(
            size,
            Rect {
                x: ox,
                y: oy,
                width: ow,
                height: oh,
            },
            screen,
        ),
        centred(size, screen, screen),
    ];
    assert!(
        !elsewhere.contains(&want),
        "test layout cannot tell the places apart"
    );
    let (dx, dy, dw, dh) = x.geometry(&win);
    println!(
        "dialog {dw}x{dh} at {dx},{dy}; centred on vm-test's window: {},{}",
        want.0, want.1
    );
    // Under a window manager, the dialog's frame is moved once its width is
    // known, so that the dialog itself (not its frame) is centred.
    let mut at = (dx, dy);
    common::wait_for(Duration::from_secs(10), || {
        let g = x.geometry(&win);
        at = (g.0, g.1);
        at == want
    });
    let (left, _, top, _) = frame_extents(&x, &win);
    println!("dialog's frame extents: left {left}, top {top}; dialog at {at:?}");
    assert_eq!(at, want, "dialog is not centred on vm-test's window");
    let (dx, dy) = at;
    assert_eq!((dw, dh), size);

    // Typed after the focus delay, so OK is live in both pictures.
    x.focus(&win);
    thread::sleep(Duration::from_millis(900));
    x.type_text(PASSWORD);
    thread::sleep(Duration::from_millis(300));

    // Above the VM: the screen where the dialog sits shows the renderer's
    // picture, not QEMU's window.
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
    // The picture in docs/ is the one with window frames and titles.
    let shot = std::env::var_os("AUTHD_OVERLAY_SCREENSHOT")
        .filter(|_| with_wm)
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("screen.png"));
    let screen_img = x.screenshot_screen(&shot);
    let on_screen = screen_img.crop(dx as u32, dy as u32, dw, dh);
    let diff = pixel_difference(&on_screen.pixels, &expected.pixels);
    println!(
        "screen at the dialog's place vs renderer: {:.4}% of pixels differ ({})",
        diff * 100.0,
        shot.display()
    );
    assert!(
        diff <= 0.001,
        "the screen there is not the dialog: {:.3}% differ",
        diff * 100.0
    );

    // The daemon's log says where the dialog went and why.
    let log = std::fs::read_to_string(tmp.path().join("authd.log")).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.starts_with("authd-dialog: centred over \"QEMU (vm-test) [Paused]\""))
        .unwrap_or_else(|| panic!("no placement line in the daemon's log:\n{log}"));
    println!("log: {line}");

    x.key("Return");
    let decision = pending.join().unwrap();
    assert!(decision.grant().is_some(), "not granted: {decision:?}");
}

/// No window of the asking VM on the display (only another VM's): the
/// dialog is centred on the screen, and the daemon's log says why.
#[test]
fn without_the_vms_window_the_dialog_is_centred_on_the_screen() {
    let test = "without_the_vms_window_the_dialog_is_centred_on_the_screen";
    if let Some(m) = testrig::prereq::missing_program(&[QEMU]) {
        testrig::skip::<(), _>(format!("{test}: {m}"));
        return;
    }
    if !qemu_has_gtk() {
        testrig::skip::<(), _>(format!(
            "{test}: {QEMU} has no GTK display (qemu-system-gui)"
        ));
        return;
    }
    let Some(x) = common::xvfb(test) else {
        return;
    };
    let (_other, _) = vm_window(&x, "vm-test-2");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);
    let pending = d.ask(60);
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window appears");
    let screen = Rect {
        x: 0,
        y: 0,
        width: 1024,
        height: 768,
    };
    let (dx, dy, _, _) = x.geometry(&win);
    assert_eq!((dx, dy), centred((WIDTH, HEIGHT), screen, screen));
    let log = std::fs::read_to_string(tmp.path().join("authd.log")).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.starts_with("authd-dialog: no window of VM \"vm-test\" matches"))
        .unwrap_or_else(|| panic!("no fallback line in the daemon's log:\n{log}"));
    assert!(line.ends_with(": centred on the screen"), "{line}");
    println!("dialog at {dx},{dy}; log: {line}");
    x.focus(&win);
    x.key("Escape");
    let decision = pending.join().unwrap();
    assert!(decision.grant().is_none(), "Esc granted: {decision:?}");
}
