//! Audit log: one JSON object per line, appended and flushed per record, so
//! the record of every prompt and outcome survives a crash. Passwords never
//! reach this module: records are built from typed fields only.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::persist::GrantsDropped;
use authd_client::protocol::{
    now_unix_ms, Choice, DenyReason, EndCause, Grant, Provenance, Reason,
};

/// What happened.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record<'a> {
    /// A peer was refused by the uid allow-list.
    PeerRejected {
        uid: u32,
        pid: i32,
    },
    /// A prompt was put in front of the person.
    Prompt {
        vm: &'a str,
        principal: &'a str,
        reason: &'a Reason,
        /// Whether the prompt showed operation and path as the host's facts.
        provenance: Provenance,
        frontend: &'a str,
    },
    /// The prompt became visible, this long after it was requested.
    PromptShown {
        vm: &'a str,
        principal: &'a str,
        latency_ms: f64,
    },
    /// The password was checked, taking this long.
    Verified {
        principal: &'a str,
        ok: bool,
        verify_ms: f64,
    },
    Granted {
        vm: &'a str,
        principal: &'a str,
        reason: &'a Reason,
        grant: &'a Grant,
        reused: bool,
    },
    Denied {
        vm: &'a str,
        principal: &'a str,
        reason: &'a Reason,
        why: DenyReason,
    },
    GrantEnded {
        grant: &'a Grant,
        cause: EndCause,
    },
    /// A host service's question was allowed.
    Confirmed {
        vm: &'a str,
        principal: &'a str,
        question: &'a str,
        choice: Choice,
    },
    /// A host service's question was not allowed.
    ConfirmDenied {
        vm: &'a str,
        principal: &'a str,
        question: &'a str,
        why: DenyReason,
    },
    Started {
        pid: u32,
    },
    /// The runtime state an earlier daemon saved was read back: `grants`
    /// live again, `expired` ended while no daemon ran (each also has its
    /// `grant_ended`), `dropped` not restored for `grants_dropped`'s reason,
    /// and the failure records of `principals`.
    StateRestored {
        grants: usize,
        expired: usize,
        dropped: usize,
        grants_dropped: Option<GrantsDropped>,
        principals: usize,
    },
    /// The runtime state file could not be trusted: no grant was restored
    /// and these principals start locked out.
    StateUnusable {
        error: &'a str,
        locked: &'a [String],
    },
    /// The daemon stops on a signal. With persistent runtime state `kept`
    /// grants stay live for its next start; without, every grant ended.
    Stopped {
        signal: i32,
        kept: usize,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    ts_ms: u64,
    #[serde(flatten)]
    record: &'a Record<'a>,
}

/// The audit sink.
pub struct Audit {
    file: Mutex<File>,
}

impl Audit {
    pub fn open(path: &Path) -> Result<Audit> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(Audit {
            file: Mutex::new(file),
        })
    }

    /// Appends a record. An audit failure is logged, not fatal: refusing all
    /// authentication because the log disk is full would be a denial of service.
    pub fn record(&self, record: Record<'_>) {
        let mut line = match serde_json::to_vec(&Line {
            ts_ms: now_unix_ms(),
            record: &record,
        }) {
            Ok(l) => l,
            Err(e) => {
                log::error!("audit: serialise: {e}");
                return;
            }
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            log::error!("audit: write: {e}");
        }
    }
}
