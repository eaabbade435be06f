//! Shared memory that outlives the fsd process writing it.
//!
//! The journal and the in-flight table are written by the serving fsd with
//! plain stores (no system call on the request path) into a memfd mapping.
//! The supervisor holds a descriptor of each memfd, so the pages stay when
//! fsd dies, whatever the way (SIGKILL, a panic, the OOM killer), and the
//! recovering fsd maps the same pages again. Every store a dead process
//! completed is in those pages; a store it did not complete is not, which
//! is why every structure here commits with one final aligned store.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// One memfd, mapped shared, read-write.
pub struct SharedMap {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access that can race
// goes through atomics (see `u32_at`, `u64_at`) or is done under the
// owner's lock.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// A new zeroed memfd of `len` bytes (sparse: pages cost memory only
    /// once written).
    pub fn create(name: &std::ffi::CStr, len: usize) -> io::Result<Self> {
        // SAFETY: a valid C string and flags.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just returned.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd)
    }

    /// Maps an existing memfd (one a dead fsd wrote), its whole size.
    pub fn map(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: fstat into a zeroed stat structure.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = st.st_size as usize;
        if len == 0 || len % 8 != 0 {
            return Err(io::Error::other("shared memory of a size fsd never makes"));
        }
        // SAFETY: mapping `len` bytes of a descriptor we own, shared.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMap {
            fd,
            ptr: NonNull::new(p as *mut u8).expect("mmap returned null"),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the descriptor, for the supervisor.
    pub fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// The 32-bit word at byte `off` (aligned, in bounds, else a panic:
    /// offsets are fsd's own, never the guest's).
    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: aligned and within the mapping, which lives as long as self.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU32) }
    }

    /// The 64-bit word at byte `off` (as [`Self::u32_at`]).
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.len);
        // SAFETY: as in `u32_at`.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Copies `bytes` to `off`. The caller serializes writers and publishes
    /// with a later atomic store.
    pub fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        // SAFETY: in bounds; the range is not read concurrently (see above).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len())
        };
    }

    /// A copy of `len` bytes at `off`.
    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), v.as_mut_ptr(), len) };
        v
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_mapping_sees_the_first_ones_stores() {
        let a = SharedMap::create(c"t", 4096).unwrap();
        a.u64_at(8).store(42, std::sync::atomic::Ordering::Release);
        a.write(16, b"abc");
        let b = SharedMap::map(a.dup_fd().unwrap()).unwrap();
        drop(a);
        assert_eq!(b.u64_at(8).load(std::sync::atomic::Ordering::Acquire), 42);
        assert_eq!(b.read(16, 3), b"abc");
    }
}
