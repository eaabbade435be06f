//! A GDB remote serial protocol client for QEMU's gdbstub.
//!
//! The gdbstub gives what QMP cannot: writable registers, breakpoints that
//! the guest cannot see (under TCG they cost nothing until hit and are
//! unlimited), single steps. Connecting stops the VM; detaching resumes it.
//!
//! QEMU quirk: register packets answer empty until the client has read
//! `target.xml`, so [`Gdb::connect`] reads it first and keeps the register
//! numbering it describes.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Why the target stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub signal: u8,
    /// Thread (vCPU index + 1) that reported the stop, when given.
    pub thread: Option<u64>,
}

/// One register as described by target.xml.
#[derive(Debug, Clone, Copy)]
struct RegInfo {
    num: usize,
    bytes: usize,
}

/// A connected gdbstub session.
pub struct Gdb {
    sock: UnixStream,
    rx: Vec<u8>,
    ack: bool,
    regs: HashMap<String, RegInfo>,
}

/// General-purpose registers saved around a call injection.
pub const GPRS: &[&str] = &[
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "eflags",
];

fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &[u8]) -> Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        return Err(Error::GdbProtocol(format!(
            "odd hex length: {}",
            String::from_utf8_lossy(s)
        )));
    }
    s.chunks(2)
        .map(|c| {
            std::str::from_utf8(c)
                .ok()
                .and_then(|t| u8::from_str_radix(t, 16).ok())
                .ok_or_else(|| Error::GdbProtocol("bad hex".into()))
        })
        .collect()
}

/// Undo the protocol's escaping (`}` XOR 0x20) and run-length encoding.
fn decode_body(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'}' if i + 1 < raw.len() => {
                out.push(raw[i + 1] ^ 0x20);
                i += 2;
            }
            b'*' if i + 1 < raw.len() && !out.is_empty() => {
                let n = raw[i + 1].saturating_sub(29) as usize;
                let last = *out.last().unwrap();
                out.extend(std::iter::repeat(last).take(n));
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn is_stop_reply(r: &[u8]) -> bool {
    matches!(r.first(), Some(b'T') | Some(b'S'))
        && r.len() >= 3
        && r[1].is_ascii_hexdigit()
        && r[2].is_ascii_hexdigit()
}

/// Parse the registers out of a target description (name, bitsize, regnum).
fn parse_target_regs(xml: &str, next: &mut usize, out: &mut HashMap<String, RegInfo>) {
    for tag in xml.split("<reg ").skip(1) {
        let tag = tag.split('>').next().unwrap_or("");
        let attr = |a: &str| -> Option<&str> {
            let key = format!("{a}=\"");
            let s = tag.find(&key)? + key.len();
            let e = tag[s..].find('"')? + s;
            Some(&tag[s..e])
        };
        let Some(name) = attr("name") else { continue };
        let bits: usize = attr("bitsize").and_then(|b| b.parse().ok()).unwrap_or(64);
        if let Some(n) = attr("regnum").and_then(|r| r.parse().ok()) {
            *next = n;
        }
        out.insert(
            name.to_string(),
            RegInfo {
                num: *next,
                bytes: bits.div_ceil(8),
            },
        );
        *next += 1;
    }
}

impl Gdb {
    /// Connect (which stops the VM) and learn the register layout.
    pub fn connect(path: &Path) -> Result<Gdb> {
        let sock = UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connect gdbstub {}", path.display()), e))?;
        let mut g = Gdb {
            sock,
            rx: Vec::new(),
            ack: true,
            regs: HashMap::new(),
        };
        g.request("qSupported:multiprocess-;xmlRegisters=i386;qRelocInsn-")?;
        if g.request("QStartNoAckMode")? == b"OK" {
            g.ack = false;
        }
        let mut next = 0;
        let mut files = vec!["target.xml".to_string()];
        let mut seen = 0;
        while seen < files.len() {
            let xml = g.read_xfer(&files[seen].clone())?;
            for inc in xml.split("<xi:include href=\"").skip(1) {
                if let Some(end) = inc.find('"') {
                    files.push(inc[..end].to_string());
                }
            }
            parse_target_regs(&xml, &mut next, &mut g.regs);
            seen += 1;
        }
        if !g.regs.contains_key("rip") {
            return Err(Error::GdbNoRegister("rip".into()));
        }
        // Learn the current stop state.
        g.request("?")?;
        Ok(g)
    }

    fn read_xfer(&mut self, annex: &str) -> Result<String> {
        let mut out = Vec::new();
        loop {
            let r = self.request(&format!("qXfer:features:read:{annex}:{:x},ffb", out.len()))?;
            match r.first() {
                Some(b'm') => out.extend_from_slice(&r[1..]),
                Some(b'l') => {
                    out.extend_from_slice(&r[1..]);
                    break;
                }
                _ => {
                    return Err(Error::GdbRefused {
                        request: format!("reading {annex}"),
                        reply: String::from_utf8_lossy(&r).into_owned(),
                    })
                }
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn send(&mut self, body: &str) -> Result<()> {
        let pkt = format!("${body}#{:02x}", checksum(body.as_bytes()));
        self.sock
            .write_all(pkt.as_bytes())
            .map_err(|e| Error::io("write gdbstub", e))
    }

    fn fill(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::GdbTimeout);
        }
        self.sock
            .set_read_timeout(Some(left))
            .map_err(|e| Error::io("gdb timeout", e))?;
        let mut buf = [0u8; 65536];
        match self.sock.read(&mut buf) {
            Ok(0) => Err(Error::GdbClosed),
            Ok(n) => {
                self.rx.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(Error::GdbTimeout)
            }
            Err(e) => Err(Error::io("read gdbstub", e)),
        }
    }

    /// Receive one packet body (acks and noise before `$` are dropped).
    fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(start) = self.rx.iter().position(|&b| b == b'$') {
                if let Some(hash) = self.rx[start..].iter().position(|&b| b == b'#') {
                    let hash = start + hash;
                    if self.rx.len() >= hash + 3 {
                        let raw = self.rx[start + 1..hash].to_vec();
                        self.rx.drain(..hash + 3);
                        if self.ack {
                            self.sock.write_all(b"+").map_err(|e| Error::io("ack", e))?;
                        }
                        return Ok(decode_body(&raw));
                    }
                }
            } else {
                self.rx.clear();
            }
            self.fill(deadline)?;
        }
    }

    /// Send a packet and wait for its reply.
    pub fn request(&mut self, body: &str) -> Result<Vec<u8>> {
        self.send(body)?;
        let mut r = self.recv(Duration::from_secs(30))?;
        // QEMU reports the stop caused by the connection itself
        // asynchronously; no reply to the packets sent here is a stop reply.
        while body != "?" && is_stop_reply(&r) {
            r = self.recv(Duration::from_secs(30))?;
        }
        log::trace!(
            "gdb {body} -> {}",
            String::from_utf8_lossy(&r[..r.len().min(120)])
        );
        Ok(r)
    }

    fn reg(&self, name: &str) -> Result<RegInfo> {
        self.regs
            .get(name)
            .copied()
            .ok_or_else(|| Error::GdbNoRegister(name.into()))
    }

    /// Read a register of the current thread.
    pub fn read_reg(&mut self, name: &str) -> Result<u64> {
        let r = self.reg(name)?;
        let reply = self.request(&format!("p{:x}", r.num))?;
        if reply.is_empty() || reply[0] == b'E' {
            return Err(Error::GdbRefused {
                request: format!("reading {name}"),
                reply: String::from_utf8_lossy(&reply).into_owned(),
            });
        }
        let b = unhex(&reply)?;
        let mut v = [0u8; 8];
        let n = b.len().min(8);
        v[..n].copy_from_slice(&b[..n]);
        Ok(u64::from_le_bytes(v))
    }

    /// Write a register of the current thread.
    pub fn write_reg(&mut self, name: &str, value: u64) -> Result<()> {
        let r = self.reg(name)?;
        let bytes = value.to_le_bytes();
        let body = format!("P{:x}={}", r.num, hex(&bytes[..r.bytes.min(8)]));
        self.expect_ok(&body)
    }

    fn expect_ok(&mut self, body: &str) -> Result<()> {
        let r = self.request(body)?;
        if r == b"OK" {
            Ok(())
        } else {
            Err(Error::GdbRefused {
                request: body.into(),
                reply: String::from_utf8_lossy(&r).into_owned(),
            })
        }
    }

    /// Save the general-purpose registers.
    pub fn save_gprs(&mut self) -> Result<Vec<(String, u64)>> {
        GPRS.iter()
            .map(|&n| Ok((n.to_string(), self.read_reg(n)?)))
            .collect()
    }

    /// Restore registers saved by [`Gdb::save_gprs`].
    pub fn restore_gprs(&mut self, saved: &[(String, u64)]) -> Result<()> {
        for (n, v) in saved {
            self.write_reg(n, *v)?;
        }
        Ok(())
    }

    /// Read virtual memory through the current vCPU's page tables.
    pub fn read_mem(&mut self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(2048);
            let r = self.request(&format!("m{:x},{:x}", addr + out.len() as u64, n))?;
            if r.first() == Some(&b'E') || r.is_empty() {
                return Err(Error::GdbRefused {
                    request: format!("reading memory at {addr:#x}"),
                    reply: String::from_utf8_lossy(&r).into_owned(),
                });
            }
            out.extend(unhex(&r)?);
        }
        Ok(out)
    }

    /// Write virtual memory through the current vCPU's page tables.
    pub fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        for (i, chunk) in data.chunks(2048).enumerate() {
            let a = addr + (i * 2048) as u64;
            self.expect_ok(&format!("M{a:x},{:x}:{}", chunk.len(), hex(chunk)))?;
        }
        Ok(())
    }

    /// Insert a software breakpoint.
    pub fn set_breakpoint(&mut self, addr: u64) -> Result<()> {
        self.expect_ok(&format!("Z0,{addr:x},1"))
    }

    /// Remove a software breakpoint.
    pub fn clear_breakpoint(&mut self, addr: u64) -> Result<()> {
        self.expect_ok(&format!("z0,{addr:x},1"))
    }

    fn parse_stop(r: &[u8]) -> Result<Stop> {
        let text = String::from_utf8_lossy(r);
        match r.first() {
            Some(b'T') | Some(b'S') if r.len() >= 3 => {
                let signal = u8::from_str_radix(&text[1..3], 16)
                    .map_err(|_| Error::GdbProtocol(format!("stop reply {text}")))?;
                let thread = text[3..]
                    .split(';')
                    .find_map(|kv| kv.strip_prefix("thread:"))
                    .and_then(|t| {
                        u64::from_str_radix(t.trim_start_matches('p').split('.').next_back()?, 16)
                            .ok()
                    });
                Ok(Stop { signal, thread })
            }
            _ => Err(Error::GdbProtocol(format!("unexpected stop reply {text}"))),
        }
    }

    /// Resume all vCPUs and wait for the next stop; on timeout the target is
    /// interrupted and `Ok(None)` returned.
    pub fn cont(&mut self, timeout: Duration) -> Result<Option<Stop>> {
        self.send("c")?;
        match self.recv(timeout) {
            Ok(r) => Ok(Some(Self::parse_stop(&r)?)),
            Err(Error::GdbTimeout) => {
                self.interrupt()?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Execute one instruction on the current vCPU.
    pub fn step(&mut self) -> Result<Stop> {
        self.send("s")?;
        Self::parse_stop(&self.recv(Duration::from_secs(30))?)
    }

    /// Stop a running target (Ctrl-C) and consume the stop reply.
    pub fn interrupt(&mut self) -> Result<Stop> {
        self.sock
            .write_all(&[3])
            .map_err(|e| Error::io("interrupt", e))?;
        Self::parse_stop(&self.recv(Duration::from_secs(30))?)
    }

    /// Select the thread (vCPU, 1-based) for register and memory access.
    pub fn select_thread(&mut self, thread: u64) -> Result<()> {
        self.expect_ok(&format!("Hg{thread:x}"))
    }

    /// Detach, letting the VM run again.
    pub fn detach(mut self) -> Result<()> {
        self.send("D")?;
        let _ = self.recv(Duration::from_secs(5));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_run_length() {
        assert_eq!(decode_body(b"a}\x5db"), b"a}b");
        assert_eq!(decode_body(b"0* "), b"0000");
        assert_eq!(checksum(b"OK"), 0x9a);
    }

    #[test]
    fn target_description() {
        let xml = r#"<feature><reg name="rax" bitsize="64" type="int64"/>
            <reg name="eflags" bitsize="32"/><reg name="cr3" bitsize="64" regnum="60"/></feature>"#;
        let mut regs = HashMap::new();
        let mut n = 0;
        parse_target_regs(xml, &mut n, &mut regs);
        assert_eq!(regs["rax"].num, 0);
        assert_eq!(regs["eflags"].bytes, 4);
        assert_eq!(regs["cr3"].num, 60);
    }

    #[test]
    fn stop_replies() {
        let s = Gdb::parse_stop(b"T05thread:p01.02;").unwrap();
        assert_eq!(
            s,
            Stop {
                signal: 5,
                thread: Some(2)
            }
        );
        assert_eq!(Gdb::parse_stop(b"S02").unwrap().thread, None);
    }
}
