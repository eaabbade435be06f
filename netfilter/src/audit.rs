//! The audit log: one JSON object per line for every decision about a new
//! flow (and for frames refused as malformed), with the process, user and
//! destination. The log is bounded in rate: past `audit_lines_per_sec` in
//! one second, lines are counted instead of written, and the count is
//! written with the next line that gets through, so a flood cannot fill
//! the disk and still leaves its trace.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use monitor_client::taint::{SocketOwner, Transport};
use serde::Serialize;

use crate::conntrack::Verdict;
use crate::error::{Error, Result};

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    pub vm: String,
    /// `decision` or `malformed`.
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why: `rule`, `default`, `unknown_owner`, `lookup_failed`,
    /// `rate_limited`, `ask_once`, `ask_always`, `ask_remembered`,
    /// `ask_denied`, `malformed`.
    pub reason: &'static str,
    /// The rule that matched, or more words on the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<SocketOwner>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tainted: bool,
    /// Lines left out since the last one written (rate limit).
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where audit lines go, with the rate limit.
pub struct Audit {
    out: Option<(PathBuf, BufWriter<File>)>,
    per_sec: u32,
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
    /// Lines left out in total.
    pub suppressed_total: u64,
    pub written: u64,
}

impl Audit {
    /// Appends to `path`; `None` keeps no log (lines are only counted).
    pub fn open(path: Option<&Path>, per_sec: u32) -> Result<Audit> {
        let out = match path {
            None => None,
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| Error::Audit {
                        path: p.into(),
                        source,
                    })?;
                Some((p.to_path_buf(), BufWriter::new(f)))
            }
        };
        Ok(Audit {
            out,
            per_sec,
            window: None,
            in_window: 0,
            suppressed: 0,
            suppressed_total: 0,
            written: 0,
        })
    }

    /// Writes one line unless this second's budget is spent.
    pub fn record(&mut self, mut r: Record, now: Instant) {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.per_sec {
            self.suppressed += 1;
            self.suppressed_total += 1;
            return;
        }
        self.in_window += 1;
        r.suppressed_before = std::mem::take(&mut self.suppressed);
        self.written += 1;
        if let Some((path, w)) = &mut self.out {
            let line = serde_json::to_vec(&r).expect("audit records serialise");
            if let Err(e) = w.write_all(&line).and_then(|_| w.write_all(b"\n")) {
                log::error!("audit log {}: {e}", path.display());
            }
        }
    }

    /// Pushes buffered lines to the file (once per batch).
    pub fn flush(&mut self) {
        if let Some((path, w)) = &mut self.out {
            if let Err(e) = w.flush() {
                log::error!("audit log {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            ts_ms: 1,
            vm: "web".into(),
            event: "decision",
            verdict: Some(Verdict::Deny),
            reason: "default",
            detail: None,
            transport: Some(Transport::Tcp),
            src: Some("192.0.2.15:40000".parse().unwrap()),
            dst: Some("192.0.2.1:80".parse().unwrap()),
            owner: None,
            tainted: false,
            suppressed_before: 0,
        }
    }

    #[test]
    fn lines_are_json_and_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut a = Audit::open(Some(&path), 3).unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            a.record(rec(), t0);
        }
        a.record(rec(), t0 + Duration::from_secs(2));
        a.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["verdict"], "deny");
        assert_eq!(lines[0]["dst"], "192.0.2.1:80");
        assert_eq!(lines[3]["suppressed_before"], 7);
        assert_eq!(a.suppressed_total, 7);
    }
}
