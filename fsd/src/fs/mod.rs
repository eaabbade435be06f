//! The file system fsd serves: host passthrough behind a guard.
//!
//! [`SharedFs`] wraps fuse-backend-rs's `PassthroughFs` (O_PATH inode
//! descriptors, no path walks, refusal to open special files) and adds what a
//! hostile guest makes necessary and what virtiofsd lacks:
//!
//! * every name the guest sends is checked ([`names`]) before it reaches a
//!   host syscall, in every operation, including LOOKUP of `..` at the root;
//! * `--readonly` is enforced here, for every mutating operation;
//! * real POSIX and flock locks ([`locks`]), reopened strictly beneath the
//!   share ([`confine`]).

pub mod confine;
pub mod dirs;
pub mod locks;
pub mod names;

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
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

use self::dirs::DirTable;
use self::locks::{LockKind, LockRequest, LockTable};
use self::names::{check_component, check_link_target};
use crate::policy::guard::{Access, Op};
use crate::policy::labels::Seen;
use crate::policy::{CacheRule, Guard};

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
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
    /// Per-file access control, when a policy is loaded.
    guard: Option<Arc<Guard>>,
    /// The share's root directory, for confined reopening.
    root: File,
    /// How the daemon's own view names the share root (`/` once sandboxed).
    root_prefix: PathBuf,
    /// `/proc/self/fd`, opened before any sandboxing.
    proc_self_fd: File,
}

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
}

impl SharedFs {
    /// Builds the file system over `cfg.root_dir`. Must run before the
    /// sandbox hides `/proc` (the passthrough layer keeps `/proc/self/fd`).
    pub fn new(
        cfg: fuse_backend_rs::passthrough::Config,
        opts: SharedFsOptions,
    ) -> io::Result<Self> {
        let root = File::open(&cfg.root_dir)?;
        let (cfg_writeback, cfg_killpriv_v2) = (cfg.writeback, cfg.killpriv_v2);
        let cfg = fuse_backend_rs::passthrough::Config {
            do_import: false,
            ..cfg
        };
        let inner = PassthroughFs::<()>::new(cfg)?;
        inner.import()?;
        let proc_self_fd = File::open("/proc/self/fd")?;
        Ok(SharedFs {
            inner,
            readonly: opts.readonly,
            xattr: opts.xattr,
            announce_submounts: opts.announce_submounts,
            readdirplus: opts.readdirplus,
            writeback: cfg_writeback,
            killpriv_v2: cfg_killpriv_v2,
            locks: LockTable::new(),
            dirs: DirTable::default(),
            guard: opts.guard,
            root,
            root_prefix: opts.root_prefix,
            proc_self_fd,
        })
    }

    /// Reopens an inode for locking: its current name is resolved strictly
    /// beneath the share, the result must be the same inode and a regular
    /// file or directory, and only then is it opened for real (through
    /// `/proc/self/fd`, without another path walk).
    fn reopen(&self, inode: u64) -> io::Result<File> {
        self.reopen_as(inode, !self.readonly)
    }

    /// [`Self::reopen`], read-write for regular files when `write` is set.
    fn reopen_as(&self, inode: u64, write: bool) -> io::Result<File> {
        // A rename racing between reading the name and opening it shows up
        // as ESTALE; the next attempt sees the new name.
        let mut tries = 0;
        loop {
            match self.reopen_once(inode, write) {
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) && tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    fn reopen_once(&self, inode: u64, write: bool) -> io::Result<File> {
        let path = self.inner.readlinkat_proc_file(inode)?;
        let rel = path
            .strip_prefix(&self.root_prefix)
            .map_err(|_| io::Error::from_raw_os_error(libc::ESTALE))?;
        let opath = confine::open_beneath(self.root.as_raw_fd(), rel, libc::O_PATH)?;
        let (dev, ino, mode) = confine::identity(&opath)?;
        let (st, _) = self.inner.getattr(&Context::new(), inode, None)?;
        if (dev, ino) != (st.st_dev, st.st_ino) {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let fmt = mode & libc::S_IFMT;
        let flags = match fmt {
            libc::S_IFREG if write => libc::O_RDWR,
            libc::S_IFREG | libc::S_IFDIR => libc::O_RDONLY,
            _ => return Err(io::Error::from_raw_os_error(libc::ENOLCK)),
        };
        let name = std::ffi::CString::new(opath.as_raw_fd().to_string()).unwrap();
        let open = |flags: i32| {
            // SAFETY: openat on an fd we own with a valid C string.
            let fd = unsafe {
                libc::openat(
                    self.proc_self_fd.as_raw_fd(),
                    name.as_ptr(),
                    flags | libc::O_CLOEXEC | libc::O_NONBLOCK,
                )
            };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: fresh fd from the kernel.
                Ok(unsafe { File::from_raw_fd(fd) })
            }
        };
        match open(flags) {
            Err(e) if flags == libc::O_RDWR && e.raw_os_error() == Some(libc::EROFS) => {
                open(libc::O_RDONLY)
            }
            r => r,
        }
    }

    /// FUSE_GETLK, answered by fsd itself.
    pub fn getlk(&self, inode: u64, owner: u64, req: &LockRequest) -> io::Result<LockRequest> {
        self.locks.getlk(inode, owner, req, || self.reopen(inode))
    }

    /// FUSE_SETLK and FUSE_SETLKW, answered by fsd itself.
    pub fn setlk(
        &self,
        kind: LockKind,
        inode: u64,
        handle: u64,
        owner: u64,
        req: &LockRequest,
        blocking: bool,
    ) -> io::Result<()> {
        self.locks
            .setlk(kind, inode, handle, owner, req, blocking, || {
                self.reopen(inode)
            })
    }

    /// The policy guard, if a policy is loaded.
    pub fn guard(&self) -> Option<&Arc<Guard>> {
        self.guard.as_ref()
    }

    /// Tells the guard about an entry handed to the guest.
    fn observe(&self, parent: u64, name: &[u8], e: &Entry, created: bool) {
        if let Some(g) = &self.guard {
            let is_dir = e.attr.st_mode & libc::S_IFMT == libc::S_IFDIR;
            g.labels.observe(
                &g.policy(),
                Seen {
                    parent,
                    name,
                    node: e.inode,
                    key: (e.attr.st_dev, e.attr.st_ino),
                    is_dir,
                    created,
                },
            );
        }
    }

    /// Applies the policy to one access of `node`.
    fn check(
        &self,
        ctx: &Context,
        node: u64,
        op: Op,
        what: &str,
        access: Access,
    ) -> io::Result<()> {
        match &self.guard {
            Some(g) => g.check(node, op, what, ctx.pid as u32, access),
            None => Ok(()),
        }
    }

    /// Applies the policy to the entry `name` of `parent`, which the
    /// request names but does not carry a node id for.
    fn check_child(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        op: Op,
        what: &str,
    ) -> io::Result<()> {
        if self.guard.is_none() {
            return Ok(());
        }
        let e = match self.inner.lookup(ctx, parent, name) {
            Ok(e) => e,
            // Nothing there: nothing protected to check.
            Err(_) => return Ok(()),
        };
        self.observe(parent, name.to_bytes(), &e, false);
        let r = self.check(ctx, e.inode, op, what, Access::Request);
        self.inner.forget(ctx, e.inode, 1);
        r
    }

    /// Protected content the policy keeps out of the guest's page cache.
    fn direct_io(&self, node: u64, opts: &mut OpenOptions) {
        if let Some(g) = &self.guard {
            if g.cache_rule(node) == Some(CacheRule::Direct) {
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

    /// Extended attributes go through a real descriptor of the inode: the
    /// passthrough layer would use `/proc/self/fd/N` paths, which do not
    /// exist once the share is the root (and would then name guest files).
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

    fn writable(&self) -> io::Result<()> {
        if self.readonly {
            Err(erofs())
        } else {
            Ok(())
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

impl FileSystem for SharedFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // The passthrough layer is built with `do_import = false` (its root is
        // imported by path in `new`, before the sandbox hides host paths), and
        // then takes `capable` as already negotiated: strip what fsd did not
        // ask for. fsd serves directories itself, so OPENDIR must be sent.
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
        if let Some(g) = &self.guard {
            let (st, _) = self.inner.getattr(&Context::new(), ROOT_ID, None)?;
            g.labels.observe_root(&g.policy(), (st.st_dev, st.st_ino));
        }
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
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        // `.` and `..` are refused too: at the root `..` would name the
        // share's parent on the host. fsd does not offer NFS export, the only
        // reason a kernel sends them.
        check_component(name)?;
        let e = self.inner.lookup(ctx, parent, name)?;
        self.observe(parent, name.to_bytes(), &e, false);
        Ok(self.mark_submount(ctx, parent, e))
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
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
        self.check(ctx, parent, Op::Write, "symlink", Access::Request)?;
        let e = self.inner.symlink(ctx, linkname, parent, name)?;
        self.observe(parent, name.to_bytes(), &e, true);
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
        self.check(ctx, inode, Op::Write, "mknod", Access::Request)?;
        let e = self.inner.mknod(ctx, inode, name, mode, rdev, umask)?;
        self.observe(inode, name.to_bytes(), &e, true);
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
        self.check(ctx, parent, Op::Write, "mkdir", Access::Request)?;
        let e = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.observe(parent, name.to_bytes(), &e, true);
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
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        check_component(newname)?;
        self.check(ctx, inode, Op::Metadata, "link", Access::Request)?;
        self.check(ctx, newparent, Op::Write, "link", Access::Request)?;
        let e = self.inner.link(ctx, inode, newparent, newname)?;
        self.observe(newparent, newname.to_bytes(), &e, false);
        Ok(e)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if self.readonly && wants_write(flags) {
            return Err(erofs());
        }
        let acc = flags as i32 & libc::O_ACCMODE;
        if acc == libc::O_RDONLY || acc == libc::O_RDWR {
            self.check(ctx, inode, Op::Read, "open", Access::Request)?;
        }
        if wants_write(flags) {
            self.check(ctx, inode, Op::Write, "open for writing", Access::Request)?;
        }
        if flags & FMODE_EXEC != 0 {
            self.check(ctx, inode, Op::Exec, "exec", Access::Request)?;
        }
        let (h, mut opts, passthrough) = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.direct_io(inode, &mut opts);
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
        self.check(ctx, parent, Op::Write, "create", Access::Request)?;
        // An existing protected file opened through O_CREAT is an open.
        self.check_child(ctx, parent, name, Op::Write, "create (existing)")?;
        let (e, h, mut opts, passthrough) = self.inner.create(ctx, parent, name, args)?;
        self.observe(parent, name.to_bytes(), &e, true);
        self.direct_io(e.inode, &mut opts);
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
        self.check(ctx, inode, Op::Read, "read", Access::Handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
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
        self.check(ctx, inode, Op::Write, "write", Access::Handle)?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.locks.flush(inode, lock_owner);
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
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
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
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
        let f = self.xattr_file(inode)?;
        // SAFETY: valid fd, C string and buffer of the given length.
        let r = unsafe {
            libc::fsetxattr(
                f.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr() as *const libc::c_void,
                value.len(),
                flags as i32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let f = self.xattr_file(inode)?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: valid fd and C string; the buffer has `size` bytes.
        let r = unsafe {
            libc::fgetxattr(
                f.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(GetxattrReply::Count(r as u32));
        }
        buf.truncate(r as usize);
        Ok(GetxattrReply::Value(buf))
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let f = self.xattr_file(inode)?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: valid fd; the buffer has `size` bytes.
        let r = unsafe {
            libc::flistxattr(
                f.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(ListxattrReply::Count(r as u32));
        }
        buf.truncate(r as usize);
        Ok(ListxattrReply::Names(buf))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.check(ctx, inode, Op::Metadata, "removexattr", Access::Request)?;
        let f = self.xattr_file(inode)?;
        // SAFETY: valid fd and C string.
        if unsafe { libc::fremovexattr(f.as_raw_fd(), name.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let dir = self
            .reopen_as(inode, false)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOLCK) => io::Error::from_raw_os_error(libc::ENOTDIR),
                _ => e,
            })?;
        if confine::identity(&dir)?.2 & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok((Some(self.dirs.insert(dir)), OpenOptions::empty()))
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
                // SAFETY: stat64 is plain old data.
                let attr: stat64 = unsafe { std::mem::zeroed() };
                let none = Entry {
                    inode: 0,
                    generation: 0,
                    attr,
                    attr_flags: 0,
                    attr_timeout: Duration::ZERO,
                    entry_timeout: Duration::ZERO,
                };
                return Ok(add_entry(dirent, none)? != 0);
            }
            let name = std::ffi::CString::new(d.name)
                .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
            let entry = self.inner.lookup(ctx, inode, &name)?;
            self.observe(inode, d.name, &entry, false);
            let entry = self.mark_submount(ctx, inode, entry);
            let n = add_entry(dirent, entry)?;
            if n == 0 {
                // No room: give back the lookup count the entry took.
                self.inner.forget(ctx, entry.inode, 1);
            }
            Ok(n != 0)
        })
    }

    fn fsyncdir(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let dir = self.dirs.get(handle)?;
        let fd = dir.lock().unwrap().as_raw_fd();
        // SAFETY: fsync on our own descriptor.
        let r = unsafe {
            if datasync {
                libc::fdatasync(fd)
            } else {
                libc::fsync(fd)
            }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.dirs.remove(handle);
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
