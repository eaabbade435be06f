//! Opening files strictly beneath the shared directory.
//!
//! Most of the file system goes through O_PATH inode descriptors, which never
//! resolve paths. The few places where fsd must turn an inode back into an
//! open file by name (the lock table) use `openat2(2)` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS`, so that a
//! guest racing renames and symlinks cannot make the walk leave the share,
//! and then check that the file opened is the inode that was meant.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `rel` (relative to `dir`) with `flags`, never leaving `dir` and never
/// following a symlink on the way.
pub fn open_beneath(dir: RawFd, rel: &Path, flags: i32) -> io::Result<File> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `how` is a valid open_how of the size passed; `c` is a valid C
    // string that outlives the call. The returned fd is owned by the File.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

/// `(st_dev, st_ino)` of an open file, to check we opened the intended inode.
pub fn identity(f: &impl AsRawFd) -> io::Result<(u64, u64, u32)> {
    // SAFETY: fstat writes into a zeroed stat struct we own.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat64(f.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
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
        let fd = root.as_raw_fd();
        assert!(open_beneath(fd, Path::new("inside"), libc::O_RDONLY).is_ok());
        assert!(open_beneath(fd, Path::new("/inside"), libc::O_RDONLY).is_ok());
        for bad in ["../outside", "esc", "abs", "inside/../../outside"] {
            assert!(
                open_beneath(fd, Path::new(bad), libc::O_RDONLY).is_err(),
                "{bad} must not open"
            );
        }
    }
}
