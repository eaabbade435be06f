//! Where the dialog goes: centred on, and above, the window that shows the
//! asking VM (QEMU's GTK or SDL window, virt-viewer, remote-viewer), so the
//! person sees which VM asks. The dialog is always a host window of its own,
//! never drawn into the guest's framebuffer.
//!
//! The VM's window is found by its title. authd knows the VM's name from the
//! request; each pattern of the `vm_window_titles` configuration key is
//! matched against every mapped window's title with `{vm}` standing for the
//! name (compared literally) and `*` for any run of characters. The default
//! patterns are the titles QEMU, virt-viewer and remote-viewer give their
//! windows ([`DEFAULT_TITLES`]).
//!
//! Threat model: a window's title and place on the host display are set by
//! host programs. QEMU, virt-viewer and remote-viewer take the name from the
//! host's own configuration (`-name`, the libvirt domain), never from the
//! guest, and the guest cannot move or rename host windows. Another program
//! of the host's user could name a window like the VM and draw the dialog
//! over its own window, but that program already runs with the user's rights
//! on the same display, beyond what this dialog defends against; the seal
//! still tells the genuine dialog apart.
//!
//! * X11: the window tree of the display ([`x11`]).
//! * Wayland: clients cannot see each other's windows; under sway the
//!   compositor's IPC tells where the VM's window is ([`sway`]). Elsewhere
//!   the dialog is centred on the output.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

/// Window titles of the VM viewers, `{vm}` being the VM's name and `{n}` a
/// number: QEMU's GTK window (`-name vm`: "QEMU (vm)", with " [Paused]" or
/// " - Press Ctrl+Alt+G to release grab" after it), virt-viewer and
/// remote-viewer ("vm (1) - Virt Viewer", the display's number; a grabbed
/// pointer puts "(Press Ctrl+Alt to release pointer) " before it).
///
/// QEMU's SDL window ("QEMU (vm-0)", the console's index after the name)
/// is left out: its title is also the GTK title of a VM named "vm-0", and
/// a dialog placed over another VM's window is worse than one centred on
/// the screen. [`SDL_TITLES`] adds it where no VM name ends in `-<digits>`.
pub const DEFAULT_TITLES: &[&str] = &[
    "QEMU ({vm})",
    "QEMU ({vm}) *",
    "{vm} ({n}) - Virt Viewer",
    "(Press * to release pointer) {vm} ({n}) - Virt Viewer",
    "{vm} ({n}) - Remote Viewer",
    "(Press * to release pointer) {vm} ({n}) - Remote Viewer",
];

/// QEMU's SDL window titles, to add to `vm_window_titles` by hand.
pub const SDL_TITLES: &[&str] = &["QEMU ({vm}-{n})", "QEMU ({vm}-{n}) *"];

/// The default patterns, owned (the configuration's default).
pub fn default_titles() -> Vec<String> {
    DEFAULT_TITLES.iter().map(|s| s.to_string()).collect()
}

/// Why the VM's window could not be looked up (the dialog is then centred
/// on the screen, and the reason logged).
#[derive(Debug, Error)]
pub enum AnchorError {
    #[error("X11: {0}")]
    X11(String),
    #[error("sway IPC: {0}")]
    Sway(String),
}

/// A rectangle in screen (X11) or layout (sway) coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
}

/// A VM window found on the display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmWindow {
    pub title: String,
    pub rect: Rect,
    /// The screen or output the window is on.
    pub screen: Rect,
}

/// Top-left corner of a `size` dialog centred on `over`, moved the least
/// needed to stay wholly on `screen` (a VM window partly off screen must not
/// push the dialog off screen).
pub fn centred(size: (u32, u32), over: Rect, screen: Rect) -> (i32, i32) {
    let axis = |start: i32, len: u32, dlen: u32, sstart: i32, slen: u32| {
        let want = start as i64 + (len as i64 - dlen as i64) / 2;
        let max = sstart as i64 + slen as i64 - dlen as i64;
        // A dialog larger than the screen starts at the screen's edge.
        want.min(max).max(sstart as i64) as i32
    };
    (
        axis(over.x, over.width, size.0, screen.x, screen.width),
        axis(over.y, over.height, size.1, screen.y, screen.height),
    )
}

/// Whether `title` matches `pattern` for the VM named `vm`: `{vm}` matches
/// the name literally (a name holding `*` stays literal), `{n}` one or more
/// digits (a display or console number), `*` any run of characters,
/// everything else itself.
pub fn title_matches(pattern: &str, vm: &str, title: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Char(char),
        Digits,
        Any,
    }
    let mut toks = Vec::new();
    for (i, part) in pattern.split("{vm}").enumerate() {
        if i > 0 {
            toks.extend(vm.chars().map(Tok::Char));
        }
        for (j, piece) in part.split("{n}").enumerate() {
            if j > 0 {
                toks.push(Tok::Digits);
            }
            toks.extend(
                piece
                    .chars()
                    .map(|c| if c == '*' { Tok::Any } else { Tok::Char(c) }),
            );
        }
    }
    // Titles and patterns are short; plain backtracking will do.
    fn matches(toks: &[Tok], text: &[char]) -> bool {
        match toks.split_first() {
            None => text.is_empty(),
            Some((Tok::Char(c), rest)) => text.first() == Some(c) && matches(rest, &text[1..]),
            Some((Tok::Any, rest)) => (0..=text.len()).any(|k| matches(rest, &text[k..])),
            Some((Tok::Digits, rest)) => {
                let run = text.iter().take_while(|c| c.is_ascii_digit()).count();
                (1..=run).any(|k| matches(rest, &text[k..]))
            }
        }
    }
    let text: Vec<char> = title.chars().collect();
    matches(&toks, &text)
}

/// Whether any of `patterns` matches.
pub fn any_matches(patterns: &[String], vm: &str, title: &str) -> bool {
    !vm.is_empty() && patterns.iter().any(|p| title_matches(p, vm, title))
}

/// X11: the window tree of the dialog's own display.
pub mod x11 {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{AtomEnum, ConnectionExt, MapState, Window};
    use x11rb::rust_connection::RustConnection;

    use super::{any_matches, AnchorError, Rect, VmWindow};

    fn err(e: impl std::fmt::Display) -> AnchorError {
        AnchorError::X11(e.to_string())
    }

    struct Atoms {
        net_wm_name: u32,
        utf8: u32,
        client_list_stacking: u32,
    }

    fn title(conn: &RustConnection, atoms: &Atoms, win: Window) -> Option<String> {
        let get = |prop, ty| {
            conn.get_property(false, win, prop, ty, 0, 1024)
                .ok()?
                .reply()
                .ok()
                .filter(|r| !r.value.is_empty())
                .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        };
        get(atoms.net_wm_name, atoms.utf8)
            .or_else(|| get(AtomEnum::WM_NAME.into(), AtomEnum::STRING.into()))
    }

    fn viewable(conn: &RustConnection, win: Window) -> bool {
        conn.get_window_attributes(win)
            .ok()
            .and_then(|c| c.reply().ok())
            .is_some_and(|a| a.map_state == MapState::VIEWABLE)
    }

    /// Candidate windows bottom to top: the window manager's stacking list
    /// when there is one, else the tree under the root (children come
    /// bottom to top), two levels deep for reparenting managers.
    fn candidates(
        conn: &RustConnection,
        atoms: &Atoms,
        root: Window,
    ) -> Result<Vec<Window>, AnchorError> {
        let list = conn
            .get_property(
                false,
                root,
                atoms.client_list_stacking,
                AtomEnum::WINDOW,
                0,
                4096,
            )
            .map_err(err)?
            .reply()
            .map_err(err)?;
        if let Some(ids) = list.value32() {
            let ids: Vec<Window> = ids.collect();
            if !ids.is_empty() {
                return Ok(ids);
            }
        }
        let mut out = Vec::new();
        let top = conn.query_tree(root).map_err(err)?.reply().map_err(err)?;
        for w in top.children {
            out.push(w);
            if let Ok(sub) = conn.query_tree(w).map_err(err)?.reply() {
                out.extend(sub.children);
            }
        }
        Ok(out)
    }

    /// The topmost mapped window whose title matches one of `patterns` for
    /// `vm`, with its place on the screen; `Ok(None)` when there is none.
    pub fn find(vm: &str, patterns: &[String]) -> Result<Option<VmWindow>, AnchorError> {
        let (conn, screen) = RustConnection::connect(None).map_err(err)?;
        let root_info = &conn.setup().roots[screen];
        let root = root_info.root;
        let screen = Rect {
            x: 0,
            y: 0,
            width: root_info.width_in_pixels.into(),
            height: root_info.height_in_pixels.into(),
        };
        let intern = |name: &[u8]| -> Result<u32, AnchorError> {
            Ok(conn
                .intern_atom(false, name)
                .map_err(err)?
                .reply()
                .map_err(err)?
                .atom)
        };
        let atoms = Atoms {
            net_wm_name: intern(b"_NET_WM_NAME")?,
            utf8: intern(b"UTF8_STRING")?,
            client_list_stacking: intern(b"_NET_CLIENT_LIST_STACKING")?,
        };
        let wins = candidates(&conn, &atoms, root)?;
        for &w in wins.iter().rev() {
            let Some(t) = title(&conn, &atoms, w) else {
                continue;
            };
            if !any_matches(patterns, vm, &t) || !viewable(&conn, w) {
                continue;
            }
            let geo = conn.get_geometry(w).map_err(err)?.reply().map_err(err)?;
            let at = conn
                .translate_coordinates(w, root, 0, 0)
                .map_err(err)?
                .reply()
                .map_err(err)?;
            return Ok(Some(VmWindow {
                title: t,
                rect: Rect {
                    x: at.dst_x.into(),
                    y: at.dst_y.into(),
                    width: geo.width.into(),
                    height: geo.height.into(),
                },
                screen,
            }));
        }
        Ok(None)
    }

    /// The size of the dialog's screen, to centre on when no VM window is
    /// found.
    pub fn screen() -> Result<Rect, AnchorError> {
        let (conn, screen) = RustConnection::connect(None).map_err(err)?;
        let r = &conn.setup().roots[screen];
        Ok(Rect {
            x: 0,
            y: 0,
            width: r.width_in_pixels.into(),
            height: r.height_in_pixels.into(),
        })
    }
}

/// sway (wlroots): its IPC socket (`SWAYSOCK`) answers `get_tree` with every
/// window's title and place, which Wayland itself hides from clients.
pub mod sway {
    use super::*;

    const GET_TREE: u32 = 4;
    const MAGIC: &[u8] = b"i3-ipc";

    fn err(e: impl std::fmt::Display) -> AnchorError {
        AnchorError::Sway(e.to_string())
    }

    /// One IPC round trip (i3's framing: magic, length, type, JSON).
    fn ask(sock: &Path, kind: u32) -> Result<serde_json::Value, AnchorError> {
        let mut s = UnixStream::connect(sock).map_err(err)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(err)?;
        let mut msg = MAGIC.to_vec();
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        s.write_all(&msg).map_err(err)?;
        let mut head = [0u8; 14];
        s.read_exact(&mut head).map_err(err)?;
        if &head[..6] != MAGIC {
            return Err(err("reply without the i3-ipc magic"));
        }
        let len = u32::from_ne_bytes(head[6..10].try_into().expect("4 bytes")) as usize;
        if len > 64 << 20 {
            return Err(err(format!("reply of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).map_err(err)?;
        serde_json::from_slice(&body).map_err(err)
    }

    fn rect(v: &serde_json::Value) -> Option<Rect> {
        let n = |k: &str| v.get(k)?.as_i64();
        Some(Rect {
            x: n("x")? as i32,
            y: n("y")? as i32,
            width: n("width")?.max(0) as u32,
            height: n("height")?.max(0) as u32,
        })
    }

    /// Walks the tree; `screen` is the output the node is on.
    fn walk(
        node: &serde_json::Value,
        screen: Option<Rect>,
        vm: &str,
        patterns: &[String],
        found: &mut Option<VmWindow>,
    ) {
        let screen = if node.get("type").and_then(|t| t.as_str()) == Some("output") {
            node.get("rect").and_then(rect)
        } else {
            screen
        };
        let is_window = node.get("pid").is_some_and(|p| p.is_number());
        if let (true, Some(title), Some(r), Some(s)) = (
            is_window,
            node.get("name").and_then(|n| n.as_str()),
            node.get("rect").and_then(rect),
            screen,
        ) {
            let visible = node
                .get("visible")
                .and_then(|v| v.as_bool())
                .unwrap_or(true);
            if visible && found.is_none() && any_matches(patterns, vm, title) {
                *found = Some(VmWindow {
                    title: title.to_owned(),
                    rect: r,
                    screen: s,
                });
            }
        }
        for key in ["nodes", "floating_nodes"] {
            for child in node
                .get(key)
                .and_then(|n| n.as_array())
                .into_iter()
                .flatten()
            {
                walk(child, screen, vm, patterns, found);
            }
        }
    }

    /// The VM's visible window and its output, if sway shows one.
    pub fn find(
        sock: &Path,
        vm: &str,
        patterns: &[String],
    ) -> Result<Option<VmWindow>, AnchorError> {
        Ok(in_tree(&ask(sock, GET_TREE)?, vm, patterns))
    }

    /// The VM's visible window in a `get_tree` reply, with its output.
    pub fn in_tree(tree: &serde_json::Value, vm: &str, patterns: &[String]) -> Option<VmWindow> {
        let mut found = None;
        walk(tree, None, vm, patterns, &mut found);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: i32, y: i32, width: u32, height: u32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn dialog_is_centred_on_the_vm_window() {
        let screen = r(0, 0, 1024, 768);
        assert_eq!(
            centred((460, 300), r(100, 50, 720, 425), screen),
            (230, 112)
        );
        // Centred on a window that is centred on the screen: the screen's centre.
        assert_eq!(centred((460, 300), screen, screen), (282, 234));
    }

    #[test]
    fn dialog_stays_on_screen() {
        let screen = r(0, 0, 1024, 768);
        // A window hanging off the right and bottom edges.
        assert_eq!(
            centred((460, 300), r(900, 700, 640, 480), screen),
            (564, 468)
        );
        // Off the left and top.
        assert_eq!(centred((460, 300), r(-600, -400, 640, 480), screen), (0, 0));
        // A window smaller than the dialog, near the origin.
        assert_eq!(centred((460, 300), r(10, 10, 100, 80), screen), (0, 0));
        // A dialog larger than the screen starts at its corner.
        assert_eq!(
            centred((460, 300), r(0, 0, 300, 200), r(0, 0, 300, 200)),
            (0, 0)
        );
        // A second output to the right.
        assert_eq!(
            centred((460, 300), r(1300, 100, 640, 480), r(1024, 0, 1280, 1024)),
            (1390, 190)
        );
    }

    #[test]
    fn titles_of_the_viewers_match() {
        let p = default_titles();
        for title in [
            "QEMU (vm-test)",
            "QEMU (vm-test) - Press Ctrl+Alt+G to release grab",
            "QEMU (vm-test) [Paused]",
            "vm-test (1) - Virt Viewer",
            "(Press Ctrl+Alt to release pointer) vm-test (1) - Virt Viewer",
            "vm-test (2) - Remote Viewer",
        ] {
            assert!(any_matches(&p, "vm-test", title), "{title}");
        }
        for title in [
            "QEMU (vm-test2)",
            "QEMU (vm-test-other-0)",
            "QEMU (vm-test-x)",
            "vm-test (x) - Virt Viewer",
            "QEMU (xvm-test)",
            "QEMU (vm-tes)",
            "vm-test2 (1) - Virt Viewer",
            "avm-test (1) - Remote Viewer",
            "QEMU",
            "",
        ] {
            assert!(!any_matches(&p, "vm-test", title), "{title}");
        }
        // No name, no window.
        assert!(!any_matches(&p, "", "QEMU ()"));
        // SDL's title is also GTK's for a VM named vm-test-0: not by default.
        assert!(!any_matches(&p, "vm-test", "QEMU (vm-test-0) [Stopped]"));
        let mut sdl = p.clone();
        sdl.extend(SDL_TITLES.iter().map(|s| s.to_string()));
        assert!(any_matches(&sdl, "vm-test", "QEMU (vm-test-0)"));
        assert!(any_matches(&sdl, "vm-test", "QEMU (vm-test-0) [Stopped]"));
        assert!(!any_matches(&sdl, "vm-test", "QEMU (vm-test-x)"));
    }

    #[test]
    fn sways_tree_gives_the_window_and_its_output() {
        // The shape of sway 1.7's get_tree reply, trimmed: two outputs, a
        // tiled view on the second, a floating one, a hidden one.
        let tree = serde_json::json!({
            "type": "root", "rect": {"x": 0, "y": 0, "width": 3200, "height": 1200},
            "nodes": [
                {"type": "output", "name": "A", "rect": {"x": 0, "y": 0, "width": 1280, "height": 800},
                 "nodes": [{"type": "workspace", "rect": {"x": 0, "y": 0, "width": 1280, "height": 800},
                   "nodes": [{"type": "con", "pid": 7, "name": "QEMU (other) [Paused]", "visible": true,
                              "rect": {"x": 0, "y": 25, "width": 1280, "height": 775}}],
                   "floating_nodes": [{"type": "floating_con", "pid": 8, "name": "QEMU (vm2)", "visible": true,
                              "rect": {"x": 100, "y": 100, "width": 640, "height": 480}}]}]},
                {"type": "output", "name": "B", "rect": {"x": 1280, "y": 0, "width": 1920, "height": 1200},
                 "nodes": [{"type": "workspace", "rect": {"x": 1280, "y": 0, "width": 1920, "height": 1200},
                   "nodes": [
                     {"type": "con", "pid": 9, "name": "QEMU (vm1)", "visible": false,
                      "rect": {"x": 1280, "y": 0, "width": 960, "height": 1200}},
                     {"type": "con", "pid": 10, "name": "vm1 (1) - Virt Viewer", "visible": true,
                      "rect": {"x": 2240, "y": 25, "width": 960, "height": 1175}}]}]}
            ]
        });
        let p = default_titles();
        let w = sway::in_tree(&tree, "vm1", &p).expect("vm1's visible window");
        assert_eq!(w.title, "vm1 (1) - Virt Viewer");
        assert_eq!(w.rect, r(2240, 25, 960, 1175));
        assert_eq!(w.screen, r(1280, 0, 1920, 1200));
        assert_eq!(centred((560, 384), w.rect, w.screen), (2440, 420));
        let w = sway::in_tree(&tree, "vm2", &p).expect("a floating window");
        assert_eq!(
            (w.rect, w.screen),
            (r(100, 100, 640, 480), r(0, 0, 1280, 800))
        );
        assert!(sway::in_tree(&tree, "vm3", &p).is_none());
        // An output or workspace named like a VM is not a window.
        assert!(sway::in_tree(&tree, "A", &["{vm}".into()]).is_none());
    }

    #[test]
    fn the_name_is_literal() {
        assert!(title_matches("QEMU ({vm})", "a*b", "QEMU (a*b)"));
        assert!(!title_matches("QEMU ({vm})", "a*b", "QEMU (axxb)"));
        assert!(title_matches("*{vm}*", "vm", "xx vm yy"));
        assert!(title_matches("{vm}", "vm", "vm"));
        assert!(!title_matches("{vm}", "vm", "vm "));
        assert!(title_matches("a*b*c", "", "aXbYc"));
        assert!(!title_matches("a*b*c", "", "aXbY"));
        assert!(title_matches("x{n}y", "", "x042y"));
        assert!(!title_matches("x{n}y", "", "xy"));
        assert!(!title_matches("x{n}", "", "x4a"));
    }
}
