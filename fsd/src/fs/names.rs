//! Validation of the names a guest sends.
//!
//! The guest chooses every byte of a FUSE name. A name is one path component
//! of the shared directory: it must never carry a `/` (that would make a host
//! path of it, the root cause of the FUSE_SYMLINK escape seen in virtiofsd's
//! history), never be `.` or `..` (which would walk out of the directory being
//! operated on, and out of the share at its root), never be empty and never
//! exceed `NAME_MAX`. The FUSE decoder already stops at the first NUL, so an
//! embedded NUL can only shorten a name; the server rejects a body with no NUL.

use std::ffi::CStr;
use std::io;

/// Longest single name the host file systems accept (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Longest symlink target accepted (Linux `PATH_MAX` including the NUL).
pub const PATH_MAX: usize = 4096;

/// Why a name was refused; each maps to the errno the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    Empty,
    Dot,
    Slash,
    TooLong,
}

impl BadName {
    /// The errno a guest receives for this kind of name.
    pub fn errno(self) -> i32 {
        match self {
            BadName::TooLong => libc::ENAMETOOLONG,
            BadName::Empty | BadName::Dot | BadName::Slash => libc::EINVAL,
        }
    }
}

impl From<BadName> for io::Error {
    fn from(b: BadName) -> Self {
        io::Error::from_raw_os_error(b.errno())
    }
}

/// Checks a name that designates one entry of a directory: a new entry, or
/// an existing one to look up, remove or rename.
pub fn check_component(name: &CStr) -> Result<(), BadName> {
    let bytes = name.to_bytes();
    if bytes.is_empty() {
        return Err(BadName::Empty);
    }
    if bytes.len() > NAME_MAX {
        return Err(BadName::TooLong);
    }
    if bytes == b"." || bytes == b".." {
        return Err(BadName::Dot);
    }
    if bytes.contains(&b'/') {
        return Err(BadName::Slash);
    }
    Ok(())
}

/// Checks a symlink target. The target is guest data resolved by the guest
/// kernel, so any bytes are allowed, but its length is bounded.
pub fn check_link_target(target: &CStr) -> Result<(), BadName> {
    let len = target.to_bytes().len();
    if len == 0 {
        return Err(BadName::Empty);
    }
    if len >= PATH_MAX {
        return Err(BadName::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn c(s: &[u8]) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn plain_names_pass() {
        for n in [
            &b"a"[..],
            b"file.txt",
            b"...",
            b".hidden",
            b"a b",
            b"\xff\xfe",
        ] {
            assert_eq!(check_component(&c(n)), Ok(()), "{n:?}");
        }
        assert_eq!(check_component(&c(&[b'x'; NAME_MAX])), Ok(()));
    }

    #[test]
    fn hostile_names_fail() {
        assert_eq!(check_component(&c(b"")), Err(BadName::Empty));
        assert_eq!(check_component(&c(b".")), Err(BadName::Dot));
        assert_eq!(check_component(&c(b"..")), Err(BadName::Dot));
        assert_eq!(check_component(&c(b"/etc/passwd")), Err(BadName::Slash));
        assert_eq!(check_component(&c(b"a/..")), Err(BadName::Slash));
        assert_eq!(check_component(&c(b"../x")), Err(BadName::Slash));
        assert_eq!(
            check_component(&c(&[b'x'; NAME_MAX + 1])),
            Err(BadName::TooLong)
        );
        assert_eq!(
            check_component(&c(&[b'x'; 4096])).map_err(|b| b.errno()),
            Err(libc::ENAMETOOLONG)
        );
    }

    #[test]
    fn link_targets() {
        assert_eq!(check_link_target(&c(b"/etc/passwd")), Ok(()));
        assert_eq!(check_link_target(&c(b"../../x")), Ok(()));
        assert_eq!(check_link_target(&c(b"")), Err(BadName::Empty));
        assert_eq!(
            check_link_target(&c(&[b'a'; PATH_MAX])),
            Err(BadName::TooLong)
        );
    }
}
