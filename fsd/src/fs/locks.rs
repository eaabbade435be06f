//! POSIX record locks and BSD `flock` locks that really lock.
//!
//! virtiofsd answers FUSE_GETLK/SETLK with ENOSYS and lets `flock` succeed
//! without locking anything. fsd maps guest locks onto host locks so that they
//! exclude each other between guest processes *and* against host processes:
//!
//! * POSIX (`fcntl`) locks belong to a lock owner (a guest process). Each
//!   `(inode, owner)` gets its own host open file description and the lock is
//!   taken on it with an open-file-description lock (`F_OFD_SETLK`), which
//!   conflicts with every other description and with classic host `fcntl`
//!   locks. Closing that description on FUSE_FLUSH drops exactly that owner's
//!   locks, which is the POSIX rule "closing any fd drops the process's locks".
//! * `flock` locks belong to an open file (a FUSE file handle). Each
//!   `(inode, handle)` gets its own description and `flock(2)` is applied to
//!   it; FUSE_RELEASE closes it.
//!
//! Blocking requests (FUSE_SETLKW) wait in the host kernel. The dispatcher
//! runs them on their own threads so that a waiting lock never stalls the
//! queue through which its unlock will arrive.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};

use crate::crash::keeper::{KeeperLink, FLOCK, POSIX};

use crate::handover::state::{FdBag, HeldDescription, Received};

/// A lock request as decoded from `fuse_lk_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    pub start: u64,
    pub end: u64,
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub typ: u32,
    pub pid: u32,
}

/// The kind of lock a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Posix,
    Flock,
}

/// Host descriptions by key, each opened on first use.
type Held = Mutex<HashMap<(u64, u64), Arc<File>>>;

/// Host descriptions that carry guest locks.
pub struct LockTable {
    /// By `(inode, lock owner)`.
    posix: Held,
    /// By `(inode, file handle)`.
    flock: Held,
    /// Descriptions each map may hold at most: every one is a host
    /// descriptor, and a guest chooses lock owners freely.
    max: usize,
    /// The supervisor, with `--crash-recovery`.
    keeper: OnceLock<Arc<KeeperLink>>,
}

impl Default for LockTable {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

/// The description held under `key`, opened with `open` the first time.
fn held(
    map: &Held,
    key: (u64, u64),
    max: usize,
    open: impl FnOnce() -> io::Result<File>,
    keeper: Option<(&KeeperLink, u8)>,
) -> io::Result<Arc<File>> {
    let mut map = map.lock().unwrap();
    if let Some(f) = map.get(&key) {
        return Ok(f.clone());
    }
    if map.len() >= max {
        return Err(io::Error::from_raw_os_error(libc::ENOLCK));
    }
    let f = Arc::new(open()?);
    // The supervisor holds a copy, so that the locks outlive a crash
    // (see `crate::crash::keeper`); sent under the map's lock, so that its
    // copies follow the map's order.
    if let Some((k, kind)) = keeper {
        k.lock_held(kind, key.0, key.1, &*f);
    }
    map.insert(key, f.clone());
    Ok(f)
}

/// Takes `key`'s description out of `map`, releasing its locks first: the
/// supervisor's copy must not keep them held.
fn drop_held(map: &Held, key: (u64, u64), keeper: Option<(&KeeperLink, u8)>) {
    let mut map = map.lock().unwrap();
    let Some(f) = map.remove(&key) else { return };
    let Some((k, kind)) = keeper else { return };
    match kind {
        crate::crash::keeper::POSIX => {
            // SAFETY: flock64 is plain old data.
            let mut fl: libc::flock64 = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_UNLCK as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            let _ = fcntl_lock(&f, libc::F_OFD_SETLK, &mut fl);
        }
        _ => {
            // SAFETY: flock on a descriptor we hold.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        }
    }
    k.lock_dropped(kind, key.0, key.1);
}

/// The largest offset a FUSE lock can name; `end == OFFSET_MAX` means "to EOF".
const OFFSET_MAX: u64 = i64::MAX as u64;

fn to_flock(req: &LockRequest) -> io::Result<libc::flock64> {
    if req.start > OFFSET_MAX || (req.end < req.start && req.end != OFFSET_MAX) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let typ = match req.typ as i32 {
        libc::F_RDLCK | libc::F_WRLCK | libc::F_UNLCK => req.typ as i16,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let len = if req.end >= OFFSET_MAX {
        0
    } else {
        (req.end - req.start + 1) as i64
    };
    // SAFETY: flock64 is plain old data.
    let mut fl: libc::flock64 = unsafe { std::mem::zeroed() };
    fl.l_type = typ;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = req.start as i64;
    fl.l_len = len;
    Ok(fl)
}

fn fcntl_lock(file: &File, cmd: i32, fl: &mut libc::flock64) -> io::Result<()> {
    loop {
        // SAFETY: `fl` is a valid flock64 and `file` an open descriptor.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock64) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            // A conflicting record lock is reported as EAGAIN to the guest,
            // whatever the host's flavour (EACCES is allowed by POSIX).
            return Err(match e.raw_os_error() {
                Some(libc::EACCES) => io::Error::from_raw_os_error(libc::EAGAIN),
                _ => e,
            });
        }
    }
}

/// Copies a map out for a live handover, one descriptor per description.
fn export_held(map: &Held, bag: &mut FdBag) -> io::Result<Vec<HeldDescription>> {
    let mut out = Vec::new();
    for (&(inode, key), f) in map.lock().unwrap().iter() {
        out.push(HeldDescription {
            inode,
            key,
            fd: bag.put(f.try_clone()?.into()),
        });
    }
    Ok(out)
}

fn import_held(map: &Held, held: &[HeldDescription], fds: &mut Received) -> io::Result<()> {
    let mut map = map.lock().unwrap();
    map.clear();
    for h in held {
        map.insert((h.inode, h.key), Arc::new(File::from(fds.take(h.fd)?)));
    }
    Ok(())
}

impl LockTable {
    /// The descriptions that carry locks (POSIX, flock), for a live
    /// handover. The locks belong to the descriptions, not to the process,
    /// so they pass to the successor with them.
    pub fn export(
        &self,
        bag: &mut FdBag,
    ) -> io::Result<(Vec<HeldDescription>, Vec<HeldDescription>)> {
        Ok((
            export_held(&self.posix, bag)?,
            export_held(&self.flock, bag)?,
        ))
    }

    /// Takes over a predecessor's descriptions.
    pub fn import(
        &self,
        posix: &[HeldDescription],
        flock: &[HeldDescription],
        fds: &mut Received,
    ) -> io::Result<()> {
        import_held(&self.posix, posix, fds)?;
        import_held(&self.flock, flock, fds)
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// A table that holds at most `max` host descriptions per lock kind.
    pub fn with_limit(max: usize) -> Self {
        LockTable {
            posix: Held::default(),
            flock: Held::default(),
            max,
            keeper: OnceLock::new(),
        }
    }

    /// Lets the supervisor hold a copy of every description (crash recovery).
    /// Those held already (taken over) go to it at once.
    pub fn keep_with(&self, keeper: Arc<KeeperLink>) {
        for (map, kind) in [(&self.posix, POSIX), (&self.flock, FLOCK)] {
            for (&(inode, key), f) in map.lock().unwrap().iter() {
                keeper.lock_held(kind, inode, key, &**f);
            }
        }
        let _ = self.keeper.set(keeper);
    }

    fn keeper(&self, kind: u8) -> Option<(&KeeperLink, u8)> {
        self.keeper.get().map(|k| (&**k, kind))
    }

    /// Drops every lock (a new FUSE session starts).
    pub fn clear(&self) {
        for (map, kind) in [(&self.posix, POSIX), (&self.flock, FLOCK)] {
            let keys: Vec<_> = map.lock().unwrap().keys().copied().collect();
            for k in keys {
                drop_held(map, k, self.keeper(kind));
            }
        }
    }

    /// FUSE_GETLK: which lock, if any, would block `req` for `owner`.
    pub fn getlk(
        &self,
        inode: u64,
        owner: u64,
        req: &LockRequest,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<LockRequest> {
        let file = held(
            &self.posix,
            (inode, owner),
            self.max,
            open,
            self.keeper(POSIX),
        )?;
        let mut fl = to_flock(req)?;
        fcntl_lock(&file, libc::F_OFD_GETLK, &mut fl)?;
        if fl.l_type == libc::F_UNLCK as i16 {
            return Ok(LockRequest {
                typ: libc::F_UNLCK as u32,
                ..*req
            });
        }
        let start = fl.l_start as u64;
        let end = if fl.l_len == 0 {
            OFFSET_MAX
        } else {
            start + fl.l_len as u64 - 1
        };
        Ok(LockRequest {
            start,
            end,
            typ: fl.l_type as u32,
            // OFD locks report -1; classic locks a host pid that means nothing
            // in the guest. Neither identifies a guest process.
            pid: 0,
        })
    }

    /// FUSE_SETLK / FUSE_SETLKW.
    #[allow(clippy::too_many_arguments)]
    pub fn setlk(
        &self,
        kind: LockKind,
        inode: u64,
        handle: u64,
        owner: u64,
        req: &LockRequest,
        blocking: bool,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<()> {
        match kind {
            LockKind::Posix => {
                let mut fl = to_flock(req)?;
                if req.typ as i32 == libc::F_UNLCK {
                    // Unlocking without a description holding locks is a no-op.
                    let existing = self.posix.lock().unwrap().get(&(inode, owner)).cloned();
                    return match existing {
                        Some(f) => fcntl_lock(&f, libc::F_OFD_SETLK, &mut fl),
                        None => Ok(()),
                    };
                }
                let file = held(
                    &self.posix,
                    (inode, owner),
                    self.max,
                    open,
                    self.keeper(POSIX),
                )?;
                let cmd = if blocking {
                    libc::F_OFD_SETLKW
                } else {
                    libc::F_OFD_SETLK
                };
                fcntl_lock(&file, cmd, &mut fl)
            }
            LockKind::Flock => {
                let mut op = match req.typ as i32 {
                    libc::F_RDLCK => libc::LOCK_SH,
                    libc::F_WRLCK => libc::LOCK_EX,
                    libc::F_UNLCK => libc::LOCK_UN,
                    _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
                };
                let file = if op == libc::LOCK_UN {
                    match self.flock.lock().unwrap().get(&(inode, handle)).cloned() {
                        Some(f) => f,
                        None => return Ok(()),
                    }
                } else {
                    held(
                        &self.flock,
                        (inode, handle),
                        self.max,
                        open,
                        self.keeper(FLOCK),
                    )?
                };
                if !blocking {
                    op |= libc::LOCK_NB;
                }
                loop {
                    // SAFETY: plain syscall on an open descriptor.
                    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                        return Ok(());
                    }
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EINTR) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// FUSE_FLUSH: the owner closed a descriptor; POSIX drops its locks.
    pub fn flush(&self, inode: u64, owner: u64) {
        drop_held(&self.posix, (inode, owner), self.keeper(POSIX));
    }

    /// FUSE_RELEASE: the open file is gone, and with it its flock.
    pub fn release(&self, inode: u64, handle: u64, owner: Option<u64>) {
        drop_held(&self.flock, (inode, handle), self.keeper(FLOCK));
        if let Some(owner) = owner {
            drop_held(&self.posix, (inode, owner), self.keeper(POSIX));
        }
    }

    /// Number of host descriptions held for locks (for tests and metrics).
    pub fn held(&self) -> usize {
        self.posix.lock().unwrap().len() + self.flock.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn rw(p: &std::path::Path) -> impl Fn() -> io::Result<File> + '_ {
        move || OpenOptions::new().read(true).write(true).open(p)
    }

    fn wr(start: u64, end: u64) -> LockRequest {
        LockRequest {
            start,
            end,
            typ: libc::F_WRLCK as u32,
            pid: 1,
        }
    }

    #[test]
    fn posix_owners_exclude_each_other() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let table = LockTable::new();
        let p = t.path();
        table
            .setlk(LockKind::Posix, 7, 1, 100, &wr(0, 9), false, rw(p))
            .unwrap();
        // Same owner may relock; another owner conflicts on overlap only.
        table
            .setlk(LockKind::Posix, 7, 1, 100, &wr(0, 9), false, rw(p))
            .unwrap();
        let e = table
            .setlk(LockKind::Posix, 7, 2, 200, &wr(5, 5), false, rw(p))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        table
            .setlk(
                LockKind::Posix,
                7,
                2,
                200,
                &wr(10, OFFSET_MAX),
                false,
                rw(p),
            )
            .unwrap();
        let got = table.getlk(7, 300, &wr(0, OFFSET_MAX), rw(p)).unwrap();
        assert_eq!(got.typ, libc::F_WRLCK as u32);
        assert_eq!((got.start, got.end), (0, 9));
        // Flush of owner 100 drops its lock.
        table.flush(7, 100);
        table
            .setlk(LockKind::Posix, 7, 3, 300, &wr(0, 9), false, rw(p))
            .unwrap();
    }

    #[test]
    fn posix_lock_excludes_host_process_lock() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let table = LockTable::new();
        table
            .setlk(
                LockKind::Posix,
                1,
                1,
                1,
                &wr(0, OFFSET_MAX),
                false,
                rw(t.path()),
            )
            .unwrap();
        // A classic host fcntl lock through an unrelated descriptor conflicts.
        let other = OpenOptions::new().write(true).open(t.path()).unwrap();
        let mut fl = to_flock(&wr(0, 0)).unwrap();
        // SAFETY: valid descriptor and flock struct.
        let r = unsafe { libc::fcntl(other.as_raw_fd(), libc::F_SETLK, &mut fl) };
        assert_eq!(r, -1);
    }

    #[test]
    fn flock_per_handle() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let table = LockTable::new();
        let p = t.path();
        table
            .setlk(LockKind::Flock, 1, 10, 0, &wr(0, 0), false, rw(p))
            .unwrap();
        let e = table
            .setlk(LockKind::Flock, 1, 11, 0, &wr(0, 0), false, rw(p))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK));
        // Both handles now hold a description until they are released.
        assert_eq!(table.held(), 2);
        table.release(1, 10, None);
        table
            .setlk(LockKind::Flock, 1, 11, 0, &wr(0, 0), false, rw(p))
            .unwrap();
    }

    #[test]
    fn bad_ranges_and_types_are_refused() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let table = LockTable::new();
        let mut r = wr(10, 5);
        assert!(table
            .setlk(LockKind::Posix, 1, 1, 1, &r, false, rw(t.path()))
            .is_err());
        r = wr(0, 1);
        r.typ = 99;
        assert!(table
            .setlk(LockKind::Posix, 1, 1, 1, &r, false, rw(t.path()))
            .is_err());
        assert!(table
            .setlk(LockKind::Flock, 1, 1, 1, &r, false, rw(t.path()))
            .is_err());
    }
}
