//! Ids the daemon never handed out: node ids that were never looked up
//! (0, 0xdeadbeef), file handles that were never opened or already
//! released, a directory handle used as a file handle, and a storm of
//! FORGETs for unknown nodes and for the root. The daemon must answer an
//! error and never act on whatever such an id happens to index.

use fuse_backend_rs::abi::fuse_abi::{BatchForgetIn, ForgetIn, ForgetOne, ReadIn, ReleaseIn};

use super::{expect_error, Case, Finding, ATTACK_WAIT};
use crate::chain::{Chain, Segment};
use crate::error::Result;
use crate::fuse::{op, Request, ROOT_ID};
use crate::queue::Queue;
use crate::session::{getattr_request, next_unique, read_request, ATTR_LEN};

pub(super) const UNKNOWN_NODEID: Case = Case::request(
    "unknown-nodeid",
    "GETATTR of node 0xdeadbeef, never looked up",
    |x| {
        Ok(expect_error(
            &x.send(&getattr_request(0xdead_beef), ATTR_LEN)?,
        ))
    },
);

pub(super) const NODEID_ZERO: Case = Case::request("nodeid-zero", "GETATTR of node 0", |x| {
    Ok(expect_error(&x.send(&getattr_request(0), ATTR_LEN)?))
});

pub(super) const UNKNOWN_FH: Case =
    Case::request("unknown-fh", "READ with a file handle never opened", |x| {
        let a = x.session().lookup(ROOT_ID, b"a.txt")?;
        Ok(expect_error(&x.send(
            &read_request(a.nodeid, 0x1234_5678, 0, 4096),
            4096,
        )?))
    });

pub(super) const RELEASE_UNKNOWN_FH: Case = Case::request(
    "release-unknown-fh",
    "RELEASE of a handle never opened, then READ with it",
    |x| {
        let a = x.session().lookup(ROOT_ID, b"a.txt")?;
        let _ = x.send(
            &Request::new(op::RELEASE, a.nodeid).arg(&ReleaseIn {
                fh: 77,
                ..Default::default()
            }),
            0,
        )?;
        Ok(expect_error(
            &x.send(&read_request(a.nodeid, 77, 0, 16), 16)?,
        ))
    },
);

pub(super) const DIR_FH_AS_FILE_FH: Case = Case::request(
    "dir-fh-as-file-fh",
    "READ with a handle from OPENDIR",
    |x| {
        let fh = x.session().open(ROOT_ID, libc::O_RDONLY as u32, true)?.fh;
        Ok(expect_error(
            &x.send(&read_request(ROOT_ID, fh, 0, 16), 16)?,
        ))
    },
);

pub(super) const FORGET_STORM: Case = Case::request(
    "forget-storm",
    "20,000 FORGETs and a BATCH_FORGET of unknown and root ids, nlookup 2^64-1",
    |x| {
        let q = x.h.device.queue(1)?;
        let mut sent = 0u64;
        for i in 0..20_000u64 {
            let node = match i % 4 {
                0 => ROOT_ID,
                1 => 0,
                2 => 0xdead_0000 + i,
                _ => u64::MAX - i,
            };
            let r = Request::new(op::FORGET, node).arg(&ForgetIn { nlookup: u64::MAX });
            submit_unanswered(q, &r)?;
            sent += 1;
        }
        let mut batch = Request::new(op::BATCH_FORGET, 0).arg(&BatchForgetIn {
            count: 1000,
            dummy: 0,
        });
        for i in 0..1000u64 {
            batch = batch.arg(&ForgetOne {
                nodeid: if i % 2 == 0 { ROOT_ID } else { i << 20 },
                nlookup: u64::MAX,
            });
        }
        submit_unanswered(q, &batch)?;
        while q.in_flight() > 0 {
            if q.wait(ATTACK_WAIT).is_err() {
                break;
            }
        }
        let lost = q.in_flight();
        q.abandon_in_flight();
        Ok(Finding {
            observed: format!("{} forgets, {lost} unreturned", sent + 1),
            ok: lost == 0,
        })
    },
);

pub(super) const SETATTR_UNKNOWN_NODE: Case = Case::request(
    "setattr-unknown-node",
    "SETATTR (chmod 4777) of a node never looked up",
    |x| {
        let a = fuse_backend_rs::abi::fuse_abi::SetattrIn {
            valid: 1,
            mode: 0o4777,
            ..Default::default()
        };
        Ok(expect_error(&x.send(
            &Request::new(op::SETATTR, 0x4242_4242).arg(&a),
            ATTR_LEN,
        )?))
    },
);

pub(super) const READDIR_BAD_OFFSET: Case = Case::request(
    "readdir-bad-offset",
    "READDIR with a handle never opened and offset 2^63",
    |x| {
        let r = Request::new(op::READDIR, ROOT_ID).arg(&ReadIn {
            fh: 999,
            offset: 1 << 63,
            size: 4096,
            ..Default::default()
        });
        Ok(expect_error(&x.send(&r, 4096)?))
    },
);

/// Submits a request that has no reply (a FORGET) as a chain of one
/// readable descriptor, first waiting for a free descriptor if need be.
fn submit_unanswered(q: &mut Queue, r: &Request) -> Result<()> {
    let ch = Chain::default().push(Segment::Readable {
        data: r.encode(next_unique()),
        align: 16,
    });
    while q.free_descriptors() == 0 {
        q.wait(ATTACK_WAIT)?;
    }
    q.submit(&ch)?;
    Ok(())
}
