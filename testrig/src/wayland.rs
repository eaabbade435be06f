//! Private Wayland compositors for tests of windows a person answers:
//! sway on wlroots' headless backend (no GPU, no input devices, pixman
//! rendering), wtype playing the person's keyboard (through the virtual
//! keyboard protocol, as a keyboard would), screenshots with grim, and
//! sway's IPC (swaymsg) telling where each window is; and weston's headless
//! backend ([`Weston`]), a compositor without the layer shell, with its
//! own screenshooter.
//!
//! sway refuses to run as root (it checks that root cannot be regained);
//! under root it runs as `nobody` through util-linux's setpriv, in a
//! runtime directory of its own that root's clients can still reach.
//! Missing programs make [`Sway::start`] print `SKIP: …` (fail under CI,
//! see [`crate::prereq`]). Packages: `scripts/apt/authd.txt`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::prereq::{is_root, missing_program, skip};
use crate::process::{wait_for, Proc};
use crate::x11::{Image, CONVERT};

/// Size of the headless output.
pub const OUTPUT: (u32, u32) = (1280, 800);

/// A window as sway's tree shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwayWindow {
    pub title: String,
    /// (x, y, width, height) in layout coordinates, decorations included.
    pub rect: (i32, i32, u32, u32),
}

/// A private headless sway; stopped with SIGTERM when dropped.
pub struct Sway {
    /// Its `XDG_RUNTIME_DIR` (holds the Wayland and IPC sockets).
    pub runtime_dir: PathBuf,
    /// `WAYLAND_DISPLAY`: the socket's name in `runtime_dir`.
    pub socket: String,
    /// `SWAYSOCK`: its IPC socket.
    pub ipc: PathBuf,
    proc: Option<Proc>,
    _dir: TempDir,
}

/// A directory removed when dropped (sway's files may belong to `nobody`).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Sway {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }
}

impl Sway {
    /// Starts sway headless with one output of [`OUTPUT`] size, windows
    /// with title bars. `None` after printing `SKIP: …` when sway, grim,
    /// wtype, ImageMagick (or, as root, setpriv) or one of `files` is
    /// missing.
    pub fn start(test: &str, files: &[&Path]) -> Option<Sway> {
        let mut needs = vec!["sway", "swaymsg", "grim", "wtype", CONVERT];
        if is_root() {
            needs.push("setpriv");
        }
        if let Some(m) = missing_program(&needs) {
            return skip(format!("{test}: {m}"));
        }
        if let Some(f) = files.iter().find(|f| !f.exists()) {
            return skip(format!("{test}: {} is missing", f.display()));
        }
        let dir = std::env::temp_dir().join(format!(
            "testrig-sway-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir(&dir).expect("sway runtime dir");
        let dir = TempDir(dir);
        let config = dir.0.join("config");
        std::fs::write(
            &config,
            format!(
                "output HEADLESS-1 resolution {}x{}\ndefault_border normal\n",
                OUTPUT.0, OUTPUT.1
            ),
        )
        .unwrap();
        let mut cmd = if is_root() {
            // nobody:nogroup; it must own its runtime directory.
            std::os::unix::fs::chown(&dir.0, Some(65534), Some(65534))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.0.display()));
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "sway"]);
            c
        } else {
            Command::new("sway")
        };
        std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("testrig-sway-{}.log", std::process::id())),
        )
        .ok();
        let child = cmd
            .arg("-c")
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &dir.0)
            .env("XDG_RUNTIME_DIR", &dir.0)
            .env("WLR_BACKENDS", "headless")
            .env("WLR_LIBINPUT_NO_DEVICES", "1")
            .env("WLR_RENDERER", "pixman")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
            .spawn()
            .expect("spawn sway");
        let proc = Proc(child);
        let mut socket = None;
        let mut ipc = None;
        let up = wait_for(Duration::from_secs(20), || {
            for e in std::fs::read_dir(&dir.0).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("wayland-") && !name.ends_with(".lock") {
                    socket = Some(name);
                } else if name.starts_with("sway-ipc.") && name.ends_with(".sock") {
                    ipc = Some(e.path());
                }
            }
            // Bound is not yet listening: a client would be refused.
            socket
                .as_ref()
                .is_some_and(|s| crate::daemon::listens(&dir.0.join(s)))
                && ipc.is_some()
        });
        assert!(up, "sway did not come up in {}", dir.0.display());
        let sway = Sway {
            runtime_dir: dir.0.clone(),
            socket: socket.unwrap(),
            ipc: ipc.unwrap(),
            proc: Some(proc),
            _dir: dir,
        };
        assert!(
            wait_for(Duration::from_secs(10), || sway
                .swaymsg(&["-t", "get_version"])
                .status
                .success()),
            "sway's IPC does not answer"
        );
        println!("{test}: sway on {}", sway.socket);
        Some(sway)
    }

    /// The environment of a client of this compositor.
    pub fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("XDG_RUNTIME_DIR", self.runtime_dir.clone().into()),
            ("WAYLAND_DISPLAY", self.socket.clone().into()),
            ("SWAYSOCK", self.ipc.clone().into()),
        ]
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env()).env_remove("DISPLAY");
        c
    }

    /// Runs swaymsg against this sway.
    pub fn swaymsg(&self, args: &[&str]) -> Output {
        self.command("swaymsg")
            .args(args)
            .output()
            .expect("swaymsg")
    }

    /// Starts a program in this session (GTK programs as Wayland clients).
    pub fn run(&self, program: &str, args: &[&str]) -> Proc {
        Proc(
            self.command(program)
                .args(args)
                .env("GDK_BACKEND", "wayland")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {program}: {e}")),
        )
    }

    /// The windows (views) in sway's tree, in tree order.
    pub fn windows(&self) -> Vec<SwayWindow> {
        let out = self.swaymsg(&["-t", "get_tree"]);
        assert!(out.status.success(), "swaymsg -t get_tree");
        let tree: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tree JSON");
        let mut found = Vec::new();
        fn walk(n: &serde_json::Value, found: &mut Vec<SwayWindow>) {
            let num = |k: &str| n["rect"][k].as_i64().unwrap_or(0);
            if n["pid"].is_number() {
                found.push(SwayWindow {
                    title: n["name"].as_str().unwrap_or("").to_owned(),
                    rect: (
                        num("x") as i32,
                        num("y") as i32,
                        num("width") as u32,
                        num("height") as u32,
                    ),
                });
            }
            for key in ["nodes", "floating_nodes"] {
                for c in n[key].as_array().into_iter().flatten() {
                    walk(c, found);
                }
            }
        }
        walk(&tree, &mut found);
        found
    }

    /// Types with wtype: `args` as wtype takes them (text, `-k Key`,
    /// `-s ms` pauses). Each run is a new virtual keyboard, which gives the
    /// focused surface keyboard focus anew.
    pub fn wtype(&self, args: &[&str]) -> Output {
        self.command("wtype").args(args).output().expect("wtype")
    }

    /// Starts wtype without waiting for it (for long pauses in `args`).
    pub fn wtype_spawn(&self, args: &[&str]) -> Proc {
        Proc(
            self.command("wtype")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn wtype"),
        )
    }

    /// Saves a screenshot of the whole output as PNG at `png` and returns
    /// its pixels.
    pub fn screenshot(&self, png: &Path) -> Image {
        let grim = self
            .command("grim")
            .args(["-t", "ppm", "-"])
            .output()
            .expect("grim");
        assert!(
            grim.status.success(),
            "grim failed: {}",
            String::from_utf8_lossy(&grim.stderr)
        );
        let mut conv = Command::new(CONVERT)
            .arg("ppm:-")
            .arg(format!("png24:{}", png.display()))
            .stdin(Stdio::piped())
            .spawn()
            .expect("convert");
        conv.stdin.take().unwrap().write_all(&grim.stdout).unwrap();
        assert!(conv.wait().unwrap().success(), "convert ppm -> png failed");
        Image::from_ppm(&grim.stdout)
    }
}

/// A private headless weston (no layer shell; `--debug` lets
/// `weston-screenshooter` take screenshots); stopped when dropped.
pub struct Weston {
    pub runtime_dir: PathBuf,
    pub socket: String,
    proc: Option<Proc>,
    _dir: TempDir,
}

impl Drop for Weston {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }
}

impl Weston {
    /// Starts weston headless, pixman-rendered, one output of [`OUTPUT`]
    /// size. `None` after printing `SKIP: …` when weston, its screenshooter,
    /// ImageMagick or one of `files` is missing.
    pub fn start(test: &str, files: &[&Path]) -> Option<Weston> {
        if let Some(m) = missing_program(&["weston", "weston-screenshooter", CONVERT]) {
            return skip(format!("{test}: {m}"));
        }
        if let Some(f) = files.iter().find(|f| !f.exists()) {
            return skip(format!("{test}: {} is missing", f.display()));
        }
        let dir = std::env::temp_dir().join(format!(
            "testrig-weston-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir(&dir).expect("weston runtime dir");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let dir = TempDir(dir);
        let socket = "wayland-weston".to_owned();
        let child = Command::new("weston")
            .args([
                "--backend=headless-backend.so",
                "--use-pixman",
                "--debug",
                "--idle-time=0",
            ])
            .arg(format!("--width={}", OUTPUT.0))
            .arg(format!("--height={}", OUTPUT.1))
            .arg(format!("--socket={socket}"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &dir.0)
            .env("XDG_RUNTIME_DIR", &dir.0)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weston");
        let proc = Proc(child);
        let path = dir.0.join(&socket);
        assert!(
            wait_for(Duration::from_secs(20), || crate::daemon::listens(&path)),
            "weston did not come up in {}",
            dir.0.display()
        );
        println!("{test}: weston on {socket}");
        Some(Weston {
            runtime_dir: dir.0.clone(),
            socket,
            proc: Some(proc),
            _dir: dir,
        })
    }

    /// Saves a screenshot of the whole output as PNG at `png` and returns
    /// its pixels (weston-screenshooter writes into its working directory).
    pub fn screenshot(&self, png: &Path) -> Image {
        let shots = self.runtime_dir.join("shots");
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir(&shots).unwrap();
        let out = Command::new("weston-screenshooter")
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("WAYLAND_DISPLAY", &self.socket)
            .current_dir(&shots)
            .output()
            .expect("weston-screenshooter");
        assert!(out.status.success(), "weston-screenshooter failed");
        let file = std::fs::read_dir(&shots)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "png"))
            .expect("weston-screenshooter wrote no PNG");
        std::fs::copy(&file, png).unwrap();
        let conv = Command::new(CONVERT)
            .arg(&file)
            .args(["-alpha", "off", "ppm:-"])
            .output()
            .expect("convert");
        assert!(conv.status.success(), "convert png -> ppm failed");
        Image::from_ppm(&conv.stdout)
    }
}
