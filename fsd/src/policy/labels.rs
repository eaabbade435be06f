//! Labels that follow inodes, not paths.
//!
//! A label says "this inode is protected by that rule". fsd gives one when it
//! first finds a file protected: at start-up by walking the share, when the
//! guest looks up or creates an entry inside a labelled directory, and when
//! an access finds the file protected by its host location (see
//! `fs::protect`). The label then stays with the inode, keyed by host
//! `(st_dev, st_ino)` and checked against the inode's generation, so a hard
//! link, a rename or a symlink elsewhere names the same inode and so the same
//! label, while a new file that happens to get a freed inode number does not
//! inherit it. Labels are appended to a label database outside the share, so
//! that a file moved out of a protected directory stays protected after fsd
//! restarts. The guest can neither read nor change any of this.
//!
//! The table is bounded ([`MAX_LABELS`]): when it is full, fsd refuses to
//! create entries in protected directories rather than leave them unlabelled.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::file::Policy;
use crate::fs::identity::InodeId;

/// Host identity of an inode without its generation: the table's key.
pub type InodeKey = (u64, u64);

/// Most labels one fsd keeps (about 40 bytes each in memory).
pub const MAX_LABELS: usize = 4 << 20;

/// One label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label {
    /// The inode's generation when labelled; 0 when unknown (a file system
    /// without file handles or birth times).
    gen: u64,
    /// Index of the labelling rule.
    rule: u32,
    /// Labels of directories extend to everything beneath them.
    dir: bool,
}

#[derive(Serialize, Deserialize)]
struct DbLine {
    dev: u64,
    ino: u64,
    /// Absent in databases written before generations were recorded: such
    /// a line is trusted for any generation (it can only protect more).
    #[serde(default)]
    gen: u64,
    #[serde(default)]
    dir: bool,
    rule: String,
}

/// Why a label could not be given.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The table holds [`MAX_LABELS`] labels already.
    #[error("the label table is full ({MAX_LABELS} labels)")]
    Full,
}

/// The label table.
pub struct Labels {
    by_key: RwLock<HashMap<InodeKey, Label>>,
    /// At most this many labels ([`MAX_LABELS`] but in tests).
    max: usize,
    /// How many labels are on directories: when none are, no access needs
    /// to look for a labelled ancestor.
    dirs: AtomicUsize,
    /// Counts every change to the set of labelled directories, so that an
    /// answer remembered before one is not trusted after it.
    dir_changes: AtomicU64,
    db: Mutex<Option<File>>,
}

fn join(parent: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if parent.is_empty() {
        name.into_owned()
    } else {
        format!("{parent}/{name}")
    }
}

impl Default for Labels {
    fn default() -> Self {
        Self::with_limit(MAX_LABELS)
    }
}

impl Labels {
    /// A table that holds at most `max` labels.
    pub fn with_limit(max: usize) -> Self {
        Labels {
            by_key: RwLock::default(),
            max,
            dirs: AtomicUsize::new(0),
            dir_changes: AtomicU64::new(0),
            db: Mutex::new(None),
        }
    }

    /// Labels every entry of the share a rule matches, walking it from `root`
    /// (not following symlinks). Returns how many were labelled.
    pub fn scan(&self, policy: &Policy, root: &std::path::Path) -> usize {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::MetadataExt;
        let mut count = 0;
        let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(md) = e.metadata() else { continue };
                let child_rel = join(&rel, e.file_name().as_encoded_bytes());
                if let Some(rule) = policy.rule_for(&child_rel) {
                    let gen = std::ffi::CString::new(e.path().as_os_str().as_bytes())
                        .ok()
                        .and_then(|c| crate::fs::identity::generation_at(rustix::fs::CWD, &c).ok())
                        .unwrap_or(0);
                    let id = InodeId {
                        dev: md.dev(),
                        ino: md.ino(),
                        gen,
                    };
                    if self.insert(id, rule, md.is_dir()).is_ok() {
                        count += 1;
                    }
                }
                if md.is_dir() && depth < 256 {
                    stack.push((e.path(), child_rel, depth + 1));
                }
            }
        }
        count
    }

    fn insert(&self, id: InodeId, rule: u32, dir: bool) -> Result<bool, LabelError> {
        let mut by_key = self.by_key.write().unwrap();
        if by_key.len() >= self.max && !by_key.contains_key(&(id.dev, id.ino)) {
            return Err(LabelError::Full);
        }
        let new = Label {
            gen: id.gen,
            rule,
            dir,
        };
        let old = by_key.insert((id.dev, id.ino), new);
        if old.is_some_and(|o| o.dir) {
            self.dirs.fetch_sub(1, Ordering::Relaxed);
        }
        if dir {
            self.dirs.fetch_add(1, Ordering::Relaxed);
        }
        if old != Some(new) && (dir || old.is_some_and(|o| o.dir)) {
            self.dir_changes.fetch_add(1, Ordering::AcqRel);
        }
        Ok(old != Some(new))
    }

    /// Loads labels recorded by earlier runs (those whose rule still exists)
    /// and rewrites the database with the current table; later labels are
    /// appended to `db`.
    pub fn attach_db(&self, policy: &Policy, mut db: File) -> io::Result<usize> {
        use std::io::Seek;
        db.seek(io::SeekFrom::Start(0))?;
        let mut loaded = 0;
        for line in io::BufReader::new(&db).lines() {
            let Ok(l) = serde_json::from_str::<DbLine>(&line?) else {
                continue;
            };
            if let Some(rule) = policy.rule_by_pattern(&l.rule) {
                let id = InodeId {
                    dev: l.dev,
                    ino: l.ino,
                    gen: l.gen,
                };
                let known = self.by_key.read().unwrap().contains_key(&(l.dev, l.ino));
                if !known && self.insert(id, rule, l.dir).is_ok() {
                    loaded += 1;
                }
            }
        }
        db.set_len(0)?;
        db.seek(io::SeekFrom::Start(0))?;
        let mut out = Vec::new();
        for (&(dev, ino), l) in self.by_key.read().unwrap().iter() {
            let Some(rule) = policy.rule(l.rule) else {
                continue;
            };
            let line = DbLine {
                dev,
                ino,
                gen: l.gen,
                dir: l.dir,
                rule: rule.pattern.clone(),
            };
            serde_json::to_writer(&mut out, &line).map_err(io::Error::other)?;
            out.push(b'\n');
        }
        db.write_all(&out)?;
        db.sync_data()?;
        *self.db.lock().unwrap() = Some(db);
        Ok(loaded)
    }

    /// Labels the inode `id` with `rule`, and records it in the database.
    pub fn label(
        &self,
        policy: &Policy,
        id: InodeId,
        rule: u32,
        dir: bool,
    ) -> Result<(), LabelError> {
        if !self.insert(id, rule, dir)? {
            return Ok(());
        }
        let Some(rule) = policy.rule(rule) else {
            return Ok(());
        };
        if let Some(db) = self.db.lock().unwrap().as_mut() {
            let line = DbLine {
                dev: id.dev,
                ino: id.ino,
                gen: id.gen,
                dir,
                rule: rule.pattern.clone(),
            };
            if let Ok(mut s) = serde_json::to_vec(&line) {
                s.push(b'\n');
                if let Err(e) = db.write_all(&s) {
                    log::error!("label database: {e}");
                }
            }
        }
        Ok(())
    }

    /// Whether the table can take another label.
    pub fn full(&self) -> bool {
        self.by_key.read().unwrap().len() >= self.max
    }

    /// The label of an inode by its key, if any. The hot-path check: one
    /// hash lookup. The caller has made sure the key names the inode the
    /// label was given to (see [`Self::validate`]).
    pub fn rule_of_key(&self, key: InodeKey) -> Option<u32> {
        self.by_key.read().unwrap().get(&key).map(|l| l.rule)
    }

    /// Whether the key has a label that could be stale, i.e. one for which
    /// [`Self::validate`] would need the inode's generation.
    pub fn has_key(&self, key: InodeKey) -> bool {
        self.by_key.read().unwrap().contains_key(&key)
    }

    /// Drops the label of `id`'s key if it was given to an earlier inode of
    /// the same number (another generation). Returns the label that holds.
    pub fn validate(&self, id: InodeId) -> Option<u32> {
        let key = (id.dev, id.ino);
        let l = *self.by_key.read().unwrap().get(&key)?;
        if l.gen == 0 || id.gen == 0 || l.gen == id.gen {
            return Some(l.rule);
        }
        let mut by_key = self.by_key.write().unwrap();
        if by_key.get(&key) == Some(&l) {
            by_key.remove(&key);
            if l.dir {
                self.dirs.fetch_sub(1, Ordering::Relaxed);
                self.dir_changes.fetch_add(1, Ordering::AcqRel);
            }
        }
        None
    }

    /// A counter that moves whenever a directory gains or loses a label.
    pub fn dir_changes(&self) -> u64 {
        self.dir_changes.load(Ordering::Acquire)
    }

    /// Whether any directory carries a label.
    pub fn any_dir(&self) -> bool {
        self.dirs.load(Ordering::Relaxed) > 0
    }

    /// How many labels there are.
    pub fn len(&self) -> usize {
        self.by_key.read().unwrap().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After a policy reload: rules are renumbered by pattern; labels whose
    /// rule is gone are dropped (the administrator removed the protection).
    pub fn remap(&self, old: &Policy, new: &Policy) {
        let map = |r: u32| {
            old.rule(r)
                .and_then(|rule| new.rule_by_pattern(&rule.pattern))
        };
        let mut by_key = self.by_key.write().unwrap();
        by_key.retain(|_, l| match map(l.rule) {
            Some(n) => {
                l.rule = n;
                true
            }
            None => false,
        });
        let dirs = by_key.values().filter(|l| l.dir).count();
        self.dirs.store(dirs, Ordering::Relaxed);
        self.dir_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// After a reload: label what the new rules match (walking the share
    /// from `root`).
    pub fn relabel(&self, policy: &Policy, root: &std::path::Path) -> usize {
        self.scan(policy, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy() -> Policy {
        Policy::parse(
            Path::new("p"),
            "version = 1\n[[principal]]\nname = \"a\"\n[[rule]]\npath = \"s/**\"\nowner = \"a\"\n",
        )
        .unwrap()
    }

    fn id(ino: u64, gen: u64) -> InodeId {
        InodeId { dev: 9, ino, gen }
    }

    #[test]
    fn labels_follow_the_inode_not_its_number() {
        let p = policy();
        let l = Labels::default();
        l.label(&p, id(3, 77), 0, false).unwrap();
        assert_eq!(l.rule_of_key((9, 3)), Some(0));
        assert_eq!(l.validate(id(3, 77)), Some(0), "same inode");
        // The number reused by another inode: the label is dropped.
        assert_eq!(l.validate(id(3, 78)), None);
        assert_eq!(l.rule_of_key((9, 3)), None);
        assert!(!l.any_dir());
        l.label(&p, id(4, 1), 0, true).unwrap();
        assert!(l.any_dir());
        assert_eq!(l.validate(id(4, 2)), None);
        assert!(!l.any_dir(), "the directory count follows removals");
    }

    #[test]
    fn the_table_is_bounded() {
        let p = policy();
        let l = Labels::with_limit(2);
        l.label(&p, id(1, 1), 0, false).unwrap();
        l.label(&p, id(2, 1), 0, false).unwrap();
        assert!(l.full());
        assert!(matches!(
            l.label(&p, id(3, 1), 0, false),
            Err(LabelError::Full)
        ));
        // Relabelling a known inode still works.
        l.label(&p, id(2, 5), 0, false).unwrap();
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn scan_and_database_survive_restarts() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("share/s/d")).unwrap();
        std::fs::write(t.path().join("share/s/d/f"), b"x").unwrap();
        std::fs::write(t.path().join("share/open"), b"x").unwrap();
        let p = policy();
        let l = Labels::default();
        assert_eq!(l.scan(&p, &t.path().join("share")), 3, "s, s/d and s/d/f");
        assert!(l.any_dir());
        let open_db = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(t.path().join("labels.db"))
                .unwrap()
        };
        l.attach_db(&p, open_db()).unwrap();
        // A file labelled later (created in a protected directory, then
        // moved out, where no rule matches).
        l.label(&p, id(77, 5), 0, false).unwrap();
        let again = Labels::default();
        // s, s/d, s/d/f from the scan and (9, 77) given later.
        assert_eq!(again.attach_db(&p, open_db()).unwrap(), 4);
        assert_eq!(again.validate(id(77, 5)), Some(0));
        assert!(again.any_dir());
        // A database line from before generations were recorded.
        let mut f = open_db();
        use std::io::Seek;
        f.seek(io::SeekFrom::End(0)).unwrap();
        f.write_all(b"{\"dev\":9,\"ino\":88,\"rule\":\"s/**\"}\n")
            .unwrap();
        let third = Labels::default();
        assert_eq!(third.attach_db(&p, open_db()).unwrap(), 5);
        assert_eq!(third.validate(id(88, 1234)), Some(0), "no generation: kept");
    }
}
