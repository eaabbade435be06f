//! A shell in a running guest, over a second serial port: the test runs
//! command lines in the guest whenever it likes and reads their output,
//! while something else (the monitor) looks at the same guest from outside.
//! The other way to script a guest, a script that takes turns with the test,
//! is [`crate::script`].
//!
//! The guest's script is [`SerialShell::SCRIPT`]: it reads lines from
//! `/dev/ttyS1`, runs each and answers there; [`SerialShell::attach`] puts
//! that port on a Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::process::wait_for;
use crate::qemu::{QemuConfig, Vm};

/// Printed on the console once the command loop runs.
const READY: &str = "CTL-READY";

/// The test's end of the command loop.
pub struct SerialShell {
    ctl: UnixStream,
    seq: u64,
}

impl SerialShell {
    /// The guest script (for `InitramfsBuilder::run_script`): run lines from
    /// `/dev/ttyS1` and answer there.
    /// A `read` cut short by a signal (status above 128: a background
    /// child of an earlier command ending, say) waits for the line again
    /// instead of ending the loop.
    pub const SCRIPT: &'static str = r#"
stty -F /dev/ttyS1 raw -echo
echo CTL-READY
while :; do
  if IFS= read -r line; then eval "$line"; elif [ $? -le 128 ]; then break; fi
done </dev/ttyS1 >/dev/ttyS1 2>&1
"#;

    /// Adds the second serial port to `cfg`, served by QEMU on `socket`.
    pub fn attach(cfg: &mut QemuConfig, socket: &Path) {
        for a in [
            "-chardev".to_string(),
            format!("socket,id=ctl,path={},server=on,wait=off", socket.display()),
            "-device".to_string(),
            "isa-serial,chardev=ctl".to_string(),
        ] {
            cfg.extra_args.push(a.into());
        }
    }

    /// Connects to the port of a guest started with [`SerialShell::attach`]
    /// and waits (up to `timeout`) until its command loop runs.
    pub fn connect(vm: &mut Vm, socket: &Path, timeout: Duration) -> SerialShell {
        assert!(
            wait_for(Duration::from_secs(30), || crate::daemon::listens(socket)),
            "{} never appeared",
            socket.display()
        );
        let ctl = UnixStream::connect(socket).expect("connect control serial");
        assert!(
            vm.wait_for_console(READY, timeout),
            "guest did not come up:\n{}",
            vm.console()
        );
        let mut shell = SerialShell { ctl, seq: 0 };
        // Drain anything the port emitted while the loop started.
        shell.sh(vm, "true", Duration::from_secs(120));
        shell
    }

    /// Runs a shell command line in the guest and returns its output
    /// (stdout and stderr); panics, with the console, after `timeout`.
    pub fn sh(&mut self, vm: &Vm, cmd: &str, timeout: Duration) -> String {
        self.seq += 1;
        let end = format!("@@END{}@@", self.seq);
        // `cmd &; echo` would be a syntax error, which ends the guest loop.
        let sep = if cmd.trim_end().ends_with('&') {
            " "
        } else {
            "; "
        };
        let line = format!("{cmd}{sep}echo {end}\n");
        self.ctl.write_all(line.as_bytes()).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&out).replace('\r', "");
            if let Some(i) = text.find(&end) {
                return text[..i].to_string();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "guest command {cmd:?} timed out; got {text:?}\nconsole:\n{}",
                vm.console()
            );
            self.ctl.set_read_timeout(Some(left)).unwrap();
            match self.ctl.read(&mut buf) {
                Ok(0) => panic!("control serial closed; console:\n{}", vm.console()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("control serial: {e}"),
            }
        }
    }

    /// Writes a line without waiting for an answer (for commands that are
    /// expected to block).
    pub fn send(&mut self, cmd: &str) {
        self.ctl.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    }

    /// Writes bytes as typed on the port (no newline added): answers to a
    /// program's prompt, a Ctrl-C (`\x03`).
    pub fn type_raw(&mut self, bytes: &[u8]) {
        self.ctl.write_all(bytes).unwrap();
    }

    /// Reads what the port prints until `needle` appears and returns all
    /// that was read (the needle and whatever came with it in the same
    /// read); panics, with the console, after `timeout`.
    /// For programs that talk with the test (prompts), started with
    /// [`SerialShell::send`].
    pub fn read_until(&mut self, vm: &Vm, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&out).replace('\r', "");
            if text.contains(needle) {
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{needle:?} did not appear; got {text:?}\nconsole:\n{}",
                vm.console()
            );
            self.ctl.set_read_timeout(Some(left)).unwrap();
            match self.ctl.read(&mut buf) {
                Ok(0) => panic!("control serial closed; console:\n{}", vm.console()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("control serial: {e}"),
            }
        }
    }
}
