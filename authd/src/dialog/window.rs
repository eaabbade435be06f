//! The dialog window, run by the `authd-dialog` process (never inside the
//! daemon). winit gives the window and input; softbuffer puts the pixels of
//! [`super::render::render`] on screen unchanged.
//!
//! Rules the window enforces:
//! * always on top, asks for focus when it appears;
//! * OK and Enter are inert until `focus_delay_ms` after the window gained
//!   focus (losing focus re-arms the delay), so keystrokes aimed at another
//!   window cannot confirm it;
//! * Esc, Cancel or closing the window denies; so does the timeout;
//! * a question (`DialogRequest::question`) has Deny, Allow always and
//!   Allow once instead of a password field; the allowing buttons (and
//!   Enter, which allows once) are inert under the same focus delay;
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
use zeroize::Zeroizing;

use super::anchor;
use super::render::{
    self, View, ALWAYS_BUTTON, CANCEL_BUTTON, DENY_BUTTON, HEIGHT, OK_BUTTON, ONCE_BUTTON, WIDTH,
};
use super::{ChildMessage, DialogRequest};
use crate::error::{Error, Result};

/// Window title; tests and window managers find the dialog by it.
pub const TITLE: &str = "authd: host authentication";

/// Events from outside the window system.
#[derive(Debug)]
pub enum External {
    /// The daemon closed our stdin: it is gone, deny and leave.
    DaemonGone,
}

/// How the dialog ended.
pub enum Outcome {
    Password(Zeroizing<String>),
    /// A question was allowed, once or always.
    Allowed {
        always: bool,
    },
    Cancelled,
    TimedOut,
}

struct App<'f> {
    request: DialogRequest,
    font: FontRef<'f>,
    window: Option<Rc<Window>>,
    surface: Option<softbuffer::Surface<Rc<Window>, Rc<Window>>>,
    password: Zeroizing<String>,
    focused_at: Option<Instant>,
    deadline: Instant,
    cursor: (f64, f64),
    outcome: Option<Outcome>,
    on_shown: Option<Box<dyn FnOnce() + 'f>>,
    error: Option<Error>,
    /// Whether the last frame drew OK as live; a change asks for a redraw.
    drawn_armed: bool,
}

impl App<'_> {
    fn armed_at(&self) -> Option<Instant> {
        self.focused_at
            .map(|t| t + Duration::from_millis(self.request.focus_delay_ms))
    }

    fn ok_armed(&self, now: Instant) -> bool {
        self.armed_at().is_some_and(|t| now >= t)
    }

    fn finish(&mut self, event_loop: &ActiveEventLoop, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
        event_loop.exit();
    }

    /// A question's allowing answer, honoured only once armed.
    fn allow(&mut self, event_loop: &ActiveEventLoop, always: bool) {
        if self.ok_armed(Instant::now()) {
            self.finish(event_loop, Outcome::Allowed { always });
        }
    }

    fn submit(&mut self, event_loop: &ActiveEventLoop) {
        if self.request.question.is_some() {
            // Enter allows once; "always" takes a click.
            return self.allow(event_loop, false);
        }
        if !self.ok_armed(Instant::now()) {
            return;
        }
        let pw = std::mem::take(&mut *self.password);
        self.finish(event_loop, Outcome::Password(Zeroizing::new(pw)));
    }

    fn redraw(&mut self) -> Result<()> {
        let view = View {
            request: &self.request,
            password_len: self.password.chars().count(),
            ok_armed: self.ok_armed(Instant::now()),
        };
        self.drawn_armed = view.ok_armed;
        let frame = render::render(&view, &self.font);
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
        // Copy row by row: the window manager may give a size other than ours.
        buf.fill(0x00f4f4f2);
        for y in 0..h.min(frame.height) {
            let src = (y * frame.width) as usize;
            let dst = (y * w) as usize;
            let n = w.min(frame.width) as usize;
            buf[dst..dst + n].copy_from_slice(&frame.pixels[src..src + n]);
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
        if let Some((x, y)) = place(event_loop, &self.request) {
            attrs = attrs.with_position(PhysicalPosition::new(x, y));
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
            External::DaemonGone => self.finish(event_loop, Outcome::Cancelled),
        }
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => self.finish(event_loop, Outcome::Cancelled),
            WindowEvent::RedrawRequested => {
                if let Err(e) = self.redraw() {
                    self.error = Some(e);
                    event_loop.exit();
                }
            }
            WindowEvent::Focused(true) => {
                self.focused_at = Some(Instant::now());
                self.request_redraw();
            }
            WindowEvent::Focused(false) => {
                self.focused_at = None;
                self.request_redraw();
            }
            WindowEvent::CursorMoved { position, .. } => self.cursor = (position.x, position.y),
            WindowEvent::MouseInput {
                state: ElementState::Pressed,
                button: MouseButton::Left,
                ..
            } => {
                let (x, y) = self.cursor;
                if self.request.question.is_some() {
                    if ONCE_BUTTON.contains(x, y) {
                        self.allow(event_loop, false);
                    } else if ALWAYS_BUTTON.contains(x, y) {
                        self.allow(event_loop, true);
                    } else if DENY_BUTTON.contains(x, y) {
                        self.finish(event_loop, Outcome::Cancelled);
                    }
                } else if OK_BUTTON.contains(x, y) {
                    self.submit(event_loop);
                } else if CANCEL_BUTTON.contains(x, y) {
                    self.finish(event_loop, Outcome::Cancelled);
                }
            }
            WindowEvent::KeyboardInput {
                event,
                is_synthetic: false,
                ..
            } if event.state == ElementState::Pressed => {
                match &event.logical_key {
                    Key::Named(NamedKey::Escape) => self.finish(event_loop, Outcome::Cancelled),
                    Key::Named(NamedKey::Enter) => self.submit(event_loop),
                    Key::Named(NamedKey::Backspace) => {
                        self.password.pop();
                    }
                    _ if self.request.question.is_some() => {}
                    _ => {
                        if let Some(text) = &event.text {
                            for c in text.chars().filter(|c| !c.is_control()) {
                                if self.password.len() < 1024 {
                                    self.password.push(c);
                                }
                            }
                        }
                    }
                }
                self.request_redraw();
            }
            _ => {}
        }
    }

    fn about_to_wait(&mut self, event_loop: &ActiveEventLoop) {
        let now = Instant::now();
        if now >= self.deadline {
            self.finish(event_loop, Outcome::TimedOut);
            return;
        }
        let mut wake = self.deadline;
        if let Some(t) = self.armed_at() {
            if t > now {
                wake = wake.min(t);
            }
        }
        if self.ok_armed(now) != self.drawn_armed {
            self.request_redraw();
        }
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

/// Runs the dialog to its end. `on_shown` runs after the first frame is on
/// screen. Stdin EOF (the daemon went away) is delivered through the
/// returned loop's proxy by `watch_stdin`.
pub fn run(
    request: DialogRequest,
    font_bytes: &[u8],
    on_shown: Box<dyn FnOnce() + '_>,
    watch_stdin: impl FnOnce(winit::event_loop::EventLoopProxy<External>),
) -> Result<Outcome> {
    let font = FontRef::try_from_slice(font_bytes).map_err(|e| Error::Dialog(e.to_string()))?;
    let event_loop = EventLoop::<External>::with_user_event()
        .build()
        .map_err(|e| Error::Dialog(e.to_string()))?;
    watch_stdin(event_loop.create_proxy());
    let deadline = Instant::now() + Duration::from_secs(request.timeout_secs);
    let mut app = App {
        request,
        font,
        window: None,
        surface: None,
        password: Zeroizing::new(String::new()),
        focused_at: None,
        deadline,
        cursor: (-1.0, -1.0),
        outcome: None,
        on_shown: Some(on_shown),
        error: None,
        drawn_armed: false,
    };
    event_loop
        .run_app(&mut app)
        .map_err(|e| Error::Dialog(e.to_string()))?;
    if let Some(e) = app.error.take() {
        return Err(e);
    }
    Ok(app.outcome.take().unwrap_or(Outcome::Cancelled))
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
