//! Labels that follow inodes, not paths.
//!
//! A rule labels a file when fsd first sees it (at start-up, by walking the
//! share, and afterwards when the guest looks it up or creates it), and the
//! label then stays with the inode, keyed by host `(st_dev, st_ino)`: a hard
//! link, a rename or a symlink elsewhere names the same inode and so the same
//! label. Files created in a labelled directory inherit its label. Labels
//! are also appended to a label database outside the share, so that a file
//! renamed out of a protected directory stays protected after fsd restarts.
//! The guest can neither read nor change any of this.
//!
//! Per request, the only cost is one hash lookup of the FUSE node id, done
//! only when a policy is loaded.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::file::Policy;

/// Host identity of an inode.
pub type InodeKey = (u64, u64);

/// What fsd knows of one FUSE node.
#[derive(Debug, Clone)]
pub struct Node {
    pub key: InodeKey,
    /// Index of the labelling rule, if protected.
    pub rule: Option<u32>,
    /// Path relative to the share root when first seen (directories, and
    /// protected files for the audit log and the prompt).
    pub path: Option<Arc<str>>,
}

/// A node the guest was just given: looked up (`created == false`) or
/// created in `parent` under `name`.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub parent: u64,
    pub name: &'a [u8],
    pub node: u64,
    pub key: InodeKey,
    pub is_dir: bool,
    pub created: bool,
}

#[derive(Serialize, Deserialize)]
struct DbLine {
    dev: u64,
    ino: u64,
    rule: String,
}

/// The label table.
#[derive(Default)]
pub struct Labels {
    by_key: RwLock<HashMap<InodeKey, u32>>,
    nodes: RwLock<HashMap<u64, Node>>,
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

impl Labels {
    /// Labels every file of the share a rule matches, walking it from `root`
    /// (not following symlinks). Returns how many were labelled.
    pub fn scan(&self, policy: &Policy, root: &std::path::Path) -> usize {
        let mut count = 0;
        let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
        let mut by_key = self.by_key.write().unwrap();
        while let Some((dir, rel, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(md) = e.metadata() else { continue };
                let child_rel = join(&rel, e.file_name().as_encoded_bytes());
                use std::os::unix::fs::MetadataExt;
                if let Some(rule) = policy.rule_for(&child_rel) {
                    by_key.insert((md.dev(), md.ino()), rule);
                    count += 1;
                }
                if md.is_dir() && depth < 256 {
                    stack.push((e.path(), child_rel, depth + 1));
                }
            }
        }
        count
    }

    /// Loads labels recorded by earlier runs (those whose rule still exists)
    /// and rewrites the database with the current table; later labels are
    /// appended to `db`.
    pub fn attach_db(&self, policy: &Policy, mut db: File) -> io::Result<usize> {
        use std::io::Seek;
        db.seek(io::SeekFrom::Start(0))?;
        let mut by_key = self.by_key.write().unwrap();
        let mut loaded = 0;
        for line in io::BufReader::new(&db).lines() {
            let Ok(l) = serde_json::from_str::<DbLine>(&line?) else {
                continue;
            };
            if let Some(rule) = policy.rule_by_pattern(&l.rule) {
                by_key.entry((l.dev, l.ino)).or_insert(rule);
                loaded += 1;
            }
        }
        db.set_len(0)?;
        db.seek(io::SeekFrom::Start(0))?;
        let mut out = Vec::new();
        for (&(dev, ino), &rule) in by_key.iter() {
            let Some(rule) = policy.rule(rule) else {
                continue;
            };
            let line = DbLine {
                dev,
                ino,
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

    fn record(&self, policy: &Policy, key: InodeKey, rule: u32) {
        let Some(rule) = policy.rule(rule) else {
            return;
        };
        if let Some(db) = self.db.lock().unwrap().as_mut() {
            let line = DbLine {
                dev: key.0,
                ino: key.1,
                rule: rule.pattern.clone(),
            };
            if let Ok(mut s) = serde_json::to_vec(&line) {
                s.push(b'\n');
                if let Err(e) = db.write_all(&s) {
                    log::error!("label database: {e}");
                }
            }
        }
    }

    /// Registers the share root (FUSE node 1).
    pub fn observe_root(&self, policy: &Policy, key: InodeKey) {
        let rule = self.by_key.read().unwrap().get(&key).copied();
        self.nodes.write().unwrap().insert(
            1,
            Node {
                key,
                rule,
                path: Some(Arc::from("")),
            },
        );
        let _ = policy;
    }

    /// Registers a node handed to the guest.
    pub fn observe(&self, policy: &Policy, seen: Seen<'_>) {
        let Seen {
            parent,
            name,
            node,
            key,
            is_dir,
            created,
        } = seen;
        if let Some(n) = self.nodes.read().unwrap().get(&node) {
            if n.key == key {
                return;
            }
        }
        let (parent_path, parent_rule) = match self.nodes.read().unwrap().get(&parent) {
            Some(p) => (p.path.clone(), p.rule),
            None => (None, None),
        };
        let path = parent_path.map(|p| join(&p, name));
        let known = self.by_key.read().unwrap().get(&key).copied();
        let rule = match known {
            Some(r) => Some(r),
            None => {
                let r = match (created, parent_rule) {
                    (true, Some(r)) => Some(r),
                    _ => path.as_deref().and_then(|p| policy.rule_for(p)),
                };
                if let Some(r) = r {
                    self.by_key.write().unwrap().insert(key, r);
                    self.record(policy, key, r);
                }
                r
            }
        };
        let keep_path = is_dir || rule.is_some();
        self.nodes.write().unwrap().insert(
            node,
            Node {
                key,
                rule,
                path: path.filter(|_| keep_path).map(Arc::from),
            },
        );
    }

    /// The labelling rule of a node, if protected. The hot-path check.
    pub fn rule_of(&self, node: u64) -> Option<u32> {
        self.nodes.read().unwrap().get(&node).and_then(|n| n.rule)
    }

    /// What is known of a node.
    pub fn node(&self, node: u64) -> Option<Node> {
        self.nodes.read().unwrap().get(&node).cloned()
    }

    /// The label of an inode by its host identity.
    pub fn rule_of_key(&self, key: InodeKey) -> Option<u32> {
        self.by_key.read().unwrap().get(&key).copied()
    }

    /// After a policy reload: rules are renumbered by pattern; labels whose
    /// rule is gone are dropped (the administrator removed the protection).
    pub fn remap(&self, old: &Policy, new: &Policy) {
        let map = |r: u32| {
            old.rule(r)
                .and_then(|rule| new.rule_by_pattern(&rule.pattern))
        };
        self.by_key.write().unwrap().retain(|_, r| match map(*r) {
            Some(n) => {
                *r = n;
                true
            }
            None => false,
        });
        for n in self.nodes.write().unwrap().values_mut() {
            n.rule = n.rule.and_then(map);
        }
    }

    /// After a reload: label what the new rules match (walking the share
    /// from `root`) and give known nodes the labels of their inodes, so a
    /// rule added by a reload also covers files the guest already knows.
    pub fn relabel(&self, policy: &Policy, root: &std::path::Path) -> usize {
        let n = self.scan(policy, root);
        let by_key = self.by_key.read().unwrap();
        for node in self.nodes.write().unwrap().values_mut() {
            if node.rule.is_none() {
                node.rule = by_key.get(&node.key).copied();
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn seen(
        parent: u64,
        name: &[u8],
        node: u64,
        key: InodeKey,
        is_dir: bool,
        created: bool,
    ) -> Seen<'_> {
        Seen {
            parent,
            name,
            node,
            key,
            is_dir,
            created,
        }
    }

    fn policy() -> Policy {
        Policy::parse(
            Path::new("p"),
            "version = 1\n[[principal]]\nname = \"a\"\n[[rule]]\npath = \"s/**\"\nowner = \"a\"\n",
        )
        .unwrap()
    }

    #[test]
    fn labels_follow_the_inode() {
        let p = policy();
        let l = Labels::default();
        l.observe_root(&p, (1, 1));
        l.observe(&p, seen(1, b"s", 2, (1, 2), true, false));
        assert_eq!(l.rule_of(2), Some(0), "s/** covers s itself");
        l.observe(&p, seen(2, b"f", 3, (1, 3), false, false));
        assert_eq!(l.rule_of(3), Some(0));
        // The same inode seen under another name (hard link, rename) keeps it.
        l.observe(&p, seen(1, b"public", 4, (1, 3), false, false));
        assert_eq!(l.rule_of(4), Some(0));
        // A new file created in a protected directory inherits.
        l.observe(&p, seen(3, b"x", 5, (1, 5), false, true));
        assert_eq!(l.rule_of(5), Some(0));
        // An unrelated file is not protected.
        l.observe(&p, seen(1, b"other", 6, (1, 6), false, false));
        assert_eq!(l.rule_of(6), None);
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
        let db = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(t.path().join("labels.db"))
            .unwrap();
        l.attach_db(&p, db).unwrap();
        // A file created in a protected directory, then "moved out".
        l.observe_root(&p, (9, 1));
        l.observe(&p, seen(1, b"s", 2, (9, 2), true, false));
        l.observe(&p, seen(2, b"new", 3, (9, 77), false, true));
        // A restarted fsd: the scan would not find (9, 77) under s/ any more.
        let again = Labels::default();
        let db = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(t.path().join("labels.db"))
            .unwrap();
        // s, s/d, s/d/f from the scan; s (9, 2) and s/new (9, 77) seen later.
        assert_eq!(again.attach_db(&p, db).unwrap(), 5);
        assert_eq!(again.rule_of_key((9, 77)), Some(0));
    }
}
