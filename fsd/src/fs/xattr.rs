//! Extended attributes, through a real descriptor of the inode.
//!
//! The passthrough layer would use `/proc/self/fd/N` paths, which do not
//! exist once the share is the root (and would then name guest files), so
//! fsd reopens the inode beneath the share and calls the `f*xattr` family.
//!
//! The guest chooses the buffer sizes of GETXATTR and LISTXATTR; a value or
//! a list is never longer than the kernel's `XATTR_SIZE_MAX` or
//! `XATTR_LIST_MAX` (64 KiB), so larger requests are cut to that before
//! anything is allocated.
//!
//! Which values are content: `user.*` and `trusted.*` values (and any
//! namespace fsd does not know) are the file's data as far as access control
//! goes, so reading them needs the read right. The kernel's own `security.*`
//! and `system.*` (POSIX ACL) attributes stay readable, since the guest
//! kernel consults them to decide access at all. Names (LISTXATTR) are
//! visible like file names.

use std::ffi::CStr;
use std::fs::File;
use std::io;

use fuse_backend_rs::api::filesystem::{GetxattrReply, ListxattrReply};
use rustix::fs::XattrFlags;

/// The longest value the kernel stores (`XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: u32 = 65536;
/// The longest list of names the kernel returns (`XATTR_LIST_MAX`).
pub const XATTR_LIST_MAX: u32 = 65536;

/// Whether reading the value of `name` reads protected content.
pub fn value_is_content(name: &CStr) -> bool {
    let n = name.to_bytes();
    !(n.starts_with(b"security.") || n.starts_with(b"system."))
}

/// FUSE_GETXATTR: the value, or its length when `size` is 0.
pub fn get(f: &File, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
    if size == 0 {
        let n = rustix::fs::fgetxattr_query(f, name)?;
        return Ok(GetxattrReply::Count(n as u32));
    }
    let mut buf = vec![0u8; size.min(XATTR_SIZE_MAX) as usize];
    let n = rustix::fs::fgetxattr(f, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(GetxattrReply::Value(buf))
}

/// FUSE_LISTXATTR: the names, or their length when `size` is 0.
pub fn list(f: &File, size: u32) -> io::Result<ListxattrReply> {
    if size == 0 {
        let n = rustix::fs::flistxattr_query(f)?;
        return Ok(ListxattrReply::Count(n as u32));
    }
    let mut buf = vec![0u8; size.min(XATTR_LIST_MAX) as usize];
    let n = rustix::fs::flistxattr(f, &mut buf[..])?;
    buf.truncate(n);
    Ok(ListxattrReply::Names(buf))
}

/// FUSE_SETXATTR. The guest's flags go to the kernel as they are; it
/// refuses what it does not know.
pub fn set(f: &File, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
    rustix::fs::fsetxattr(f, name, value, XattrFlags::from_bits_retain(flags))?;
    Ok(())
}

/// FUSE_REMOVEXATTR.
pub fn remove(f: &File, name: &CStr) -> io::Result<()> {
    rustix::fs::fremovexattr(f, name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_the_guest_are_capped() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = t.as_file();
        let name = c"user.fsd-test";
        if set(f, name, b"value", 0).is_err() {
            println!("SKIP: the temporary directory's file system has no user xattrs");
            return;
        }
        // A size of 4 GiB allocates at most 64 KiB and still answers.
        match get(f, name, u32::MAX).unwrap() {
            GetxattrReply::Value(v) => assert_eq!(v, b"value"),
            GetxattrReply::Count(_) => panic!("a value was asked for"),
        }
        match get(f, name, 0).unwrap() {
            GetxattrReply::Count(n) => assert_eq!(n, 5),
            GetxattrReply::Value(_) => panic!("a count was asked for"),
        }
        match list(f, u32::MAX).unwrap() {
            ListxattrReply::Names(n) => assert!(n.starts_with(b"user.fsd-test\0")),
            ListxattrReply::Count(_) => panic!("names were asked for"),
        }
        remove(f, name).unwrap();
    }

    #[test]
    fn kernel_attributes_are_not_content() {
        assert!(!value_is_content(c"security.selinux"));
        assert!(!value_is_content(c"system.posix_acl_access"));
        assert!(value_is_content(c"user.secret"));
        assert!(value_is_content(c"trusted.x"));
        assert!(value_is_content(c"other.x"));
    }
}
