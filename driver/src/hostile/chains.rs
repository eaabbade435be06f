//! Broken descriptor chains and rings: descriptors outside guest RAM or
//! running past its end, loops, dangling NEXT indices, available-ring
//! entries and indices that make no sense, zero-length and 4 GiB buffers,
//! and chains with their readable and writable parts missing or swapped.
//! A daemon may drop such a chain or fail the queue (the guest only hurt
//! itself), but must not act on it or die of it.

use std::time::Duration;

use super::{expect_error_or_dropped, Case, Finding, Outcome, ATTACK_WAIT};
use crate::chain::{Chain, Segment, Tail, OUT_HEADER_LEN};
use crate::error::Error;
use crate::fuse::{Reply, ROOT_ID};
use crate::memory::PAGE_SIZE;
use crate::session::{getattr_request, next_unique, ATTR_LEN};

pub(super) const DESC_OUTSIDE_MEMORY: Case = Case::ring(
    "desc-outside-memory",
    "request descriptor at 1 TiB, outside guest RAM",
    |x| {
        let ch = getattr_with(
            Segment::Raw {
                addr: 1 << 40,
                len: 56,
                writable: false,
            },
            vec![hdr(OUT_HEADER_LEN), hdr(ATTR_LEN)],
            Tail::End,
        );
        Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
    },
);

pub(super) const REPLY_OUTSIDE_MEMORY: Case = Case::ring(
    "reply-outside-memory",
    "writable descriptor outside guest RAM",
    |x| {
        Ok(expect_error_or_dropped(
            &x.send_chain(&reply_at(1 << 40, 4096))?,
        ))
    },
);

pub(super) const DESC_STRADDLES_END: Case = Case::ring(
    "desc-straddles-end",
    "descriptor starting inside RAM and running past its end",
    |x| {
        let end = x.h.device.mem().base() + x.h.device.mem().size();
        Ok(expect_error_or_dropped(
            &x.send_chain(&reply_at(end - 8, 4096))?,
        ))
    },
);

pub(super) const DESC_LOOP: Case = Case::ring(
    "desc-loop",
    "descriptor chain whose last entry points back at its head",
    |x| {
        let ch = root_getattr(vec![hdr(OUT_HEADER_LEN), hdr(ATTR_LEN)], Tail::LoopTo(0));
        let o = x.send_chain(&ch)?;
        Ok(match &o {
            // The spec bounds a chain walk by the queue size; a
            // daemon that stops there and answers has handled it.
            Outcome::Reply(r) if r.used_len > 0 && r.errno() == 0 => Finding {
                observed: "OK (walk bounded)".into(),
                ok: true,
            },
            _ => expect_error_or_dropped(&o),
        })
    },
);

pub(super) const DESC_NEXT_OUT_OF_RANGE: Case = Case::ring(
    "desc-next-out-of-range",
    "NEXT index beyond the descriptor table",
    |x| {
        let ch = root_getattr(vec![hdr(OUT_HEADER_LEN)], Tail::NextIndex(60_000));
        Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
    },
);

pub(super) const AVAIL_HEAD_OUT_OF_RANGE: Case = Case::ring(
    "avail-head-out-of-range",
    "available ring entry naming descriptor 60000 of a 128-entry table",
    |x| {
        let q = x.h.device.queue(1)?;
        let token = q.publish_raw_head(60_000)?;
        Ok(match q.wait_for(token, ATTACK_WAIT) {
            Ok(c) => expect_error_or_dropped(&Outcome::Reply(Reply {
                header: Default::default(),
                body: Vec::new(),
                used_len: c.len,
            })),
            Err(Error::Timeout(_)) => expect_error_or_dropped(&Outcome::NoReply),
            Err(e) => return Err(e),
        })
    },
);

pub(super) const AVAIL_IDX_RUNAWAY: Case = Case::ring(
    "avail-idx-runaway",
    "available index moved 1000 entries ahead of a 128-entry ring",
    |x| {
        let q = x.h.device.queue(1)?;
        q.advance_avail_idx(1000)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Finding {
            observed: "nothing to return".into(),
            ok: true,
        })
    },
);

pub(super) const ZERO_LENGTH_BUFFERS: Case = Case::ring(
    "zero-length-buffers",
    "zero-length readable and writable descriptors",
    |x| {
        let base = x.h.device.mem().base();
        let ch = Chain::default()
            .push(Segment::Raw {
                addr: base,
                len: 0,
                writable: false,
            })
            .push(Segment::Raw {
                addr: base,
                len: 0,
                writable: true,
            });
        Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
    },
);

pub(super) const OVERSIZED_BUFFER: Case = Case::ring(
    "oversized-buffer",
    "writable descriptor claiming 4 GiB - 1",
    |x| {
        let base = x.h.device.mem().base();
        Ok(expect_error_or_dropped(
            &x.send_chain(&reply_at(base + PAGE_SIZE, u32::MAX))?,
        ))
    },
);

pub(super) const NO_WRITABLE_PART: Case = Case::ring(
    "no-writable-part",
    "GETATTR chain with no writable descriptor",
    |x| {
        let ch = Chain::default().push(getattr_bytes());
        Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
    },
);

pub(super) const WRITABLE_BEFORE_READABLE: Case = Case::ring(
    "writable-before-readable",
    "writable descriptor first, request after it",
    |x| {
        let ch = Chain::default()
            .push(hdr(OUT_HEADER_LEN))
            .push(getattr_bytes());
        Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
    },
);

/// A GETATTR of the root laid out as `readable`, then `writable`, ending
/// in `tail`: a well-formed chain with one part replaced.
fn getattr_with(readable: Segment, writable: Vec<Segment>, tail: Tail) -> Chain {
    let mut c = Chain::default().push(readable);
    for w in writable {
        c = c.push(w);
    }
    c.with_tail(tail)
}

/// A well-formed GETATTR request of the root, with a writable part and an
/// end of the caller's choosing.
fn root_getattr(writable: Vec<Segment>, tail: Tail) -> Chain {
    getattr_with(getattr_bytes(), writable, tail)
}

/// A GETATTR of the root whose whole reply goes to `len` bytes at guest
/// address `addr`, wherever that is.
fn reply_at(addr: u64, len: u32) -> Chain {
    let reply = Segment::Raw {
        addr,
        len,
        writable: true,
    };
    root_getattr(vec![reply], Tail::End)
}

/// A writable descriptor of `len` bytes in guest RAM.
pub(super) fn hdr(len: u32) -> Segment {
    Segment::Writable { len, align: 16 }
}

/// The bytes of a GETATTR of the root, as one readable descriptor.
fn getattr_bytes() -> Segment {
    Segment::Readable {
        data: getattr_request(ROOT_ID).encode(next_unique()),
        align: 16,
    }
}
