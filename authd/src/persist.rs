//! The runtime state that outlives a restart of the daemon: live grants and
//! the faillock and prompt-rate counters, in `runtime.json` in the runtime
//! state directory (`runtime_state_dir`, else `state_dir`).
//!
//! Why: authd is restarted under running guests (an upgrade, `systemctl
//! restart`, a crash and `Restart=on-failure`). Forgetting the grants would
//! cut every guest off from its protected files and prompt every person
//! again; forgetting the failure counts would give a password guesser a
//! fresh set of attempts with each restart.
//!
//! The rules:
//!
//! * The file is rewritten after every change (a prompt, a grant, a wrong
//!   password, a revocation, an expiry: rare events), through
//!   [`crate::atomic_file`], mode 0600, so it is never torn.
//! * Times are stored as wall-clock Unix milliseconds, since one process's
//!   monotonic clock means nothing to the next; [`Clock`] turns them back
//!   into the monotonic deadlines kept in memory. Nothing is made to last
//!   longer than it was given: a grant never runs longer from the restart
//!   than its lifetime, a lockout never longer than `unlock_time_secs`,
//!   whatever the wall clock did meanwhile.
//! * Grants belong to the boot they were made in (the kernel's boot id): a
//!   host reboot ended every guest they were for, and a VM started again
//!   under the same name must ask again. Counters survive a reboot.
//! * Fail closed: a file that cannot be read, parsed, has another format
//!   version or is accessible to others restores **no grant**, and the
//!   daemon locks every enrolled principal out for `unlock_time_secs`, since
//!   it cannot know how many guesses were spent (see
//!   `server::Daemon::restore_state`). The file is kept aside as
//!   `runtime.json.bad`.
//! * When a write fails, the file no longer says what is live (a revoked
//!   grant may still be in it): it is renamed to `runtime.json.stale`, from
//!   which a restart takes the counters and no grant.
//! * Only an operator resets the counters, by deleting the file while authd
//!   is stopped: a missing file is a first start.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::atomic_file;
use authd_client::protocol::{now_unix_ms, Grant};

/// Version of `runtime.json`. A change of the format raises it; a daemon
/// that meets a version it does not read fails closed (see the module doc).
pub const FORMAT_VERSION: u32 = 1;

/// The state file's name in the runtime state directory.
pub const STATE_FILE: &str = "runtime.json";
const STALE_FILE: &str = "runtime.json.stale";
const BAD_FILE: &str = "runtime.json.bad";
/// Held (flock) for the daemon's life: two daemons never share one state.
const LOCK_FILE: &str = ".runtime.lock";
/// Far more than any real state (a few grants and counters): a bigger file
/// is not ours.
const MAX_SIZE: u64 = 16 << 20;
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Why the runtime state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("runtime state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime state directory {path} is writable by group or others or owned by uid {uid} (mode {mode:o}); refusing to use it")]
    DirPermissions { path: PathBuf, uid: u32, mode: u32 },
    #[error("another authd holds the runtime state in {0}")]
    InUse(PathBuf),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is owned by uid {uid} or accessible by group or others (mode {mode:o})")]
    Permissions { path: PathBuf, uid: u32, mode: u32 },
    #[error("{path} is larger than {MAX_SIZE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a runtime state file: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path} has format version {found}; this authd reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u64 },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One principal's failures, in wall-clock time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailRecord {
    /// Unix milliseconds of each recent wrong password, oldest first.
    pub failures_ms: Vec<u64>,
    /// Unix milliseconds at which a lockout ends.
    pub locked_until_ms: Option<u64>,
}

/// What the file holds besides its header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Live grants, as the protocol shows them (`expires_at_ms` is wall-clock).
    pub grants: Vec<Grant>,
    /// Failure records by principal.
    pub faillock: BTreeMap<String, FailRecord>,
    /// Unix milliseconds of each recent prompt, by VM.
    pub prompts: BTreeMap<String, Vec<u64>>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// The kernel's boot id when the file was written.
    boot_id: Option<String>,
    saved_at_ms: u64,
    #[serde(flatten)]
    state: Snapshot,
}

/// Only the version, read before the rest so that another version is told
/// apart from a broken file.
#[derive(Deserialize)]
struct Header {
    version: u64,
}

/// Why saved grants were not restored although the file was sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantsDropped {
    /// The host rebooted since: every guest they were for is gone.
    Rebooted,
    /// A write had failed, so the file may hold grants ended since.
    Stale,
}

/// What a start finds.
#[derive(Debug)]
pub enum Loaded {
    /// No state: a first start, or an operator removed the file.
    Nothing,
    /// The saved state; its grants are left out when `grants_dropped` says
    /// why (they are counted in `dropped`).
    Restored {
        state: Snapshot,
        grants_dropped: Option<GrantsDropped>,
        dropped: usize,
    },
    /// A file is there but cannot be trusted: fail closed.
    Unusable(PersistError),
}

/// One moment on both clocks, to turn the file's wall-clock times into the
/// monotonic instants kept in memory and back.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub mono: Instant,
    pub wall_ms: u64,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            mono: Instant::now(),
            wall_ms: now_unix_ms(),
        }
    }

    /// The wall-clock time of `t`.
    pub fn wall_of(&self, t: Instant) -> u64 {
        if t >= self.mono {
            self.wall_ms
                .saturating_add((t - self.mono).as_millis() as u64)
        } else {
            self.wall_ms
                .saturating_sub((self.mono - t).as_millis() as u64)
        }
    }

    /// How long ago wall-clock `ms` was. A time in the future (the wall
    /// clock stepped back) counts as now: a failure then counts for longer,
    /// never for shorter.
    pub fn age_of(&self, ms: u64) -> Duration {
        Duration::from_millis(self.wall_ms.saturating_sub(ms))
    }

    /// The instant `age` ago; now if the monotonic clock does not reach that
    /// far back (just after boot), which again counts for longer.
    pub fn instant_ago(&self, age: Duration) -> Instant {
        self.mono.checked_sub(age).unwrap_or(self.mono)
    }

    /// Time left until wall-clock `ms`; `None` once it has passed.
    pub fn left_until(&self, ms: u64) -> Option<Duration> {
        (ms > self.wall_ms).then(|| Duration::from_millis(ms - self.wall_ms))
    }
}

/// The kernel's boot id, which changes with every boot.
fn boot_id() -> Option<String> {
    fs::read_to_string(BOOT_ID)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The runtime state directory of a running daemon.
pub struct Persist {
    dir: PathBuf,
    /// Serialises writers; the snapshot is taken under it, so the last
    /// write always carries the latest state.
    write: Mutex<()>,
    _lock: File,
}

impl Persist {
    /// Opens the runtime state directory: creates it (0700) when missing,
    /// refuses one that group or others may write or that another user
    /// owns (anyone who can put a file there can plant grants), and takes
    /// its lock so that no second daemon writes the same state.
    pub fn open(dir: &Path) -> Result<Persist, PersistError> {
        let dir_err = |source| PersistError::Dir {
            path: dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        let meta = fs::metadata(dir).map_err(dir_err)?;
        let euid = rustix::process::geteuid().as_raw();
        if meta.mode() & 0o022 != 0 || (meta.uid() != euid && meta.uid() != 0) {
            return Err(PersistError::DirPermissions {
                path: dir.to_owned(),
                uid: meta.uid(),
                mode: meta.mode() & 0o7777,
            });
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .map_err(dir_err)?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(PersistError::InUse(dir.to_owned())),
            Err(e) => return Err(dir_err(e.into())),
        }
        Ok(Persist {
            dir: dir.to_owned(),
            write: Mutex::new(()),
            _lock: lock,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads what an earlier daemon saved (see the module doc for what is
    /// kept, dropped and distrusted).
    pub fn load(&self) -> Loaded {
        let (path, stale) = if self.dir.join(STATE_FILE).exists() {
            // A save succeeded after the one that left the stale file.
            let _ = fs::remove_file(self.dir.join(STALE_FILE));
            (self.path(), false)
        } else if self.dir.join(STALE_FILE).exists() {
            (self.dir.join(STALE_FILE), true)
        } else {
            return Loaded::Nothing;
        };
        let file = match read_state(&path) {
            Ok(f) => f,
            Err(PersistError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Loaded::Nothing
            }
            Err(e) => return Loaded::Unusable(e),
        };
        let mut state = file.state;
        let grants_dropped = if stale {
            Some(GrantsDropped::Stale)
        } else if file.boot_id != boot_id() {
            Some(GrantsDropped::Rebooted)
        } else {
            None
        };
        let dropped = if grants_dropped.is_some() {
            std::mem::take(&mut state.grants).len()
        } else {
            0
        };
        Loaded::Restored {
            state,
            grants_dropped,
            dropped,
        }
    }

    /// Keeps an unusable state file as `runtime.json.bad` for inspection,
    /// out of the way of the next load.
    pub fn set_aside(&self) {
        for name in [STATE_FILE, STALE_FILE] {
            let from = self.dir.join(name);
            if from.exists() {
                if let Err(e) = fs::rename(&from, self.dir.join(BAD_FILE)) {
                    log::error!("runtime state: moving {} aside: {e}", from.display());
                }
            }
        }
    }

    /// Writes the state that `snapshot` returns, taken under the write lock.
    /// When the write fails the old file is made stale (it may hold grants
    /// that have ended since), so that a restart restores no grant from it.
    pub fn save(&self, snapshot: impl FnOnce() -> Snapshot) -> Result<(), PersistError> {
        let guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.save_locked(&guard, snapshot())
    }

    /// Saves, then keeps the write lock for good: the process is about to
    /// exit, and no change after this one may reach the file.
    pub fn save_final(&self, snapshot: impl FnOnce() -> Snapshot) -> Result<(), PersistError> {
        let guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.save_locked(&guard, snapshot());
        std::mem::forget(guard);
        r
    }

    fn save_locked(&self, _held: &MutexGuard<'_, ()>, state: Snapshot) -> Result<(), PersistError> {
        let file = StateFile {
            version: FORMAT_VERSION,
            boot_id: boot_id(),
            saved_at_ms: now_unix_ms(),
            state,
        };
        let write_err = |source| PersistError::Write {
            path: self.path(),
            source,
        };
        let result = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|mut data| {
                data.push(b'\n');
                atomic_file::replace(&self.dir, STATE_FILE, &data)
            });
        match result {
            Ok(()) => {
                let _ = fs::remove_file(self.dir.join(STALE_FILE));
                Ok(())
            }
            Err(e) => {
                let (from, to) = (self.path(), self.dir.join(STALE_FILE));
                if from.exists() && fs::rename(&from, &to).is_err() {
                    // Without grants is better than with ended ones.
                    let _ = fs::remove_file(&from);
                }
                Err(write_err(e))
            }
        }
    }
}

/// Reads and checks one state file.
fn read_state(path: &Path) -> Result<StateFile, PersistError> {
    let read_err = |source| PersistError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let euid = rustix::process::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(PersistError::Permissions {
            path: path.to_owned(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    if meta.len() > MAX_SIZE {
        return Err(PersistError::TooLarge {
            path: path.to_owned(),
        });
    }
    let mut text = String::new();
    file.take(MAX_SIZE)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    let parse_err = |e: serde_json::Error| PersistError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let header: Header = serde_json::from_str(&text).map_err(parse_err)?;
    if header.version != u64::from(FORMAT_VERSION) {
        return Err(PersistError::Version {
            path: path.to_owned(),
            found: header.version,
        });
    }
    serde_json::from_str(&text).map_err(parse_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn grant(id: &str, expires_at_ms: u64) -> Grant {
        Grant {
            id: id.into(),
            vm: "vm1".into(),
            principal: "alice".into(),
            expires_at_ms,
            lifetime_secs: 600,
        }
    }

    /// The same state at every call (times are fixed; the file does not
    /// judge them, the tables restoring them do).
    fn state() -> Snapshot {
        const T: u64 = 1_700_000_000_000;
        Snapshot {
            grants: vec![grant("a", T + 60_000)],
            faillock: [(
                "alice".to_owned(),
                FailRecord {
                    failures_ms: vec![T],
                    locked_until_ms: None,
                },
            )]
            .into(),
            prompts: [("vm1".to_owned(), vec![T])].into(),
        }
    }

    #[test]
    fn saves_and_loads_with_mode_0600_and_a_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let p = Persist::open(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(matches!(p.load(), Loaded::Nothing));
        let s = state();
        p.save(|| s.clone()).unwrap();
        let mode = fs::metadata(p.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let json: serde_json::Value = serde_json::from_slice(&fs::read(p.path()).unwrap()).unwrap();
        assert_eq!(json["version"], FORMAT_VERSION);
        assert_eq!(json["boot_id"].as_str(), boot_id().as_deref());
        match p.load() {
            Loaded::Restored {
                state,
                grants_dropped: None,
                dropped: 0,
            } => assert_eq!(state, s),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_second_daemon_cannot_take_the_same_state() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = Persist::open(tmp.path()).unwrap();
        assert!(matches!(
            Persist::open(tmp.path()),
            Err(PersistError::InUse(_))
        ));
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            Persist::open(tmp.path()),
            Err(PersistError::DirPermissions { .. })
        ));
    }

    #[test]
    fn broken_foreign_and_exposed_files_are_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Persist::open(tmp.path()).unwrap();
        let write = |data: &[u8], mode: u32| {
            fs::write(p.path(), data).unwrap();
            fs::set_permissions(p.path(), fs::Permissions::from_mode(mode)).unwrap();
        };
        write(b"{\"version\":1,\"grants\":[tor", 0o600);
        assert!(matches!(
            p.load(),
            Loaded::Unusable(PersistError::Parse { .. })
        ));
        write(b"{\"version\":2,\"anything\":true}", 0o600);
        assert!(matches!(
            p.load(),
            Loaded::Unusable(PersistError::Version { found: 2, .. })
        ));
        p.save(state).unwrap();
        fs::set_permissions(p.path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            p.load(),
            Loaded::Unusable(PersistError::Permissions { .. })
        ));
        p.set_aside();
        assert!(!p.path().exists());
        assert!(tmp.path().join(BAD_FILE).exists());
        assert!(matches!(p.load(), Loaded::Nothing));
    }

    #[test]
    fn grants_of_another_boot_or_a_stale_file_are_dropped_counters_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Persist::open(tmp.path()).unwrap();
        p.save(state).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&fs::read(p.path()).unwrap()).unwrap();
        json["boot_id"] = "a-boot-before".into();
        atomic_file::replace(tmp.path(), STATE_FILE, json.to_string().as_bytes()).unwrap();
        match p.load() {
            Loaded::Restored {
                state: s,
                grants_dropped: Some(GrantsDropped::Rebooted),
                dropped: 1,
            } => {
                assert!(s.grants.is_empty());
                assert_eq!(s.faillock, state().faillock);
            }
            other => panic!("{other:?}"),
        }
        // What a failed write leaves.
        p.save(state).unwrap();
        fs::rename(p.path(), tmp.path().join(STALE_FILE)).unwrap();
        match p.load() {
            Loaded::Restored {
                state: s,
                grants_dropped: Some(GrantsDropped::Stale),
                dropped: 1,
            } => assert_eq!(s.faillock, state().faillock),
            other => panic!("{other:?}"),
        }
        // A later successful write replaces the stale file.
        p.save(state).unwrap();
        assert!(!tmp.path().join(STALE_FILE).exists());
        assert!(matches!(
            p.load(),
            Loaded::Restored {
                grants_dropped: None,
                ..
            }
        ));
    }

    #[test]
    fn clock_conversions_never_lengthen() {
        let c = Clock::now();
        let later = c.mono + Duration::from_secs(5);
        assert_eq!(c.wall_of(later), c.wall_ms + 5000);
        assert_eq!(c.age_of(c.wall_ms - 3000), Duration::from_secs(3));
        // A time in the future (the wall clock went back) is now.
        assert_eq!(c.age_of(c.wall_ms + 3000), Duration::ZERO);
        assert_eq!(c.left_until(c.wall_ms + 3000), Some(Duration::from_secs(3)));
        assert_eq!(c.left_until(c.wall_ms), None);
        assert!(c.instant_ago(Duration::from_secs(1)) <= c.mono);
    }
}
