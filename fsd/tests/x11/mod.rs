//! The host side of a prompt, for real-guest tests of rules that ask: a
//! private Xvfb display, the real `authd serve` with its dialog on that
//! display, and xdotool playing the person at the screen.
//!
//! authd is a separate crate; its binaries are taken from the same target
//! directory as fsd's (`cargo build -p authd`, which `cargo test --workspace`
//! does anyway), or from `$AUTHD_BIN_DIR`. Missing X programs or the dialog's
//! font make a test print `SKIP: …` and return; under `CI=true` they fail.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Title of authd's dialog window (authd's `dialog::window::TITLE`).
pub const DIALOG_TITLE: &str = "authd: host authentication";
/// Size of the dialog (authd's `dialog::render::{WIDTH, HEIGHT}`).
pub const DIALOG_SIZE: (u32, u32) = (560, 384);
/// A point inside the seal band, clear of the phrase's glyphs
/// (authd's `SEAL_BAND` is x 20..540, y 52..114).
pub const SEAL_PROBE: (u32, u32) = (24, 56);
/// The font the dialog draws with.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The real ImageMagick; `/usr/local/bin/convert` may be a stub.
pub const CONVERT: &str = "/usr/bin/convert";

/// Kills and reaps a child process when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Prints `SKIP: …` and returns false, or panics under CI.
fn skip(test: &str, reason: &str) -> bool {
    if testrig::prereq::in_ci() {
        panic!("CI=true and {test} lacks {reason}");
    }
    println!("SKIP: {test}: {reason}");
    false
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private Xvfb server; stopped with SIGTERM (so it removes its lock
/// file and socket) when dropped.
pub struct Xvfb {
    pub display: String,
    proc: Option<Proc>,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(p.0.id() as libc::pid_t, libc::SIGTERM) };
            let _ = wait_for(Duration::from_secs(5), || {
                matches!(p.0.try_wait(), Ok(Some(_)))
            });
        }
    }
}

impl Xvfb {
    /// Starts Xvfb, or returns None after printing a SKIP line.
    pub fn start(test: &str) -> Option<Xvfb> {
        for p in ["Xvfb", "xdotool", "xwd", CONVERT] {
            if !have(p) {
                skip(test, &format!("{p} (apt: see scripts/apt/authd.txt)"));
                return None;
            }
        }
        if !Path::new(FONT).exists() {
            skip(
                test,
                &format!("the dialog's font {FONT} (fonts-dejavu-core)"),
            );
            return None;
        }
        // -displayfd: Xvfb picks a free display and prints its number, so
        // parallel tests never race for one.
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
        let sock = format!("/tmp/.X11-unix/X{n}");
        assert!(
            wait_for(Duration::from_secs(10), || {
                std::fs::metadata(&sock).is_ok_and(|m| m.file_type().is_socket())
            }),
            "Xvfb :{n} did not come up"
        );
        Some(Xvfb {
            display: format!(":{n}"),
            proc: Some(proc),
        })
    }

    fn xdotool(&self, args: &[&str]) -> std::process::Output {
        Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .stderr(Stdio::null())
            .output()
            .expect("run xdotool")
    }

    /// Ids of the visible dialog windows.
    pub fn dialogs(&self) -> Vec<String> {
        dialogs_on(&self.display)
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

    /// Whether `win` disappears within `timeout`.
    pub fn wait_gone(&self, win: &str, timeout: Duration) -> bool {
        wait_for(timeout, || !self.dialogs().iter().any(|w| w == win))
    }

    /// Gives the window keyboard focus (there is no window manager).
    pub fn focus(&self, win: &str) {
        let out = self.xdotool(&["windowfocus", "--sync", win]);
        assert!(out.status.success(), "xdotool windowfocus {win}");
    }

    /// Types through XTEST into the focused window, like a keyboard.
    pub fn type_text(&self, text: &str) {
        let out = self.xdotool(&["type", "--delay", "20", text]);
        assert!(out.status.success(), "xdotool type");
    }

    /// Presses one key through XTEST into the focused window.
    pub fn key(&self, key: &str) {
        assert!(self.xdotool(&["key", key]).status.success(), "xdotool key");
    }

    /// Saves a screenshot of `win` as PNG at `png` and returns its pixels.
    pub fn screenshot(&self, win: &str, png: &Path) -> Image {
        let xwd = Command::new("xwd")
            .args(["-silent", "-id", win])
            .env("DISPLAY", &self.display)
            .output()
            .expect("xwd");
        assert!(xwd.status.success(), "xwd -id {win} failed");
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

/// Ids of the visible dialog windows on `display` (usable from a thread
/// that watches the screen while the test drives the guest).
pub fn dialogs_on(display: &str) -> Vec<String> {
    let title = format!("^{DIALOG_TITLE}$");
    let out = Command::new("xdotool")
        .args(["search", "--onlyvisible", "--name", &title])
        .env("DISPLAY", display)
        .stderr(Stdio::null())
        .output()
        .expect("run xdotool");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Counts dialog windows as they appear, until stopped. X reuses window
/// ids across clients, so an appearance is a window visible now that was
/// not visible at the previous poll (every 20 ms; a dialog stays up far
/// longer).
pub struct Watcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, usize)>>,
}

impl Watcher {
    pub fn start(display: &str) -> Watcher {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, d) = (stop.clone(), display.to_owned());
        let thread = std::thread::spawn(move || {
            let mut before: Vec<String> = Vec::new();
            let (mut appeared, mut most) = (0, 0);
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let now = dialogs_on(&d);
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

    /// Stops watching: (dialog appearances, most visible at once).
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An RGB image (from a binary PPM).
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

    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// How many pixels have exactly this colour.
    pub fn count(&self, rgb: u32) -> usize {
        self.pixels.iter().filter(|&&p| p == rgb).count()
    }
}

/// Where authd's binaries are: `$AUTHD_BIN_DIR`, else beside fsd's.
/// Panics, saying how to build them, when they are not there.
pub fn authd_programs() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("AUTHD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_fsd"))
                .parent()
                .expect("fsd's binary has a directory")
                .to_path_buf()
        });
    let authd = dir.join("authd");
    let dialog = dir.join("authd-dialog");
    for p in [&authd, &dialog] {
        assert!(
            p.is_file(),
            "{} is missing: build authd into the same target directory first \
             (`cargo build -p authd`, with the same CARGO_TARGET_DIR as this test), \
             or point AUTHD_BIN_DIR at a directory holding authd and authd-dialog",
            p.display()
        );
    }
    (authd, dialog)
}

/// A running `authd serve` with its own socket, credential store, audit
/// log and configuration (authd's JSON format, docs/authd.md).
pub struct Authd {
    pub program: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub audit_log: PathBuf,
    pub config: serde_json::Value,
    config_path: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Authd {
    /// A configuration in `dir` showing its dialog on `display`; `extra`
    /// fields (prompt timeout, focus delay, faillock, prompt rate) override.
    pub fn configure(dir: &Path, display: &str, extra: serde_json::Value) -> Authd {
        let (program, dialog) = authd_programs();
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("authd.sock");
        let state_dir = dir.join("state");
        let audit_log = dir.join("audit.jsonl");
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let mut config = serde_json::json!({
            "socket": socket,
            "state_dir": state_dir,
            "audit_log": audit_log,
            "allow_uids": [uid],
            "frontend": "dialog",
            "display": display,
            "dialog_program": dialog,
        });
        for (k, v) in extra.as_object().expect("extra is a JSON object") {
            config[k] = v.clone();
        }
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        Authd {
            program,
            socket,
            state_dir,
            audit_log,
            config,
            config_path,
            log: dir.join("authd.log"),
            proc: None,
        }
    }

    /// Enrolls `principal` through the real command line, non-interactively.
    pub fn enroll(&self, principal: &str, password: &str, phrase: &str, color: &str) {
        let mut child = Command::new(&self.program)
            .args(["enroll", principal, "--password-stdin"])
            .args(["--seal-phrase", phrase, "--seal-color", color])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn authd enroll");
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        assert!(child.wait().unwrap().success(), "authd enroll {principal}");
    }

    /// (Re)starts the daemon and waits until its socket answers.
    pub fn start(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("RUST_LOG", "info")
            .env_remove("DISPLAY")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn authd serve");
        self.proc = Some(Proc(child));
        let sock = self.socket.clone();
        assert!(
            wait_for(Duration::from_secs(20), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "authd did not come up:\n{}",
            self.log_text()
        );
    }

    /// SIGKILLs the daemon: no clean shutdown, no events.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    /// Every audit record, in order.
    pub fn audit_all(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("authd audit lines are JSON"))
            .collect()
    }

    /// Audit records whose `event` is `event`.
    pub fn audit(&self, event: &str) -> Vec<serde_json::Value> {
        self.audit_all()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_log).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
