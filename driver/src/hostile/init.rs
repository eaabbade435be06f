//! FUSE_INIT on a session that is already live: a second handshake with
//! the current ABI, and one claiming an ABI too old to speak. Either would
//! let a guest renegotiate what the daemon agreed to; both must be refused.

use fuse_backend_rs::abi::fuse_abi::InitIn;

use super::{expect_error, Case};
use crate::fuse::{op, Request};

pub(super) const SECOND_INIT: Case =
    Case::request("second-init", "a second FUSE_INIT on a live session", |x| {
        Ok(expect_error(&x.send(&init_request(7, 31), 80)?))
    });

pub(super) const INIT_MAJOR_6: Case = Case::request(
    "init-major-6",
    "FUSE_INIT claiming protocol major 6 (re-init with an old ABI)",
    |x| Ok(expect_error(&x.send(&init_request(6, 0), 80)?)),
);

/// FUSE_INIT claiming protocol `major.minor`, asking for nothing.
fn init_request(major: u32, minor: u32) -> Request {
    Request::new(op::INIT, 0).arg(&InitIn {
        major,
        minor,
        max_readahead: 0,
        flags: 0,
    })
}
