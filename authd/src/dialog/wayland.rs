//! The dialog as a Wayland layer-shell overlay (`zwlr_layer_shell_v1`, which
//! wlroots compositors such as sway and KDE's KWin offer), run by the
//! `authd-dialog` process. winit 0.30 makes only top-level windows, which a
//! tiling compositor would stretch and place as it likes; an overlay-layer
//! surface keeps the renderer's exact size, sits above every window, takes
//! the keyboard exclusively while it is up, and can be placed: centred on
//! the asking VM's window where the compositor says where that is
//! ([`super::anchor::sway`]), else centred on the output.
//!
//! Compositors without a layer shell (weston, GNOME) get winit's top-level
//! window instead ([`super::window`]). The rules (focus delay, answers,
//! timeout) are [`super::state`]'s, the same as the X11 window's: keyboard
//! focus is the `wl_keyboard` enter and leave of the overlay's surface.
//!
//! Keys are translated with the compositor's own keymap through
//! libxkbcommon, loaded at run time (`xkbcommon-dl`, as winit does), so
//! the build needs no development package.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use ab_glyph::FontRef;
use smithay_client_toolkit::compositor::{CompositorHandler, CompositorState};
use smithay_client_toolkit::output::{OutputHandler, OutputState};
use smithay_client_toolkit::registry::{ProvidesRegistryState, RegistryState};
use smithay_client_toolkit::seat::{Capability, SeatHandler, SeatState};
use smithay_client_toolkit::shell::wlr_layer::{
    Anchor, KeyboardInteractivity, Layer, LayerShell, LayerShellHandler, LayerSurface,
    LayerSurfaceConfigure,
};
use smithay_client_toolkit::shell::WaylandSurface;
use smithay_client_toolkit::shm::slot::SlotPool;
use smithay_client_toolkit::shm::{Shm, ShmHandler};
use smithay_client_toolkit::{
    delegate_compositor, delegate_layer, delegate_output, delegate_registry, delegate_seat,
    delegate_shm, registry_handlers,
};
use wayland_client::globals::{registry_queue_init, GlobalList};
use wayland_client::protocol::{wl_keyboard, wl_output, wl_pointer, wl_seat, wl_shm, wl_surface};
use wayland_client::{Connection, Dispatch, EventQueue, QueueHandle, WEnum};

use super::anchor;
use super::render::{HEIGHT, WIDTH};
use super::state::{Dialog, Key, Outcome};
use super::window::Wake;
use super::DialogRequest;
use crate::error::{Error, Result};

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Dialog(format!("Wayland: {what}: {e}"))
}

/// Keysyms the dialog acts on (xkbcommon-keysyms.h).
const KEY_RETURN: u32 = 0xff0d;
const KEY_KP_ENTER: u32 = 0xff8d;
const KEY_ESCAPE: u32 = 0xff1b;
const KEY_BACKSPACE: u32 = 0xff08;
/// linux/input-event-codes.h
const BTN_LEFT: u32 = 0x110;

/// A connection to a compositor that offers a layer shell.
pub struct Overlay {
    conn: Connection,
    globals: GlobalList,
    queue: EventQueue<State>,
}

/// Connects to `WAYLAND_DISPLAY`; `Ok(None)` when the compositor has no
/// layer shell (the caller then makes a top-level window).
pub fn connect() -> Result<Option<Overlay>> {
    let conn = Connection::connect_to_env().map_err(|e| err("connecting", e))?;
    let (globals, queue) =
        registry_queue_init::<State>(&conn).map_err(|e| err("listing globals", e))?;
    let offered = globals
        .contents()
        .with_list(|list| list.iter().any(|g| g.interface == "zwlr_layer_shell_v1"));
    Ok(offered.then_some(Overlay {
        conn,
        globals,
        queue,
    }))
}

/// libxkbcommon's context, keymap and state for the seat's keyboard.
struct Xkb {
    lib: &'static xkbcommon_dl::XkbCommon,
    context: *mut xkbcommon_dl::xkb_context,
    keymap: *mut xkbcommon_dl::xkb_keymap,
    state: *mut xkbcommon_dl::xkb_state,
}

impl Xkb {
    /// Compiles the keymap the compositor sent (a text keymap in `fd`).
    fn new(fd: OwnedFd, size: u32) -> Result<Xkb> {
        use xkbcommon_dl::{xkb_context_flags, xkb_keymap_compile_flags, xkb_keymap_format};
        let lib = xkbcommon_dl::xkbcommon_option()
            .ok_or_else(|| Error::Dialog("libxkbcommon.so.0 cannot be loaded".into()))?;
        let file = std::fs::File::from(fd);
        let mut text = vec![0u8; size as usize];
        file.read_exact_at(&mut text, 0)
            .map_err(|e| err("reading the keymap", e))?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        text.truncate(end);
        let text = CString::new(text).map_err(|e| err("keymap", e))?;
        // SAFETY: plain libxkbcommon calls on pointers it returned; each is
        // checked for null before use and released once in Drop.
        unsafe {
            let context = (lib.xkb_context_new)(xkb_context_flags::XKB_CONTEXT_NO_FLAGS);
            if context.is_null() {
                return Err(Error::Dialog("xkb_context_new failed".into()));
            }
            let mut xkb = Xkb {
                lib,
                context,
                keymap: std::ptr::null_mut(),
                state: std::ptr::null_mut(),
            };
            xkb.keymap = (lib.xkb_keymap_new_from_string)(
                context,
                text.as_ptr(),
                xkb_keymap_format::XKB_KEYMAP_FORMAT_TEXT_V1,
                xkb_keymap_compile_flags::XKB_KEYMAP_COMPILE_NO_FLAGS,
            );
            if xkb.keymap.is_null() {
                return Err(Error::Dialog(
                    "the compositor's keymap does not compile".into(),
                ));
            }
            xkb.state = (lib.xkb_state_new)(xkb.keymap);
            if xkb.state.is_null() {
                return Err(Error::Dialog("xkb_state_new failed".into()));
            }
            Ok(xkb)
        }
    }

    fn modifiers(&mut self, depressed: u32, latched: u32, locked: u32, group: u32) {
        // SAFETY: `state` is a live xkb_state (non-null since `new`).
        unsafe {
            (self.lib.xkb_state_update_mask)(self.state, depressed, latched, locked, 0, 0, group);
        }
    }

    /// The keysym and the text of evdev key `code`.
    fn key(&self, code: u32) -> (u32, String) {
        let code = code + 8; // evdev to XKB keycodes
        let mut buf = [0u8; 64];
        // SAFETY: `state` is live; xkb_state_key_get_utf8 writes at most
        // `buf.len()` bytes, NUL included, and returns the length it needed.
        let (sym, n) = unsafe {
            let sym = (self.lib.xkb_state_key_get_one_sym)(self.state, code);
            let n = (self.lib.xkb_state_key_get_utf8)(
                self.state,
                code,
                buf.as_mut_ptr().cast(),
                buf.len(),
            );
            (sym, n)
        };
        let n = (n.max(0) as usize).min(buf.len() - 1);
        (sym, String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Xkb {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or owned by this value, released once.
        unsafe {
            if !self.state.is_null() {
                (self.lib.xkb_state_unref)(self.state);
            }
            if !self.keymap.is_null() {
                (self.lib.xkb_keymap_unref)(self.keymap);
            }
            (self.lib.xkb_context_unref)(self.context);
        }
    }
}

struct State {
    registry: RegistryState,
    seats: SeatState,
    outputs: OutputState,
    shm: Shm,
    layer: Option<LayerSurface>,
    pool: Option<SlotPool>,
    dialog: Option<Dialog>,
    keyboard: Option<wl_keyboard::WlKeyboard>,
    pointer: Option<wl_pointer::WlPointer>,
    xkb: Option<Xkb>,
    cursor: (f64, f64),
    configured: bool,
    dirty: bool,
    closed: bool,
    error: Option<Error>,
}

impl State {
    fn dialog(&mut self) -> &mut Dialog {
        self.dialog.as_mut().expect("dialog set before dispatching")
    }

    fn ours(&self, surface: &wl_surface::WlSurface) -> bool {
        self.layer
            .as_ref()
            .is_some_and(|l| l.wl_surface() == surface)
    }

    /// Puts the renderer's picture on the surface, pixel for pixel.
    fn draw(&mut self, font: &FontRef) -> Result<()> {
        let frame = self.dialog().frame(font);
        let (Some(layer), Some(pool)) = (self.layer.as_ref(), self.pool.as_mut()) else {
            return Ok(());
        };
        let (w, h) = (frame.width as i32, frame.height as i32);
        let (buffer, canvas) = pool
            .create_buffer(w, h, w * 4, wl_shm::Format::Xrgb8888)
            .map_err(|e| err("shared memory buffer", e))?;
        for (px, out) in frame.pixels.iter().zip(canvas.chunks_exact_mut(4)) {
            out.copy_from_slice(&(super::window::OPAQUE | px).to_le_bytes());
        }
        let surface = layer.wl_surface();
        surface.damage_buffer(0, 0, w, h);
        buffer
            .attach_to(surface)
            .map_err(|e| err("attaching the buffer", e))?;
        layer.commit();
        self.dirty = false;
        Ok(())
    }
}

impl Overlay {
    /// Shows the overlay and runs it to its end (see [`super::window::run`]).
    pub fn run(
        self,
        request: DialogRequest,
        font: FontRef<'_>,
        on_shown: Box<dyn FnOnce() + '_>,
        watch_stdin: impl FnOnce(Wake),
    ) -> Result<Outcome> {
        let Overlay {
            conn,
            globals,
            mut queue,
        } = self;
        let qh = queue.handle();
        let compositor =
            CompositorState::bind(&globals, &qh).map_err(|e| err("wl_compositor", e))?;
        let shell = LayerShell::bind(&globals, &qh).map_err(|e| err("layer shell", e))?;
        let shm = Shm::bind(&globals, &qh).map_err(|e| err("wl_shm", e))?;
        let mut state = State {
            registry: RegistryState::new(&globals),
            seats: SeatState::new(&globals, &qh),
            outputs: OutputState::new(&globals, &qh),
            shm,
            layer: None,
            pool: None,
            dialog: None,
            keyboard: None,
            pointer: None,
            xkb: None,
            cursor: (-1.0, -1.0),
            configured: false,
            dirty: true,
            closed: false,
            error: None,
        };
        // Learn the outputs (their names and places) before placing.
        queue
            .roundtrip(&mut state)
            .map_err(|e| err("roundtrip", e))?;

        let place = place(&request);
        let output = place.and_then(|(screen, _)| {
            state.outputs.outputs().find(|o| {
                state
                    .outputs
                    .info(o)
                    .and_then(|i| i.logical_position)
                    .is_some_and(|p| p == (screen.x, screen.y))
            })
        });
        let surface = compositor.create_surface(&qh);
        let layer = shell.create_layer_surface(
            &qh,
            surface,
            Layer::Overlay,
            Some("authd-dialog"),
            output.as_ref(),
        );
        layer.set_size(WIDTH, HEIGHT);
        layer.set_keyboard_interactivity(KeyboardInteractivity::Exclusive);
        layer.set_exclusive_zone(-1);
        if let Some((screen, (x, y))) = place {
            layer.set_anchor(Anchor::TOP | Anchor::LEFT);
            layer.set_margin(y - screen.y, 0, 0, x - screen.x);
        }
        layer.commit();
        state.pool = Some(
            SlotPool::new((WIDTH * HEIGHT * 4) as usize, &state.shm)
                .map_err(|e| err("shm pool", e))?,
        );
        state.layer = Some(layer);
        state.dialog = Some(Dialog::new(request));

        let (wake_rx, wake_tx) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
        watch_stdin(Box::new(move || {
            let _ = std::io::Write::write_all(&mut &wake_tx, b"x");
        }));

        let mut on_shown = Some(on_shown);
        loop {
            queue
                .dispatch_pending(&mut state)
                .map_err(|e| err("dispatching", e))?;
            if let Some(e) = state.error.take() {
                return Err(e);
            }
            if state.closed {
                state.dialog().finish(Outcome::Cancelled);
            }
            let now = Instant::now();
            let (wake, stale) = state.dialog().tick(now);
            if state.dialog().outcome().is_some() {
                break;
            }
            if state.configured && (state.dirty || stale) {
                state.draw(&font)?;
                if let Some(f) = on_shown.take() {
                    conn.flush().map_err(|e| err("flushing", e))?;
                    f();
                }
            }
            queue.flush().map_err(|e| err("flushing", e))?;
            let Some(guard) = queue.prepare_read() else {
                continue;
            };
            let left = wake.saturating_duration_since(Instant::now());
            let timeout = rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as i64,
            };
            let (wl_ready, gone) = {
                use rustix::event::{PollFd, PollFlags};
                let wl_fd = guard.connection_fd();
                let mut fds = [
                    PollFd::new(&wl_fd, PollFlags::IN),
                    PollFd::new(&wake_rx, PollFlags::IN),
                ];
                match rustix::event::poll(&mut fds, Some(&timeout)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(err("poll", e)),
                }
                (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
            };
            if wl_ready {
                guard.read().map_err(|e| err("reading events", e))?;
            } else {
                drop(guard);
            }
            if gone {
                state.dialog().finish(Outcome::Cancelled);
            }
        }
        let outcome = state.dialog().take_outcome().unwrap_or(Outcome::Cancelled);
        // Unmap at once: the answer is given.
        drop(state.layer.take());
        let _ = conn.flush();
        Ok(outcome)
    }
}

/// Where the overlay goes on its output: `Some((output, top-left))` when
/// the compositor told where the VM's window is, `None` to have the
/// compositor centre it on the output. Says which on stderr.
fn place(request: &DialogRequest) -> Option<(anchor::Rect, (i32, i32))> {
    let on_output = |why: String| {
        eprintln!("authd-dialog: {why}: centred on the output");
        None
    };
    let Some(sock) = std::env::var_os("SWAYSOCK") else {
        return on_output("Wayland: no SWAYSOCK, so the VM's window cannot be located".into());
    };
    match anchor::sway::find(
        std::path::Path::new(&sock),
        &request.vm,
        &request.vm_window_titles,
    ) {
        Ok(Some(w)) => {
            let at = anchor::centred((WIDTH, HEIGHT), w.rect, w.screen);
            eprintln!(
                "authd-dialog: centred over {:?} ({}x{} at {},{}): overlay at {},{}",
                w.title, w.rect.width, w.rect.height, w.rect.x, w.rect.y, at.0, at.1
            );
            Some((w.screen, at))
        }
        Ok(None) => on_output(format!(
            "no window of VM {:?} matches {:?}",
            request.vm, request.vm_window_titles
        )),
        Err(e) => on_output(format!("looking for the VM's window: {e}")),
    }
}

impl CompositorHandler for State {
    fn scale_factor_changed(
        &mut self,
        _: &Connection,
        _: &QueueHandle<Self>,
        _: &wl_surface::WlSurface,
        _: i32,
    ) {
    }
    fn transform_changed(
        &mut self,
        _: &Connection,
        _: &QueueHandle<Self>,
        _: &wl_surface::WlSurface,
        _: wl_output::Transform,
    ) {
    }
    fn frame(&mut self, _: &Connection, _: &QueueHandle<Self>, _: &wl_surface::WlSurface, _: u32) {}
    fn surface_enter(
        &mut self,
        _: &Connection,
        _: &QueueHandle<Self>,
        _: &wl_surface::WlSurface,
        _: &wl_output::WlOutput,
    ) {
    }
    fn surface_leave(
        &mut self,
        _: &Connection,
        _: &QueueHandle<Self>,
        _: &wl_surface::WlSurface,
        _: &wl_output::WlOutput,
    ) {
    }
}

impl OutputHandler for State {
    fn output_state(&mut self) -> &mut OutputState {
        &mut self.outputs
    }
    fn new_output(&mut self, _: &Connection, _: &QueueHandle<Self>, _: wl_output::WlOutput) {}
    fn update_output(&mut self, _: &Connection, _: &QueueHandle<Self>, _: wl_output::WlOutput) {}
    fn output_destroyed(&mut self, _: &Connection, _: &QueueHandle<Self>, _: wl_output::WlOutput) {}
}

impl LayerShellHandler for State {
    fn closed(&mut self, _: &Connection, _: &QueueHandle<Self>, _: &LayerSurface) {
        self.closed = true;
    }

    fn configure(
        &mut self,
        _: &Connection,
        _: &QueueHandle<Self>,
        _: &LayerSurface,
        _: LayerSurfaceConfigure,
        _: u32,
    ) {
        // The size is ours (set_size); whatever the compositor suggests,
        // the surface keeps the renderer's pixels.
        self.configured = true;
        self.dirty = true;
    }
}

impl SeatHandler for State {
    fn seat_state(&mut self) -> &mut SeatState {
        &mut self.seats
    }
    fn new_seat(&mut self, _: &Connection, _: &QueueHandle<Self>, _: wl_seat::WlSeat) {}

    fn new_capability(
        &mut self,
        _: &Connection,
        qh: &QueueHandle<Self>,
        seat: wl_seat::WlSeat,
        cap: Capability,
    ) {
        if cap == Capability::Keyboard && self.keyboard.is_none() {
            self.keyboard = Some(seat.get_keyboard(qh, ()));
        }
        if cap == Capability::Pointer && self.pointer.is_none() {
            self.pointer = Some(seat.get_pointer(qh, ()));
        }
    }

    fn remove_capability(
        &mut self,
        _: &Connection,
        _: &QueueHandle<Self>,
        _: wl_seat::WlSeat,
        cap: Capability,
    ) {
        if cap == Capability::Keyboard {
            if let Some(k) = self.keyboard.take() {
                k.release();
            }
            // No keyboard, no focus: the delay starts again with the next one.
            if let Some(d) = self.dialog.as_mut() {
                d.focus(false);
            }
            self.xkb = None;
            self.dirty = true;
        }
        if cap == Capability::Pointer {
            if let Some(p) = self.pointer.take() {
                p.release();
            }
        }
    }

    fn remove_seat(&mut self, _: &Connection, _: &QueueHandle<Self>, _: wl_seat::WlSeat) {}
}

impl Dispatch<wl_keyboard::WlKeyboard, ()> for State {
    fn event(
        state: &mut Self,
        _: &wl_keyboard::WlKeyboard,
        event: wl_keyboard::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        use wl_keyboard::Event as E;
        match event {
            E::Keymap { format, fd, size } => {
                if format != WEnum::Value(wl_keyboard::KeymapFormat::XkbV1) {
                    return;
                }
                match Xkb::new(fd, size) {
                    Ok(x) => state.xkb = Some(x),
                    Err(e) => state.error = Some(e),
                }
            }
            E::Enter { surface, .. } if state.ours(&surface) => {
                state.dialog().focus(true);
                state.dirty = true;
            }
            E::Leave { surface, .. } if state.ours(&surface) => {
                state.dialog().focus(false);
                state.dirty = true;
            }
            E::Modifiers {
                mods_depressed,
                mods_latched,
                mods_locked,
                group,
                ..
            } => {
                if let Some(x) = state.xkb.as_mut() {
                    x.modifiers(mods_depressed, mods_latched, mods_locked, group);
                }
            }
            E::Key {
                key,
                state: WEnum::Value(wl_keyboard::KeyState::Pressed),
                ..
            } => {
                let Some(xkb) = state.xkb.as_ref() else {
                    return;
                };
                let (sym, text) = xkb.key(key);
                let key = match sym {
                    KEY_RETURN | KEY_KP_ENTER => Key::Enter,
                    KEY_ESCAPE => Key::Escape,
                    KEY_BACKSPACE => Key::Backspace,
                    _ => Key::Text(&text),
                };
                state.dialog().key(key);
                state.dirty = true;
            }
            _ => {}
        }
    }
}

impl Dispatch<wl_pointer::WlPointer, ()> for State {
    fn event(
        state: &mut Self,
        _: &wl_pointer::WlPointer,
        event: wl_pointer::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        use wl_pointer::Event as E;
        match event {
            E::Enter {
                surface,
                surface_x,
                surface_y,
                ..
            } if state.ours(&surface) => state.cursor = (surface_x, surface_y),
            E::Leave { .. } => state.cursor = (-1.0, -1.0),
            E::Motion {
                surface_x,
                surface_y,
                ..
            } => state.cursor = (surface_x, surface_y),
            E::Button {
                button: BTN_LEFT,
                state: WEnum::Value(wl_pointer::ButtonState::Pressed),
                ..
            } => {
                let (x, y) = state.cursor;
                state.dialog().click(x, y);
                state.dirty = true;
            }
            _ => {}
        }
    }
}

impl ShmHandler for State {
    fn shm_state(&mut self) -> &mut Shm {
        &mut self.shm
    }
}

impl ProvidesRegistryState for State {
    fn registry(&mut self) -> &mut RegistryState {
        &mut self.registry
    }
    registry_handlers![OutputState, SeatState];
}

delegate_compositor!(State);
delegate_output!(State);
delegate_shm!(State);
delegate_seat!(State);
delegate_layer!(State);
delegate_registry!(State);
