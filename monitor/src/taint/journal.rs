//! Taint state that survives a monitor restart: a snapshot and a journal.
//!
//! The engine is deterministic (it reads no clock: every batch carries the
//! time it arrived), so the state is the snapshot plus the batches applied
//! since, replayed in order. Each batch the daemon applies is appended to
//! the journal as one JSON line before the reply goes out. Every
//! [`SNAPSHOT_EVERY`] batches (or [`SNAPSHOT_BYTES`] of journal) the whole
//! state is written to a new snapshot (temporary file, fsync, rename), and
//! the journal starts afresh: the disk used is bounded by the tables' bounds
//! plus one journal's worth.
//!
//! Journal lines are not synced one by one (that would cost a disk flush
//! per batch): a host crash can lose the batches since the last snapshot
//! that the page cache had not written yet; a monitor crash loses nothing
//! the kernel accepted. A torn last line (a crash in the middle of a write)
//! is skipped and counted.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::engine::{Engine, EngineConfig, Record, Snapshot};
use super::TaintError;

/// The snapshot's file name in the state directory.
pub const SNAPSHOT: &str = "taint-snapshot.json";
/// The journal's.
pub const JOURNAL: &str = "taint-journal.jsonl";
/// Batches between snapshots.
pub const SNAPSHOT_EVERY: u64 = 20_000;
/// Journal size that calls for a snapshot sooner.
pub const SNAPSHOT_BYTES: u64 = 64 << 20;

/// What opening the state found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub from_snapshot: bool,
    /// Journal batches applied again.
    pub replayed: u64,
    /// Journal lines that could not be read or applied.
    pub skipped: u64,
}

/// The journal being written.
pub struct Journal {
    dir: PathBuf,
    file: File,
    batches: u64,
    bytes: u64,
    every: u64,
}

fn state_err(path: &Path) -> impl Fn(std::io::Error) -> TaintError + '_ {
    move |source| TaintError::State {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// Opens the state in `dir` (created, mode 0700, if missing): the
    /// engine as the snapshot and the journal leave it, and the journal to
    /// continue.
    pub fn open(
        dir: &Path,
        config: EngineConfig,
    ) -> Result<(Journal, Engine, Restored), TaintError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(state_err(dir))?;
        let mut restored = Restored::default();
        let snap_path = dir.join(SNAPSHOT);
        let mut engine = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                let snap: Snapshot = serde_json::from_slice(&bytes).map_err(|source| {
                    TaintError::SnapshotFormat {
                        path: snap_path.clone(),
                        source,
                    }
                })?;
                restored.from_snapshot = true;
                Engine::restore(config, snap)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Engine::new(config),
            Err(e) => return Err(state_err(&snap_path)(e)),
        };
        let journal_path = dir.join(JOURNAL);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&journal_path)
            .map_err(state_err(&journal_path))?;
        let mut bytes = 0;
        for line in BufReader::new(&file).split(b'\n') {
            let line = line.map_err(state_err(&journal_path))?;
            bytes += line.len() as u64 + 1;
            match serde_json::from_slice::<Record>(&line) {
                Ok(rec) if engine.apply_with(&rec, false).is_ok() => restored.replayed += 1,
                _ => restored.skipped += 1,
            }
        }
        let mut journal = Journal {
            dir: dir.to_owned(),
            file,
            batches: restored.replayed,
            bytes,
            every: SNAPSHOT_EVERY,
        };
        if restored.skipped > 0 {
            // Start from a clean journal rather than append after a torn line.
            journal.snapshot(&engine)?;
        }
        Ok((journal, engine, restored))
    }

    /// Snapshots every `every` batches instead (tests).
    pub fn snapshot_every(&mut self, every: u64) {
        self.every = every.max(1);
    }

    /// Appends one applied batch.
    pub fn append(&mut self, rec: &Record) -> Result<(), TaintError> {
        let mut line = serde_json::to_vec(rec).map_err(TaintError::Encode)?;
        line.push(b'\n');
        let path = self.dir.join(JOURNAL);
        self.file.write_all(&line).map_err(state_err(&path))?;
        self.batches += 1;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Whether a snapshot is due.
    pub fn due(&self) -> bool {
        self.batches >= self.every || self.bytes >= SNAPSHOT_BYTES
    }

    /// Writes the engine's state as the new snapshot and empties the
    /// journal.
    pub fn snapshot(&mut self, engine: &Engine) -> Result<(), TaintError> {
        let path = self.dir.join(SNAPSHOT);
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let bytes = serde_json::to_vec(&engine.snapshot()).map_err(TaintError::Encode)?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(state_err(&tmp))?;
            f.write_all(&bytes).map_err(state_err(&tmp))?;
            f.sync_all().map_err(state_err(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(state_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(state_err(&self.dir))?;
        let journal = self.dir.join(JOURNAL);
        self.file.set_len(0).map_err(state_err(&journal))?;
        self.batches = 0;
        self.bytes = 0;
        Ok(())
    }
}
