//! Helpers shared by the integration tests: a real Xvfb display, a real
//! `authd serve` process, xdotool and xwd. Tests that need a program the
//! machine lacks print `SKIP: ...` and return (see docs/authd.md).

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use authd::client::Client;
use authd::config::Config;

pub const PASSWORD: &str = "correct horse 7";
pub const PHRASE: &str = "purple owl at dawn";
pub const COLOR: &str = "#6a1b9a";

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

/// The real ImageMagick; /usr/local/bin/convert may be a stub.
pub const CONVERT: &str = "/usr/bin/convert";

/// Returns the first missing program, if any.
pub fn missing(programs: &[&str]) -> Option<String> {
    programs.iter().find(|p| !have(p)).map(|p| p.to_string())
}

/// A private Xvfb server.
pub struct Xvfb {
    pub display: String,
    proc: Option<Proc>,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove its lock file and socket; SIGKILL (the
        // Proc fallback) would leave them for the next server to trip over.
        if let Some(mut p) = self.proc.take() {
            let pid = rustix::process::Pid::from_child(&p.0);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = wait_for(Duration::from_secs(5), || {
                matches!(p.0.try_wait(), Ok(Some(_)))
            });
        }
    }
}

impl Xvfb {
    /// Starts Xvfb, or returns None after printing a SKIP line.
    pub fn start(test: &str) -> Option<Xvfb> {
        let needed = ["Xvfb", "xdotool", "xwd", CONVERT];
        if let Some(m) = missing(&needed) {
            println!("SKIP {test}: {m} is not installed (apt: see scripts/apt/authd.txt)");
            return None;
        }
        if !Path::new(authd::dialog::FONT_PATH).exists() {
            println!(
                "SKIP {test}: font {} missing (fonts-dejavu-core)",
                authd::dialog::FONT_PATH
            );
            return None;
        }
        // -displayfd: Xvfb picks a free display itself and prints its number,
        // so parallel tests never race for one.
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1024x768x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ])
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
            .expect("Xvfb printed its display number");
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

    /// The window the window manager says is active, if any.
    pub fn active_window(&self) -> Option<String> {
        let out = self.xdotool(&["getactivewindow"]);
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !s.is_empty()).then_some(s)
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

    /// Ids of visible dialog windows.
    pub fn dialogs(&self) -> Vec<String> {
        let out = self.xdotool(&[
            "search",
            "--onlyvisible",
            "--name",
            "^authd: host authentication$",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a dialog window to be mapped.
    pub fn wait_dialog(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(w) = self.dialogs().into_iter().next() {
                return Some(w);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Gives the window keyboard focus (there is no window manager).
    pub fn focus(&self, win: &str) {
        assert!(self
            .xdotool(&["windowfocus", "--sync", win])
            .status
            .success());
    }

    /// Types through XTEST into the focused window, like a real keyboard
    /// (`_win` names the window the test has focused).
    pub fn type_text(&self, _win: &str, text: &str) {
        assert!(self
            .xdotool(&["type", "--delay", "20", text])
            .status
            .success());
    }

    /// Presses a key through XTEST into the focused window.
    pub fn key(&self, _win: &str, key: &str) {
        assert!(self.xdotool(&["key", key]).status.success());
    }

    /// Takes a screenshot of a window: (width, height, 0x00RRGGBB pixels).
    pub fn screenshot(&self, win: &str, png_out: &Path) -> (u32, u32, Vec<u32>) {
        let xwd = Command::new("xwd")
            .args(["-silent", "-id", win])
            .env("DISPLAY", &self.display)
            .output()
            .expect("xwd");
        assert!(xwd.status.success(), "xwd failed");
        let mut conv = Command::new(CONVERT)
            .args(["xwd:-", &format!("png24:{}", png_out.display())])
            .stdin(Stdio::piped())
            .spawn()
            .expect("convert");
        conv.stdin.take().unwrap().write_all(&xwd.stdout).unwrap();
        assert!(conv.wait().unwrap().success(), "convert failed");
        read_png(png_out)
    }
}

/// Decodes an 8-bit RGB or RGBA PNG into 0x00RRGGBB pixels.
pub fn read_png(path: &Path) -> (u32, u32, Vec<u32>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let px = buf[..info.buffer_size()]
        .chunks(step)
        .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
        .collect();
    (info.width, info.height, px)
}

/// Writes 0x00RRGGBB pixels as an RGB PNG.
pub fn write_png(path: &Path, w: u32, h: u32, pixels: &[u32]) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().unwrap();
    let data: Vec<u8> = pixels
        .iter()
        .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
        .collect();
    writer.write_image_data(&data).unwrap();
}

pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running `authd serve` with its own state, socket and audit log.
pub struct Daemon {
    pub dir: PathBuf,
    pub cfg: Config,
    pub cfg_path: PathBuf,
    proc: Option<Proc>,
}

impl Daemon {
    /// A configuration in a fresh directory; adjust it, then [`Daemon::start`].
    pub fn config(dir: &Path) -> Config {
        Config {
            socket: dir.join("authd.sock"),
            state_dir: dir.join("state"),
            audit_log: dir.join("audit.jsonl"),
            dialog_program: Some(PathBuf::from(env!("CARGO_BIN_EXE_authd-dialog"))),
            prompt_timeout_secs: 30,
            ..Config::default()
        }
    }

    pub fn start(dir: &Path, cfg: Config) -> Daemon {
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut d = Daemon {
            dir: dir.to_owned(),
            cfg,
            cfg_path,
            proc: None,
        };
        d.restart();
        d
    }

    /// (Re)starts the daemon process and waits for its socket.
    pub fn restart(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_file(&self.cfg.socket);
        let child = Command::new(env!("CARGO_BIN_EXE_authd"))
            .args(["--config", self.cfg_path.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "warn")
            .env_remove("DISPLAY")
            .spawn()
            .expect("spawn authd");
        self.proc = Some(Proc(child));
        let sock = self.cfg.socket.clone();
        assert!(
            wait_for(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "authd did not come up"
        );
    }

    /// SIGTERMs the daemon and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut p = self.proc.take().expect("daemon running");
        let pid = rustix::process::Pid::from_child(&p.0);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        p.0.wait().unwrap()
    }

    /// SIGKILLs the daemon (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.cfg.socket.clone())
    }

    /// Enrolls a principal through the real command line.
    pub fn enroll(&self, principal: &str, password: &str) {
        enroll(&self.cfg.state_dir, principal, password);
    }

    /// Audit records whose "event" is `event`.
    pub fn audit(&self, event: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.cfg.audit_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == event)
            .collect()
    }
}

pub fn enroll(state_dir: &Path, principal: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authd"))
        .args([
            "enroll",
            principal,
            "--password-stdin",
            "--seal-phrase",
            PHRASE,
            "--seal-color",
            COLOR,
        ])
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    assert!(child.wait().unwrap().success(), "enroll failed");
}

pub fn reason() -> authd::protocol::Reason {
    authd::protocol::Reason {
        operation: "open".into(),
        path: "/home/alice/notes/secret.txt".into(),
        pid: 4242,
        process: "cat".into(),
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
