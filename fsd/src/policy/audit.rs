//! The audit log: one JSON line per decision on a protected file.
//!
//! Lines carry the time, the VM, the principal, the operation, the path, the
//! pid the guest reported (marked as such) and the outcome; never file
//! content. The file is opened in append mode before the sandbox, through a
//! descriptor of its directory, so that after a rotation (rename by
//! logrotate) SIGHUP reopens it under its name.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Where audit lines go.
pub struct AuditLog {
    dir: Option<File>,
    name: std::ffi::CString,
    file: Mutex<Option<File>>,
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl AuditLog {
    /// A log that discards records (no `--audit-log`).
    pub fn disabled() -> Self {
        AuditLog {
            dir: None,
            name: std::ffi::CString::default(),
            file: Mutex::new(None),
        }
    }

    /// Opens (creating) the log at `path`, append-only, mode 0600.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = File::open(parent)?;
        let name = std::ffi::CString::new(
            path.file_name()
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?
                .as_encoded_bytes(),
        )
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let log = AuditLog {
            dir: Some(dir),
            name,
            file: Mutex::new(None),
        };
        log.reopen()?;
        Ok(log)
    }

    /// Reopens the file under its name (after rotation).
    pub fn reopen(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        // SAFETY: openat relative to our directory fd with a valid C string.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                self.name.as_ptr(),
                libc::O_WRONLY
                    | libc::O_APPEND
                    | libc::O_CREAT
                    | libc::O_CLOEXEC
                    | libc::O_NOFOLLOW,
                0o600,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
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
    use std::time::Duration;

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
