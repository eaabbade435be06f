//! Scripting a guest: shell functions for guest scripts, one output format
//! for what they report, and the host side of a script that takes turns
//! with the test.
//!
//! Every guest script may start with [`PRELUDE`] ([`with_prelude`]), which
//! defines:
//!
//! - `t NAME CMD…`: runs one attempt and prints one line,
//!   `NAME: ok OUTPUT` or `NAME: fail OUTPUT`, OUTPUT being what the command
//!   printed (stdout and stderr) folded onto one line and cut at 400 bytes;
//!   `report NAME RC OUTPUT` prints the same line for an attempt the script
//!   made itself. [`attempts`] and [`Attempt::parse`] read those lines.
//! - `step NAME`: prints `@@STEP NAME`; the test waits for it
//!   ([`ScriptedGuest::step`]).
//! - `await NAME`: waits until the test creates `.go-NAME` in the share's
//!   root ([`ScriptedGuest::go`]): the test's turn is over. Gives up after
//!   10 minutes.
//!
//! Other lines a script prints for the test to read are `KEY: VALUE`
//! ([`ScriptedGuest::line`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::initramfs::{END_PREFIX, ERROR_PREFIX};
use crate::qemu::{QemuConfig, Transcript, Vm};

/// Shell functions every guest script may start with (see the module
/// documentation).
pub const PRELUDE: &str = r#"
# One line per attempt: NAME: ok|fail OUTPUT (exit status RC; OUTPUT on one
# line, at most 400 bytes).
report() {
    rp_out=$(printf '%s' "$3" | tr '\n' ' ' | head -c 400)
    if [ "$2" = 0 ]; then rp_r=ok; else rp_r=fail; fi
    echo "$1: $rp_r${rp_out:+ $rp_out}"
}
# Runs CMD... as attempt NAME and reports it.
t() {
    t_name=$1; shift
    t_out=$("$@" 2>&1)
    report "$t_name" $? "$t_out"
}
# The guest reached NAME; the test waits for this line.
step() { echo "@@STEP $1"; }
# Waits for the test to create .go-NAME in the share's root (where the
# script starts): the test's turn is over.
aw_dir=$PWD
await() {
    aw_i=0
    until [ -e "$aw_dir/.go-$1" ]; do
        aw_i=$((aw_i+1))
        if [ $aw_i -gt 3000 ]; then echo "no go for $1"; exit 1; fi
        sleep 0.2
    done
}
"#;

/// `script` with [`PRELUDE`] before it.
pub fn with_prelude(script: &str) -> String {
    format!("{PRELUDE}\n{script}")
}

/// Console line that says the guest reached step `name`.
pub fn step_line(name: &str) -> String {
    format!("@@STEP {name}\n")
}

/// The outcome of one attempt, as `t` or `report` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The command succeeded (exit status 0).
    pub ok: bool,
    /// What it printed, on one line.
    pub output: String,
}

impl Attempt {
    /// Reads the rest of an attempt line after `NAME: `.
    pub fn parse(rest: &str) -> Option<Attempt> {
        let (word, output) = rest.split_once(' ').unwrap_or((rest, ""));
        let ok = match word {
            "ok" => true,
            "fail" => false,
            _ => return None,
        };
        Some(Attempt {
            ok,
            output: output.to_owned(),
        })
    }
}

/// Every attempt line in a script's output: (name, attempt), in order.
pub fn attempts(output: &str) -> Vec<(String, Attempt)> {
    output
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": ")?;
            Some((name.to_owned(), Attempt::parse(rest)?))
        })
        .collect()
}

/// A running guest whose script takes turns with the test; QEMU is killed
/// when it is dropped. Every wait is bounded by one timeout, and every
/// failure panics with the console's tail and the logs named with
/// [`ScriptedGuest::log`].
pub struct ScriptedGuest {
    vm: Option<Vm>,
    share: PathBuf,
    timeout: Duration,
    logs: Vec<(String, PathBuf)>,
}

impl ScriptedGuest {
    /// Boots `cfg`, whose script runs in (and awaits the test through) the
    /// host directory `share`.
    pub fn start(cfg: &QemuConfig, share: &Path) -> Result<ScriptedGuest> {
        Ok(ScriptedGuest {
            vm: Some(Vm::start(cfg)?),
            share: share.to_path_buf(),
            timeout: Duration::from_secs(300),
            logs: Vec::new(),
        })
    }

    /// How long the test waits for a step or a line (boot included for the
    /// first); 300 s unless set.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A file to show, under `label`, when the test fails (a daemon's log,
    /// an audit log).
    pub fn log(mut self, label: &str, path: &Path) -> Self {
        self.logs.push((label.to_owned(), path.to_path_buf()));
        self
    }

    /// The running QEMU.
    pub fn vm(&mut self) -> &mut Vm {
        self.vm.as_mut().expect("guest running")
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.vm.as_ref().map(Vm::console).unwrap_or_default()
    }

    /// Fails the test with `what`, the console's tail and the logs.
    pub fn fail(&self, what: &str) -> ! {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        let mut msg = format!(
            "{what}\n--- guest console (tail) ---\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        );
        for (label, path) in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            msg.push_str(&format!("\n--- {label} ---\n{text}"));
        }
        panic!("{msg}")
    }

    /// Waits for the guest to reach `step NAME`.
    pub fn step(&mut self, name: &str) {
        let timeout = self.timeout;
        if !self.vm().wait_for_console(&step_line(name), timeout) {
            self.fail(&format!("the guest did not reach step {name:?}"));
        }
    }

    /// Ends the test's turn: the guest's `await NAME` returns.
    pub fn go(&self, name: &str) {
        let p = self.share.join(format!(".go-{name}"));
        std::fs::write(&p, "").unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// The value of the first `KEY: VALUE` line, once the whole line is on
    /// the console.
    pub fn line(&mut self, key: &str) -> String {
        let prefix = format!("\n{key}: ");
        let deadline = Instant::now() + self.timeout;
        loop {
            let console = self.console();
            if let Some(at) = console.find(&prefix) {
                let rest = &console[at + prefix.len()..];
                if let Some((line, _)) = rest.split_once('\n') {
                    return line.trim_end().to_owned();
                }
            }
            // The script ended (or the guest died) without the line.
            let ended = [END_PREFIX, ERROR_PREFIX, "Kernel panic"]
                .iter()
                .any(|m| console.contains(m));
            if ended || Instant::now() >= deadline {
                self.fail(&format!("the guest did not print {key:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Attempt `name`, once the guest has reported it.
    pub fn attempt(&mut self, name: &str) -> Attempt {
        let line = self.line(name);
        Attempt::parse(&line)
            .unwrap_or_else(|| self.fail(&format!("malformed line for {name}: {line:?}")))
    }

    /// Waits for the guest to power off; the transcript, which must hold
    /// the script's result.
    pub fn finish(&mut self) -> Transcript {
        let vm = self.vm.take().expect("guest running");
        let t = vm.wait().unwrap_or_else(|e| self.fail(&e.to_string()));
        if let Err(e) = t.output() {
            self.fail(&e.to_string());
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_lines_are_read_back() {
        let out = "id: 0\nread: fail cat: can't open 'x': Permission denied\n\
                   pub read: ok public\nempty: ok\nnot an attempt: okay\n";
        let got = attempts(out);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["read", "pub read", "empty"]);
        assert!(!got[0].1.ok && got[0].1.output.ends_with("Permission denied"));
        assert_eq!(
            got[1].1,
            Attempt {
                ok: true,
                output: "public".into()
            }
        );
        assert_eq!(got[2].1.output, "");
    }

    /// The prelude under the host's sh behaves as documented (busybox sh in
    /// the guest is POSIX too).
    #[test]
    fn prelude_reports_one_line_per_attempt() {
        let script = with_prelude(
            "t yes printf 'a\\nb\\n'\nt no sh -c 'echo oops >&2; exit 3'\n\
             t long sh -c 'head -c 1000 /dev/zero | tr \"\\\\0\" x'\nreport mine 0 ''\n",
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let got = attempts(&text);
        assert_eq!(got.len(), 4, "{text}");
        assert_eq!(got[0].1.output, "a b");
        assert!(!got[1].1.ok && got[1].1.output == "oops", "{text}");
        assert_eq!(got[2].1.output.len(), 400);
        assert_eq!(
            got[3].1,
            Attempt {
                ok: true,
                output: String::new()
            }
        );
    }
}
