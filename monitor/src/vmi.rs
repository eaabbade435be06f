//! A live view of one guest kernel: its KASLR slide, its direct map and
//! `vmemmap`, and typed reads of kernel virtual memory.
//!
//! Everything here reads guest RAM directly; it does not stop the guest by
//! itself. Callers pause the VM (QMP `stop`) around walks that must be
//! consistent.

use crate::error::{Error, Result};
use crate::kernel::Profile;
use crate::mem::PhysMem;
use crate::paging::Paging;

/// Where the kernel image may start: `__START_KERNEL` plus whole 2 MiB steps
/// within the 1 GiB kernel image area.
const KERNEL_IMAGE_START: u64 = 0xffff_ffff_8100_0000;
const KASLR_STEP: u64 = 2 << 20;
const KASLR_SLOTS: u64 = 504;

/// A guest kernel located in memory.
pub struct Kernel<'a> {
    pub mem: &'a dyn PhysMem,
    pub profile: &'a Profile,
    pub paging: Paging,
    /// Runtime address minus link-time address of the kernel image.
    pub slide: u64,
    /// Start of the direct map of all physical memory.
    pub page_offset_base: u64,
    /// Start of the `struct page` array.
    pub vmemmap_base: u64,
}

impl<'a> Kernel<'a> {
    /// Locate the kernel: find the first mapped 2 MiB slot of the kernel
    /// image area, check `linux_banner` there, then read the randomised
    /// bases of the direct map and vmemmap.
    pub fn locate(
        mem: &'a dyn PhysMem,
        profile: &'a Profile,
        paging: Paging,
    ) -> Result<Kernel<'a>> {
        let text = profile.symbol("_text")?;
        let banner_at = profile.symbol("linux_banner")?;
        let mut slide = None;
        for n in 0..KASLR_SLOTS {
            let va = KERNEL_IMAGE_START + n * KASLR_STEP;
            if paging.translate(mem, va).is_ok() {
                slide = Some(va.wrapping_sub(text));
                break;
            }
        }
        let slide =
            slide.ok_or_else(|| Error::Kaslr("no mapped page in the kernel image area".into()))?;
        let mut k = Kernel {
            mem,
            profile,
            paging,
            slide,
            page_offset_base: 0,
            vmemmap_base: 0,
        };
        let want = profile.banner.as_bytes();
        let mut got = vec![0u8; want.len()];
        k.read(banner_at.wrapping_add(slide), &mut got)?;
        if got != want {
            return Err(Error::Kaslr(format!(
                "banner mismatch at slide {slide:#x}: guest runs {:?}",
                String::from_utf8_lossy(&got[..got.len().min(60)])
            )));
        }
        k.page_offset_base = k.read_u64(k.sym("page_offset_base")?)?;
        k.vmemmap_base = k.read_u64(k.sym("vmemmap_base")?)?;
        Ok(k)
    }

    /// Runtime address of a kernel symbol.
    pub fn sym(&self, name: &str) -> Result<u64> {
        Ok(self.profile.symbol(name)?.wrapping_add(self.slide))
    }

    /// Offset of a struct member (from the profile).
    pub fn off(&self, st: &str, field: &str) -> Result<u64> {
        self.profile.off(st, field)
    }

    /// Read kernel virtual memory.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<()> {
        self.paging.read(self.mem, va, buf)
    }

    /// Write kernel virtual memory.
    pub fn write(&self, va: u64, buf: &[u8]) -> Result<()> {
        self.paging.write(self.mem, va, buf)
    }

    pub fn read_u64(&self, va: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_u32(&self, va: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn read_u8(&self, va: u64) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read(va, &mut b)?;
        Ok(b[0])
    }

    pub fn write_u64(&self, va: u64, v: u64) -> Result<()> {
        self.write(va, &v.to_le_bytes())
    }

    pub fn write_u32(&self, va: u64, v: u32) -> Result<()> {
        self.write(va, &v.to_le_bytes())
    }

    /// Read a member whose size comes from the profile (1, 2, 4 or 8 bytes),
    /// zero-extended.
    pub fn read_field(&self, base: u64, st: &str, field: &str) -> Result<u64> {
        let f = self.profile.field(st, field)?;
        let mut b = [0u8; 8];
        let n = (f.size as usize).min(8);
        self.read(base + f.offset, &mut b[..n])?;
        Ok(u64::from_le_bytes(b))
    }

    /// Read a NUL-terminated string of at most `max` bytes.
    pub fn read_cstr(&self, va: u64, max: usize) -> Result<String> {
        let mut b = vec![0u8; max];
        self.read(va, &mut b)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(max);
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    }

    /// Physical address of a kernel virtual address.
    pub fn virt_to_phys(&self, va: u64) -> Result<u64> {
        Ok(self.paging.translate(self.mem, va)?.phys)
    }

    /// PFN of a `struct page` pointer.
    pub fn page_to_pfn(&self, page: u64) -> Result<u64> {
        let size = self.profile.size("page")?;
        let rel = page
            .checked_sub(self.vmemmap_base)
            .filter(|r| r % size == 0)
            .ok_or_else(|| Error::Corrupt(format!("{page:#x} is not a struct page")))?;
        Ok(rel / size)
    }

    /// Walk a kernel `list_head` ring starting at the head `head`, yielding
    /// each element's `list_head` address (the head itself excluded). Stops
    /// with an error on a broken or implausibly long list.
    pub fn list(&self, head: u64, limit: usize) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut p = self.read_u64(head)?;
        while p != head {
            if out.len() >= limit {
                return Err(Error::Corrupt(format!(
                    "list at {head:#x} longer than {limit}"
                )));
            }
            out.push(p);
            p = self.read_u64(p)?;
        }
        Ok(out)
    }
}
