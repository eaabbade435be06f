//! Which inode a host file is, in a way that does not survive inode reuse.
//!
//! `(st_dev, st_ino)` names an inode only while it exists: ext4, XFS and
//! tmpfs hand a freed inode number to the next file created. A table keyed by
//! the number alone would give a new file the decision recorded for an old,
//! deleted one. The *generation* tells the two apart: it is the hash of the
//! file handle the file system gives for the inode (which carries the
//! inode's generation counter on every file system that exports handles),
//! or, where there are no handles, the birth time. A file system with
//! neither gives generation 0, and fsd says so at start-up.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::fs::{statat, statx, AtFlags, StatxFlags};

/// Host identity of an inode: device, inode number and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeId {
    pub dev: u64,
    pub ino: u64,
    pub gen: u64,
}

/// Room for the largest file handle the kernel hands out (MAX_HANDLE_SZ).
const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// FNV-1a: a stable 64-bit digest (the value is persisted in the label
/// database, so it must not change between runs, unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // 0 means "unknown"; never produce it from real data.
    h.max(1)
}

/// `AT_EMPTY_PATH` when `path` is empty (the directory itself), and never
/// following a final symlink.
fn at_flags(path: &CStr) -> AtFlags {
    if path.to_bytes().is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    }
}

/// The generation of the inode `path` names relative to `dir` (not following
/// a final symlink); an empty `path` means `dir` itself.
pub fn generation_at(dir: BorrowedFd<'_>, path: &CStr) -> io::Result<u64> {
    let mut h = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = if path.to_bytes().is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: `h` is a file_handle with room for MAX_HANDLE_SZ bytes, as its
    // handle_bytes says; `path` is a valid C string; the kernel writes only
    // into `h` and `mount_id`. (rustix has no name_to_handle_at.)
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            path.as_ptr(),
            &mut h as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    if r == 0 {
        let n = (h.handle_bytes as usize).min(MAX_HANDLE_SZ);
        return Ok(fnv1a(&[&h.handle_type.to_ne_bytes(), &h.f_handle[..n]]));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => birth_time(dir, path),
        _ => Err(e),
    }
}

fn birth_time(dir: BorrowedFd<'_>, path: &CStr) -> io::Result<u64> {
    let stx = statx(dir, path, at_flags(path), StatxFlags::BTIME)?;
    if stx.stx_mask & StatxFlags::BTIME.bits() == 0 {
        return Ok(0);
    }
    Ok(fnv1a(&[
        &stx.stx_btime.tv_sec.to_ne_bytes(),
        &stx.stx_btime.tv_nsec.to_ne_bytes(),
    ]))
}

/// `(st_dev, st_ino, st_mode)` of what `path` names relative to `dir`,
/// without following a final symlink.
pub fn stat_at(dir: BorrowedFd<'_>, path: &CStr) -> io::Result<(u64, u64, u32)> {
    let st = statat(dir, path, at_flags(path))?;
    Ok((st.st_dev, st.st_ino, st.st_mode))
}

/// The full identity of what `path` names relative to `dir`.
pub fn id_at(dir: BorrowedFd<'_>, path: &CStr) -> io::Result<(InodeId, u32)> {
    let (dev, ino, mode) = stat_at(dir, path)?;
    let gen = generation_at(dir, path)?;
    Ok((InodeId { dev, ino, gen }, mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::AsFd;

    #[test]
    fn a_reused_inode_number_gets_another_generation() {
        let t = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(t.path()).unwrap();
        let name = CString::new("f").unwrap();
        let mut seen = std::collections::HashMap::new();
        // Create and delete until the file system hands out a number again.
        for _ in 0..256 {
            std::fs::write(t.path().join("f"), b"x").unwrap();
            let (id, _) = id_at(dir.as_fd(), &name).unwrap();
            assert_eq!(id, id_at(dir.as_fd(), &name).unwrap().0, "stable");
            if let Some(old) = seen.insert(id.ino, id) {
                assert_ne!(
                    old.gen, id.gen,
                    "inode {} reused with the same generation",
                    id.ino
                );
                return;
            }
            std::fs::remove_file(t.path().join("f")).unwrap();
        }
        // Some file systems never reuse quickly; the stability check ran.
    }
}
