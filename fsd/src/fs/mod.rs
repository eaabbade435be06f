//! The file system fsd serves: host passthrough behind a guard.
//!
//! [`SharedFs`] wraps fuse-backend-rs's `PassthroughFs` (O_PATH descriptors
//! or file handles for inodes, no path walks, refusal to open special files)
//! and adds what a hostile guest makes necessary and what virtiofsd lacks:
//!
//! * every name the guest sends is checked ([`names`]) before it reaches a
//!   host syscall, in every operation, including LOOKUP of `..` at the root;
//! * what the guest may hold is counted and bounded ([`nodes`]), so fsd never
//!   runs out of descriptors while deciding;
//! * per-file access control on every operation that touches protected
//!   content, with the host's truth at the moment of access ([`protect`]);
//! * `--readonly` is enforced here, for every mutating operation;
//! * real POSIX and flock locks ([`locks`]) and extended attributes
//!   ([`xattr`]), on descriptors reopened strictly beneath the share
//!   ([`confine`]);
//! * a guest may unmount and mount again (DESTROY, then INIT) at any time:
//!   every session starts from the share root afresh, under every sandbox;
//! * file accesses are reported for taint tracking, and files written with
//!   a rule's data get its label ([`taint`]);
//! * a delegated program is shown to the guest as the delegation client
//!   ([`delegated`]), so the real setuid binary never runs there.

pub mod confine;
mod delegated;
pub mod dirs;
mod handover;
pub mod hostwatch;
pub mod identity;
mod journaled;
pub mod locks;
pub mod names;
pub mod nodes;
mod protect;
pub mod split_read;
mod taint;
pub mod xattr;

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::ROOT_ID;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::FsCacheReqHandler;

use self::confine::Confined;
use self::dirs::DirTable;
use self::hostwatch::HostWatch;
use self::locks::{LockKind, LockRequest, LockTable};
use self::names::{check_component, check_link_target};
use self::nodes::{Limits, NodeTable};
use self::protect::cpath;
use crate::policy::guard::{Access, Found, Op};
use crate::policy::Guard;
use crate::taint_link::TaintTap;
use monitor_client::taint::FileAccess;

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// The guarded passthrough file system.
pub struct SharedFs {
    inner: PassthroughFs<()>,
    readonly: bool,
    xattr: bool,
    announce_submounts: bool,
    readdirplus: bool,
    writeback: bool,
    killpriv_v2: bool,
    locks: LockTable,
    dirs: DirTable,
    /// What the guest holds, bounded.
    nodes: NodeTable,
    /// Per-file access control, when a policy is loaded.
    guard: Option<Arc<Guard>>,
    /// File events for the monitor's taint tracking (`--monitor-socket`).
    taint: Option<TaintTap>,
    /// The share root, for confined reopening and host names.
    confined: Confined,
    /// Renames anywhere on the share's file system (see [`hostwatch`]).
    watch: HostWatch,
    /// Host names of nodes, remembered under the rename epoch.
    dir_paths: protect::DirPaths,
    /// The open flags of each file handle. READ and WRITE carry the guest's
    /// current file flags, which the passthrough layer applies to the host
    /// descriptor with F_SETFL when they differ from the open flags; on an
    /// F_SETFL error it closes that descriptor by mistake (fuse-backend-rs
    /// 0.14), freeing its number for the next file fsd opens. fsd passes
    /// the open flags instead, so F_SETFL never runs.
    handle_flags: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
    /// The crash journal, with `--crash-recovery` ([`journaled`]).
    journal: std::sync::OnceLock<Arc<crate::crash::journal::Journal>>,
    /// The tables a taken-over session starts the journal with.
    journal_base: std::sync::Mutex<crate::crash::journal::Folded>,
    /// Helpers that copy parts of a large READ ([`split_read`]); set once
    /// the sandbox is up, since its threads must not exist before.
    split_reads: std::sync::OnceLock<split_read::ReadSplitter>,
}

/// Read-only descriptors kept open for the next read-only OPEN of the same
/// inode with the same flags (no open and close per OPEN/RELEASE pair; see
/// the vendored passthrough layer's `ro_share`). They come out of the
/// descriptors fsd keeps for itself ([`nodes::RESERVED_FDS`]).
pub const READONLY_SHARED: usize = 64;

/// O_PATH descriptors of recently used inodes kept open, so that GETATTR,
/// LOOKUP, CREATE and the like on an inode held by file handle do not open
/// and close it by handle each time (see the vendored passthrough layer's
/// `inode_file`). They come out of [`nodes::RESERVED_FDS`] too.
pub const PATH_SHARED: usize = 64;

/// Settings of [`SharedFs`] beyond those of the passthrough layer.
pub struct SharedFsOptions {
    pub readonly: bool,
    /// Serve extended attributes.
    pub xattr: bool,
    /// Flag entries that are mount points (FUSE_ATTR_SUBMOUNT).
    pub announce_submounts: bool,
    /// Offer READDIRPLUS.
    pub readdirplus: bool,
    /// The share root as the daemon names it after sandboxing.
    pub root_prefix: PathBuf,
    /// Per-file access control, when a policy is loaded.
    pub guard: Option<Arc<Guard>>,
    /// How much one guest may hold.
    pub limits: Limits,
    /// Renames on the share's file system, when a policy is loaded.
    pub host_watch: HostWatch,
    /// Where file events for taint tracking go, if anywhere.
    pub taint: Option<TaintTap>,
}

impl SharedFs {
    /// Builds the file system over `share` (its root, open). Must run before the sandbox
    /// hides `/proc` (the passthrough layer keeps `/proc/self/fd` and
    /// `/proc/self/mountinfo`). `cfg.root_dir` must name the share root
    /// both now and once sandboxed (see `daemon`): every FUSE session
    /// imports the root afresh through it.
    pub fn new(
        cfg: fuse_backend_rs::passthrough::Config,
        share: File,
        opts: SharedFsOptions,
    ) -> io::Result<Self> {
        let (cfg_writeback, cfg_killpriv_v2) = (cfg.writeback, cfg.killpriv_v2);
        let cfg = fuse_backend_rs::passthrough::Config {
            do_import: false,
            ..cfg
        };
        let inner = PassthroughFs::<()>::new(cfg)?;
        inner.set_readonly_sharing(READONLY_SHARED);
        inner.set_path_sharing(PATH_SHARED);
        Ok(SharedFs {
            inner,
            readonly: opts.readonly,
            xattr: opts.xattr,
            announce_submounts: opts.announce_submounts,
            readdirplus: opts.readdirplus,
            writeback: cfg_writeback,
            killpriv_v2: cfg_killpriv_v2,
            locks: LockTable::with_limit(opts.limits.handles),
            dirs: DirTable::default(),
            nodes: NodeTable::new(opts.limits),
            guard: opts.guard,
            taint: opts.taint,
            confined: Confined::new(share, opts.root_prefix)?,
            watch: opts.host_watch,
            dir_paths: Default::default(),
            handle_flags: Default::default(),
            journal: Default::default(),
            journal_base: Default::default(),
            split_reads: Default::default(),
        })
    }

    /// Lets `threads` helper threads copy parts of large READs while
    /// nothing else is in flight ([`split_read`]). Call once the process
    /// is sandboxed.
    pub fn split_large_reads(
        &self,
        threads: usize,
        in_flight: split_read::InFlightCount,
    ) -> io::Result<()> {
        let splitter = split_read::ReadSplitter::new(threads, in_flight)?;
        self.split_reads
            .set(splitter)
            .map_err(|_| io::Error::from_raw_os_error(libc::EEXIST))
    }

    /// Starts a FUSE session from a clean state: no node, handle, directory
    /// stream or lock of an earlier session survives, and the root is
    /// imported again (it may be a new mount of the share).
    fn new_session(&self) -> io::Result<()> {
        self.locks.clear();
        self.dir_paths.write().unwrap().clear();
        self.handle_flags.lock().unwrap().clear();
        self.dirs.clear();
        self.nodes.reset();
        // Clears the passthrough layer's inodes and handles and imports the
        // root through `cfg.root_dir`.
        self.inner.destroy();
        let (st, _) = self.inner.getattr(&Context::new(), ROOT_ID, None)?;
        self.nodes.add_root(ROOT_ID, (st.st_dev, st.st_ino));
        self.journal_root((st.st_dev, st.st_ino));
        Ok(())
    }

    /// Reopens an inode for real (locks, xattrs, directory streams).
    fn reopen_as(&self, inode: u64, write: bool) -> io::Result<File> {
        self.confined.reopen(
            || self.inner.readlinkat_proc_file(inode),
            || {
                let (st, _) = self.inner.getattr(&Context::new(), inode, None)?;
                Ok((st.st_dev, st.st_ino))
            },
            write,
        )
    }

    fn reopen(&self, inode: u64) -> io::Result<File> {
        self.reopen_as(inode, !self.readonly)
    }

    /// FUSE_GETLK, answered by fsd itself. Locks on protected files need a
    /// grant: a lock held by the guest would otherwise block host processes
    /// (say, one updating the host's own `etc/shadow`).
    pub fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        owner: u64,
        req: &LockRequest,
    ) -> io::Result<LockRequest> {
        self.check(ctx, inode, Op::Read, "getlk", Access::Handle)?;
        self.locks.getlk(inode, owner, req, || self.reopen(inode))
    }

    /// FUSE_SETLK and FUSE_SETLKW, answered by fsd itself. Unlocking is
    /// always allowed; taking a lock on a protected file needs a grant.
    #[allow(clippy::too_many_arguments)]
    pub fn setlk(
        &self,
        ctx: &Context,
        kind: LockKind,
        inode: u64,
        handle: u64,
        owner: u64,
        req: &LockRequest,
        blocking: bool,
    ) -> io::Result<()> {
        if req.typ as i32 != libc::F_UNLCK {
            self.check(ctx, inode, Op::Read, "lock", Access::Handle)?;
        }
        self.locks
            .setlk(kind, inode, handle, owner, req, blocking, || {
                self.reopen(inode)
            })
    }

    /// The policy guard, if a policy is loaded.
    pub fn guard(&self) -> Option<&Arc<Guard>> {
        self.guard.as_ref()
    }

    /// What the guest holds now: nodes and open handles.
    pub fn held(&self) -> (usize, usize) {
        (self.nodes.len(), self.nodes.handles())
    }

    /// Whether a request on `node` would wait for authd (a labelled inode,
    /// a rule that asks, no live grant): the dispatcher then runs it on a
    /// thread that may wait.
    pub fn would_wait(&self, node: u64) -> bool {
        let Some(g) = &self.guard else {
            return false;
        };
        let rule = self.nodes.key(node).and_then(|k| g.labels.rule_of_key(k));
        g.would_wait(rule)
    }

    /// Applies the policy to one access of `node`; returns the rule that
    /// protects it, if any.
    fn check(
        &self,
        ctx: &Context,
        node: u64,
        op: Op,
        what: &str,
        access: Access,
    ) -> io::Result<Option<u32>> {
        let Some(g) = &self.guard else {
            return Ok(None);
        };
        let found = match access {
            Access::Request => self.found(g, node)?,
            Access::Handle => self.found_labelled(g, node)?,
        };
        self.decide(g, found, &|| self.audit_path(node), ctx, op, what, access)
    }

    /// Applies the policy to the entry `name` of `parent`, which the request
    /// names but does not carry a node id for. Nothing there is nothing to
    /// protect; an error while finding out denies.
    fn check_child(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        op: Op,
        what: &str,
    ) -> io::Result<Option<u32>> {
        let Some(g) = &self.guard else {
            return Ok(None);
        };
        let found = self.found_child(g, parent, name);
        let path = || {
            let p = self.audit_path(parent);
            let n = String::from_utf8_lossy(name.to_bytes());
            Arc::from(if p.is_empty() {
                n.into_owned()
            } else {
                format!("{p}/{n}")
            })
        };
        self.decide(g, found, &path, ctx, op, what, Access::Request)
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        g: &Guard,
        found: Found,
        path: &dyn Fn() -> Arc<str>,
        ctx: &Context,
        op: Op,
        what: &str,
        access: Access,
    ) -> io::Result<Option<u32>> {
        let rule = match &found {
            Found::Protected { rule, .. } => Some(*rule),
            _ => None,
        };
        g.check(found, path, op, what, ctx.pid as u32, access)?;
        Ok(rule)
    }

    /// Refuses to create an entry in a protected directory when its label
    /// could not be recorded: an unlabelled copy would escape the policy.
    fn room_for_label(&self, parent_rule: Option<u32>) -> io::Result<()> {
        match (&self.guard, parent_rule) {
            (Some(g), Some(_)) if g.labels.full() => {
                log::error!("label table full: refusing a new entry in a protected directory");
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            _ => Ok(()),
        }
    }

    /// Protected content the policy keeps out of the guest's page cache.
    fn direct_io(&self, rule: Option<u32>, opts: &mut OpenOptions) {
        if let (Some(g), Some(r)) = (&self.guard, rule) {
            if g.direct_io(r) {
                opts.insert(OpenOptions::DIRECT_IO);
                opts.remove(OpenOptions::KEEP_CACHE);
            }
        }
    }

    /// Marks an entry that is the root of another mount than its parent.
    fn mark_submount(&self, ctx: &Context, parent: u64, mut e: Entry) -> Entry {
        if self.announce_submounts && e.attr.st_mode & libc::S_IFMT == libc::S_IFDIR {
            if let Ok((p, _)) = self.inner.getattr(ctx, parent, None) {
                if p.st_dev != e.attr.st_dev {
                    e.attr_flags |= fuse_backend_rs::abi::fuse_abi::ATTR_SUBMOUNT;
                }
            }
        }
        e
    }

    /// A real descriptor of the inode for its extended attributes.
    fn xattr_file(&self, inode: u64) -> io::Result<File> {
        if !self.xattr {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        self.reopen_as(inode, false)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOLCK) => io::Error::from_raw_os_error(libc::ENOTSUP),
                _ => e,
            })
    }

    /// The flags `handle` was opened with (see `handle_flags`); `flags`
    /// for a handle fsd does not know, which the passthrough layer refuses.
    fn open_flags(&self, handle: u64, flags: u32) -> u32 {
        self.handle_flags
            .lock()
            .unwrap()
            .get(&handle)
            .copied()
            .unwrap_or(flags)
    }

    fn writable(&self) -> io::Result<()> {
        if self.readonly {
            Err(erofs())
        } else {
            Ok(())
        }
    }

    /// Takes a handle slot, runs `open`, and gives the slot back if it
    /// failed or made no handle.
    fn counted_open<T>(
        &self,
        open: impl FnOnce() -> io::Result<T>,
        has_handle: impl FnOnce(&T) -> bool,
    ) -> io::Result<T> {
        self.nodes.reserve_handle()?;
        match open() {
            Ok(t) => {
                if !has_handle(&t) {
                    self.nodes.handle_closed();
                }
                Ok(t)
            }
            Err(e) => {
                self.nodes.handle_closed();
                Err(e)
            }
        }
    }
}

/// `__FMODE_EXEC`: the kernel's marker in open flags of an open for exec.
const FMODE_EXEC: u32 = 0x20;

fn wants_write(flags: u32) -> bool {
    let acc = flags as i32 & libc::O_ACCMODE;
    acc == libc::O_WRONLY
        || acc == libc::O_RDWR
        || flags as i32 & (libc::O_TRUNC | libc::O_CREAT | libc::O_APPEND) != 0
}

/// Open flags no guest kernel sends: access mode 3 (which the kernel itself
/// only uses internally, for ioctl-only opens) and O_PATH, which never
/// reaches a FUSE server. Such an open would slip past the read and write
/// checks, so it is refused.
fn valid_open_flags(flags: u32) -> io::Result<()> {
    let acc = flags as i32 & libc::O_ACCMODE;
    if acc == libc::O_ACCMODE || flags as i32 & libc::O_PATH != 0 {
        return Err(einval());
    }
    Ok(())
}

/// An entry that gives the guest nothing to cache (node id 0).
fn no_entry() -> Entry {
    // SAFETY: stat64 is plain old data; all zeroes is a valid value.
    let attr: stat64 = unsafe { std::mem::zeroed() };
    Entry {
        inode: 0,
        generation: 0,
        attr,
        attr_flags: 0,
        attr_timeout: Duration::ZERO,
        entry_timeout: Duration::ZERO,
    }
}

impl FileSystem for SharedFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.new_session()?;
        // The passthrough layer is built with `do_import = false` (fsd
        // imports the root itself for every session), and then takes
        // `capable` as already negotiated: strip what fsd did not ask for.
        // fsd serves directories itself, so OPENDIR must be sent.
        let mut offered = capable;
        offered.remove(FsOptions::ZERO_MESSAGE_OPEN | FsOptions::ZERO_MESSAGE_OPENDIR);
        offered.remove(FsOptions::PERFILE_DAX);
        if !self.writeback {
            offered.remove(FsOptions::WRITEBACK_CACHE);
        }
        if !self.killpriv_v2 {
            offered.remove(FsOptions::HANDLE_KILLPRIV_V2);
        }
        let mut opts = self.inner.init(offered)?;
        // Locks are implemented here, so advertise them when the guest can use them.
        opts |= capable & (FsOptions::POSIX_LOCKS | FsOptions::FLOCK_LOCKS);
        // What virtiofsd negotiates for throughput and cache coherence:
        // requests up to 1 MiB (MAX_PAGES), several in flight per file and
        // per directory, and page-cache invalidation when a file changed on
        // the host (AUTO_INVAL_DATA, used by cache=auto).
        opts |= capable
            & (FsOptions::ASYNC_READ
                | FsOptions::ASYNC_DIO
                | FsOptions::PARALLEL_DIROPS
                | FsOptions::BIG_WRITES
                | FsOptions::MAX_PAGES
                | FsOptions::AUTO_INVAL_DATA);
        if self.announce_submounts {
            opts |= capable & FsOptions::SUBMOUNTS;
        }
        if !self.readdirplus {
            opts.remove(FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO);
        }
        Ok(opts)
    }

    fn destroy(&self) {
        // The guest unmounted: let go of everything it held now. The next
        // INIT starts a new session.
        if let Err(e) = self.new_session() {
            log::error!("after DESTROY: cannot import the share root again: {e}");
        }
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        // `.` and `..` are refused too: at the root `..` would name the
        // share's parent on the host. fsd does not offer NFS export, the only
        // reason a kernel sends them.
        check_component(name)?;
        let e = self.lookup_presented(ctx, parent, name)?;
        self.register(ctx, parent, &e)?;
        Ok(self.mark_submount(ctx, parent, e))
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.nodes.forget(inode, count);
        self.journal_forget(inode, count);
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for &(inode, count) in &requests {
            self.nodes.forget(inode, count);
            self.journal_forget(inode, count);
        }
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        if valid.contains(SetattrValid::SIZE) {
            self.check(ctx, inode, Op::Write, "truncate", Access::Request)?;
        }
        let meta = SetattrValid::MODE
            | SetattrValid::UID
            | SetattrValid::GID
            | SetattrValid::ATIME
            | SetattrValid::MTIME
            | SetattrValid::ATIME_NOW
            | SetattrValid::MTIME_NOW
            | SetattrValid::CTIME;
        if valid.intersects(meta) {
            self.check(ctx, inode, Op::Metadata, "setattr", Access::Request)?;
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.check(ctx, inode, Op::Read, "readlink", Access::Request)?;
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_component(name)?;
        check_link_target(linkname)?;
        let rule = self.check(ctx, parent, Op::Write, "symlink", Access::Request)?;
        self.room_for_label(rule)?;
        let e = self.inner.symlink(ctx, linkname, parent, name)?;
        self.register(ctx, parent, &e)?;
        Ok(e)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_component(name)?;
        let rule = self.check(ctx, inode, Op::Write, "mknod", Access::Request)?;
        self.room_for_label(rule)?;
        let e = self.inner.mknod(ctx, inode, name, mode, rdev, umask)?;
        self.register(ctx, inode, &e)?;
        Ok(e)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_component(name)?;
        let rule = self.check(ctx, parent, Op::Write, "mkdir", Access::Request)?;
        self.room_for_label(rule)?;
        let e = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.register(ctx, parent, &e)?;
        Ok(e)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_component(name)?;
        self.check(ctx, parent, Op::Write, "unlink", Access::Request)?;
        self.check_child(ctx, parent, name, Op::Metadata, "unlink")?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_component(name)?;
        self.check(ctx, parent, Op::Write, "rmdir", Access::Request)?;
        self.check_child(ctx, parent, name, Op::Metadata, "rmdir")?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_component(oldname)?;
        check_component(newname)?;
        self.check(ctx, olddir, Op::Write, "rename", Access::Request)?;
        self.check(ctx, newdir, Op::Write, "rename", Access::Request)?;
        self.check_child(ctx, olddir, oldname, Op::Metadata, "rename")?;
        self.check_child(ctx, newdir, newname, Op::Metadata, "rename over")?;
        let r = self
            .inner
            .rename(ctx, olddir, oldname, newdir, newname, flags);
        // Names changed: remembered answers about unprotected files go.
        self.watch.bump();
        r
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        check_component(newname)?;
        self.check(ctx, inode, Op::Metadata, "link", Access::Request)?;
        let rule = self.check(ctx, newparent, Op::Write, "link", Access::Request)?;
        self.room_for_label(rule)?;
        let e = self.inner.link(ctx, inode, newparent, newname)?;
        self.register(ctx, newparent, &e)?;
        Ok(e)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        valid_open_flags(flags)?;
        // Directories are opened with OPENDIR; a guest kernel never sends
        // OPEN for one, and a file handle on a directory is no use. An
        // inode's type never changes: the mode the passthrough layer keeps
        // answers without a system call.
        let mode = self
            .inner
            .inode_mode(inode)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        if mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        if self.readonly && wants_write(flags) {
            return Err(erofs());
        }
        let acc = flags as i32 & libc::O_ACCMODE;
        let mut rule = None;
        if acc == libc::O_RDONLY || acc == libc::O_RDWR {
            rule = rule.or(self.check(ctx, inode, Op::Read, "open", Access::Request)?);
        }
        if wants_write(flags) {
            rule =
                rule.or(self.check(ctx, inode, Op::Write, "open for writing", Access::Request)?);
        }
        if flags & FMODE_EXEC != 0 {
            rule = rule.or(self.check(ctx, inode, Op::Exec, "exec", Access::Request)?);
        }
        let (h, mut opts, passthrough) = self.counted_open(
            || self.inner.open(ctx, inode, flags, fuse_flags),
            |(h, _, _)| h.is_some(),
        )?;
        if let Some(h) = h {
            self.handle_flags.lock().unwrap().insert(h, flags);
            self.journal_open(h, inode, flags);
        }
        self.direct_io(rule, &mut opts);
        if acc == libc::O_RDONLY || acc == libc::O_RDWR {
            self.observe(ctx, inode, FileAccess::Open, rule);
        }
        Ok((h, opts, passthrough))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.writable()?;
        check_component(name)?;
        valid_open_flags(args.flags)?;
        let parent_rule = self.check(ctx, parent, Op::Write, "create", Access::Request)?;
        // An existing protected file opened through O_CREAT is an open.
        let existing = self.check_child(ctx, parent, name, Op::Write, "create (existing)")?;
        self.room_for_label(parent_rule)?;
        let (e, h, mut opts, passthrough) = self.counted_open(
            || self.inner.create(ctx, parent, name, args),
            |(_, h, _, _)| h.is_some(),
        )?;
        if let Some(h) = h {
            self.handle_flags.lock().unwrap().insert(h, args.flags);
            self.journal_open(h, e.inode, args.flags);
        }
        if let Err(err) = self.register(ctx, parent, &e) {
            if let Some(h) = h {
                let _ = self.release(ctx, e.inode, args.flags, h, false, false, None);
            }
            return Err(err);
        }
        self.direct_io(existing.or(parent_rule), &mut opts);
        Ok((e, h, opts, passthrough))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        // Checked on every read, not only at open: a handle opened under a
        // grant stops working when the grant ends.
        let rule = self.check(ctx, inode, Op::Read, "read", Access::Handle)?;
        let n = match self.split_reads.get() {
            Some(s) if size as usize >= split_read::SPLIT_MIN => self.inner.read(
                ctx,
                inode,
                handle,
                &mut s.writer(w),
                size,
                offset,
                lock_owner,
                flags,
            )?,
            _ => self
                .inner
                .read(ctx, inode, handle, w, size, offset, lock_owner, flags)?,
        };
        self.observe(ctx, inode, FileAccess::Read, rule);
        Ok(n)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let rule = self.check(ctx, inode, Op::Write, "write", Access::Handle)?;
        // Data of a rule that inherits, from a process fsd saw read it:
        // the file is labelled before the data lands.
        let rule = rule.or_else(|| self.inherit_on_write(ctx, inode));
        let n = self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            self.open_flags(handle, flags),
            fuse_flags,
        )?;
        self.observe(ctx, inode, FileAccess::Write, rule);
        Ok(n)
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        // FLUSH is part of close: it reveals and changes nothing, and the
        // locks it releases must always go. It needs no right.
        self.locks.flush(inode, lock_owner);
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.check(ctx, inode, Op::Write, "fsync", Access::Handle)?;
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.check(ctx, inode, Op::Write, "fallocate", Access::Request)?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.locks
            .release(inode, handle, lock_owner.filter(|_| flush));
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        self.handle_flags.lock().unwrap().remove(&handle);
        self.journal_close(handle);
        self.nodes.handle_closed();
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.check(ctx, inode, Op::Metadata, "setxattr", Access::Request)?;
        xattr::set(&self.xattr_file(inode)?, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if xattr::value_is_content(name) {
            // Never asks: tools read attributes in passing (ls, cp -a).
            self.check(ctx, inode, Op::Read, "getxattr", Access::Handle)?;
        }
        xattr::get(&self.xattr_file(inode)?, name, size)
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        xattr::list(&self.xattr_file(inode)?, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.check(ctx, inode, Op::Metadata, "removexattr", Access::Request)?;
        xattr::remove(&self.xattr_file(inode)?, name)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let dir = self.counted_open(
            || {
                let dir = self
                    .reopen_as(inode, false)
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::ENOLCK) => io::Error::from_raw_os_error(libc::ENOTDIR),
                        _ => e,
                    })?;
                if confine::identity(&dir)?.2 & libc::S_IFMT != libc::S_IFDIR {
                    return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                }
                Ok(dir)
            },
            |_| true,
        )?;
        let handle = self.dirs.insert(dir);
        self.journal_opendir(handle, inode);
        Ok((Some(handle), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.dirs.read(handle, offset, size, &mut |d| {
            let n = add_entry(DirEntry {
                ino: d.ino,
                offset: d.next,
                type_: d.typ as u32,
                name: d.name,
            })?;
            Ok(n != 0)
        })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // Entries are looked up in the stream's own descriptor, not by
        // opening `inode` again for each, once it is known to be open on
        // `inode`: a guest that pairs one directory's node with another's
        // stream gets EBADF, never entries of one registered under the
        // other (the policy names them by parent).
        let mut checked = false;
        self.dirs.read(handle, offset, size, &mut |d| {
            let dirent = DirEntry {
                ino: d.ino,
                offset: d.next,
                type_: d.typ as u32,
                name: d.name,
            };
            if d.name == b"." || d.name == b".." {
                // The guest kernel never uses the attributes of these two;
                // a zero node id tells it there is no entry to cache.
                return Ok(add_entry(dirent, no_entry())? != 0);
            }
            if !checked {
                if !self.inner.is_open_on(inode, &d.dir)? {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                }
                checked = true;
            }
            let name = std::ffi::CString::new(d.name)
                .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
            let entry = self.lookup_presented_in(ctx, inode, d.dir, &name)?;
            if let Err(e) = self.register(ctx, inode, &entry) {
                if e.raw_os_error() != Some(libc::ENFILE) {
                    return Err(e);
                }
                // At the node bound the name is still listed, with nothing
                // for the guest to cache; a LOOKUP of it gets ENFILE.
                return Ok(add_entry(dirent, no_entry())? != 0);
            }
            let entry = self.mark_submount(ctx, inode, entry);
            let n = add_entry(dirent, entry)?;
            if n == 0 {
                // No room: give back the lookup count the entry took.
                self.forget(ctx, entry.inode, 1);
            }
            Ok(n != 0)
        })
    }

    fn fsyncdir(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let dir = self.dirs.get(handle)?;
        let dir = dir.lock().unwrap();
        if datasync {
            rustix::fs::fdatasync(&*dir)?;
        } else {
            rustix::fs::fsync(&*dir)?;
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        if self.dirs.remove(handle) {
            self.journal_closedir(handle);
            self.nodes.handle_closed();
        }
        Ok(())
    }

    fn setupmapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _foffset: u64,
        _len: u64,
        _flags: u64,
        _moffset: u64,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        // No DAX window is offered, so a mapping request is a guest error.
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _requests: Vec<RemovemappingOne>,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if self.readonly && mask & libc::W_OK as u32 != 0 {
            return Err(erofs());
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        // SEEK_DATA and SEEK_HOLE reveal a file's layout: content.
        self.check(ctx, inode, Op::Read, "lseek", Access::Handle)?;
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    // GETLK/SETLK/SETLKW never reach the trait: the dispatcher answers them
    // (fuse-backend-rs 0.14 routes SETLKW to `setlk`, losing "blocking").
    fn getlk(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _owner: u64,
        _lock: FileLock,
        _flags: u32,
    ) -> io::Result<FileLock> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn ioctl(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _flags: u32,
        _cmd: u32,
        _data: IoctlData,
        _out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        // Host ioctls are never forwarded: they reach drivers, not files.
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
}
