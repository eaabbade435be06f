//! Symbol addresses from the kernel's own compressed kallsyms tables.
//!
//! Debian ships an empty System.map, but every image carries the tables the
//! kernel uses for `/proc/kallsyms`. They are found by shape, not by name:
//!
//! ```text
//! kallsyms_offsets[N] (i32)   kallsyms_relative_base (u64)   kallsyms_num_syms (u32)
//! kallsyms_names   (len-prefixed token strings)
//! kallsyms_markers (u32 per 256 names)
//! kallsyms_seqs_of_names (3 bytes per name; 6.2+, backported to 6.1.y)
//! kallsyms_token_table (256 NUL-terminated strings)   kallsyms_token_index (256 × u16)
//! ```
//!
//! Every table starts 8-byte aligned. The token table is anchored by the
//! single-character tokens "0".."9", which always stand at their own index.
//! A System.map, when one exists, is accepted instead.

use crate::error::{Error, Result};

/// One kernel symbol (unrelocated link-time address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub kind: char,
    pub addr: u64,
}

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    d.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}
fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    d.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}
fn u64_at(d: &[u8], o: usize) -> Option<u64> {
    d.get(o..o + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
}

fn bad(msg: &str) -> Error {
    Error::Kallsyms(msg.to_string())
}

/// Locate the token table: returns (table start, index start, tokens).
fn find_tokens(ro: &[u8]) -> Result<(usize, usize, Vec<Vec<u8>>)> {
    const DIGITS: &[u8] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
    let mut from = 0;
    while let Some(rel) = find(&ro[from..], DIGITS) {
        let at = from + rel;
        from = at + 1;
        // The index follows the table within a few KiB.
        let start = at & !7;
        for idx in (start..(at + 0x4000).min(ro.len())).step_by(8) {
            let Some(first) = u16_at(ro, idx) else { break };
            if first != 0 {
                continue;
            }
            let Some(zero) = u16_at(ro, idx + 0x30 * 2) else {
                break;
            };
            let ok = (0..10).all(|k| {
                u16_at(ro, idx + (0x30 + k) * 2).map(u32::from)
                    == Some(u32::from(zero) + 2 * k as u32)
            });
            if !ok || (zero as usize) > at {
                continue;
            }
            let table = at - zero as usize;
            let mut tokens = Vec::with_capacity(256);
            for i in 0..256 {
                let o =
                    table + u16_at(ro, idx + i * 2).ok_or_else(|| bad("index truncated"))? as usize;
                let s = ro.get(o..).ok_or_else(|| bad("token out of range"))?;
                let end = s
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or_else(|| bad("token unterminated"))?;
                tokens.push(s[..end].to_vec());
            }
            return Ok((table, idx, tokens));
        }
    }
    Err(bad("token table not found"))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode the name entry at `p`; returns (token bytes, next position).
fn name_entry(ro: &[u8], p: usize) -> Option<(&[u8], usize)> {
    let b0 = *ro.get(p)? as usize;
    let (len, hdr) = if b0 & 0x80 != 0 {
        ((b0 & 0x7f) | ((*ro.get(p + 1)? as usize) << 7), 2)
    } else {
        (b0, 1)
    };
    let body = ro.get(p + hdr..p + hdr + len)?;
    Some((body, p + hdr + len))
}

/// Find the markers table by scanning back from the token table: a u32
/// array starting at 0 whose steps are those of 256 short names.
fn find_markers(ro: &[u8], before: usize) -> Option<(usize, Vec<u32>)> {
    let plausible = |d: u32| (256 * 2..=256 * 200).contains(&d);
    let mut q = before & !7;
    let lowest = before.saturating_sub(16 << 20);
    while q > lowest {
        q -= 8;
        if u32_at(ro, q) != Some(0) {
            continue;
        }
        let (Some(a), Some(b)) = (u32_at(ro, q + 4), u32_at(ro, q + 8)) else {
            continue;
        };
        if !plausible(a) || b <= a || !plausible(b - a) {
            continue;
        }
        let mut markers = vec![0u32];
        let mut o = q + 4;
        while let Some(v) = u32_at(ro, o) {
            if v <= *markers.last().unwrap() || !plausible(v - markers.last().unwrap()) {
                break;
            }
            markers.push(v);
            o += 4;
        }
        return Some((q, markers));
    }
    None
}

/// Parse the kallsyms tables out of `.rodata` loaded at `ro_addr`.
pub fn parse(ro: &[u8], _ro_addr: u64) -> Result<Vec<Symbol>> {
    let (table, _index, tokens) = find_tokens(ro)?;
    let (markers_at, markers) = find_markers(ro, table).ok_or_else(|| bad("markers not found"))?;
    let m = markers.len();
    let last = *markers.last().unwrap() as usize;

    // names ends just before markers (alignment padding of at most 7 bytes);
    // num_syms sits 8 bytes (one aligned slot) before names.
    let mut found = None;
    for names_len in last + 1..last + 256 * 512 {
        let Some(names_at) = markers_at.checked_sub(names_len) else {
            break;
        };
        if names_at % 8 != 0 || names_at < 16 {
            continue;
        }
        let Some(n) = u32_at(ro, names_at - 8) else {
            continue;
        };
        let n = n as usize;
        if n <= 256 * (m - 1) || n > 256 * m {
            continue;
        }
        // Verify: walking 256 entries from names lands on markers[1].
        let mut p = names_at;
        let mut ok = true;
        for k in 0..n {
            if k % 256 == 0 && (p - names_at) as u32 != markers[k / 256] {
                ok = false;
                break;
            }
            match name_entry(ro, p) {
                Some((_, next)) => p = next,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok && p <= markers_at && markers_at - p < 8 {
            found = Some((names_at, n));
            break;
        }
    }
    let (names_at, n) = found.ok_or_else(|| bad("names table not found"))?;
    let num_at = names_at - 8;

    // kallsyms_offsets + relative_base precede num_syms (6.1 layout); newer
    // kernels put them after the token index, so try both.
    let rel_base_at = num_at - 8;
    let rel_base = u64_at(ro, rel_base_at).ok_or_else(|| bad("relative base"))?;
    let offsets_len = (4 * n + 7) & !7;
    let offsets_at = rel_base_at
        .checked_sub(offsets_len)
        .ok_or_else(|| bad("offsets out of range"))?;
    if rel_base >> 32 != 0xffff_ffff {
        return Err(bad("relative base does not look like a kernel address"));
    }

    let mut out = Vec::with_capacity(n);
    let mut p = names_at;
    for i in 0..n {
        let (body, next) = name_entry(ro, p).ok_or_else(|| bad("name truncated"))?;
        p = next;
        let mut name = Vec::with_capacity(32);
        for &t in body {
            name.extend_from_slice(&tokens[t as usize]);
        }
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        let kind = name[0] as char;
        let off = u32_at(ro, offsets_at + 4 * i).ok_or_else(|| bad("offset truncated"))? as i32;
        // CONFIG_KALLSYMS_ABSOLUTE_PERCPU: non-negative values are absolute
        // (per-CPU symbols); negative ones are relative to the base.
        let addr = if off >= 0 {
            off as u64
        } else {
            rel_base.wrapping_sub(1).wrapping_sub(off as i64 as u64)
        };
        out.push(Symbol {
            name: String::from_utf8_lossy(&name[1..]).into_owned(),
            kind,
            addr,
        });
    }
    Ok(out)
}

/// Parse a System.map (`addr type name` per line).
pub fn parse_system_map(text: &str) -> Result<Vec<Symbol>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(a), Some(k), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let addr = u64::from_str_radix(a, 16)
            .map_err(|_| Error::Kallsyms(format!("bad System.map line: {line}")))?;
        out.push(Symbol {
            name: name.to_string(),
            kind: k.chars().next().unwrap_or('?'),
            addr,
        });
    }
    if out.is_empty() {
        return Err(bad("System.map holds no symbols"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_map_lines() {
        let s =
            parse_system_map("ffffffff81000000 T _text\nffffffff82a12940 D init_task\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].name, "init_task");
        assert_eq!(s[1].addr, 0xffffffff82a12940);
        assert!(parse_system_map("").is_err());
    }

    #[test]
    fn long_name_entries_use_two_length_bytes() {
        let mut d = vec![0x81, 0x01];
        d.extend(vec![7u8; 129]);
        let (body, next) = name_entry(&d, 0).unwrap();
        assert_eq!(body.len(), 129);
        assert_eq!(next, 131);
    }
}
