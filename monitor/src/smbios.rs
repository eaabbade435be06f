//! VM identity: the SMBIOS type-1 (System Information) UUID as the guest
//! sees it, cross-checked with what QEMU itself was told.
//!
//! The guest kernel can rewrite its SMBIOS tables, so the RAM copy alone is
//! not proof of identity; QMP `query-uuid` is. A mismatch means the guest
//! tampered with its firmware tables.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::mem::PhysMem;
use crate::report::Identity;

const SCAN_START: u64 = 0xf0000;
const SCAN_END: u64 = 0x100000;

/// Where the type-1 structure was found and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmbiosUuid {
    /// Lower-case canonical form.
    pub uuid: String,
    /// Guest-physical address of the 16 UUID bytes.
    pub uuid_addr: u64,
    /// Guest-physical address of the entry point.
    pub entry_addr: u64,
}

/// The identity check: the authoritative UUID (QMP's) against the guest's
/// copy, which is tampered with when it differs or is missing.
pub fn identity(qmp_uuid: &str, smbios: Option<&SmbiosUuid>) -> Identity {
    let smbios_uuid = smbios.map(|s| s.uuid.clone());
    Identity {
        qmp_uuid: qmp_uuid.to_ascii_lowercase(),
        tampered: smbios_uuid.as_deref() != Some(&qmp_uuid.to_ascii_lowercase()),
        smbios_uuid,
    }
}

/// Format 16 SMBIOS UUID bytes; the first three fields are little-endian.
pub fn format_uuid(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// Find the structure table: (address, length, structure count limit).
fn find_table(mem: &dyn PhysMem) -> Result<(u64, u64, u64, u64)> {
    let mut seg = vec![0u8; (SCAN_END - SCAN_START) as usize];
    mem.read_phys(SCAN_START, &mut seg)?;
    for off in (0..seg.len() - 32).step_by(16) {
        let e = &seg[off..];
        if e.starts_with(b"_SM3_") {
            let len = e[6] as usize;
            if len < 24 || off + len > seg.len() || checksum(&e[..len]) != 0 {
                continue;
            }
            let max = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64;
            let addr = u64::from_le_bytes(e[16..24].try_into().unwrap());
            return Ok((SCAN_START + off as u64, addr, max, u64::MAX));
        }
        if e.starts_with(b"_SM_") {
            let len = e[5] as usize;
            if len < 31
                || off + len > seg.len()
                || checksum(&e[..len]) != 0
                || &e[16..21] != b"_DMI_"
            {
                continue;
            }
            let tlen = u16::from_le_bytes([e[22], e[23]]) as u64;
            let addr = u32::from_le_bytes(e[24..28].try_into().unwrap()) as u64;
            let count = u16::from_le_bytes([e[28], e[29]]) as u64;
            return Ok((SCAN_START + off as u64, addr, tlen, count));
        }
    }
    Err(Error::Smbios(
        "no SMBIOS entry point in 0xF0000-0xFFFFF".into(),
    ))
}

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

/// Read the type-1 UUID from guest RAM.
pub fn read_uuid(mem: &dyn PhysMem) -> Result<SmbiosUuid> {
    let (entry_addr, table, len, count) = find_table(mem)?;
    let len = len.min(1 << 20);
    let mut t = vec![0u8; len as usize];
    mem.read_phys(table, &mut t)?;
    let mut p = 0usize;
    let mut seen = 0;
    while p + 4 <= t.len() && seen < count {
        let ty = t[p];
        let flen = t[p + 1] as usize;
        if flen < 4 {
            return Err(Error::Smbios(format!(
                "structure at +{p} has length {flen}"
            )));
        }
        if ty == 1 && flen >= 0x18 && p + 0x18 <= t.len() {
            let b: [u8; 16] = t[p + 8..p + 24].try_into().unwrap();
            return Ok(SmbiosUuid {
                uuid: format_uuid(&b),
                uuid_addr: table + p as u64 + 8,
                entry_addr,
            });
        }
        if ty == 127 {
            break;
        }
        // Skip the formatted area and the string set (ends with two NULs).
        let mut q = p + flen;
        while q + 1 < t.len() && !(t[q] == 0 && t[q + 1] == 0) {
            q += 1;
        }
        p = q + 2;
        seen += 1;
    }
    Err(Error::Smbios("no type-1 structure".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::BufMem;

    #[test]
    fn uuid_byte_order() {
        let b = [
            0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
            0x77, 0x88,
        ];
        assert_eq!(format_uuid(&b), "12345678-9abc-def0-1122-334455667788");
    }

    #[test]
    fn finds_type1_through_a_32bit_entry_point() {
        let m = BufMem::new(0x100000);
        // Table at 0x9000: a type-0 with one string, then type-1.
        let mut table = vec![0u8, 4, 0, 0];
        table.extend_from_slice(b"vendor\0\0");
        let mut t1 = vec![1u8, 0x1b, 1, 0, 0, 0, 0, 0];
        t1.extend_from_slice(&[
            0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 1, 2, 3, 4, 5, 6, 7, 8,
        ]);
        t1.extend_from_slice(&[0, 0, 0]);
        t1.extend_from_slice(&[0, 0]);
        table.extend_from_slice(&t1);
        m.write_phys(0x9000, &table).unwrap();
        let mut ep = vec![0u8; 31];
        ep[..4].copy_from_slice(b"_SM_");
        ep[5] = 31;
        ep[16..21].copy_from_slice(b"_DMI_");
        ep[22..24].copy_from_slice(&(table.len() as u16).to_le_bytes());
        ep[24..28].copy_from_slice(&0x9000u32.to_le_bytes());
        ep[28..30].copy_from_slice(&2u16.to_le_bytes());
        let sum = checksum(&ep);
        ep[4] = 0u8.wrapping_sub(sum);
        m.write_phys(0xf5a00, &ep).unwrap();
        let u = read_uuid(&m).unwrap();
        assert_eq!(u.uuid, "12345678-9abc-def0-0102-030405060708");
        assert_eq!(u.uuid_addr, 0x9000 + 12 + 8);
        assert!(!identity("12345678-9ABC-DEF0-0102-030405060708", Some(&u)).tampered);
        assert!(identity("00000000-9abc-def0-0102-030405060708", Some(&u)).tampered);
        assert!(identity("00000000-9abc-def0-0102-030405060708", None).tampered);
    }
}
