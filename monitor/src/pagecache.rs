//! The guest page cache of host files served over virtio-fs: find it, have
//! the guest kernel drop it, and scrub the frames it occupied.
//!
//! Locating: `super_blocks` → the superblocks whose type is `virtiofs` →
//! `s_inodes` → the inode whose `i_ino` is the host file's `st_ino` (the
//! FUSE server passes host inode numbers through) → `i_mapping->i_pages`, an
//! xarray of `struct page *` → PFN = (page − vmemmap_base) / sizeof(page).
//!
//! Flushing: at a safe point the guest kernel runs
//! `invalidate_mapping_pages(mapping, 0, -1)` by call injection; it drops
//! every clean, unlocked, unmapped page under its own locks. The kernel's
//! free lists do not clear memory, so without scrubbing the data would stay
//! readable in guest RAM. The frames the call will drop (clean, unlocked,
//! not under writeback, unmapped) are zeroed *before* it, while the VM is
//! stopped: the guest runs during the call and may allocate a freed frame
//! at once (the per-CPU free lists hand out the most recently freed
//! first), and a frame with a new owner can no longer be zeroed. A frame
//! zeroed that way which stays cached after all (a reader took a reference
//! meanwhile) gets its content back. Frames that were not droppable at
//! the start but left the cache anyway are zeroed after the call if they
//! are free (`_refcount` 0), or in a few later passes.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::inject;
use crate::mem::{GuestRam, PhysMem};
use crate::report::FlushReport;
use crate::vm::Vm;
use crate::vmi::Kernel;

const MAX_INODES: usize = 1 << 22;
const PAGE_SIZE: u64 = 4096;

/// One cached page of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CachedPage {
    /// Page index within the file.
    pub index: u64,
    pub pfn: u64,
    /// Kernel address of the `struct page`.
    pub page: u64,
}

/// A guest inode of a virtio-fs superblock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedInode {
    pub ino: u64,
    pub inode: u64,
    pub mapping: u64,
    pub pages: Vec<CachedPage>,
}

/// Superblocks (kernel addresses) whose filesystem type is `fstype`.
pub fn superblocks(k: &Kernel, fstype: &str) -> Result<Vec<u64>> {
    let s_list = k.off("super_block", "s_list")?;
    let mut out = Vec::new();
    for l in k.list(k.sym("super_blocks")?, 1 << 16)? {
        let sb = l - s_list;
        let ty = k.read_field(sb, "super_block", "s_type")?;
        let name = k.read_field(ty, "file_system_type", "name")?;
        if k.read_cstr(name, 32)? == fstype {
            out.push(sb);
        }
    }
    Ok(out)
}

/// Inodes of `sb` whose number is in `inos`.
pub fn find_inodes(k: &Kernel, sb: u64, inos: &BTreeSet<u64>) -> Result<Vec<(u64, u64)>> {
    let head = sb + k.off("super_block", "s_inodes")?;
    let link = k.off("inode", "i_sb_list")?;
    let mut out = Vec::new();
    for l in k.list(head, MAX_INODES)? {
        let inode = l - link;
        let ino = k.read_field(inode, "inode", "i_ino")?;
        if inos.contains(&ino) {
            out.push((ino, inode));
        }
    }
    Ok(out)
}

/// Every page in an address_space's xarray, in index order.
pub fn mapping_pages(k: &Kernel, mapping: u64) -> Result<Vec<CachedPage>> {
    let head =
        k.read_u64(mapping + k.off("address_space", "i_pages")? + k.off("xarray", "xa_head")?)?;
    let mut out = Vec::new();
    walk_entry(k, head, 0, &mut out, 0)?;
    Ok(out)
}

fn is_internal(e: u64) -> bool {
    e & 3 == 2
}

fn walk_entry(k: &Kernel, e: u64, index: u64, out: &mut Vec<CachedPage>, depth: u32) -> Result<()> {
    if e == 0 || e & 1 == 1 {
        return Ok(()); // empty, or a value entry (shadow/swap), not a page
    }
    if is_internal(e) {
        if e <= 4096 {
            return Ok(()); // sibling or retry entry
        }
        if depth > 12 {
            return Err(Error::Corrupt("xarray deeper than 12 levels".into()));
        }
        let node = e - 2;
        let nshift = k.read_field(node, "xa_node", "shift")?;
        let slots = node + k.off("xa_node", "slots")?;
        let mut raw = [0u8; 64 * 8];
        k.read(slots, &mut raw)?;
        for (i, c) in raw.chunks(8).enumerate() {
            let child = u64::from_le_bytes(c.try_into().unwrap());
            walk_entry(k, child, index + ((i as u64) << nshift), out, depth + 1)?;
        }
        return Ok(());
    }
    out.push(CachedPage {
        index,
        pfn: k.page_to_pfn(e)?,
        page: e,
    });
    Ok(())
}

/// The cached inodes among `host_inos` in every virtio-fs superblock.
pub fn cached_inodes(k: &Kernel, host_inos: &BTreeSet<u64>) -> Result<Vec<CachedInode>> {
    let mut out = Vec::new();
    for sb in superblocks(k, "virtiofs")? {
        for (ino, inode) in find_inodes(k, sb, host_inos)? {
            let mapping = k.read_field(inode, "inode", "i_mapping")?;
            out.push(CachedInode {
                ino,
                inode,
                mapping,
                pages: mapping_pages(k, mapping)?,
            });
        }
    }
    Ok(out)
}

/// True when `invalidate_mapping_pages` may drop the page: not dirty,
/// locked, under writeback or mapped. It may still keep it (a reference
/// taken while the call runs); the caller checks afterwards.
fn droppable(k: &Kernel, page: u64) -> Result<bool> {
    let flags = k.read_field(page, "page", "flags")?;
    let bit = |n: &str| -> Result<u64> { Ok(1u64 << k.profile.constant(n)?) };
    let busy = bit("PG_locked")? | bit("PG_dirty")? | bit("PG_writeback")?;
    let mapcount = k.read_field(page, "page", "_mapcount")? as u32 as i32;
    Ok(flags & busy == 0 && mapcount < 0)
}

/// True when the frame behind `page` is free and holds no state the kernel
/// still needs: it left `mapping`, nobody references it, and it is not
/// dirty, locked, under writeback or mapped.
fn scrubbable(k: &Kernel, page: u64, mapping: u64) -> Result<bool> {
    if !droppable(k, page)? {
        return Ok(false);
    }
    let refcount = k.read_field(page, "page", "_refcount")? as u32 as i32;
    let owner = k.read_field(page, "page", "mapping")?;
    Ok(refcount == 0 && owner != mapping)
}

/// Flush the guest page cache of the given host inodes in this VM.
pub fn flush(vm: &mut Vm, host_inos: &BTreeSet<u64>, timeout: Duration) -> Result<FlushReport> {
    let invalidate_sym = vm.profile.symbol("invalidate_mapping_pages")?;
    let mut gdb = vm.gdb()?;
    let res = (|| {
        let paging = vm.paging()?;
        let (slide, hooks) = {
            let k = vm.kernel(paging)?;
            (k.slide, inject::safe_points(&vm.profile, k.slide))
        };
        let t0 = Instant::now();
        let mut sp = inject::reach_safe_point(&mut gdb, &hooks, timeout)?;
        let t1 = Instant::now();
        // The VM is stopped at the safe point: record, invalidate, scrub,
        // with no guest code running in between except the calls.
        let paging = vm.paging()?;
        let k = vm.kernel(paging)?;
        let before = cached_inodes(&k, host_inos)?;
        let mut report = FlushReport {
            inodes: before.len() as u64,
            pages_before: before.iter().map(|i| i.pages.len() as u64).sum(),
            ..Default::default()
        };
        // Zero what the call will drop while nothing runs; keep the
        // content to give back to frames the guest keeps.
        let zeros = vec![0u8; PAGE_SIZE as usize];
        let mut saved: HashMap<u64, Vec<u8>> = HashMap::new();
        for inode in &before {
            for p in &inode.pages {
                if droppable(&k, p.page)? && !saved.contains_key(&p.pfn) {
                    let mut content = vec![0u8; PAGE_SIZE as usize];
                    vm.ram.read_phys(p.pfn * PAGE_SIZE, &mut content)?;
                    vm.ram.write_phys(p.pfn * PAGE_SIZE, &zeros)?;
                    saved.insert(p.pfn, content);
                }
            }
        }
        for inode in &before {
            if !inode.pages.is_empty() {
                report.invalidated += sp.call(
                    invalidate_sym.wrapping_add(slide),
                    &[inode.mapping, 0, u64::MAX],
                    timeout,
                )?;
            }
        }
        sp.finish()?;
        let mut busy = Vec::new();
        for inode in &before {
            let still: BTreeSet<u64> = mapping_pages(&k, inode.mapping)?
                .iter()
                .map(|p| p.pfn)
                .collect();
            report.still_cached += still.len() as u64;
            for p in &inode.pages {
                if still.contains(&p.pfn) {
                    if let Some(content) = saved.get(&p.pfn) {
                        vm.ram.write_phys(p.pfn * PAGE_SIZE, content)?;
                        report.restored += 1;
                    }
                    continue;
                }
                if saved.contains_key(&p.pfn) {
                    report.zeroed += 1;
                } else if scrubbable(&k, p.page, inode.mapping)? {
                    vm.ram.write_phys(p.pfn * PAGE_SIZE, &zeros)?;
                    report.zeroed += 1;
                } else {
                    report.busy += 1;
                    busy.push((*p, inode.mapping));
                }
            }
        }
        report.wait_us = (t1 - t0).as_micros() as u64;
        report.work_us = t1.elapsed().as_micros() as u64;
        Ok((report, busy))
    })();
    gdb.detach()?;
    let (mut report, mut busy) = res?;
    // Frames still referenced a moment ago are usually released as soon as
    // the guest runs on; look again a few times and scrub those now free.
    for _ in 0..LATE_PASSES {
        if busy.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        let zeroed = vm.paused(|vm| {
            let paging = vm.paging()?;
            let k = vm.kernel(paging)?;
            let zeros = vec![0u8; PAGE_SIZE as usize];
            let mut zeroed = 0;
            let mut left = Vec::new();
            for (p, mapping) in busy.drain(..) {
                if scrubbable(&k, p.page, mapping)? {
                    vm.ram.write_phys(p.pfn * PAGE_SIZE, &zeros)?;
                    zeroed += 1;
                } else {
                    left.push((p, mapping));
                }
            }
            busy = left;
            Ok(zeroed)
        })?;
        report.zeroed_late += zeroed;
    }
    Ok(report)
}

/// Later looks at frames that were still referenced at the safe point.
const LATE_PASSES: usize = 5;

/// Guest-physical addresses where `needle` occurs anywhere in guest RAM.
/// Used to prove that no copy of protected data is left behind.
pub fn scan_ram(ram: &GuestRam, needle: &[u8]) -> Vec<u64> {
    let mut hits = Vec::new();
    if needle.is_empty() {
        return hits;
    }
    for r in ram.regions() {
        let bytes = ram.region_bytes(r);
        let first = needle[0];
        let mut i = 0;
        while i + needle.len() <= bytes.len() {
            match bytes[i..bytes.len() - needle.len() + 1]
                .iter()
                .position(|&b| b == first)
            {
                None => break,
                Some(off) => {
                    let at = i + off;
                    if &bytes[at..at + needle.len()] == needle {
                        hits.push(r.gpa + at as u64);
                    }
                    i = at + 1;
                }
            }
        }
    }
    hits
}
