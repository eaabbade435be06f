//! Is this inode protected, now? The host's truth at the moment of access.
//!
//! An inode is protected when any of these holds (docs/policy.md):
//!
//! 1. it carries a label (it was found protected before; labels follow the
//!    inode through links and renames, see [`crate::policy::labels`]);
//! 2. its current name on the host matches a rule (`vault/**` covers
//!    `vault` and everything beneath it);
//! 3. a directory on its current host path carries a label (a protected
//!    directory the host moved elsewhere, or one labelled by inheritance).
//!
//! "Current name" is what the host kernel says the inode is called right
//! now (the link of its descriptor in `/proc/self/fd`), never what the
//! guest said when it looked the entry up: the host may have created,
//! moved or saved files since, and the guest may have renamed ancestors.
//! A protected inode found by (2) or (3) is labelled on the spot, so it
//! stays protected wherever it goes next.
//!
//! Requests (opens, changes, directory operations) ask this question in
//! full. I/O on an open handle only looks at the label, which the open that
//! made the handle gave if the file was protected then: one hash lookup.
//!
//! Anything that goes wrong while finding out (EMFILE, ENOMEM, EIO, the name
//! changing under the check) is [`Found::Undecided`]: the guard denies and
//! audits. It is never taken to mean "nothing protected here".

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};

use super::identity::{generation_at, id_at, stat_at, InodeId};
use super::SharedFs;
use crate::policy::guard::Found;
use crate::policy::labels::InodeKey;
use crate::policy::{Guard, Policy};

/// Names remembered at most (cleared when full; a few MiB at most).
const DIR_PATHS: usize = 4096;

/// Host names of nodes, with the epoch they were read at.
pub(super) type DirPaths = std::sync::RwLock<std::collections::HashMap<u64, (u64, Arc<Path>)>>;

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

pub(super) fn cpath(rel: &Path) -> io::Result<CString> {
    CString::new(rel.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `rel` as a policy names paths: relative, `/`-separated, lossless for
/// UTF-8 names (others are matched by their lossy form, as at start-up).
fn rule_path(rel: &Path) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(rel.as_os_str().as_bytes())
}

impl SharedFs {
    /// The current host name of `node`, relative to the share root.
    pub(super) fn host_path(&self, node: u64) -> io::Result<PathBuf> {
        let p = self.inner.readlinkat_proc_file(node)?;
        self.confined.relative(&p)
    }

    /// The epoch under which remembered answers and names hold (see
    /// `hostwatch`), read before looking so that a change during the look
    /// is seen by the next check; `None` when nothing may be remembered.
    fn epoch(&self, g: &Guard) -> Option<u64> {
        self.watch
            .epoch()
            .map(|e| e.wrapping_add(g.generation()).max(1))
    }

    /// [`Self::host_path`], remembered for directories under `epoch`: only
    /// a rename changes a name, and every rename moves the epoch.
    fn host_path_at(&self, node: u64, epoch: Option<u64>) -> io::Result<PathBuf> {
        let Some(e) = epoch else {
            return self.host_path(node);
        };
        if let Some((at, p)) = self.dir_paths.read().unwrap().get(&node) {
            if *at == e {
                return Ok(p.to_path_buf());
            }
        }
        let p = self.host_path(node)?;
        let mut cache = self.dir_paths.write().unwrap();
        if cache.len() >= DIR_PATHS {
            cache.clear();
        }
        cache.insert(node, (e, Arc::from(p.as_path())));
        Ok(p)
    }

    /// The node's name for the audit log and the prompt.
    pub(super) fn audit_path(&self, node: u64) -> Arc<str> {
        match self.host_path(node) {
            Ok(p) => Arc::from(rule_path(&p).as_ref()),
            Err(e) => Arc::from(format!("? (node {node}: {e})").as_str()),
        }
    }

    /// The label of `node`, if any: for I/O on handles. Unknown nodes are
    /// EBADF (nothing to decide on).
    pub(super) fn found_labelled(&self, g: &Guard, node: u64) -> io::Result<Found> {
        let key = self.nodes.key(node).ok_or_else(ebadf)?;
        Ok(match g.labels.rule_of_key(key) {
            Some(rule) => Found::Protected { rule, key },
            None => Found::Public,
        })
    }

    /// Whether `node` is protected now, in full (see the module doc).
    pub(super) fn found(&self, g: &Guard, node: u64) -> io::Result<Found> {
        let key = self.nodes.key(node).ok_or_else(ebadf)?;
        if let Some(rule) = g.labels.rule_of_key(key) {
            return Ok(Found::Protected { rule, key });
        }
        let epoch = self.epoch(g);
        if let Some(e) = epoch {
            if self.nodes.public_at(node, e) {
                return Ok(Found::Public);
            }
        }
        let policy = g.policy();
        let located = self
            .host_path_at(node, epoch)
            .and_then(|rel| self.locate(g, &policy, &rel, key, false));
        Ok(match located {
            Ok(Some(rule)) => Found::Protected { rule, key },
            Ok(None) => {
                if let Some(e) = epoch {
                    self.nodes.set_public(node, e);
                }
                Found::Public
            }
            Err(e) => Found::Undecided(e),
        })
    }

    /// Whether the entry `name` of `parent` is protected now. Nothing there
    /// (ENOENT) is public; any other failure is undecided.
    pub(super) fn found_child(&self, g: &Guard, parent: u64, name: &CStr) -> Found {
        let policy = g.policy();
        let epoch = self.epoch(g);
        // A parent found unprotected at this epoch has no rule and no
        // labelled directory above it: only the entry's own label and name
        // remain to be checked.
        let parent_public = epoch.is_some_and(|e| self.nodes.public_at(parent, e));
        let r = (|| {
            let rel = self
                .host_path_at(parent, epoch)?
                .join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let c = cpath(&rel)?;
            let (dev, ino, _) = match stat_at(self.confined.root_fd(), &c) {
                Ok(s) => s,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            };
            let key = (dev, ino);
            if g.labels.has_key(key) {
                let id = InodeId {
                    dev,
                    ino,
                    gen: generation_at(self.confined.root_fd(), &c)?,
                };
                if let Some(rule) = g.labels.validate(id) {
                    return Ok(Some((rule, key)));
                }
            }
            Ok(self
                .locate(g, &policy, &rel, key, parent_public)?
                .map(|rule| (rule, key)))
        })();
        match r {
            Ok(Some((rule, key))) => Found::Protected { rule, key },
            Ok(None) => Found::Public,
            Err(e) => Found::Undecided(e),
        }
    }

    /// Rules 2 and 3 for the inode `key` at host path `rel` (rule 3 left
    /// out when the caller knows no directory above is labelled); labels
    /// it when protected.
    fn locate(
        &self,
        g: &Guard,
        policy: &Policy,
        rel: &Path,
        key: InodeKey,
        no_labelled_ancestor: bool,
    ) -> io::Result<Option<u32>> {
        let by_path = policy.rule_for(&rule_path(rel));
        let rule = match by_path {
            Some(r) => Some(r),
            None if g.labels.any_dir() && !no_labelled_ancestor => {
                self.labelled_ancestor(g, rel)?
            }
            None => None,
        };
        if let Some(r) = rule {
            self.label(g, policy, rel, key, r)?;
        }
        Ok(rule)
    }

    /// The label of the nearest labelled directory on `rel`'s path (the
    /// share root included), walking the host's directories as they are now.
    fn labelled_ancestor(&self, g: &Guard, rel: &Path) -> io::Result<Option<u32>> {
        let root = self.confined.root_fd();
        let mut prefixes: Vec<&Path> = rel.ancestors().skip(1).collect();
        // Nearest first: a label further down is the more specific one.
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for dir in prefixes {
            let c = cpath(dir)?;
            let (dev, ino, _) = stat_at(root, &c)?;
            if !g.labels.has_key((dev, ino)) {
                continue;
            }
            let id = InodeId {
                dev,
                ino,
                gen: generation_at(root, &c)?,
            };
            if let Some(r) = g.labels.validate(id) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Gives the inode `key`, now at `rel`, the label `rule`. The name must
    /// still name that inode (else ESTALE: the check raced a rename, and the
    /// caller denies). A full label table keeps it protected for this
    /// access only, with an error in the log.
    fn label(
        &self,
        g: &Guard,
        policy: &Policy,
        rel: &Path,
        key: InodeKey,
        rule: u32,
    ) -> io::Result<()> {
        let (id, mode) = id_at(self.confined.root_fd(), &cpath(rel)?)?;
        if (id.dev, id.ino) != key {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let dir = mode & libc::S_IFMT == libc::S_IFDIR;
        if let Err(e) = g.labels.label(policy, id, rule, dir) {
            log::error!("cannot label {}: {e}", rel.display());
        }
        Ok(())
    }

    /// A node the guest was just given (looked up, created, linked):
    /// counted, its label checked against the inode's generation, and, when
    /// it sits in a labelled directory, labelled like it. Over the node
    /// bound the lookup is given back and the guest gets ENFILE.
    pub(super) fn register(&self, ctx: &Context, parent: u64, e: &Entry) -> io::Result<()> {
        let key = (e.attr.st_dev, e.attr.st_ino);
        let new = match self.nodes.add(e.inode, key) {
            Ok(new) => new,
            Err(err) => {
                self.inner.forget(ctx, e.inode, 1);
                return Err(err);
            }
        };
        self.journal_node(e.inode, key, new);
        let Some(g) = &self.guard else {
            return Ok(());
        };
        if new {
            // Nothing remembered under this node id belongs to this inode.
            self.dir_paths.write().unwrap().remove(&e.inode);
        }
        let undo = |err: io::Error| {
            self.nodes.forget(e.inode, 1);
            self.journal_forget(e.inode, 1);
            self.inner.forget(ctx, e.inode, 1);
            err
        };
        let has_label = g.labels.has_key(key);
        let parent_rule = self.nodes.key(parent).and_then(|k| g.labels.rule_of_key(k));
        if !(new && has_label) && (has_label || parent_rule.is_none()) {
            return Ok(());
        }
        // A label to validate, or one to inherit: the host name is needed.
        let rel = self.host_path(e.inode).map_err(undo)?;
        let c = cpath(&rel).map_err(undo)?;
        let (id, mode) = id_at(self.confined.root_fd(), &c).map_err(undo)?;
        if (id.dev, id.ino) != key {
            return Err(undo(io::Error::from_raw_os_error(libc::ESTALE)));
        }
        if has_label && g.labels.validate(id).is_some() {
            return Ok(());
        }
        if let Some(r) = parent_rule {
            let dir = mode & libc::S_IFMT == libc::S_IFDIR;
            g.labels
                .label(&g.policy(), id, r, dir)
                .map_err(|err| undo(io::Error::other(err)))?;
        }
        Ok(())
    }
}
