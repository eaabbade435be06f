//! Helpers shared by the integration tests: a real `authd serve` process
//! and a real Xvfb display driven by xdotool (both from testrig), golden
//! images. Tests that need a program the machine lacks print `SKIP: ...` and
//! return (see docs/authd.md).

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use authd::config::Config;
use authd::dialog::window::TITLE;
use authd::dialog::FONT_PATH;
use authd_client::client::Client;
use testrig::authd::Authd;
pub use testrig::wait_for;
pub use testrig::x11::Xvfb;

pub const PASSWORD: &str = "correct horse 7";
pub const PHRASE: &str = "purple owl at dawn";
pub const COLOR: &str = "#6a1b9a";

/// A private Xvfb for a test of authd's dialog, or None after printing a
/// SKIP line (testrig's X11 harness; the dialog's font is needed too).
pub fn xvfb(test: &str) -> Option<Xvfb> {
    Xvfb::start(test, TITLE, &[Path::new(FONT_PATH)])
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

/// A running `authd serve` (testrig's launcher) with its own state, socket
/// and audit log, configured through authd's typed [`Config`].
pub struct Daemon {
    pub cfg: Config,
    authd: Authd,
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
        let json = serde_json::to_value(&cfg).unwrap();
        let mut authd = Authd::configure(env!("CARGO_BIN_EXE_authd"), dir, json);
        authd.start();
        Daemon { cfg, authd }
    }

    /// (Re)starts the daemon process and waits for its socket.
    pub fn restart(&mut self) {
        self.authd.start();
    }

    /// SIGTERMs the daemon and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.authd.terminate()
    }

    /// SIGKILLs the daemon (no clean shutdown).
    pub fn kill(&mut self) {
        self.authd.kill();
    }

    pub fn client(&self) -> Client {
        Client::new(self.cfg.socket.clone())
    }

    /// Asks for alice's grant for the VM `vm-test` on a thread; the test
    /// plays the person at the screen meanwhile.
    pub fn ask(
        &self,
        lifetime_secs: u64,
    ) -> std::thread::JoinHandle<authd_client::client::Decision> {
        let client = self.client();
        let req = request(lifetime_secs);
        std::thread::spawn(move || client.authenticate(&req, std::time::Duration::from_secs(90)))
    }

    /// What the dialog of [`Self::ask`] shows, for the pure renderer.
    pub fn shown_request(&self) -> authd::dialog::DialogRequest {
        authd::dialog::DialogRequest {
            vm: "vm-test".into(),
            principal: "alice".into(),
            reason: reason(),
            provenance: authd_client::protocol::Provenance::Host,
            seal: authd::seal::Seal::new(PHRASE, COLOR.parse().unwrap()).unwrap(),
            timeout_secs: self.cfg.prompt_timeout_secs,
            focus_delay_ms: self.cfg.focus_delay_ms,
            question: None,
            vm_window_titles: Vec::new(),
        }
    }

    /// Enrolls a principal through the real command line.
    pub fn enroll(&self, principal: &str, password: &str) {
        self.authd.enroll(principal, password, PHRASE, COLOR);
    }

    /// Audit records whose "event" is `event`.
    pub fn audit(&self, event: &str) -> Vec<serde_json::Value> {
        self.authd.audit(event)
    }
}

/// Enrolls `principal` (seal: [`PHRASE`], [`COLOR`]) in the store at `state_dir`.
pub fn enroll(state_dir: &Path, principal: &str, password: &str) {
    testrig::authd::enroll(
        Path::new(env!("CARGO_BIN_EXE_authd")),
        state_dir,
        principal,
        password,
        PHRASE,
        COLOR,
    );
}

/// What fsd sends: the operation it decoded, the file's path in the share
/// as it resolved it, and the pid from the FUSE header.
pub fn reason() -> authd_client::protocol::Reason {
    authd_client::protocol::Reason {
        operation: "open".into(),
        path: "notes/secret.txt".into(),
        pid: 4242,
        process: "cat".into(),
        pid_verified: false,
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

/// Fraction of pixels whose channels differ by more than 2 levels: a live
/// screenshot of the dialog against the pure renderer.
pub fn pixel_difference(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let differ = a
        .iter()
        .zip(b)
        .filter(|(p, q)| {
            (0..3).any(|i| {
                let (x, y) = ((*p >> (8 * i)) & 0xff, (*q >> (8 * i)) & 0xff);
                x.abs_diff(y) > 2
            })
        })
        .count();
    differ as f64 / a.len() as f64
}

/// The QEMU whose window stands for a VM's in the overlay tests.
pub const QEMU: &str = "qemu-system-x86_64";

/// Whether this QEMU has its GTK display (Debian: `qemu-system-gui`).
pub fn qemu_has_gtk() -> bool {
    std::process::Command::new(QEMU)
        .args(["-display", "help"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "gtk")
        })
}

/// alice's request for the VM `vm-test`, as [`Daemon::ask`] sends it.
pub fn request(lifetime_secs: u64) -> authd_client::client::AuthRequest {
    authd_client::client::AuthRequest {
        vm: "vm-test".into(),
        principal: "alice".into(),
        reason: reason(),
        lifetime: std::time::Duration::from_secs(lifetime_secs),
    }
}
