//! The listening vhost-user socket.
//!
//! Either fsd creates it (`--socket-path`, replacing a stale socket but never
//! another kind of file, optionally handing it to `--socket-group`), or the
//! caller created it and passes it open (`--fd`, as libvirt does so that the
//! socket exists before fsd is even started).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("unknown group {0}")]
    UnknownGroup(String),
    #[error("cannot give {path} to group {group}: {source}")]
    Chown {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
    #[error("--fd {fd} is not a listening UNIX stream socket: {why}")]
    BadFd { fd: RawFd, why: String },
}

/// Creates the socket at `path`, replacing a stale socket.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => {
            return Err(SocketError::NotASocket { path: path.into() });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.into(),
        source,
    })?;
    if let Some(group) = group {
        let gid = group_id(group)?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| SocketError::Chown {
            path: path.into(),
            group: group.into(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o770));
    }
    Ok(listener)
}

fn group_id(group: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(group).map_err(|_| SocketError::UnknownGroup(group.into()))?;
    // SAFETY: getgrnam returns a pointer to static storage or NULL; we read
    // one field before any other call that could overwrite it.
    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
    if gr.is_null() {
        return Err(SocketError::UnknownGroup(group.into()));
    }
    // SAFETY: `gr` is non-null and points at getgrnam's static storage,
    // which no other call has overwritten yet.
    Ok(unsafe { (*gr).gr_gid })
}

/// Adopts an inherited listening socket, checking that it is one.
pub fn adopt(fd: RawFd) -> Result<UnixListener, SocketError> {
    let bad = |why: String| SocketError::BadFd { fd, why };
    let int_opt = |opt: i32| -> io::Result<i32> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &mut v as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(v)
        }
    };
    let domain = int_opt(libc::SO_DOMAIN).map_err(|e| bad(e.to_string()))?;
    let typ = int_opt(libc::SO_TYPE).map_err(|e| bad(e.to_string()))?;
    let listening = int_opt(libc::SO_ACCEPTCONN).map_err(|e| bad(e.to_string()))?;
    if domain != libc::AF_UNIX || typ != libc::SOCK_STREAM {
        return Err(bad("not a UNIX stream socket".into()));
    }
    if listening == 0 {
        return Err(bad("not listening".into()));
    }
    // SAFETY: fd is an open listening socket handed to us; we own it now.
    let l = unsafe { UnixListener::from_raw_fd(fd) };
    // SAFETY: plain fcntl on our fd: close it on exec from now on.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn replaces_stale_socket_but_not_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s");
        drop(bind(&p, None).unwrap());
        assert!(bind(&p, None).is_ok(), "stale socket replaced");
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            bind(&f, None),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
    }

    #[test]
    fn adopt_checks_the_fd() {
        let t = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(t.path().join("s")).unwrap();
        assert!(adopt(l.into_raw_fd()).is_ok());
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            adopt(f.into_raw_fd()),
            Err(SocketError::BadFd { .. })
        ));
    }
}
