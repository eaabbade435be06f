//! x86-64 page-table walks over guest-physical memory, for 4-level and
//! 5-level (CR4.LA57) paging.
//!
//! QEMU's `-cpu max` under TCG turns LA57 on, so both depths occur in
//! practice. CR3 is masked with `!0x1fff`: with page-table isolation the
//! kernel and user PGDs are an 8 KiB pair and bit 12 selects the user half.

use crate::error::{Error, Result};
use crate::mem::PhysMem;

const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const CR4_LA57: u64 = 1 << 12;

/// Paging mode of a vCPU: CR3 plus the depth of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub cr3: u64,
    pub levels: u8,
}

/// The result of a successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub phys: u64,
    /// Size of the page that maps the address (4 KiB, 2 MiB or 1 GiB).
    pub page_size: u64,
}

impl Paging {
    /// Paging state from the CR3 and CR4 values of a vCPU.
    pub fn from_regs(cr3: u64, cr4: u64) -> Paging {
        Paging {
            cr3,
            levels: if cr4 & CR4_LA57 != 0 { 5 } else { 4 },
        }
    }

    /// Translate a virtual address.
    pub fn translate(&self, mem: &dyn PhysMem, va: u64) -> Result<Translation> {
        let mut table = self.cr3 & ADDR_MASK & !0x1fff;
        let mut shift = 12 + 9 * self.levels as u32;
        for level in (1..=self.levels).rev() {
            shift -= 9;
            let idx = (va >> shift) & 0x1ff;
            let entry = mem.read_phys_u64(table + idx * 8)?;
            if entry & PRESENT == 0 {
                return Err(Error::NotMapped(va));
            }
            let size = 1u64 << shift;
            if level == 1 || ((level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0) {
                let frame = entry & ADDR_MASK & !(size - 1);
                return Ok(Translation {
                    phys: frame | (va & (size - 1)),
                    page_size: size,
                });
            }
            table = entry & ADDR_MASK;
        }
        Err(Error::NotMapped(va))
    }

    /// Read virtual memory, page by page.
    pub fn read(&self, mem: &dyn PhysMem, va: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let a = va.wrapping_add(done as u64);
            let t = self.translate(mem, a)?;
            let n = (buf.len() - done).min((0x1000 - (a & 0xfff)) as usize);
            mem.read_phys(t.phys, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Write virtual memory, page by page.
    pub fn write(&self, mem: &dyn PhysMem, va: u64, buf: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let a = va.wrapping_add(done as u64);
            let t = self.translate(mem, a)?;
            let n = (buf.len() - done).min((0x1000 - (a & 0xfff)) as usize);
            mem.write_phys(t.phys, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::BufMem;

    fn put(m: &BufMem, gpa: u64, v: u64) {
        m.write_phys(gpa, &v.to_le_bytes()).unwrap();
    }

    /// Map va -> pa through hand-built tables of the given depth.
    fn build(levels: u8, va: u64, leaf_level: u8, pa: u64) -> (BufMem, Paging) {
        let m = BufMem::new(1 << 20);
        // The kernel PGD is 8 KiB aligned; with PTI, CR3 bit 12 selects the
        // user half and must be masked off by the walker.
        let mut table = 0x2000u64;
        let cr3 = table | 0x1000;
        let mut next = 0x4000u64;
        let mut shift = 12 + 9 * levels as u32;
        for level in (1..=levels).rev() {
            shift -= 9;
            let idx = (va >> shift) & 0x1ff;
            if level == leaf_level {
                let ps = if level > 1 { PAGE_SIZE_BIT } else { 0 };
                put(&m, table + idx * 8, pa | PRESENT | ps | 2);
                break;
            }
            put(&m, table + idx * 8, next | PRESENT | 2);
            table = next;
            next += 0x1000;
        }
        // Bit 12 of CR3 selects the user half with PTI: keep the kernel half.
        (
            m,
            Paging {
                cr3: cr3 & !0x1000,
                levels,
            },
        )
    }

    #[test]
    fn four_and_five_levels_and_large_pages() {
        let va = 0xffff_ffff_8123_4567u64;
        for levels in [4u8, 5] {
            let (m, p) = build(levels, va, 1, 0x5000);
            assert_eq!(p.translate(&m, va).unwrap().phys, 0x5567);
            assert!(p.translate(&m, va + 0x1000).is_err());
            let (m, p) = build(levels, va, 2, 0x20_0000);
            let t = p.translate(&m, va).unwrap();
            assert_eq!(t.page_size, 2 << 20);
            assert_eq!(t.phys, 0x20_0000 | (va & 0x1f_ffff));
        }
        assert_eq!(Paging::from_regs(0x1000, CR4_LA57).levels, 5);
        assert_eq!(Paging::from_regs(0x1000, 0).levels, 4);
    }
}
