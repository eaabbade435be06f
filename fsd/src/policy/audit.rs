//! The audit log: one JSON line per decision on a protected file.
//!
//! Lines carry the time, the VM, the principal, the operation, the path, the
//! pid the guest reported (marked as such) and the outcome; never file
//! content. The file is opened in append mode; after a rotation (rename by
//! logrotate) SIGHUP opens it again under its name (through the broker once
//! the sandbox has hidden host paths).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One audit record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub vm: &'a str,
    pub principal: &'a str,
    pub op: &'a str,
    pub path: &'a str,
    pub guest_reported_pid: u32,
    pub outcome: &'a str,
}

/// Opens the log file (append mode) under its current name.
pub type Opener = Box<dyn Fn() -> std::io::Result<File> + Send + Sync>;

/// Where audit lines go.
pub struct AuditLog {
    opener: Option<Opener>,
    file: Mutex<Option<File>>,
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl AuditLog {
    /// A log that discards records (no `--audit-log`).
    pub fn disabled() -> Self {
        AuditLog {
            opener: None,
            file: Mutex::new(None),
        }
    }

    /// A log written through files `opener` opens (now, and on reopen).
    pub fn with_opener(opener: Opener) -> std::io::Result<Self> {
        let log = AuditLog {
            opener: Some(opener),
            file: Mutex::new(None),
        };
        log.reopen()?;
        Ok(log)
    }

    /// Opens (creating) the log at `path`, append-only, mode 0600.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let path = path.to_path_buf();
        Self::with_opener(Box::new(move || {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        }))
    }

    /// Opens the file again under its name (after rotation).
    pub fn reopen(&self) -> std::io::Result<()> {
        let Some(open) = &self.opener else {
            return Ok(());
        };
        let f = open()?;
        *self.file.lock().unwrap() = Some(f);
        Ok(())
    }

    /// Appends one record as one line (one write, so lines never interleave).
    pub fn write(&self, rec: &Record<'_>) {
        let mut guard = self.file.lock().unwrap();
        let Some(f) = guard.as_mut() else { return };
        if let Ok(mut line) = serde_json::to_vec(rec) {
            line.push(b'\n');
            if let Err(e) = f.write_all(&line) {
                log::error!("audit log: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_205_662_606);
        assert_eq!(rfc3339(t), "2026-11-20T20:14:22.606Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_and_rotation() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("audit.log");
        let log = AuditLog::open(&p).unwrap();
        let rec = Record {
            time: "t".into(),
            vm: "vm1",
            principal: "alice",
            op: "open",
            path: "s/f",
            guest_reported_pid: 42,
            outcome: "denied",
        };
        log.write(&rec);
        std::fs::rename(&p, t.path().join("audit.log.1")).unwrap();
        log.reopen().unwrap();
        log.write(&rec);
        let old = std::fs::read_to_string(t.path().join("audit.log.1")).unwrap();
        let new = std::fs::read_to_string(&p).unwrap();
        assert_eq!(old.lines().count(), 1);
        assert_eq!(new.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(new.trim()).unwrap();
        assert_eq!(v["outcome"], "denied");
        assert_eq!(v["guest_reported_pid"], 42);
    }
}
