//! A private X server for tests of windows a person answers: Xvfb, xdotool
//! playing the person (focus, typing, keys, through XTEST as a keyboard
//! would), screenshots with xwd and ImageMagick, and a watcher that counts
//! windows as they appear.
//!
//! The window under test (the dialog) is found by its exact title, given
//! when the server starts; authd's is `authd::dialog::window::TITLE`.
//! Missing X programs make [`Xvfb::start`] print `SKIP: …` (fail under CI,
//! see [`crate::prereq`]). Packages: `scripts/apt/authd.txt`.

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::prereq::{missing_program, skip};
use crate::process::{wait_for, Proc};

/// The real ImageMagick; `/usr/local/bin/convert` may be a stub.
pub const CONVERT: &str = "/usr/bin/convert";

/// A private Xvfb server; stopped with SIGTERM (so that it removes its lock
/// file and socket for the next server) when dropped.
pub struct Xvfb {
    /// Its display, e.g. `:3`.
    pub display: String,
    /// Title of the dialog windows the test is about.
    title: String,
    proc: Option<Proc>,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }
}

impl Xvfb {
    /// Starts Xvfb on a free display, for a test of the dialog windows
    /// titled `title`. `None` after printing `SKIP: …` when Xvfb, xdotool,
    /// xwd, ImageMagick or one of `files` (e.g. the font the dialog draws
    /// with) is missing.
    pub fn start(test: &str, title: &str, files: &[&Path]) -> Option<Xvfb> {
        if let Some(m) = missing_program(&["Xvfb", "xdotool", "xwd", CONVERT]) {
            return skip(format!("{test}: {m}"));
        }
        if let Some(f) = files.iter().find(|f| !f.exists()) {
            return skip(format!("{test}: {} is missing", f.display()));
        }
        // -displayfd: Xvfb picks a free display and prints its number, so
        // parallel tests never race for one. -noreset: the short-lived
        // xdotool clients do not make it reset under the window.
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1024x768x24"])
            .args(["-nolisten", "tcp", "-noreset"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn Xvfb");
        let stdout = child.stdout.take().unwrap();
        let proc = Proc(child);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        let n: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Xvfb printed {line:?}, not a display number"));
        println!("{test}: Xvfb on :{n}");
        let sock = format!("/tmp/.X11-unix/X{n}");
        assert!(
            wait_for(Duration::from_secs(10), || {
                std::fs::metadata(&sock).is_ok_and(|m| m.file_type().is_socket())
            }),
            "Xvfb :{n} did not come up"
        );
        Some(Xvfb {
            display: format!(":{n}"),
            title: title.to_owned(),
            proc: Some(proc),
        })
    }

    /// Runs xdotool on this display.
    pub fn xdotool(&self, args: &[&str]) -> Output {
        xdotool(&self.display, args)
    }

    /// Starts a program on this display (a window manager, a decoy window).
    pub fn run(&self, program: &str, args: &[&str]) -> Proc {
        Proc(
            Command::new(program)
                .args(args)
                .env("DISPLAY", &self.display)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {program}: {e}")),
        )
    }

    /// Ids of the visible dialog windows.
    pub fn dialogs(&self) -> Vec<String> {
        windows_on(&self.display, &self.title)
    }

    /// The first dialog window to be mapped within `timeout`.
    pub fn wait_dialog(&self, timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_for(timeout, || {
            found = self.dialogs().into_iter().next();
            found.is_some()
        });
        found
    }

    /// Whether dialog window `win` disappears within `timeout`.
    pub fn wait_gone(&self, win: &str, timeout: Duration) -> bool {
        wait_for(timeout, || !self.dialogs().iter().any(|w| w == win))
    }

    /// Starts counting dialog windows as they appear (see [`Watcher`]).
    pub fn watch(&self) -> Watcher {
        Watcher::start(&self.display, &self.title)
    }

    /// The window the window manager says is active, if any.
    pub fn active_window(&self) -> Option<String> {
        let out = self.xdotool(&["getactivewindow"]);
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// Where `win` is on the screen: (x, y, width, height), from xwininfo's
    /// absolute corner (xdotool's adds a window manager's frame twice).
    pub fn geometry(&self, win: &str) -> (i32, i32, u32, u32) {
        let out = Command::new("xwininfo")
            .args(["-id", win])
            .env("DISPLAY", &self.display)
            .output()
            .expect("xwininfo");
        assert!(out.status.success(), "xwininfo -id {win}");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| -> i64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(k)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {k:?} in {text:?}"))
        };
        (
            field("Absolute upper-left X:") as i32,
            field("Absolute upper-left Y:") as i32,
            field("Width:") as u32,
            field("Height:") as u32,
        )
    }

    /// The window's `_NET_WM_STATE` as printed by xprop.
    pub fn wm_state(&self, win: &str) -> String {
        let out = Command::new("xprop")
            .args(["-id", win, "_NET_WM_STATE"])
            .env("DISPLAY", &self.display)
            .output()
            .expect("xprop");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Gives the window keyboard focus (needed when there is no window
    /// manager).
    pub fn focus(&self, win: &str) {
        let out = self.xdotool(&["windowfocus", "--sync", win]);
        assert!(out.status.success(), "xdotool windowfocus {win}");
    }

    /// Types through XTEST into the focused window, like a keyboard.
    pub fn type_text(&self, text: &str) {
        let out = self.xdotool(&["type", "--delay", "20", text]);
        assert!(out.status.success(), "xdotool type");
    }

    /// Presses one key (e.g. `Return`, `alt+F4`) into the focused window.
    pub fn key(&self, key: &str) {
        let out = self.xdotool(&["key", key]);
        assert!(out.status.success(), "xdotool key {key}");
    }

    /// Moves the pointer to (`x`, `y`) inside `win` and clicks button 1.
    pub fn click(&self, win: &str, x: i32, y: i32) {
        let (x, y) = (x.to_string(), y.to_string());
        let out = self.xdotool(&["mousemove", "--window", win, &x, &y, "click", "1"]);
        assert!(out.status.success(), "xdotool click in {win}");
    }

    /// Saves a screenshot of `win` as PNG at `png` and returns its pixels.
    pub fn screenshot(&self, win: &str, png: &Path) -> Image {
        self.xwd(&["-id", win], png)
    }

    /// Saves a screenshot of the whole screen (every window as stacked)
    /// as PNG at `png` and returns its pixels.
    pub fn screenshot_screen(&self, png: &Path) -> Image {
        self.xwd(&["-root"], png)
    }

    fn xwd(&self, which: &[&str], png: &Path) -> Image {
        let xwd = Command::new("xwd")
            .arg("-silent")
            .args(which)
            .env("DISPLAY", &self.display)
            .output()
            .expect("xwd");
        assert!(xwd.status.success(), "xwd {which:?} failed");
        let mut conv = Command::new(CONVERT)
            .arg("xwd:-")
            .arg("-write")
            .arg(format!("png24:{}", png.display()))
            .arg("ppm:-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("convert");
        conv.stdin.take().unwrap().write_all(&xwd.stdout).unwrap();
        let out = conv.wait_with_output().unwrap();
        assert!(out.status.success(), "convert xwd -> png, ppm failed");
        Image::from_ppm(&out.stdout)
    }
}

fn xdotool(display: &str, args: &[&str]) -> Output {
    Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .stderr(Stdio::null())
        .output()
        .expect("run xdotool")
}

/// Ids of the visible windows titled exactly `title` on `display`.
pub fn windows_on(display: &str, title: &str) -> Vec<String> {
    let pattern = format!("^{title}$");
    let out = xdotool(display, &["search", "--onlyvisible", "--name", &pattern]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Counts windows of one title as they appear, from a thread, until
/// stopped. X reuses window ids across clients, so an appearance is a
/// window visible now that was not visible at the previous poll (every
/// 20 ms; the windows watched stay up far longer).
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(usize, usize)>>,
}

impl Watcher {
    /// Starts watching `display` for windows titled `title`.
    pub fn start(display: &str, title: &str) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, d, t) = (stop.clone(), display.to_owned(), title.to_owned());
        let thread = std::thread::spawn(move || {
            let mut before: Vec<String> = Vec::new();
            let (mut appeared, mut most) = (0, 0);
            while !s.load(Ordering::SeqCst) {
                let now = windows_on(&d, &t);
                most = most.max(now.len());
                appeared += now.iter().filter(|w| !before.contains(w)).count();
                before = now;
                std::thread::sleep(Duration::from_millis(20));
            }
            (appeared, most)
        });
        Watcher {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching: (windows that appeared, most visible at once).
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// An RGB image (from a binary PPM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// 0x00RRGGBB, row by row.
    pub pixels: Vec<u32>,
}

impl Image {
    /// Parses a binary PPM (`P6`, maxval 255) as ImageMagick writes it.
    pub fn from_ppm(data: &[u8]) -> Image {
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while data[at].is_ascii_whitespace() {
                at += 1;
            }
            if data[at] == b'#' {
                while data[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            let start = at;
            while !data[at].is_ascii_whitespace() {
                at += 1;
            }
            fields.push(std::str::from_utf8(&data[start..at]).unwrap().to_owned());
        }
        assert_eq!(fields[0], "P6", "not a binary PPM");
        assert_eq!(fields[3], "255", "PPM with maxval {}", fields[3]);
        let (width, height): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        let body = &data[at + 1..];
        assert_eq!(body.len(), (width * height * 3) as usize, "PPM size");
        let pixels = body
            .chunks(3)
            .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
            .collect();
        Image {
            width,
            height,
            pixels,
        }
    }

    /// The `width` x `height` part whose top-left corner is (`x`, `y`).
    pub fn crop(&self, x: u32, y: u32, width: u32, height: u32) -> Image {
        assert!(
            x + width <= self.width && y + height <= self.height,
            "crop outside the image"
        );
        let pixels = (y..y + height)
            .flat_map(|row| {
                let start = (row * self.width + x) as usize;
                self.pixels[start..start + width as usize].iter().copied()
            })
            .collect();
        Image {
            width,
            height,
            pixels,
        }
    }

    /// The pixel at (`x`, `y`), 0x00RRGGBB.
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// How many pixels have exactly this colour.
    pub fn count(&self, rgb: u32) -> usize {
        self.pixels.iter().filter(|&&p| p == rgb).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_with_comment_parses() {
        let mut data = b"P6\n# made by hand\n2 1\n255\n".to_vec();
        data.extend_from_slice(&[1, 2, 3, 0xff, 0, 0x80]);
        let img = Image::from_ppm(&data);
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.pixel(0, 0), 0x010203);
        assert_eq!(img.pixel(1, 0), 0xff0080);
        assert_eq!(img.count(0xff0080), 1);
    }
}
