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
//! **Generations.** The journal's first line names its generation
//! (`{"journal":G}`), and a snapshot names the generation of the journal
//! that continues it. Writing a snapshot and emptying the journal are two
//! steps; a crash between them leaves a journal whose batches are in the
//! snapshot already. Its older generation tells it apart, and it is not
//! replayed a second time. (A journal without the line, as older monitors
//! wrote it, is generation 0.)
//!
//! **Damage.** Reading stops at the first line that is not a whole record:
//! a line cut short (a crash in the middle of a write), bytes that are no
//! JSON (a disk fault, a host crash that left zeros), a journal of a later
//! generation than the snapshot (the snapshot it continued is gone).
//! Everything before it is loaded; every VM is marked as having lost
//! events for good ([`Lost::JournalDamaged`]); the damaged file is kept
//! beside the state as [`DAMAGED`] for a person to look at, and a snapshot
//! and a new journal take its place.
//!
//! **Restarts.** Every VM with state gets an [`Input::Restarted`] record,
//! journaled like any batch: its producers must show that they lost nothing
//! while the monitor was down ([`super::restart`]).
//!
//! **Durability** ([`JournalSync`]). A line is written (`write(2)`, no
//! buffer in between) before its batch is answered, so a monitor crash
//! loses nothing the kernel accepted. Reaching the disk is the choice of
//! `taint.journal_sync`: within [`SYNC_INTERVAL`] by a thread of its own
//! (the default; a host crash can lose the last second, and the manifest
//! tells the next start so: [`super::manifest`]), or before each answer
//! (`fdatasync` per batch). Snapshots and the manifest are always synced.
//!
//! **Stopping** ([`Journal::close`]): a last snapshot, then a manifest
//! that says the stop was clean.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::engine::{Engine, EngineConfig, Input, Record, Snapshot, VmId};
use super::manifest::Manifest;
use super::restart::Lost;
use super::{JournalSync, TaintError};

/// The snapshot's file name in the state directory.
pub const SNAPSHOT: &str = "taint-snapshot.json";
/// The journal's.
pub const JOURNAL: &str = "taint-journal.jsonl";
/// Where a damaged journal is kept (the last one found).
pub const DAMAGED: &str = "taint-journal.damaged.jsonl";
/// Batches between snapshots.
pub const SNAPSHOT_EVERY: u64 = 20_000;
/// Journal size that calls for a snapshot sooner.
pub const SNAPSHOT_BYTES: u64 = 64 << 20;
/// How long a journal line may wait for the disk ([`JournalSync::Interval`]).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The journal's first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    journal: u64,
}

/// Where and how the journal was found damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The first line not loaded (from 1; the generation line counts).
    pub line: u64,
    /// Its offset in the file.
    pub offset: u64,
    /// What was wrong with it.
    pub what: String,
    /// Where the damaged journal was kept.
    pub kept: PathBuf,
}

/// What opening the state found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub from_snapshot: bool,
    /// Journal batches applied again.
    pub replayed: u64,
    /// Journal batches read but not applied (a VM beyond today's bound).
    pub skipped: u64,
    /// The journal was older than the snapshot, so already in it, and was
    /// not replayed.
    pub stale_journal: bool,
    /// The journal was damaged: what was before the damage is loaded.
    pub damage: Option<Damage>,
    /// The monitor before did not stop cleanly, in another boot of the
    /// host, with lines not synced: the last batches may be lost.
    pub host_crashed: bool,
    /// VMs the manifest names whose state was not found (brought back
    /// empty, marked).
    pub missing: usize,
    /// VMs marked as restarted (their producers must show what they lost).
    pub vms: usize,
}

/// The journal being written.
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// This journal's generation.
    generation: u64,
    batches: u64,
    bytes: u64,
    every: u64,
    sync: JournalSync,
    /// The syncing thread's view ([`JournalSync::Interval`]).
    syncer: Option<Arc<Syncer>>,
    manifest: Manifest,
}

/// What the thread that syncs the journal works on: a descriptor of the
/// journal of its own (so that syncing never holds up an append), and
/// whether anything was written since the last sync.
struct Syncer {
    file: Mutex<File>,
    dirty: AtomicBool,
}

impl Syncer {
    /// Starts the thread; it ends with the journal (the last strong
    /// reference).
    fn start(file: &File, path: &Path) -> Result<Arc<Syncer>, TaintError> {
        let s = Arc::new(Syncer {
            file: Mutex::new(file.try_clone().map_err(state_err(path))?),
            dirty: AtomicBool::new(false),
        });
        let weak: Weak<Syncer> = Arc::downgrade(&s);
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("taint-journal-sync".into())
            .spawn(move || loop {
                std::thread::sleep(SYNC_INTERVAL);
                let Some(s) = weak.upgrade() else { return };
                if s.dirty.swap(false, Ordering::Relaxed) {
                    let f = s.file.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = f.sync_data() {
                        log::error!("taint journal {}: sync: {e}", path.display());
                    }
                }
            })
            .map_err(TaintError::SyncThread)?;
        Ok(s)
    }
}

fn state_err(path: &Path) -> impl Fn(std::io::Error) -> TaintError + '_ {
    move |source| TaintError::State {
        path: path.to_owned(),
        source,
    }
}

fn open_journal(path: &Path) -> Result<File, TaintError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(state_err(path))
}

/// The journal as read: its generation, and the batches up to any damage.
struct Read {
    /// `None` for an empty file.
    generation: Option<u64>,
    records: Vec<Record>,
    bytes: u64,
    /// The first line not read, its offset, and why.
    damage: Option<(u64, u64, String)>,
}

fn read_journal(file: &File, path: &Path) -> Result<Read, TaintError> {
    let mut r = BufReader::new(file);
    let mut out = Read {
        generation: None,
        records: Vec::new(),
        bytes: 0,
        damage: None,
    };
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let got = r.read_until(b'\n', &mut line).map_err(state_err(path))?;
        if got == 0 {
            return Ok(out);
        }
        n += 1;
        let at = out.bytes;
        let what = if line.last() != Some(&b'\n') {
            Some("a line cut short (the monitor stopped in the middle of writing it?)".to_string())
        } else if n == 1 {
            match serde_json::from_slice::<Header>(&line) {
                Ok(h) => {
                    out.generation = Some(h.journal);
                    None
                }
                // A journal of an older monitor starts with a batch.
                Err(_) => match serde_json::from_slice::<Record>(&line) {
                    Ok(rec) => {
                        out.generation = Some(0);
                        out.records.push(rec);
                        None
                    }
                    Err(e) => Some(format!("not a journal record: {e}")),
                },
            }
        } else {
            match serde_json::from_slice::<Record>(&line) {
                Ok(rec) => {
                    out.records.push(rec);
                    None
                }
                Err(e) => Some(format!("not a journal record: {e}")),
            }
        };
        if let Some(what) = what {
            out.damage = Some((n, at, what));
            return Ok(out);
        }
        out.bytes += got as u64;
    }
}

impl Journal {
    /// Opens the state in `dir` (created, mode 0700, if missing): the
    /// engine as the snapshot and the journal leave it, every VM marked as
    /// restarted at `now_ms`, and the journal to continue, synced as
    /// `sync` says.
    pub fn open(
        dir: &Path,
        sync: JournalSync,
        config: EngineConfig,
        now_ms: u64,
    ) -> Result<(Journal, Engine, Restored), TaintError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(state_err(dir))?;
        let mut restored = Restored::default();
        let boot_id = crate::host::boot_id();
        let before = Manifest::read(dir)?;
        restored.host_crashed = before
            .as_ref()
            .is_some_and(|m| m.host_crashed(boot_id.as_deref()));
        let snap_path = dir.join(SNAPSHOT);
        let (mut engine, snap_gen) = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                let snap: Snapshot = serde_json::from_slice(&bytes).map_err(|source| {
                    TaintError::SnapshotFormat {
                        path: snap_path.clone(),
                        source,
                    }
                })?;
                restored.from_snapshot = true;
                let generation = snap.journal;
                (Engine::restore(config, snap)?, generation)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Engine::new(config), 0),
            Err(e) => return Err(state_err(&snap_path)(e)),
        };
        let journal_path = dir.join(JOURNAL);
        let file = open_journal(&journal_path)?;
        let read = read_journal(&file, &journal_path)?;
        let mut damage = read.damage;
        let generation = read.generation.unwrap_or(snap_gen);
        if generation < snap_gen {
            restored.stale_journal = true;
        } else {
            if generation > snap_gen && damage.is_none() {
                damage = Some((
                    1,
                    0,
                    format!(
                        "journal generation {generation} continues a snapshot that is not there \
                         (the snapshot is of generation {snap_gen})"
                    ),
                ));
            }
            for rec in &read.records {
                match engine.apply_with(rec, false) {
                    Ok(_) => restored.replayed += 1,
                    Err(e) => {
                        log::warn!(
                            "taint journal: a batch of VM {} not applied: {e}",
                            rec.vm.name
                        );
                        restored.skipped += 1;
                    }
                }
            }
        }
        let mut lost = Vec::new();
        if damage.is_some() {
            lost.push(Lost::JournalDamaged);
        }
        if restored.host_crashed {
            lost.push(Lost::HostCrashed);
        }
        let mut marks: Vec<Record> = engine
            .vm_ids()
            .into_iter()
            .map(|vm| Record {
                at_ms: now_ms,
                vm,
                input: Input::Restarted { lost: lost.clone() },
            })
            .collect();
        let mut manifest = before.unwrap_or_default();
        // VMs that had state the snapshot and journal no longer hold come
        // back empty and marked, within the bound on VMs.
        let room = engine.config().limits.vms.saturating_sub(marks.len());
        let missing: Vec<VmId> = manifest
            .vms
            .iter()
            .filter(|v| engine.vm(&v.uuid).is_none())
            .take(room)
            .cloned()
            .collect();
        restored.missing = missing.len();
        for vm in missing {
            let mut lost = lost.clone();
            lost.push(Lost::StateMissing);
            marks.push(Record {
                at_ms: now_ms,
                vm,
                input: Input::Restarted { lost },
            });
        }
        for rec in &marks {
            engine.apply_with(rec, false)?;
        }
        restored.vms = marks.len();
        for vm in engine.vm_ids() {
            manifest.remember(&vm);
        }
        manifest.boot_id = boot_id;
        manifest.clean = false;
        manifest.synced = sync == JournalSync::Batch;
        let syncer = match sync {
            JournalSync::Interval => Some(Syncer::start(&file, &journal_path)?),
            JournalSync::Batch => None,
        };
        let mut journal = Journal {
            dir: dir.to_owned(),
            file,
            generation: generation.max(snap_gen),
            batches: restored.replayed,
            bytes: read.bytes,
            every: SNAPSHOT_EVERY,
            sync,
            syncer,
            manifest,
        };
        if let Some((line, offset, what)) = damage {
            // The snapshot first: until it is in place, the damaged journal
            // is what holds the batches before the damage.
            journal.write_snapshot(&engine)?;
            let kept = dir.join(DAMAGED);
            std::fs::rename(&journal_path, &kept).map_err(state_err(&kept))?;
            journal.file = open_journal(&journal_path)?;
            if let Some(s) = &journal.syncer {
                *s.file.lock().unwrap_or_else(|p| p.into_inner()) =
                    journal.file.try_clone().map_err(state_err(&journal_path))?;
            }
            journal.begin()?;
            restored.damage = Some(Damage {
                line,
                offset,
                what,
                kept,
            });
        } else if restored.stale_journal {
            journal.snapshot(&engine)?;
        } else {
            if read.generation.is_none() {
                journal.begin()?;
            }
            for rec in &marks {
                journal.append(rec)?;
            }
        }
        // Written last: until now, the manifest before still says how the
        // monitor before stopped.
        journal.manifest.write(dir)?;
        Ok((journal, engine, restored))
    }

    /// Records that the state now holds VM `vm`, durably, if it is new:
    /// so that the VM is not taken for a new one should its batches be
    /// lost. Called before the batch that made it is answered.
    pub fn remember(&mut self, vm: &VmId) -> Result<(), TaintError> {
        if self.manifest.remember(vm) {
            self.manifest.write(&self.dir)?;
        }
        Ok(())
    }

    /// Stops cleanly: a last snapshot, then a manifest that says so.
    pub fn close(&mut self, engine: &Engine) -> Result<(), TaintError> {
        self.snapshot(engine)?;
        let path = self.dir.join(JOURNAL);
        self.file.sync_data().map_err(state_err(&path))?;
        self.manifest.clean = true;
        self.manifest.write(&self.dir)
    }

    /// Snapshots every `every` batches instead (tests).
    pub fn snapshot_every(&mut self, every: u64) {
        self.every = every.max(1);
    }

    fn write_line(&mut self, line: &[u8]) -> Result<(), TaintError> {
        let path = self.dir.join(JOURNAL);
        self.file.write_all(line).map_err(state_err(&path))?;
        self.bytes += line.len() as u64;
        match (&self.syncer, self.sync) {
            (Some(s), _) => s.dirty.store(true, Ordering::Relaxed),
            (None, JournalSync::Batch) => self.file.sync_data().map_err(state_err(&path))?,
            (None, JournalSync::Interval) => {}
        }
        Ok(())
    }

    /// Starts the (empty) journal with its generation line.
    fn begin(&mut self) -> Result<(), TaintError> {
        let mut line = serde_json::to_vec(&Header {
            journal: self.generation,
        })
        .map_err(TaintError::Encode)?;
        line.push(b'\n');
        self.write_line(&line)
    }

    /// Appends one applied batch.
    pub fn append(&mut self, rec: &Record) -> Result<(), TaintError> {
        let mut line = serde_json::to_vec(rec).map_err(TaintError::Encode)?;
        line.push(b'\n');
        self.write_line(&line)?;
        self.batches += 1;
        Ok(())
    }

    /// Whether a snapshot is due.
    pub fn due(&self) -> bool {
        self.batches >= self.every || self.bytes >= SNAPSHOT_BYTES
    }

    /// Writes the engine's state as the snapshot that the next generation
    /// of the journal continues.
    fn write_snapshot(&mut self, engine: &Engine) -> Result<(), TaintError> {
        let path = self.dir.join(SNAPSHOT);
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let mut snap = engine.snapshot();
        snap.journal = self.generation + 1;
        let bytes = serde_json::to_vec(&snap).map_err(TaintError::Encode)?;
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
        self.generation += 1;
        self.batches = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Writes the engine's state as the new snapshot and empties the
    /// journal (which then starts the next generation).
    pub fn snapshot(&mut self, engine: &Engine) -> Result<(), TaintError> {
        self.write_snapshot(engine)?;
        let journal = self.dir.join(JOURNAL);
        self.file.set_len(0).map_err(state_err(&journal))?;
        self.begin()
    }
}
