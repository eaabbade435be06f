//! The dialog's renderer: a pure function from the dialog's state to a
//! pixel buffer. No window system is involved, so the exact picture is
//! tested against golden images and compared with screenshots of the live
//! window.

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};

use super::{facts, DialogRequest};
use crate::seal::Rgb;

/// Fixed size of the dialog, in pixels. A fixed size keeps the live window
/// pixel-identical to the renderer's output.
pub const WIDTH: u32 = 560;
pub const HEIGHT: u32 = 384;

/// A rectangle in window pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    pub const fn new(x: i32, y: i32, w: i32, h: i32) -> Rect {
        Rect { x, y, w, h }
    }

    pub fn contains(&self, px: f64, py: f64) -> bool {
        px >= f64::from(self.x)
            && py >= f64::from(self.y)
            && px < f64::from(self.x + self.w)
            && py < f64::from(self.y + self.h)
    }
}

/// Where the buttons are, for hit testing by the window.
pub const CANCEL_BUTTON: Rect = Rect::new(324, 320, 100, 34);
pub const OK_BUTTON: Rect = Rect::new(440, 320, 100, 34);
/// The buttons of a question (`DialogRequest::question`).
pub const DENY_BUTTON: Rect = Rect::new(20, 320, 100, 34);
pub const ALWAYS_BUTTON: Rect = Rect::new(296, 320, 124, 34);
pub const ONCE_BUTTON: Rect = Rect::new(430, 320, 110, 34);
const QUESTION_BOX: Rect = Rect::new(20, 186, 520, 118);
/// The band in the seal colour behind the seal phrase; tests find the seal
/// on a screenshot of the live window by it.
pub const SEAL_BAND: Rect = Rect::new(20, 52, 520, 62);
/// The first line of the host's facts, and the step between lines.
const HOST_FIRST: f32 = 154.0;
const HOST_STEP: f32 = 18.0;
/// Where the box of what only the guest says ends (it starts below the
/// host's facts).
const GUEST_BOX_BOTTOM: i32 = 264;
const PASSWORD_FIELD: Rect = Rect::new(130, 276, 410, 30);

const BG: Rgb = Rgb(0xf4, 0xf4, 0xf2);
const TITLE_BG: Rgb = Rgb(0x1f, 0x29, 0x33);
const TEXT: Rgb = Rgb(0x1a, 0x1a, 0x1a);
const MUTED: Rgb = Rgb(0x5a, 0x5f, 0x66);
const GUEST_BG: Rgb = Rgb(0xfd, 0xf1, 0xd8);
const GUEST_EDGE: Rgb = Rgb(0xc9, 0x7a, 0x00);
const GUEST_TEXT: Rgb = Rgb(0x7a, 0x45, 0x00);
const FIELD_BG: Rgb = Rgb(0xff, 0xff, 0xff);
const FIELD_EDGE: Rgb = Rgb(0x8a, 0x8f, 0x96);
const OK_BG: Rgb = Rgb(0x1d, 0x5f, 0xb4);
const OK_INERT_BG: Rgb = Rgb(0xb8, 0xc4, 0xd4);
const BUTTON_BG: Rgb = Rgb(0xe2, 0xe2, 0xdf);
const WHITE: Rgb = Rgb(0xff, 0xff, 0xff);

/// Most bullets drawn for the password, so the field never overflows.
const MAX_BULLETS: usize = 24;

/// Everything the picture depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View<'a> {
    pub request: &'a DialogRequest,
    /// Number of characters typed; only bullets are drawn.
    pub password_len: usize,
    /// Whether OK and Enter are live (the focus delay has passed).
    pub ok_armed: bool,
}

/// A rendered picture, `0x00RRGGBB` per pixel, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u32>,
}

/// Guest-supplied text is shown, never interpreted: control characters and
/// bidirectional overrides (which could reorder what the user reads) become '?'.
pub fn display_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// Draws the dialog.
pub fn render(view: &View<'_>, font: &FontRef<'_>) -> Frame {
    let mut c = Canvas {
        frame: Frame {
            width: WIDTH,
            height: HEIGHT,
            pixels: vec![BG.to_pixel(); (WIDTH * HEIGHT) as usize],
        },
        font,
    };
    let r = view.request;

    c.fill(Rect::new(0, 0, WIDTH as i32, 40), TITLE_BG);
    c.text(
        "Host authentication (authd)",
        20.0,
        26.0,
        17.0,
        WHITE,
        520.0,
    );

    // The seal: only the genuine host dialog knows the phrase and colour.
    c.fill(SEAL_BAND, r.seal.color);
    let ink = r.seal.color.contrasting();
    let phrase = display_safe(&r.seal.phrase);
    let size = 26.0;
    let w = c.measure(&phrase, size).min(500.0);
    let x = SEAL_BAND.x as f32 + (SEAL_BAND.w as f32 - w) / 2.0;
    c.text(&phrase, x, SEAL_BAND.y as f32 + 41.0, size, ink, 500.0);
    c.text(
        if r.question.is_some() {
            "Not your seal? Do not allow."
        } else {
            "Not your seal? Do not type your password."
        },
        20.0,
        132.0,
        12.5,
        MUTED,
        520.0,
    );

    // Facts known to the host.
    let (host, guest) = facts(r);
    let mut y = HOST_FIRST;
    for f in &host {
        c.text(f.label, 24.0, y, 15.0, MUTED, 100.0);
        c.text(&f.value, 130.0, y, 15.0, TEXT, 410.0);
        y += HOST_STEP;
    }

    if let Some(q) = &r.question {
        question(&mut c, q, view.ok_armed, r.timeout_secs);
        return c.frame;
    }

    // Everything below comes from the guest and may be a lie.
    if !guest.is_empty() {
        let top = (y - HOST_STEP) as i32 + 6;
        let guest_box = Rect::new(20, top, 520, GUEST_BOX_BOTTOM - top);
        c.fill(guest_box, GUEST_BG);
        c.fill(
            Rect::new(guest_box.x, guest_box.y, 4, guest_box.h),
            GUEST_EDGE,
        );
        let gx = guest_box.x as f32 + 14.0;
        let gy = guest_box.y as f32;
        c.text(
            "Reported by the guest, not verified by the host:",
            gx,
            gy + 18.0,
            13.0,
            GUEST_TEXT,
            500.0,
        );
        for (i, f) in guest.iter().enumerate() {
            let y = gy + 40.0 + 19.0 * i as f32;
            c.text(f.label, gx, y, 14.0, MUTED, 100.0);
            c.text(&f.value, 130.0, y, 14.0, TEXT, 405.0);
        }
    }

    c.text(
        "Password",
        24.0,
        PASSWORD_FIELD.y as f32 + 20.0,
        15.0,
        MUTED,
        100.0,
    );
    c.fill(PASSWORD_FIELD, FIELD_EDGE);
    let inner = Rect::new(
        PASSWORD_FIELD.x + 1,
        PASSWORD_FIELD.y + 1,
        PASSWORD_FIELD.w - 2,
        PASSWORD_FIELD.h - 2,
    );
    c.fill(inner, FIELD_BG);
    let bullets: String = "\u{2022}".repeat(view.password_len.min(MAX_BULLETS));
    c.text(
        &bullets,
        inner.x as f32 + 8.0,
        inner.y as f32 + 20.0,
        16.0,
        TEXT,
        inner.w as f32 - 16.0,
    );
    // Text cursor after the bullets.
    let cx = inner.x + 8 + c.measure(&bullets, 16.0).round() as i32 + 1;
    c.fill(Rect::new(cx, inner.y + 6, 1, inner.h - 12), TEXT);

    c.fill(CANCEL_BUTTON, BUTTON_BG);
    c.centered("Cancel", CANCEL_BUTTON, 15.0, TEXT);
    let ok_bg = if view.ok_armed { OK_BG } else { OK_INERT_BG };
    c.fill(OK_BUTTON, ok_bg);
    c.centered("OK", OK_BUTTON, 15.0, WHITE);

    let footer = format!(
        "Esc or closing denies. Denies on its own after {} s.",
        r.timeout_secs
    );
    c.text(&footer, 20.0, 372.0, 12.0, MUTED, 520.0);
    c.frame
}

/// The rest of a question dialog: the question, wrapped, and its three
/// buttons (the two that allow stay inert like OK until the focus delay).
fn question(c: &mut Canvas<'_, '_>, q: &str, armed: bool, timeout_secs: u64) {
    c.fill(QUESTION_BOX, GUEST_BG);
    c.fill(
        Rect::new(QUESTION_BOX.x, QUESTION_BOX.y, 4, QUESTION_BOX.h),
        GUEST_EDGE,
    );
    let x = QUESTION_BOX.x as f32 + 14.0;
    let y = QUESTION_BOX.y as f32;
    c.text(
        "Asked by a host service; process facts are read from the guest:",
        x,
        y + 18.0,
        13.0,
        GUEST_TEXT,
        500.0,
    );
    for (i, line) in c.wrap(&display_safe(q), 15.0, 490.0, 4).iter().enumerate() {
        c.text(line, x, y + 42.0 + 20.0 * i as f32, 15.0, TEXT, 490.0);
    }
    c.fill(DENY_BUTTON, BUTTON_BG);
    c.centered("Deny", DENY_BUTTON, 15.0, TEXT);
    let bg = if armed { OK_BG } else { OK_INERT_BG };
    c.fill(ALWAYS_BUTTON, bg);
    c.centered("Allow always", ALWAYS_BUTTON, 15.0, WHITE);
    c.fill(ONCE_BUTTON, bg);
    c.centered("Allow once", ONCE_BUTTON, 15.0, WHITE);
    let footer = format!("Esc or closing denies. Denies on its own after {timeout_secs} s.");
    c.text(&footer, 20.0, 372.0, 12.0, MUTED, 520.0);
}

struct Canvas<'f, 'a> {
    frame: Frame,
    font: &'f FontRef<'a>,
}

impl Canvas<'_, '_> {
    fn fill(&mut self, r: Rect, color: Rgb) {
        let (w, h) = (self.frame.width as i32, self.frame.height as i32);
        let p = color.to_pixel();
        for y in r.y.max(0)..(r.y + r.h).min(h) {
            let row = (y * w) as usize;
            for x in r.x.max(0)..(r.x + r.w).min(w) {
                self.frame.pixels[row + x as usize] = p;
            }
        }
    }

    fn glyphs(&self, text: &str, size: f32) -> Vec<(GlyphId, f32)> {
        let scaled = self.font.as_scaled(PxScale::from(size));
        let mut x = 0.0;
        let mut prev: Option<GlyphId> = None;
        let mut out = Vec::with_capacity(text.len());
        for ch in text.chars() {
            let id = self.font.glyph_id(ch);
            if let Some(p) = prev {
                x += scaled.kern(p, id);
            }
            out.push((id, x));
            x += scaled.h_advance(id);
            prev = Some(id);
        }
        out.push((GlyphId(0), x));
        out
    }

    fn measure(&self, text: &str, size: f32) -> f32 {
        self.glyphs(text, size).last().map_or(0.0, |g| g.1)
    }

    /// Splits `text` at spaces into at most `max_lines` lines no wider than
    /// `max_w` (the last one is cut with '…' by [`Canvas::text`]).
    fn wrap(&self, text: &str, size: f32, max_w: f32, max_lines: usize) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        let mut cur = String::new();
        for word in text.split_whitespace() {
            let candidate = if cur.is_empty() {
                word.to_owned()
            } else {
                format!("{cur} {word}")
            };
            // The last line keeps every remaining word (and is cut when drawn).
            let fits = cur.is_empty() || self.measure(&candidate, size) <= max_w;
            if fits || lines.len() + 1 == max_lines {
                cur = candidate;
            } else {
                lines.push(std::mem::replace(&mut cur, word.to_owned()));
            }
        }
        if !cur.is_empty() {
            lines.push(cur);
        }
        lines
    }

    fn centered(&mut self, text: &str, r: Rect, size: f32, color: Rgb) {
        let w = self.measure(text, size);
        let x = r.x as f32 + (r.w as f32 - w) / 2.0;
        let baseline = r.y as f32 + r.h as f32 / 2.0 + size * 0.36;
        self.text(text, x.round(), baseline.round(), size, color, r.w as f32);
    }

    /// Draws one line; text wider than `max_w` is cut and ends in '…'.
    fn text(&mut self, text: &str, x: f32, baseline: f32, size: f32, color: Rgb, max_w: f32) {
        let mut shown = text.to_owned();
        if self.measure(&shown, size) > max_w {
            let ell = self.measure("\u{2026}", size);
            let mut cut: String = String::new();
            for ch in text.chars() {
                cut.push(ch);
                if self.measure(&cut, size) + ell > max_w {
                    cut.pop();
                    break;
                }
            }
            shown = cut + "\u{2026}";
        }
        let glyphs = self.glyphs(&shown, size);
        let (w, h) = (self.frame.width as i32, self.frame.height as i32);
        for &(id, gx) in &glyphs[..glyphs.len() - 1] {
            let glyph = id.with_scale_and_position(PxScale::from(size), point(x + gx, baseline));
            let Some(outlined) = self.font.outline_glyph(glyph) else {
                continue;
            };
            let b = outlined.px_bounds();
            let pixels = &mut self.frame.pixels;
            outlined.draw(|px, py, cov| {
                let x_px = b.min.x as i32 + px as i32;
                let y_px = b.min.y as i32 + py as i32;
                if x_px < 0 || y_px < 0 || x_px >= w || y_px >= h {
                    return;
                }
                let i = (y_px * w + x_px) as usize;
                pixels[i] = blend(pixels[i], color, cov.clamp(0.0, 1.0));
            });
        }
    }
}

fn blend(bg: u32, fg: Rgb, a: f32) -> u32 {
    let ch = |shift: u32, f: u8| -> u32 {
        let b = ((bg >> shift) & 0xff) as f32;
        let v = b + (f32::from(f) - b) * a;
        (v.round() as u32).min(255)
    };
    (ch(16, fg.0) << 16) | (ch(8, fg.1) << 8) | ch(0, fg.2)
}
