//! The dialog as an ordinary window, run by the `authd-dialog` process
//! (never inside the daemon): on X11, and on Wayland compositors without a
//! layer shell. winit gives the window and input; softbuffer puts the
//! pixels of [`super::render::render`] on screen unchanged. The rules
//! (focus delay, answers, timeout) are [`super::state`]'s, shared with the
//! Wayland overlay ([`super::wayland`]).
//!
//! What this window adds:
//! * always on top, asks for focus when it appears;
//! * on X11, centred on the asking VM's window ([`super::anchor`]);
//! * synthetic key events (replayed by X11 on focus) are ignored.

use std::num::NonZeroU32;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ab_glyph::FontRef;
use winit::application::ApplicationHandler;
use winit::dpi::{PhysicalPosition, PhysicalSize};
use winit::event::{ElementState, MouseButton, WindowEvent};
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop};
use winit::keyboard::{Key, NamedKey};
use winit::window::{Window, WindowId, WindowLevel};

use super::anchor;
use super::render::{HEIGHT, WIDTH};
use super::state::{Dialog, Key as DialogKey};
use super::{ChildMessage, DialogRequest};
use crate::error::{Error, Result};

pub use super::state::Outcome;

/// The padding byte of a 0x00RRGGBB pixel, set (see `App::redraw`).
pub const OPAQUE: u32 = 0xff00_0000;

/// Window title; tests and window managers find the dialog by it.
pub const TITLE: &str = "authd: host authentication";

/// Events from outside the window system.
#[derive(Debug)]
pub enum External {
    /// The daemon closed our stdin: it is gone, deny and leave.
    DaemonGone,
}

struct App<'f> {
    dialog: Dialog,
    font: FontRef<'f>,
    window: Option<Rc<Window>>,
    surface: Option<softbuffer::Surface<Rc<Window>, Rc<Window>>>,
    cursor: (f64, f64),
    on_shown: Option<Box<dyn FnOnce() + 'f>>,
    error: Option<Error>,
    /// Where the window's inside belongs, and until when to keep putting
    /// it there.
    target: Option<(PhysicalPosition<i32>, Instant)>,
}

/// How long the dialog keeps moving itself to where it belongs: a window
/// manager may frame it (and so move it) some time after it appeared.
/// After that the person may move it.
const SETTLE_FOR: Duration = Duration::from_secs(3);
/// How often it looks while it settles, besides on each move.
const SETTLE_EVERY: Duration = Duration::from_millis(50);

impl App<'_> {
    /// A window manager puts its frame where the window asked to be, and
    /// the window inside it by the frame's width; once the frame is known,
    /// move the frame so that the window itself is where it belongs. The
    /// window is where it asked to be before the manager frames it, too:
    /// only a framed window in place, or the end of [`SETTLE_FOR`], ends
    /// the settling (without a window manager, the window is in place from
    /// the start and there is nothing to do until then).
    fn settle_position(&mut self) {
        let (Some((target, until)), Some(w)) = (self.target, self.window.as_ref()) else {
            return;
        };
        let (Ok(inner), Ok(outer)) = (w.inner_position(), w.outer_position()) else {
            self.target = None;
            return;
        };
        let framed = inner != outer;
        if Instant::now() >= until || (inner == target && framed) {
            self.target = None;
        } else if inner != target && framed {
            w.set_outer_position(PhysicalPosition::new(
                target.x - (inner.x - outer.x),
                target.y - (inner.y - outer.y),
            ));
        }
    }

    /// Leaves the event loop once the dialog has its answer.
    fn settle(&mut self, event_loop: &ActiveEventLoop) {
        if self.dialog.outcome().is_some() {
            event_loop.exit();
        }
    }

    fn redraw(&mut self) -> Result<()> {
        let frame = self.dialog.frame(&self.font);
        let (Some(surface), Some(window)) = (self.surface.as_mut(), self.window.as_ref()) else {
            return Ok(());
        };
        let size = window.inner_size();
        let (w, h) = (size.width.max(1), size.height.max(1));
        let sb = |e: softbuffer::SoftBufferError| Error::Dialog(e.to_string());
        surface
            .resize(
                NonZeroU32::new(w).expect("non-zero"),
                NonZeroU32::new(h).expect("non-zero"),
            )
            .map_err(sb)?;
        let mut buf = surface.buffer_mut().map_err(sb)?;
        // Copy row by row: the window manager may give a size other than
        // ours. The unused top byte is set: weston 10 reads it as alpha in
        // an XRGB8888 buffer and showed the window transparent black.
        buf.fill(OPAQUE | 0x00f4f4f2);
        for y in 0..h.min(frame.height) {
            let src = (y * frame.width) as usize;
            let dst = (y * w) as usize;
            let n = w.min(frame.width) as usize;
            for (d, s) in buf[dst..dst + n]
                .iter_mut()
                .zip(&frame.pixels[src..src + n])
            {
                *d = OPAQUE | s;
            }
        }
        buf.present().map_err(sb)?;
        if let Some(f) = self.on_shown.take() {
            f();
        }
        Ok(())
    }
}

impl ApplicationHandler<External> for App<'_> {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.window.is_some() {
            return;
        }
        let mut attrs = Window::default_attributes()
            .with_title(TITLE)
            .with_inner_size(PhysicalSize::new(WIDTH, HEIGHT))
            .with_resizable(false)
            .with_window_level(WindowLevel::AlwaysOnTop)
            .with_active(true);
        if let Some((x, y)) = place(event_loop, self.dialog.request()) {
            attrs = attrs.with_position(PhysicalPosition::new(x, y));
            self.target = Some((PhysicalPosition::new(x, y), Instant::now() + SETTLE_FOR));
        }
        let made = event_loop
            .create_window(attrs)
            .map_err(|e| Error::Dialog(e.to_string()))
            .and_then(|w| {
                let w = Rc::new(w);
                let ctx = softbuffer::Context::new(w.clone())
                    .map_err(|e| Error::Dialog(e.to_string()))?;
                let surface = softbuffer::Surface::new(&ctx, w.clone())
                    .map_err(|e| Error::Dialog(e.to_string()))?;
                Ok((w, surface))
            });
        match made {
            Ok((w, surface)) => {
                w.focus_window();
                w.request_redraw();
                self.window = Some(w);
                self.surface = Some(surface);
            }
            Err(e) => {
                self.error = Some(e);
                event_loop.exit();
            }
        }
    }

    fn user_event(&mut self, event_loop: &ActiveEventLoop, event: External) {
        match event {
            External::DaemonGone => self.dialog.finish(Outcome::Cancelled),
        }
        self.settle(event_loop);
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => self.dialog.finish(Outcome::Cancelled),
            WindowEvent::Moved(_) => self.settle_position(),
            // Wayland configures the window after it exists: draw again at
            // the size it was given (so does a window manager's resize).
            WindowEvent::Resized(_) => self.request_redraw(),
            WindowEvent::RedrawRequested => {
                self.settle_position();
                if let Err(e) = self.redraw() {
                    self.error = Some(e);
                    event_loop.exit();
                }
            }
            WindowEvent::Focused(focused) => {
                self.dialog.focus(focused);
                self.request_redraw();
            }
            WindowEvent::CursorMoved { position, .. } => self.cursor = (position.x, position.y),
            WindowEvent::MouseInput {
                state: ElementState::Pressed,
                button: MouseButton::Left,
                ..
            } => self.dialog.click(self.cursor.0, self.cursor.1),
            WindowEvent::KeyboardInput {
                event,
                is_synthetic: false,
                ..
            } if event.state == ElementState::Pressed => {
                let key = match &event.logical_key {
                    Key::Named(NamedKey::Escape) => Some(DialogKey::Escape),
                    Key::Named(NamedKey::Enter) => Some(DialogKey::Enter),
                    Key::Named(NamedKey::Backspace) => Some(DialogKey::Backspace),
                    _ => event.text.as_deref().map(DialogKey::Text),
                };
                if let Some(key) = key {
                    self.dialog.key(key);
                }
                self.request_redraw();
            }
            _ => {}
        }
        self.settle(event_loop);
    }

    fn about_to_wait(&mut self, event_loop: &ActiveEventLoop) {
        let now = Instant::now();
        let (mut wake, stale) = self.dialog.tick(now);
        if stale {
            self.request_redraw();
        }
        self.settle_position();
        if self.target.is_some() {
            wake = wake.min(now + SETTLE_EVERY);
        }
        self.settle(event_loop);
        event_loop.set_control_flow(ControlFlow::WaitUntil(wake));
    }
}

/// Where the window goes: centred on the asking VM's window on X11, else
/// centred on the screen; says which on stderr (the daemon's log). A
/// Wayland top-level window is placed by the compositor.
fn place(event_loop: &ActiveEventLoop, request: &DialogRequest) -> Option<(i32, i32)> {
    use winit::platform::x11::ActiveEventLoopExtX11;
    if !event_loop.is_x11() {
        eprintln!("authd-dialog: Wayland top-level window: the compositor places it");
        return None;
    }
    let size = (WIDTH, HEIGHT);
    let on_screen = |why: String| {
        let at = anchor::x11::screen()
            .ok()
            .map(|s| anchor::centred(size, s, s));
        eprintln!("authd-dialog: {why}: centred on the screen");
        at
    };
    match anchor::x11::find(&request.vm, &request.vm_window_titles) {
        Ok(Some(w)) => {
            let at = anchor::centred(size, w.rect, w.screen);
            eprintln!(
                "authd-dialog: centred over {:?} ({}x{} at {},{}): dialog at {},{}",
                w.title, w.rect.width, w.rect.height, w.rect.x, w.rect.y, at.0, at.1
            );
            Some(at)
        }
        Ok(None) => on_screen(format!(
            "no window of VM {:?} matches {:?}",
            request.vm, request.vm_window_titles
        )),
        Err(e) => on_screen(format!("looking for the VM's window: {e}")),
    }
}

impl App<'_> {
    fn request_redraw(&self) {
        if let Some(w) = &self.window {
            w.request_redraw();
        }
    }
}

/// Wakes the dialog from another thread: the daemon is gone, deny.
pub type Wake = Box<dyn Fn() + Send>;

/// Runs the dialog to its end: as a layer-shell overlay when the Wayland
/// compositor offers one, else as a window. `on_shown` runs after the
/// first frame is on screen. `watch_stdin` is handed a [`Wake`] to call
/// when stdin reaches EOF (the daemon went away).
pub fn run(
    request: DialogRequest,
    font_bytes: &[u8],
    on_shown: Box<dyn FnOnce() + '_>,
    watch_stdin: impl FnOnce(Wake),
) -> Result<Outcome> {
    let font = FontRef::try_from_slice(font_bytes).map_err(|e| Error::Dialog(e.to_string()))?;
    if std::env::var_os("WAYLAND_DISPLAY").is_some() {
        match super::wayland::connect() {
            Ok(Some(overlay)) => return overlay.run(request, font, on_shown, watch_stdin),
            Ok(None) => eprintln!(
                "authd-dialog: the Wayland compositor offers no layer shell: a top-level window"
            ),
            Err(e) => return Err(e),
        }
    }
    let event_loop = EventLoop::<External>::with_user_event()
        .build()
        .map_err(|e| Error::Dialog(e.to_string()))?;
    let proxy = event_loop.create_proxy();
    watch_stdin(Box::new(move || {
        let _ = proxy.send_event(External::DaemonGone);
    }));
    let mut app = App {
        dialog: Dialog::new(request),
        font,
        window: None,
        surface: None,
        cursor: (-1.0, -1.0),
        on_shown: Some(on_shown),
        error: None,
        target: None,
    };
    event_loop
        .run_app(&mut app)
        .map_err(|e| Error::Dialog(e.to_string()))?;
    if let Some(e) = app.error.take() {
        return Err(e);
    }
    Ok(app.dialog.take_outcome().unwrap_or(Outcome::Cancelled))
}

/// Converts an outcome to the message sent to the daemon.
pub fn message(outcome: Outcome) -> ChildMessage {
    match outcome {
        Outcome::Password(p) => ChildMessage::Password {
            password: p.as_str().to_owned(),
        },
        Outcome::Allowed { always } => ChildMessage::Allowed { always },
        Outcome::Cancelled => ChildMessage::Cancelled,
        Outcome::TimedOut => ChildMessage::TimedOut,
    }
}
