//! The audit log: one JSON line per delegation and per refusal, with who,
//! which VM, which program, its arguments, the outcome and how long each
//! part took. Arguments are the user's and are recorded (lossy UTF-8, cut
//! at 256 bytes each); standard input and output never are.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One record. Fields that do not apply are left out.
#[derive(Debug, Default, Serialize)]
pub struct Record {
    pub time: String,
    pub vm: String,
    /// `delegate` for a delegation (run or refused), `protocol` for a
    /// frame refused outside of one.
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    /// `exit N`, `signal N`, or `refused: CODE: why`.
    pub outcome: String,
    /// Whether the program ran in the helper VM.
    pub ran: bool,
    /// From the request's arrival to its outcome (exit status or refusal).
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authd_ms: Option<f64>,
    /// From the job sent to the helper to its exit status back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper_ms: Option<f64>,
    /// Round trip of the ping to the helper's agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_ms: Option<f64>,
}

/// Where audit lines go.
pub struct AuditLog {
    file: Option<Mutex<File>>,
}

impl AuditLog {
    /// Appends to `path` (created with mode 0600, never through a symlink);
    /// `None`: lines go to the log at info level only.
    pub fn open(path: Option<&Path>) -> std::io::Result<AuditLog> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(AuditLog { file })
    }

    /// Writes one record (the time is filled in here).
    pub fn write(&self, mut r: Record) {
        r.time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let line = match serde_json::to_string(&r) {
            Ok(l) => l,
            Err(e) => {
                log::error!("audit record not serialisable: {e}");
                return;
            }
        };
        log::info!("audit: {line}");
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = writeln!(f, "{line}") {
                log::error!("audit log: {e}");
            }
        }
    }
}

/// Arguments as recorded: lossy UTF-8, each cut at 256 bytes.
pub fn args_for_audit(args: &[Vec<u8>]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let a = &a[..a.len().min(256)];
            String::from_utf8_lossy(a).into_owned()
        })
        .collect()
}
