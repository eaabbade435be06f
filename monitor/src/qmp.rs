//! A minimal QMP (QEMU Machine Protocol) client over a Unix socket.
//!
//! QMP is QEMU's own word, not the guest's: `query-uuid` is what the VMM was
//! told, which makes it the reference for the guest-visible SMBIOS copy.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// A connected QMP session in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect, read the greeting and negotiate capabilities.
    pub fn connect(path: &Path) -> Result<Qmp> {
        let s = UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connect QMP {}", path.display()), e))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| Error::io("QMP timeout", e))?;
        let writer = s.try_clone().map_err(|e| Error::io("QMP clone", e))?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
        };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::QmpProtocol(format!(
                "unexpected greeting {greeting}"
            )));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| Error::io("read QMP", e))?;
        if n == 0 {
            return Err(Error::QmpClosed);
        }
        serde_json::from_str(&line).map_err(|source| Error::QmpJson { line, source })
    }

    /// Run one command and return its `return` value. Asynchronous events
    /// that arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut req = json!({ "execute": command });
        if let Some(a) = arguments {
            req["arguments"] = a;
        }
        let mut text = req.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("write QMP", e))?;
        loop {
            let msg = self.read_message()?;
            if msg.get("event").is_some() {
                continue;
            }
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                return Err(Error::QmpCommand {
                    command: command.into(),
                    error: e.to_string(),
                });
            }
        }
    }

    /// Pause all vCPUs.
    pub fn stop(&mut self) -> Result<()> {
        self.execute("stop", None).map(|_| ())
    }

    /// Resume all vCPUs.
    pub fn cont(&mut self) -> Result<()> {
        self.execute("cont", None).map(|_| ())
    }

    /// True when the VM is running.
    pub fn running(&mut self) -> Result<bool> {
        let r = self.execute("query-status", None)?;
        Ok(r.get("running").and_then(Value::as_bool).unwrap_or(false))
    }

    /// The UUID QEMU was started with (`-uuid`), lower-case.
    pub fn uuid(&mut self) -> Result<String> {
        let r = self.execute("query-uuid", None)?;
        r.get("UUID")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| Error::QmpProtocol(format!("query-uuid returned {r}")))
    }

    /// Run a human monitor command and return its text.
    pub fn hmp(&mut self, command: &str) -> Result<String> {
        let r = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command })),
        )?;
        r.as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::QmpProtocol(format!("HMP returned {r}")))
    }

    /// Registers of one vCPU from `info registers` (CR0-CR4, RIP, RSP, ...).
    pub fn registers(&mut self, cpu: u32) -> Result<BTreeMap<String, u64>> {
        self.hmp(&format!("cpu {cpu}"))?;
        Ok(parse_info_registers(&self.hmp("info registers")?))
    }
}

/// Parse the `NAME=hex` pairs of `info registers` output.
pub fn parse_info_registers(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for tok in text.split_whitespace() {
        if let Some((k, v)) = tok.split_once('=') {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
                continue;
            }
            if let Ok(x) = u64::from_str_radix(v, 16) {
                out.entry(k.to_string()).or_insert(x);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_control_registers() {
        let t = "RAX=0000000000000000 RBX=ffffffff83c0a940\r\nRIP=ffffffff81f8b8ab RFL=00000246 [---Z-P-] CPL=0 II=0\r\n\
                 CR0=80050033 CR2=00007f4a1c2d3000 CR3=0000000003e0a000 CR4=00350ef0\r\n";
        let r = parse_info_registers(t);
        assert_eq!(r["CR3"], 0x3e0a000);
        assert_eq!(r["CR4"], 0x350ef0);
        assert_eq!(r["RIP"], 0xffffffff81f8b8ab);
        assert_eq!(r["CPL"], 0);
    }
}
