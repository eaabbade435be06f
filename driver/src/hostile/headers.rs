//! FUSE messages that lie about themselves: an in-header length longer or
//! shorter than what was sent, a header or an argument cut short, an opcode
//! that does not exist. The daemon must answer an error (or, for a header
//! too short to answer, drop the chain) and never read past what it got.

use super::chains::hdr;
use super::{expect_error, expect_error_or_dropped, Case};
use crate::chain::{Chain, Segment, OUT_HEADER_LEN};
use crate::fuse::{op, Request, ROOT_ID};
use crate::session::{getattr_request, next_unique, ATTR_LEN};

pub(super) const IN_LEN_TOO_BIG: Case = Case::request(
    "in-len-too-big",
    "fuse_in_header.len = 1 MiB on a 56-byte request",
    |x| {
        Ok(expect_error(&x.send(
            &getattr_request(ROOT_ID).with_len(1 << 20),
            ATTR_LEN,
        )?))
    },
);

pub(super) const IN_LEN_TOO_SMALL: Case = Case::request(
    "in-len-too-small",
    "fuse_in_header.len = 8, shorter than the header",
    |x| {
        Ok(expect_error(
            &x.send(&getattr_request(ROOT_ID).with_len(8), ATTR_LEN)?,
        ))
    },
);

pub(super) const TRUNCATED_HEADER: Case = Case::ring(
    "truncated-header",
    "readable part of 20 bytes, half a fuse_in_header",
    |x| {
        let mut b = getattr_request(ROOT_ID).encode(next_unique());
        b.truncate(20);
        let ch = Chain::default()
            .push(Segment::Readable { data: b, align: 16 })
            .push(hdr(OUT_HEADER_LEN));
        Ok(expect_error_or_dropped(&x.send_chain(&ch)?))
    },
);

pub(super) const TRUNCATED_ARGS: Case = Case::request(
    "truncated-args",
    "READ whose fuse_read_in is cut short",
    |x| {
        let r = Request::new(op::READ, ROOT_ID).bytes(&[0u8; 8]);
        Ok(expect_error(&x.send(&r, 4096)?))
    },
);

pub(super) const UNKNOWN_OPCODE: Case = Case::request("unknown-opcode", "opcode 9999", |x| {
    Ok(expect_error(&x.send(&Request::new(9999, ROOT_ID), 64)?))
});
