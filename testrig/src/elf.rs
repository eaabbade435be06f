//! Just enough ELF64 reading for the rig: the `.modinfo` section of kernel
//! modules (their dependencies, since the Debian package ships no modules.dep)
//! and whether an executable needs a dynamic loader (guest helpers must not).

use std::path::Path;

use crate::error::{Error, Result};

fn bad(path: &Path, reason: &str) -> Error {
    Error::BadElf {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn u16_at(data: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], off: usize) -> Option<usize> {
    let v = u64::from_le_bytes(data.get(off..off + 8)?.try_into().ok()?);
    usize::try_from(v).ok()
}

fn check_header(path: &Path, data: &[u8]) -> Result<()> {
    // Magic, ELFCLASS64, little endian.
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad(path, "not a little-endian ELF64 file"));
    }
    Ok(())
}

/// Returns the bytes of the section called `name`, if present.
pub(crate) fn section<'a>(path: &Path, data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    check_header(path, data)?;
    let truncated = || bad(path, "truncated section table");
    let shoff = u64_at(data, 0x28).ok_or_else(truncated)?;
    let shentsize = usize::from(u16_at(data, 0x3a).ok_or_else(truncated)?);
    let shnum = usize::from(u16_at(data, 0x3c).ok_or_else(truncated)?);
    let shstrndx = usize::from(u16_at(data, 0x3e).ok_or_else(truncated)?);
    let header = |i: usize| -> Option<(u32, usize, usize)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(data, base)?,
            u64_at(data, base + 0x18)?,
            u64_at(data, base + 0x20)?,
        ))
    };
    let (_, stroff, strsize) = header(shstrndx).ok_or_else(truncated)?;
    let strtab = data
        .get(stroff..stroff.saturating_add(strsize))
        .ok_or_else(truncated)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i).ok_or_else(truncated)?;
        let Some(rest) = strtab.get(name_off as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            let bytes = data
                .get(off..off.saturating_add(size))
                .ok_or_else(|| bad(path, "section beyond end of file"))?;
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// True when the executable has a `PT_INTERP` program header, i.e. needs a
/// dynamic loader and shared libraries that a busybox guest does not have.
pub(crate) fn needs_interpreter(path: &Path, data: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    check_header(path, data)?;
    let truncated = || bad(path, "truncated program header table");
    let phoff = u64_at(data, 0x20).ok_or_else(truncated)?;
    let phentsize = usize::from(u16_at(data, 0x36).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(data, 0x38).ok_or_else(truncated)?);
    for i in 0..phnum {
        let p_type = u32_at(data, phoff + i * phentsize).ok_or_else(truncated)?;
        if p_type == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        let err = section(Path::new("x"), &[0u8; 100], ".modinfo").unwrap_err();
        assert!(matches!(err, Error::BadElf { .. }));
    }

    #[test]
    fn the_test_binary_itself_is_dynamic_or_static_consistently() {
        // The running test binary is a real ELF file; reading it must not fail,
        // and its answer must agree with whether it has an .interp section.
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let dynamic = needs_interpreter(&exe, &data).unwrap();
        let interp = section(&exe, &data, ".interp").unwrap();
        assert_eq!(dynamic, interp.is_some());
    }
}
