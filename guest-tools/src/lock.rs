//! Lock probing: what a guest process sees when it asks for a file lock.
//!
//! busybox has no `fcntl` lock tool (and the Debian build has no `flock`
//! applet either), so tests use this to show exclusion between guest
//! processes, or between a guest and the host.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// Which lock API to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `flock(LOCK_EX)`.
    FlockExclusive,
    /// `flock(LOCK_SH)`.
    FlockShared,
    /// `fcntl(F_SETLK[W])` write lock, owned by the process.
    PosixWrite,
    /// `fcntl(F_SETLK[W])` read lock, owned by the process.
    PosixRead,
    /// `fcntl(F_OFD_SETLK[W])` write lock, owned by the open file.
    OfdWrite,
}

impl Kind {
    /// Parses the command-line name.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "flock" | "flock-ex" => Kind::FlockExclusive,
            "flock-sh" => Kind::FlockShared,
            "posix" | "posix-wr" => Kind::PosixWrite,
            "posix-rd" => Kind::PosixRead,
            "ofd" | "ofd-wr" => Kind::OfdWrite,
            _ => return None,
        })
    }

    fn is_read(self) -> bool {
        matches!(self, Kind::FlockShared | Kind::PosixRead)
    }
}

/// A symbolic errno name (stable across runs, unlike messages).
pub fn errno_name(e: &io::Error) -> String {
    let Some(n) = e.raw_os_error() else {
        return e.to_string();
    };
    let name = match n {
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::ENOSYS => "ENOSYS",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EINVAL => "EINVAL",
        libc::ENOLCK => "ENOLCK",
        libc::EDEADLK => "EDEADLK",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOENT => "ENOENT",
        libc::EPERM => "EPERM",
        libc::EIO => "EIO",
        _ => return format!("errno {n}"),
    };
    name.to_string()
}

/// Opens `path` for locking: read-write, created if missing (write locks
/// need a writable descriptor, read locks a readable one).
pub fn open(path: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn flock_struct(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // whole file
    fl
}

/// Takes the lock; `wait` blocks until it is granted.
pub fn acquire(file: &File, kind: Kind, wait: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    match kind {
        Kind::FlockExclusive | Kind::FlockShared => {
            let mut op = if kind.is_read() {
                libc::LOCK_SH
            } else {
                libc::LOCK_EX
            };
            if !wait {
                op |= libc::LOCK_NB;
            }
            // SAFETY: fd is open for the lifetime of `file`.
            cvt(unsafe { libc::flock(fd, op) })
        }
        Kind::PosixWrite | Kind::PosixRead | Kind::OfdWrite => {
            let ty = if kind.is_read() {
                libc::F_RDLCK
            } else {
                libc::F_WRLCK
            };
            let fl = flock_struct(ty as libc::c_short);
            let cmd = match (kind, wait) {
                (Kind::OfdWrite, true) => libc::F_OFD_SETLKW,
                (Kind::OfdWrite, false) => libc::F_OFD_SETLK,
                (_, true) => libc::F_SETLKW,
                (_, false) => libc::F_SETLK,
            };
            // SAFETY: fl is a valid struct flock for this call.
            cvt(unsafe { libc::fcntl(fd, cmd, &fl) })
        }
    }
}

/// Releases the lock taken by [`acquire`].
pub fn release(file: &File, kind: Kind) -> io::Result<()> {
    let fd = file.as_raw_fd();
    match kind {
        // SAFETY: fd is open for the lifetime of `file`.
        Kind::FlockExclusive | Kind::FlockShared => cvt(unsafe { libc::flock(fd, libc::LOCK_UN) }),
        Kind::PosixWrite | Kind::PosixRead | Kind::OfdWrite => {
            let fl = flock_struct(libc::F_UNLCK as libc::c_short);
            let cmd = if kind == Kind::OfdWrite {
                libc::F_OFD_SETLK
            } else {
                libc::F_SETLK
            };
            // SAFETY: fl is a valid struct flock for this call.
            cvt(unsafe { libc::fcntl(fd, cmd, &fl) })
        }
    }
}

/// What `F_GETLK` reports for a whole-file write lock request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Nothing would conflict.
    Unlocked,
    /// A read lock held by someone else would conflict.
    ReadLocked,
    /// A write lock held by someone else would conflict.
    WriteLocked,
}

/// Asks whether a whole-file write lock could be taken now.
pub fn query(file: &File) -> io::Result<Query> {
    let mut fl = flock_struct(libc::F_WRLCK as libc::c_short);
    // SAFETY: fl is a valid, writable struct flock for F_GETLK.
    cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) })?;
    Ok(match i32::from(fl.l_type) {
        libc::F_UNLCK => Query::Unlocked,
        libc::F_RDLCK => Query::ReadLocked,
        _ => Query::WriteLocked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the host: one open file description holds an OFD write lock, a
    /// second one is refused without waiting and F_GETLK reports the holder.
    /// (Two POSIX locks of one process never conflict; OFD locks do.)
    #[test]
    fn ofd_locks_exclude_within_one_process() {
        let dir = std::env::temp_dir().join(format!("lockprobe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let path = path.to_str().unwrap();
        let a = open(path).unwrap();
        let b = open(path).unwrap();
        acquire(&a, Kind::OfdWrite, false).unwrap();
        let err = acquire(&b, Kind::OfdWrite, false).unwrap_err();
        assert_eq!(errno_name(&err), "EAGAIN");
        assert_eq!(query(&b).unwrap(), Query::WriteLocked);
        release(&a, Kind::OfdWrite).unwrap();
        acquire(&b, Kind::OfdWrite, false).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flock_excludes_between_open_files() {
        let dir = std::env::temp_dir().join(format!("lockprobe-flock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let path = path.to_str().unwrap();
        let a = open(path).unwrap();
        let b = open(path).unwrap();
        acquire(&a, Kind::FlockExclusive, false).unwrap();
        assert_eq!(
            errno_name(&acquire(&b, Kind::FlockShared, false).unwrap_err()),
            "EAGAIN"
        );
        release(&a, Kind::FlockExclusive).unwrap();
        acquire(&b, Kind::FlockShared, false).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(Kind::parse("posix"), Some(Kind::PosixWrite));
        assert_eq!(Kind::parse("nope"), None);
    }
}
