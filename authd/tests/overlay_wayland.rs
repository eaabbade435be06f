//! The dialog overlays the asking VM's own window under Wayland: a private
//! headless sway (wlroots, which offers the layer shell) with two real
//! QEMU windows (`-display gtk` as Wayland clients, tiled side by side,
//! titled "QEMU (other-vm) [Paused]" and "QEMU (vm-test) [Paused]"), a
//! prompt for vm-test, and the overlay must show, pixel for pixel, the pure
//! renderer's picture centred on vm-test's window (not the other VM's, not
//! the output's centre). Keys come from wtype's virtual keyboard: Enter
//! inside the focus delay is inert, after it the password is granted.
//! Missing programs make it print `SKIP: …`.

mod common;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use authd::dialog::anchor::{centred, Rect};
use authd::dialog::render::{render, View, HEIGHT, WIDTH};
use authd::dialog::{load_font, FONT_PATH};
use common::{pixel_difference, qemu_has_gtk, Daemon, PASSWORD, QEMU};
use testrig::wayland::{Sway, OUTPUT};
use testrig::x11::Image;

/// A paused QEMU (no CPU spent) showing an empty machine in a GTK window;
/// returns it once sway shows its window.
fn vm_window(sway: &Sway, name: &str) -> testrig::process::Proc {
    let qemu = sway.run(
        QEMU,
        &[
            "-name",
            name,
            "-display",
            "gtk",
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-m",
            "32",
            "-nodefaults",
            "-vga",
            "std",
            "-S",
        ],
    );
    let title = format!("QEMU ({name}) [Paused]");
    assert!(
        common::wait_for(Duration::from_secs(60), || sway
            .windows()
            .iter()
            .any(|w| w.title == title)),
        "QEMU's window for {name} did not appear"
    );
    qemu
}

fn rect(r: (i32, i32, u32, u32)) -> Rect {
    Rect {
        x: r.0,
        y: r.1,
        width: r.2,
        height: r.3,
    }
}

#[test]
fn overlay_is_centred_over_the_asking_vms_window_under_sway() {
    let test = "overlay_is_centred_over_the_asking_vms_window_under_sway";
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
    let Some(sway) = Sway::start(test, &[Path::new(FONT_PATH)]) else {
        return;
    };
    // other-vm first, then vm-test, which sway tiles to its right.
    let _other = vm_window(&sway, "other-vm");
    let _vm = vm_window(&sway, "vm-test");
    // The layout settles (title bars, the split) after the windows map:
    // take it once two looks a while apart agree.
    let mut windows = sway.windows();
    assert!(common::wait_for(Duration::from_secs(20), || {
        thread::sleep(Duration::from_millis(500));
        let now = sway.windows();
        std::mem::replace(&mut windows, now) == windows
    }));
    let find = |name: &str| {
        windows
            .iter()
            .find(|w| w.title == format!("QEMU ({name}) [Paused]"))
            .map(|w| rect(w.rect))
            .unwrap()
    };
    let (vm_rect, other_rect) = (find("vm-test"), find("other-vm"));
    println!("VM windows: vm-test {vm_rect:?}; other-vm {other_rect:?}");
    let output = Rect {
        x: 0,
        y: 0,
        width: OUTPUT.0,
        height: OUTPUT.1,
    };
    let size = (WIDTH, HEIGHT);
    let want = centred(size, vm_rect, output);
    let elsewhere = [
        centred(size, other_rect, output),
        centred(size, output, output),
    ];
    assert!(
        !elsewhere.contains(&want),
        "test layout cannot tell the places apart"
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.wayland_display = Some(sway.socket.clone());
    cfg.xdg_runtime_dir = Some(sway.runtime_dir.clone());
    cfg.sway_socket = Some(sway.ipc.clone());
    cfg.focus_delay_ms = 1500;
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);

    let pending = d.ask(60);

    let font = load_font(Path::new(FONT_PATH)).unwrap();
    let font = ab_glyph::FontRef::try_from_slice(&font).unwrap();
    let dreq = d.shown_request();
    let picture = |password_len, ok_armed| {
        render(
            &View {
                request: &dreq,
                password_len,
                ok_armed,
            },
            &font,
        )
    };
    let shot = tmp.path().join("screen.png");
    let at_place = |img: &Image| img.crop(want.0 as u32, want.1 as u32, size.0, size.1);
    // Waits until the output shows exactly `expected` where the dialog
    // belongs; the last difference when it never does. Exactly: the
    // overlay's buffer reaches the output unscaled and opaque, and a
    // tolerance would let a picture missing the last typed bullets pass.
    let shows = |expected: &authd::dialog::render::Frame| {
        let mut diff = 1.0;
        common::wait_for(Duration::from_secs(30), || {
            diff = pixel_difference(&at_place(&sway.screenshot(&shot)).pixels, &expected.pixels);
            diff == 0.0
        });
        diff
    };

    // The overlay appears where vm-test's window is, empty and unarmed
    // (no keyboard has focused it yet).
    let diff = shows(&picture(0, false));
    assert!(
        diff == 0.0,
        "the output at {want:?} is not the dialog: {:.3}% differ ({})",
        diff * 100.0,
        shot.display()
    );

    // A keyboard appears and presses Enter at once: inside the focus delay.
    assert!(sway.wtype(&["-k", "Return"]).status.success());
    thread::sleep(Duration::from_millis(300));
    assert!(
        !pending.is_finished(),
        "Enter inside the focus delay was not inert"
    );

    // Typed after the delay; the keyboard stays while the picture is checked.
    let mut typing = sway.wtype_spawn(&["-s", "2000", PASSWORD, "-s", "30000"]);
    let expected = picture(PASSWORD.chars().count(), true);
    let diff = shows(&expected);
    let dest = std::env::var_os("AUTHD_OVERLAY_WAYLAND_SCREENSHOT").map(PathBuf::from);
    if let Some(dest) = &dest {
        std::fs::copy(&shot, dest).unwrap();
    }
    println!(
        "output at the dialog's place {want:?} vs renderer: {:.4}% of pixels differ ({})",
        diff * 100.0,
        dest.as_deref().unwrap_or(&shot).display()
    );
    assert!(
        diff == 0.0,
        "the overlay differs from the renderer in {:.3}% of pixels",
        diff * 100.0
    );
    typing.terminate(Duration::from_secs(5));

    // The daemon's log says where the dialog went and why.
    let log = std::fs::read_to_string(tmp.path().join("authd.log")).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.starts_with("authd-dialog: centred over \"QEMU (vm-test) [Paused]\""))
        .unwrap_or_else(|| panic!("no placement line in the daemon's log:\n{log}"));
    println!("log: {line}");

    // A new keyboard focuses it anew: Enter after the delay grants.
    assert!(sway.wtype(&["-s", "2500", "-k", "Return"]).status.success());
    let decision = pending.join().unwrap();
    assert!(decision.grant().is_some(), "not granted: {decision:?}");
}

/// Where `frame` appears, pixel for pixel, in `img`.
fn find(img: &Image, frame: &authd::dialog::render::Frame) -> Option<(u32, u32)> {
    let (fw, fh) = (frame.width, frame.height);
    if fw > img.width || fh > img.height {
        return None;
    }
    for y in 0..=img.height - fh {
        for x in 0..=img.width - fw {
            let row = |r: u32| {
                let start = ((y + r) * img.width + x) as usize;
                img.pixels[start..start + fw as usize]
                    == frame.pixels[(r * fw) as usize..((r + 1) * fw) as usize]
            };
            if img.pixel(x, y) == frame.pixels[0] && (0..fh).all(row) {
                return Some((x, y));
            }
        }
    }
    None
}

/// weston offers no layer shell: the dialog is winit's top-level window,
/// placed by weston, and still exactly the renderer's picture; nobody
/// answers, so the prompt times out and is denied.
#[test]
fn without_a_layer_shell_the_dialog_is_a_top_level_window() {
    let test = "without_a_layer_shell_the_dialog_is_a_top_level_window";
    let Some(weston) = testrig::wayland::Weston::start(test, &[Path::new(FONT_PATH)]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.wayland_display = Some(weston.socket.clone());
    cfg.xdg_runtime_dir = Some(weston.runtime_dir.clone());
    cfg.prompt_timeout_secs = 15;
    cfg.focus_delay_ms = 1000;
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);
    let pending = d.ask(60);

    let font = load_font(Path::new(FONT_PATH)).unwrap();
    let font = ab_glyph::FontRef::try_from_slice(&font).unwrap();
    let dreq = d.shown_request();
    // Armed or not depends on whether weston gives it the keyboard; either
    // way it is one of the renderer's two pictures.
    let pictures = [false, true].map(|ok_armed| {
        render(
            &View {
                request: &dreq,
                password_len: 0,
                ok_armed,
            },
            &font,
        )
    });
    let shot = std::env::var_os("AUTHD_TOPLEVEL_WAYLAND_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("screen.png"));
    let mut at = None;
    common::wait_for(Duration::from_secs(12), || {
        let img = weston.screenshot(&shot);
        at = pictures
            .iter()
            .zip([false, true])
            .find_map(|(p, armed)| find(&img, p).map(|xy| (xy, armed)));
        at.is_some()
    });
    let ((x, y), armed) = at.unwrap_or_else(|| {
        panic!(
            "the renderer's picture is nowhere on the output ({})",
            shot.display()
        )
    });
    println!(
        "top-level window at {x},{y} (OK {}): 0 pixels differ from the renderer ({})",
        if armed { "armed" } else { "inert" },
        shot.display()
    );

    let log = std::fs::read_to_string(tmp.path().join("authd.log")).unwrap_or_default();
    assert!(
        log.contains(
            "authd-dialog: the Wayland compositor offers no layer shell: a top-level window"
        ),
        "no fallback line in the daemon's log:\n{log}"
    );
    let decision = pending.join().unwrap();
    assert!(
        decision.grant().is_none(),
        "nobody answered, yet: {decision:?}"
    );
}
