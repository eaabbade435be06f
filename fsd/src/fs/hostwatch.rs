//! Knowing, cheaply and without a race, that nothing was renamed on the host.
//!
//! Whether an unlabelled inode is protected depends on its current host
//! name (`fs::protect`), which only a rename (of the inode or of a directory
//! above it) can change. Finding the name costs a `readlink` of the inode's
//! descriptor, a pass over every pattern and, with labelled directories, a
//! `stat` per directory above it: too much for every open. So fsd remembers
//! "public" per node together with an *epoch*, and trusts it as long as the
//! epoch has not moved.
//!
//! The epoch moves when fsd renames something for the guest, on a policy
//! reload, when a directory gains or loses a label, and when anything on the
//! share's file system is renamed by anyone: a fanotify group with a
//! filesystem mark for `FAN_MOVED_FROM | FAN_MOVED_TO` (directories too)
//! reports every rename. The kernel queues the event inside the rename
//! system call, so a non-blocking read of the group at the start of a check
//! sees every rename that finished before the check began: no window in
//! which a stale "public" is trusted. An overflowing queue is an event too.
//!
//! A fanotify filesystem mark needs CAP_SYS_ADMIN (fsd as root, before it
//! drops capabilities) and a file system that reports file ids (ext4, XFS,
//! btrfs, tmpfs on recent kernels). Without it fsd says so at start-up and
//! simply never trusts a remembered answer: correct, only slower.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The epoch source.
pub struct HostWatch {
    group: Option<OwnedFd>,
    epoch: AtomicU64,
}

impl HostWatch {
    /// A watch that never trusts a remembered answer.
    pub fn disabled() -> Self {
        HostWatch {
            group: None,
            epoch: AtomicU64::new(1),
        }
    }

    /// Watches renames on the file system of `share`; falls back to
    /// [`Self::disabled`] with the reason when the host does not allow it.
    pub fn start(share: &Path) -> Self {
        match Self::group(share) {
            Ok(fd) => HostWatch {
                group: Some(fd),
                epoch: AtomicU64::new(1),
            },
            Err(e) => {
                log::warn!(
                    "cannot watch renames on the share's file system ({e}): every access to an \
                     unprotected file looks up its host name afresh (slower, equally safe)"
                );
                Self::disabled()
            }
        }
    }

    fn group(share: &Path) -> io::Result<OwnedFd> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME;
        // SAFETY: plain syscall; the result is checked and owned below.
        let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor.
        let group = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(share.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid group descriptor and C string.
        let r = unsafe {
            libc::fanotify_mark(
                group.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO | libc::FAN_ONDIR,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(group)
    }

    /// Whether remembered answers can be trusted at all.
    pub fn active(&self) -> bool {
        self.group.is_some()
    }

    /// The current epoch, after taking in every rename reported so far;
    /// `None` when nothing may be remembered.
    pub fn epoch(&self) -> Option<u64> {
        let group = self.group.as_ref()?;
        // Called on every check: the events are only counted, never read,
        // so the buffer is left uninitialised (zeroing 4 KiB each time was
        // a fifth of the instructions of a CREATE or UNLINK under a policy).
        let mut buf = std::mem::MaybeUninit::<[u8; 4096]>::uninit();
        loop {
            // SAFETY: the kernel writes at most `len` bytes into a buffer
            // we own of that size; nothing reads them.
            let n = unsafe {
                libc::read(
                    group.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    std::mem::size_of_val(&buf),
                )
            };
            if n > 0 {
                self.bump();
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => break,
                Some(libc::EINTR) => continue,
                // Anything else: trust nothing this time.
                _ => return None,
            }
        }
        Some(self.epoch.load(Ordering::Acquire))
    }

    /// Something changed names: forget every remembered answer.
    pub fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_move_the_epoch() {
        let t = tempfile::tempdir().unwrap();
        let w = HostWatch::start(t.path());
        if !w.active() {
            println!("SKIP: no fanotify filesystem mark here (needs root and file ids)");
            return;
        }
        std::fs::write(t.path().join("a"), b"x").unwrap();
        let e0 = w.epoch().unwrap();
        assert_eq!(w.epoch(), Some(e0), "a write is not a rename");
        std::fs::rename(t.path().join("a"), t.path().join("b")).unwrap();
        let e1 = w.epoch().unwrap();
        assert!(e1 > e0, "a rename just done is seen at once");
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::rename(t.path().join("d"), t.path().join("e")).unwrap();
        assert!(w.epoch().unwrap() > e1, "directories too");
        let d = HostWatch::disabled();
        assert_eq!(d.epoch(), None);
    }
}
