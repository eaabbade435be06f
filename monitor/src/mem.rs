//! Guest-physical memory, read straight from the file behind QEMU's
//! `memory-backend-file` (or a `memory-backend-memfd` passed as a file
//! descriptor) mapped shared into the monitor.
//!
//! Reads need no cooperation from QEMU and cost a memcpy. The guest keeps
//! running while we read unless it was stopped through QMP, so callers that
//! need a consistent picture pause it first.

use std::fs::{File, OpenOptions};
use std::path::Path;

use memmap2::MmapRaw;

use crate::error::{Error, Result};

/// Byte-level access to guest-physical addresses.
pub trait PhysMem {
    /// Copy `buf.len()` bytes starting at guest-physical `gpa`.
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<()>;
    /// Write `buf` at guest-physical `gpa`.
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> Result<()>;
    /// Highest guest-physical address plus one that is backed by RAM.
    fn phys_end(&self) -> u64;

    /// Read a little-endian u64.
    fn read_phys_u64(&self, gpa: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_phys(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// One contiguous piece of guest RAM inside the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub gpa: u64,
    pub file_offset: u64,
    pub len: u64,
}

/// How QEMU's x86 machines split RAM around the 4 GiB PCI hole: the first
/// `below_4g` bytes at 0, the rest from 4 GiB.
pub fn x86_layout(size: u64, below_4g: u64) -> Vec<Region> {
    let low = size.min(below_4g);
    let mut v = vec![Region {
        gpa: 0,
        file_offset: 0,
        len: low,
    }];
    if size > low {
        v.push(Region {
            gpa: 1 << 32,
            file_offset: low,
            len: size - low,
        });
    }
    v
}

/// The `pc` (i440fx) machine's split: 3.5 GiB below 4 GiB, or 3 GiB once RAM
/// reaches 3.5 GiB. q35 splits at 2 GiB from 2.75 GiB of RAM on: pass the
/// layout explicitly with [`GuestRam::with_layout`] for large q35 guests.
pub fn pc_below_4g(size: u64) -> u64 {
    if size >= 0xe000_0000 {
        0xc000_0000
    } else {
        0xe000_0000
    }
}

/// Guest RAM mapped from its backing file.
pub struct GuestRam {
    map: MmapRaw,
    regions: Vec<Region>,
}

impl GuestRam {
    /// Map a backing file (e.g. `/dev/shm/vm-ram`) with the `pc` layout.
    pub fn open(path: &Path) -> Result<GuestRam> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        Self::from_file(&file)
    }

    /// Map an already open backing file or memfd with the `pc` layout.
    pub fn from_file(file: &File) -> Result<GuestRam> {
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat guest RAM", e))?
            .len();
        Self::with_layout(file, x86_layout(size, pc_below_4g(size)))
    }

    /// Map with an explicit layout.
    pub fn with_layout(file: &File, regions: Vec<Region>) -> Result<GuestRam> {
        let map = MmapRaw::map_raw(file).map_err(|e| Error::io("mmap guest RAM", e))?;
        for r in &regions {
            if r.file_offset + r.len > map.len() as u64 {
                return Err(Error::RamLayout(format!(
                    "region {r:?} beyond the backing file"
                )));
            }
        }
        Ok(GuestRam { map, regions })
    }

    /// The RAM regions in guest-physical order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Host pointer for `[gpa, gpa+len)` if it lies in one region.
    fn host_ptr(&self, gpa: u64, len: usize) -> Result<*mut u8> {
        for r in &self.regions {
            if gpa >= r.gpa && gpa + len as u64 <= r.gpa + r.len {
                let off = r.file_offset + (gpa - r.gpa);
                // SAFETY: bounds checked against the mapping above.
                return Ok(unsafe { self.map.as_mut_ptr().add(off as usize) });
            }
        }
        Err(Error::PhysOutOfRange(gpa, len))
    }

    /// Raw view of one region for whole-RAM scans.
    ///
    /// The guest may change these bytes at any moment; the slice is only a
    /// snapshot in the sense that each byte read is some value it held.
    pub fn region_bytes(&self, r: &Region) -> &[u8] {
        // SAFETY: regions were checked against the mapping when created; the
        // bytes are plain memory that outlives `self`.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(r.file_offset as usize),
                r.len as usize,
            )
        }
    }
}

impl PhysMem for GuestRam {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        // Split at page boundaries so reads may straddle the 4 GiB hole's
        // edges only when both sides are RAM.
        let mut done = 0;
        while done < buf.len() {
            let a = gpa + done as u64;
            let n = (buf.len() - done).min((0x1000 - (a & 0xfff)) as usize);
            let p = self.host_ptr(a, n)?;
            // SAFETY: `p..p+n` is inside the mapping (checked by host_ptr).
            unsafe { std::ptr::copy_nonoverlapping(p, buf[done..].as_mut_ptr(), n) };
            done += n;
        }
        Ok(())
    }

    fn write_phys(&self, gpa: u64, buf: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let a = gpa + done as u64;
            let n = (buf.len() - done).min((0x1000 - (a & 0xfff)) as usize);
            let p = self.host_ptr(a, n)?;
            // SAFETY: as above; the mapping is shared and writable.
            unsafe { std::ptr::copy_nonoverlapping(buf[done..].as_ptr(), p, n) };
            done += n;
        }
        Ok(())
    }

    fn phys_end(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.gpa + r.len)
            .max()
            .unwrap_or(0)
    }
}

/// Guest RAM held in a host buffer: for unit tests and for the monitor's own
/// KVM guests.
pub struct BufMem {
    pub bytes: std::cell::RefCell<Vec<u8>>,
}

impl BufMem {
    /// `size` zeroed bytes at guest-physical 0.
    pub fn new(size: usize) -> BufMem {
        BufMem {
            bytes: std::cell::RefCell::new(vec![0; size]),
        }
    }
}

impl PhysMem for BufMem {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let b = self.bytes.borrow();
        let s = b
            .get(gpa as usize..gpa as usize + buf.len())
            .ok_or(Error::PhysOutOfRange(gpa, buf.len()))?;
        buf.copy_from_slice(s);
        Ok(())
    }

    fn write_phys(&self, gpa: u64, buf: &[u8]) -> Result<()> {
        let mut b = self.bytes.borrow_mut();
        let s = b
            .get_mut(gpa as usize..gpa as usize + buf.len())
            .ok_or(Error::PhysOutOfRange(gpa, buf.len()))?;
        s.copy_from_slice(buf);
        Ok(())
    }

    fn phys_end(&self) -> u64 {
        self.bytes.borrow().len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_around_the_hole() {
        assert_eq!(x86_layout(512 << 20, pc_below_4g(512 << 20)).len(), 1);
        let v = x86_layout(4 << 30, pc_below_4g(4 << 30));
        assert_eq!(v[1].gpa, 1 << 32);
        assert_eq!(v[1].file_offset, 0xc000_0000);
        assert_eq!(v[0].len + v[1].len, 4 << 30);
    }

    #[test]
    fn file_backed_reads_and_writes() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        let ram = GuestRam::from_file(&f).unwrap();
        ram.write_phys(0xffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        ram.read_phys(0xffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(ram.read_phys((1 << 20) - 2, &mut b).is_err());
    }
}
