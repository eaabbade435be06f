//! Opening files strictly beneath the shared directory.
//!
//! Most of the file system goes through O_PATH inode descriptors, which never
//! resolve paths. The few places where fsd must turn an inode back into an
//! open file by name (locks, extended attributes, directory streams) use
//! `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_SYMLINKS`, so that a guest racing renames and symlinks cannot
//! make the walk leave the share, and then check that the file opened is the
//! inode that was meant ([`Confined::reopen`]).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};
use std::path::{Path, PathBuf};

use rustix::fs::{fstat, openat2, Mode, OFlags, ResolveFlags};

/// The share root as fsd sees it, for reopening inodes by their current
/// host name and for naming them relative to the share.
pub struct Confined {
    /// The share's root directory.
    root: File,
    /// How the daemon's own view names the share root (`/` once sandboxed).
    root_prefix: PathBuf,
    /// `/proc/self/fd`, opened before any sandboxing.
    proc_self_fd: File,
}

/// The suffix the kernel gives the name of an unlinked file.
const DELETED: &str = " (deleted)";

impl Confined {
    /// Takes the share root and opens `/proc/self/fd`; must run before the
    /// sandbox hides `/proc`.
    pub fn new(root: File, root_prefix: PathBuf) -> io::Result<Self> {
        Ok(Confined {
            root,
            root_prefix,
            proc_self_fd: File::open("/proc/self/fd")?,
        })
    }

    /// The share root's descriptor.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// `path` (the kernel's current name of an inode, as the daemon sees
    /// it) relative to the share root, without a leading slash. An unlinked
    /// file keeps its last name. ESTALE when the inode is not beneath the
    /// share root at all.
    pub fn relative(&self, path: &Path) -> io::Result<PathBuf> {
        let path = match path.to_str().and_then(|p| p.strip_suffix(DELETED)) {
            Some(p) => Path::new(p),
            None => path,
        };
        let rel = path
            .strip_prefix(&self.root_prefix)
            .map_err(|_| io::Error::from_raw_os_error(libc::ESTALE))?;
        Ok(rel.to_path_buf())
    }

    /// Opens the inode `expect` (`st_dev`, `st_ino`) for real by its current
    /// name (`name`, as the daemon sees it): resolved strictly beneath the
    /// share, it must be the same inode and a regular file or directory, and
    /// only then is it opened (through `/proc/self/fd`, without another
    /// path walk), read-write for regular files when `write` is set. A
    /// rename racing between reading the name and opening it shows up as
    /// ESTALE and is retried.
    pub fn reopen(
        &self,
        name: impl Fn() -> io::Result<PathBuf>,
        expect: impl Fn() -> io::Result<(u64, u64)>,
        write: bool,
    ) -> io::Result<File> {
        let mut tries = 0;
        loop {
            match self.reopen_once(&name, &expect, write) {
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) && tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    fn reopen_once(
        &self,
        name: &impl Fn() -> io::Result<PathBuf>,
        expect: &impl Fn() -> io::Result<(u64, u64)>,
        write: bool,
    ) -> io::Result<File> {
        let rel = self.relative(&name()?)?;
        let opath = open_beneath(self.root.as_fd(), &rel, OFlags::PATH)?;
        let (dev, ino, mode) = identity(&opath)?;
        if (dev, ino) != expect()? {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let flags = match mode & libc::S_IFMT {
            libc::S_IFREG if write => libc::O_RDWR,
            libc::S_IFREG | libc::S_IFDIR => libc::O_RDONLY,
            _ => return Err(io::Error::from_raw_os_error(libc::ENOLCK)),
        };
        let fdname =
            CString::new(opath.as_raw_fd().to_string()).expect("a decimal number has no NUL");
        let open = |flags: i32| {
            // SAFETY: openat on an fd we own with a valid C string.
            let fd = unsafe {
                libc::openat(
                    self.proc_self_fd.as_raw_fd(),
                    fdname.as_ptr(),
                    flags | libc::O_CLOEXEC | libc::O_NONBLOCK,
                )
            };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: fresh fd from the kernel, owned by the File.
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
}

/// Opens `rel` (relative to `dir`) with `flags`, never leaving `dir` and never
/// following a symlink on the way.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<File> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let fd = openat2(
        dir,
        rel,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS,
    )?;
    Ok(File::from(fd))
}

/// `(st_dev, st_ino, st_mode)` of an open file, to check we opened the
/// intended inode.
pub fn identity(f: &impl AsFd) -> io::Result<(u64, u64, u32)> {
    let st = fstat(f)?;
    Ok((st.st_dev, st.st_ino, st.st_mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stays_beneath() {
        let t = tempfile::tempdir().unwrap();
        let share = t.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(t.path().join("outside"), b"secret").unwrap();
        std::fs::write(share.join("inside"), b"ok").unwrap();
        symlink("../outside", share.join("esc")).unwrap();
        symlink("/etc/passwd", share.join("abs")).unwrap();
        let root = File::open(&share).unwrap();
        let fd = root.as_fd();
        assert!(open_beneath(fd, Path::new("inside"), OFlags::RDONLY).is_ok());
        assert!(open_beneath(fd, Path::new("/inside"), OFlags::RDONLY).is_ok());
        for bad in ["../outside", "esc", "abs", "inside/../../outside"] {
            assert!(
                open_beneath(fd, Path::new(bad), OFlags::RDONLY).is_err(),
                "{bad} must not open"
            );
        }
    }
}
