//! Arbitrary descriptor chain shapes carrying arbitrary bytes.
//!
//! Input: one byte with the number of descriptors (1..=8) and the tail kind,
//! then 4 bytes per descriptor (kind, length), then the payload that fills
//! the readable descriptors in order.
#![no_main]

use std::sync::Mutex;

use driver::chain::{Segment, Tail};
use libfuzzer_sys::fuzz_target;

static RIG: Mutex<Option<fsd_fuzz::Rig>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(first & 7) + 1;
    if rest.len() < 4 * n {
        return;
    }
    let (spec, mut payload) = rest.split_at(4 * n);
    let mut guard = RIG.lock().unwrap_or_else(|p| p.into_inner());
    let rig = guard.get_or_insert_with(fsd_fuzz::Rig::new);
    let (base, size) = (rig.mem().base(), rig.mem().size());
    let mut chain = driver::Chain::default();
    for d in spec.chunks(4) {
        let len = u32::from(u16::from_le_bytes([d[2], d[3]]));
        let seg = match d[0] % 6 {
            0 | 1 => {
                let take = (len as usize).min(payload.len());
                let (now, later) = payload.split_at(take);
                payload = later;
                Segment::Readable {
                    data: now.to_vec(),
                    align: if d[1] & 1 == 0 { 16 } else { 4096 },
                }
            }
            2 | 3 => Segment::Writable {
                len,
                align: if d[1] & 1 == 0 { 16 } else { 4096 },
            },
            // Raw descriptors in the middle (clear of the rings, which sit
            // at the start), at the end of guest memory and beyond.
            k => Segment::Raw {
                addr: match d[1] % 4 {
                    0 => base + size / 2,
                    1 => base + size - u64::from(d[1]),
                    2 => base + size + u64::from(d[1]) * 4096,
                    _ => u64::MAX - u64::from(d[1]),
                },
                len: if d[1] & 0x80 != 0 {
                    u32::MAX - len
                } else {
                    len
                },
                writable: k == 5,
            },
        };
        chain = chain.push(seg);
    }
    chain = chain.with_tail(match first >> 3 & 3 {
        0 | 1 => Tail::End,
        2 => Tail::LoopTo(usize::from(first >> 5)),
        _ => Tail::NextIndex(u16::from(first).wrapping_mul(300)),
    });
    rig.run(&chain);
});
