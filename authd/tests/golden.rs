//! The pure renderer against golden images in `tests/golden/`. The goldens
//! were rendered with Debian 12's fonts-dejavu-core (DejaVu Sans 2.37) and
//! reviewed by eye; regenerate them after a deliberate change of the look
//! with `AUTHD_BLESS=1 cargo test -p authd --test golden` and review the diff.

mod common;

use std::path::{Path, PathBuf};

use ab_glyph::FontRef;
use authd::dialog::render::{render, Frame, View, HEIGHT, OK_BUTTON, WIDTH};
use authd::dialog::{load_font, DialogRequest, FONT_PATH};
use authd::seal::{Rgb, Seal};
use authd_client::protocol::{Provenance, Reason};

fn font_bytes(test: &str) -> Option<Vec<u8>> {
    if !Path::new(FONT_PATH).exists() {
        return testrig::skip(format!(
            "{test}: {FONT_PATH} missing (apt: fonts-dejavu-core)"
        ));
    }
    Some(load_font(Path::new(FONT_PATH)).unwrap())
}

fn typical() -> DialogRequest {
    DialogRequest {
        vm: "vm-work".into(),
        principal: "alice".into(),
        reason: common::reason(),
        provenance: Provenance::Host,
        seal: Seal::new("purple owl at dawn", Rgb(0x6a, 0x1b, 0x9a)).unwrap(),
        timeout_secs: 60,
        focus_delay_ms: 1000,
        question: None,
        vm_window_titles: Vec::new(),
    }
}

/// A protocol version 1 request: its caller vouched for nothing, so the
/// whole reason is shown as the guest's word (as every request was before
/// version 2).
fn version_1() -> DialogRequest {
    DialogRequest {
        reason: Reason {
            path: "/home/alice/notes/secret.txt".into(),
            ..common::reason()
        },
        provenance: Provenance::Guest,
        ..typical()
    }
}

/// A hostile guest: the operation is fsd's, but the guest named the files
/// (a control sequence, a right-to-left override to reorder what the user
/// reads, an overlong path) and the process; and a pale seal colour.
fn hostile() -> DialogRequest {
    DialogRequest {
        vm: "vm-untrusted-with-a-rather-long-name".into(),
        principal: "bob".into(),
        reason: Reason {
            operation: "unlink".into(),
            path: format!("\u{1b}[2Jbob/\u{202e}txt.exe/{}", "deep/".repeat(40)),
            pid: u32::MAX,
            process: "sh\nOK".into(),
            pid_verified: false,
        },
        provenance: Provenance::Host,
        seal: Seal::new("Yellow Submarine 42", Rgb(0xff, 0xe0, 0x40)).unwrap(),
        timeout_secs: 30,
        focus_delay_ms: 1000,
        question: None,
        vm_window_titles: Vec::new(),
    }
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check(name: &str, frame: &Frame) {
    let path = golden(name);
    if std::env::var_os("AUTHD_BLESS").is_some() {
        common::write_png(&path, frame.width, frame.height, &frame.pixels);
        println!("wrote {}", path.display());
        return;
    }
    let (w, h, px) = common::read_png(&path);
    assert_eq!((w, h), (frame.width, frame.height), "{name}: size");
    let differ = px.iter().zip(&frame.pixels).filter(|(a, b)| a != b).count();
    if differ != 0 {
        let out = std::env::temp_dir().join(format!("actual-{name}"));
        common::write_png(&out, frame.width, frame.height, &frame.pixels);
        panic!(
            "{name}: {differ} pixels differ from the golden; actual in {}",
            out.display()
        );
    }
}

#[test]
fn renders_match_goldens() {
    let Some(bytes) = font_bytes("renders_match_goldens") else {
        return;
    };
    let font = FontRef::try_from_slice(&bytes).unwrap();
    let t = typical();
    check(
        "typical-inert.png",
        &render(
            &View {
                request: &t,
                password_len: 0,
                ok_armed: false,
            },
            &font,
        ),
    );
    check(
        "typical-armed.png",
        &render(
            &View {
                request: &t,
                password_len: 9,
                ok_armed: true,
            },
            &font,
        ),
    );
    let v1 = version_1();
    check(
        "version-1.png",
        &render(
            &View {
                request: &v1,
                password_len: 9,
                ok_armed: true,
            },
            &font,
        ),
    );
    let h = hostile();
    check(
        "hostile.png",
        &render(
            &View {
                request: &h,
                password_len: 64,
                ok_armed: true,
            },
            &font,
        ),
    );
}

#[test]
fn picture_depends_only_on_what_it_should() {
    let Some(bytes) = font_bytes("picture_depends_only_on_what_it_should") else {
        return;
    };
    let font = FontRef::try_from_slice(&bytes).unwrap();
    let t = typical();
    let view = |len, armed| {
        render(
            &View {
                request: &t,
                password_len: len,
                ok_armed: armed,
            },
            &font,
        )
    };
    let a = view(3, true);
    assert_eq!(a, view(3, true), "the renderer is deterministic");
    assert_eq!((a.width, a.height), (WIDTH, HEIGHT));
    assert_ne!(a, view(4, true), "typing shows");
    // The seal band carries the seal colour.
    assert_eq!(
        a.pixels[(60 * WIDTH + 24) as usize],
        t.seal.color.to_pixel()
    );
    // OK looks different while inert.
    let ok_px = ((OK_BUTTON.y + 3) as u32 * WIDTH + OK_BUTTON.x as u32 + 3) as usize;
    assert_ne!(a.pixels[ok_px], view(3, false).pixels[ok_px]);
    // Another seal gives another picture: a guest without it cannot match it.
    let mut other = typical();
    other.seal = Seal::new("purple owl at dusk", Rgb(0x6a, 0x1b, 0x9a)).unwrap();
    assert_ne!(
        a,
        render(
            &View {
                request: &other,
                password_len: 3,
                ok_armed: true
            },
            &font
        )
    );
}

/// Whether any pixel has the exact fill colour of the box that holds what
/// only the guest says (its amber background).
fn shows_guest_box(frame: &Frame) -> bool {
    frame
        .pixels
        .iter()
        .any(|&p| p == Rgb(0xfd, 0xf1, 0xd8).to_pixel())
}

#[test]
fn only_what_the_host_did_not_see_is_the_guests_word() {
    let Some(bytes) = font_bytes("only_what_the_host_did_not_see_is_the_guests_word") else {
        return;
    };
    let font = FontRef::try_from_slice(&bytes).unwrap();
    let view = |request: &DialogRequest| {
        render(
            &View {
                request,
                password_len: 0,
                ok_armed: false,
            },
            &font,
        )
    };
    let t = typical();
    assert!(
        shows_guest_box(&view(&t)),
        "pid and process are the guest's"
    );
    let mut checked = typical();
    checked.reason.pid_verified = true;
    assert!(
        !shows_guest_box(&view(&checked)),
        "a checked pid leaves nothing that only the guest says"
    );
    // A version 1 caller vouched for nothing: a checked pid does not count.
    let mut old = version_1();
    old.reason.pid_verified = true;
    assert_eq!(view(&old), view(&version_1()));
}

#[test]
fn guest_text_cannot_inject_controls() {
    let s = authd::dialog::render::display_safe("a\u{202e}b\u{1b}[2J\nc\u{2066}");
    assert_eq!(s, "a?b?[2J?c?");
}
