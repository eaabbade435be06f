//! Directory streams served by fsd itself.
//!
//! The passthrough layer drops `.` and `..` from listings; a drop-in for
//! virtiofsd must return them (guests list them, `ls -a` shows them, and
//! directory offsets are opaque cookies, so they cannot be spliced in
//! afterwards). fsd keeps one host directory descriptor per open guest
//! directory and reads it with `getdents64`, resuming at the guest's offset.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::handover::state::{DirStream, FdBag, Received};

/// One entry as read from the host.
pub struct RawDirent<'a> {
    /// The directory being read (lookups of its entries may use it).
    pub dir: BorrowedFd<'a>,
    pub ino: u64,
    /// Cookie of the *next* entry, to resume after this one.
    pub next: u64,
    pub typ: u8,
    pub name: &'a [u8],
}

/// Open directory streams by guest handle.
#[derive(Default)]
pub struct DirTable {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Mutex<File>>>>,
}

impl DirTable {
    /// Registers an open directory; returns its handle.
    pub fn insert(&self, dir: File) -> u64 {
        let h = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open
            .lock()
            .unwrap()
            .insert(h, Arc::new(Mutex::new(dir)));
        h
    }

    /// Closes a directory stream; false when the handle was not open.
    pub fn remove(&self, handle: u64) -> bool {
        self.open.lock().unwrap().remove(&handle).is_some()
    }

    /// The open streams for a live handover (the descriptors share their
    /// positions with these).
    pub fn export(&self, bag: &mut FdBag) -> io::Result<(u64, Vec<DirStream>)> {
        let mut out = Vec::new();
        for (&handle, d) in self.open.lock().unwrap().iter() {
            let f = d.lock().unwrap().try_clone()?;
            out.push(DirStream {
                handle,
                fd: bag.put(f.into()),
            });
        }
        Ok((self.next.load(Ordering::Acquire), out))
    }

    /// Takes over a predecessor's streams.
    pub fn import(&self, next: u64, dirs: &[DirStream], fds: &mut Received) -> io::Result<()> {
        let mut open = self.open.lock().unwrap();
        open.clear();
        for d in dirs {
            open.insert(d.handle, Arc::new(Mutex::new(File::from(fds.take(d.fd)?))));
        }
        self.next.store(next, Ordering::Release);
        Ok(())
    }

    /// Closes every stream (a new FUSE session starts).
    pub fn clear(&self) {
        self.open.lock().unwrap().clear();
    }

    pub fn get(&self, handle: u64) -> io::Result<Arc<Mutex<File>>> {
        self.open
            .lock()
            .unwrap()
            .get(&handle)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Reads entries from `offset` on, handing each to `f` until it returns
    /// `Ok(false)` (no room) or the directory ends. `size` bounds the bytes
    /// read from the host per call.
    pub fn read(
        &self,
        handle: u64,
        offset: u64,
        size: u32,
        f: &mut dyn FnMut(RawDirent<'_>) -> io::Result<bool>,
    ) -> io::Result<()> {
        let dir = self.get(handle)?;
        let dir = dir.lock().unwrap();
        let fd = dir.as_raw_fd();
        // SAFETY: lseek on our own descriptor.
        if unsafe { libc::lseek64(fd, offset as i64, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; (size as usize).clamp(1024, 1 << 20)];
        let mut first = true;
        loop {
            // SAFETY: getdents64 writes at most buf.len() bytes into buf.
            let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Ok(());
            }
            let mut pos = 0usize;
            while pos < n as usize {
                // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
                let rec = &buf[pos..n as usize];
                if rec.len() < 19 {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap());
                let next = i64::from_ne_bytes(rec[8..16].try_into().unwrap()) as u64;
                let reclen = u16::from_ne_bytes(rec[16..18].try_into().unwrap()) as usize;
                if reclen < 19 || reclen > rec.len() {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                let typ = rec[18];
                let raw = &rec[19..reclen];
                let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
                match f(RawDirent {
                    dir: dir.as_fd(),
                    ino,
                    next,
                    typ,
                    name,
                }) {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    // An error after entries were given cannot be reported
                    // without losing them; stop and let the guest come back.
                    Err(e) if first => return Err(e),
                    Err(_) => return Ok(()),
                }
                first = false;
                pos += reclen;
            }
        }
    }
}
