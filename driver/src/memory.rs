//! Guest memory: a memfd mapped into this process and shared with the daemon.
//!
//! A real guest's RAM is a shared file (QEMU `memory-backend-memfd,share=on`)
//! whose descriptor travels to the daemon in `VHOST_USER_SET_MEM_TABLE`. We do
//! the same, so the daemon maps exactly the pages we write rings and buffers
//! into. A small first-fit allocator hands out page-aligned blocks for rings
//! and buffers.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Mutex;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use crate::error::{Error, Result};

/// Page size used for buffer alignment (the Linux virtio-fs driver hands the
/// daemon page-sized, page-aligned data buffers).
pub const PAGE_SIZE: u64 = 4096;

/// Guest RAM shared with the daemon, plus an allocator over it.
pub struct GuestMem {
    mem: GuestMemoryMmap,
    base: u64,
    size: u64,
    free: Mutex<Vec<(u64, u64)>>,
}

/// A block of guest memory handed out by [`GuestMem::alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Guest-physical address of the first byte.
    pub addr: u64,
    /// Length in bytes (rounded up to the allocation granule).
    pub len: u64,
}

impl GuestMem {
    /// Creates `size` bytes of memfd-backed guest memory at guest-physical `base`.
    pub fn new(base: u64, size: u64) -> Result<Self> {
        let size = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // SAFETY: memfd_create with a valid NUL-terminated name has no memory
        // safety preconditions; the result is checked.
        let fd = unsafe { libc::memfd_create(c"fsdrive-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Io("memfd_create", std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)
            .map_err(|e| Error::Io("ftruncate guest memory", e))?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(base),
            size as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| Error::Memory(e.to_string()))?;
        Ok(GuestMem {
            mem,
            base,
            size,
            free: Mutex::new(vec![(base, size)]),
        })
    }

    /// The vm-memory view, for reads and writes at guest-physical addresses.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Guest-physical address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The regions as `VHOST_USER_SET_MEM_TABLE` wants them (with the memfd).
    pub fn region_infos(&self) -> Result<Vec<VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|e| Error::Memory(e.to_string()))
            })
            .collect()
    }

    /// Our own virtual address of a guest-physical address. vhost-user passes
    /// ring addresses in the frontend's address space.
    pub fn host_addr(&self, gpa: u64) -> Result<u64> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| Error::BadGuestAddress(gpa, 0))
    }

    /// Allocates `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&self, len: u64, align: u64) -> Result<Block> {
        let len = len.max(1).div_ceil(16) * 16;
        let align = align.max(16);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..free.len() {
            let (start, flen) = free[i];
            let aligned = start.div_ceil(align) * align;
            let pad = aligned - start;
            if flen < pad + len {
                continue;
            }
            let tail = (aligned + len, flen - pad - len);
            match (pad > 0, tail.1 > 0) {
                (true, true) => {
                    free[i] = (start, pad);
                    free.insert(i + 1, tail);
                }
                (true, false) => free[i] = (start, pad),
                (false, true) => free[i] = tail,
                (false, false) => {
                    free.remove(i);
                }
            }
            return Ok(Block { addr: aligned, len });
        }
        Err(Error::OutOfGuestMemory(len))
    }

    /// Returns a block to the allocator, merging it with its neighbours.
    pub fn free(&self, block: Block) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let pos = free.partition_point(|&(s, _)| s < block.addr);
        free.insert(pos, (block.addr, block.len));
        if pos + 1 < free.len() && free[pos].0 + free[pos].1 == free[pos + 1].0 {
            free[pos].1 += free[pos + 1].1;
            free.remove(pos + 1);
        }
        if pos > 0 && free[pos - 1].0 + free[pos - 1].1 == free[pos].0 {
            free[pos - 1].1 += free[pos].1;
            free.remove(pos);
        }
    }

    /// Bytes currently free (for leak checks in tests).
    pub fn free_bytes(&self) -> u64 {
        let free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.iter().map(|&(_, l)| l).sum()
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| Error::BadGuestAddress(addr, data.len() as u64))
    }

    /// Copies `buf.len()` bytes of guest memory at `addr` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| Error::BadGuestAddress(addr, buf.len() as u64))
    }

    /// Whether `[addr, addr+len)` lies inside guest memory.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.size)
            && self
                .mem
                .find_region(GuestAddress(addr))
                .is_some_and(|r| r.len() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_aligns_and_free_coalesces() {
        let m = GuestMem::new(0x10000, 64 * PAGE_SIZE).unwrap();
        let total = m.free_bytes();
        let a = m.alloc(16, 16).unwrap();
        let b = m.alloc(5000, PAGE_SIZE).unwrap();
        assert_eq!(b.addr % PAGE_SIZE, 0);
        assert!(b.addr >= a.addr + a.len);
        let c = m.alloc(100, 16).unwrap();
        assert!(total - m.free_bytes() >= 16 + 5000 + 100);
        m.free(b);
        m.free(a);
        m.free(c);
        assert_eq!(m.free_bytes(), total);
        let whole = m.alloc(total, PAGE_SIZE).unwrap();
        assert_eq!(whole.addr, 0x10000);
        assert!(m.alloc(1, 16).is_err());
    }

    #[test]
    fn reads_back_what_was_written_and_rejects_outside() {
        let m = GuestMem::new(0, 4 * PAGE_SIZE).unwrap();
        m.write(100, b"hello").unwrap();
        let mut buf = [0u8; 5];
        m.read(100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(m.write(4 * PAGE_SIZE - 2, b"abc").is_err());
        assert!(!m.contains(4 * PAGE_SIZE, 1));
        assert!(m.contains(0, 4 * PAGE_SIZE));
        assert_eq!(m.region_infos().unwrap().len(), 1);
    }
}
