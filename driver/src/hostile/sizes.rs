//! Sizes that lie and resources run dry: a READ of 4 GiB into a 4 KiB
//! buffer, offsets whose end overflows (READ, WRITE, FALLOCATE, LSEEK,
//! COPY_FILE_RANGE, SETATTR), a WRITE claiming more payload than it
//! carries, and opening far more files than the daemon has descriptors
//! for. The daemon must never write past the guest's buffer or take more
//! than was sent, and must answer EMFILE or ENFILE rather than fail.

use std::collections::BTreeMap;

use fuse_backend_rs::abi::fuse_abi::{
    CopyFileRangeIn, EntryOut, FallocateIn, LseekIn, SetattrIn, WriteIn, WriteOut,
};

use super::{expect_error, Case, Finding, Outcome};
use crate::error::errno_name;
use crate::fuse::{op, Request, ROOT_ID};
use crate::session::{open_request, read_request, ENTRY_LEN, OPEN_LEN};

/// Files in `many/` for the fd-exhaustion case.
pub(super) const FD_FILES: usize = 1200;
/// Descriptor limit for the fd-exhaustion case (virtiofsd refuses to start
/// below about 610).
const FD_LIMIT: u64 = 1024;

pub(super) const READ_4GIB: Case =
    Case::request("read-4gib", "READ of 4 GiB - 1 into a 4 KiB buffer", |x| {
        let mut s = x.session();
        let a = s.lookup(ROOT_ID, b"a.txt")?;
        let fh = s.open(a.nodeid, libc::O_RDONLY as u32, false)?.fh;
        let o = x.send(&read_request(a.nodeid, fh, 0, u32::MAX), 4096)?;
        Ok(match &o {
            Outcome::Reply(r) if r.errno() == 0 => Finding {
                observed: format!("short read of {} bytes", r.body.len()),
                ok: r.body.len() <= 4096,
            },
            _ => expect_error(&o),
        })
    });

pub(super) const READ_OFFSET_OVERFLOW: Case = Case::request(
    "read-offset-overflow",
    "READ of 1 MiB at offset 2^64 - 4096 (offset + size overflows)",
    |x| {
        let mut s = x.session();
        let a = s.lookup(ROOT_ID, b"a.txt")?;
        let fh = s.open(a.nodeid, libc::O_RDONLY as u32, false)?.fh;
        let o = x.send(
            &read_request(a.nodeid, fh, u64::MAX - 4095, 1 << 20),
            1 << 20,
        )?;
        Ok(match &o {
            // Nothing lies at that offset: an empty read is right too.
            Outcome::Reply(r) if r.errno() == 0 => Finding {
                observed: format!("read of {} bytes", r.body.len()),
                ok: r.body.is_empty(),
            },
            _ => expect_error(&o),
        })
    },
);

/// Offsets and lengths no file reaches, on every request that takes one:
/// each must be answered and change nothing.
pub(super) const OFFSETS_OVERFLOW: Case = Case::request(
    "offsets-overflow",
    "WRITE, FALLOCATE, LSEEK, COPY_FILE_RANGE and SETATTR(size) at offsets near 2^64",
    |x| {
        let (e, o) =
            x.session()
                .create(ROOT_ID, b"o", libc::S_IFREG | 0o644, libc::O_RDWR as u32)?;
        let (node, fh) = (e.nodeid, o.fh);
        let far = u64::MAX - 50;
        let reqs = [
            (
                "write",
                Request::new(op::WRITE, node)
                    .arg(&WriteIn {
                        fh,
                        offset: far,
                        size: 100,
                        ..Default::default()
                    })
                    .data(vec![7u8; 100]),
            ),
            (
                "fallocate",
                Request::new(op::FALLOCATE, node).arg(&FallocateIn {
                    fh,
                    offset: far,
                    length: 100,
                    ..Default::default()
                }),
            ),
            (
                "lseek",
                Request::new(op::LSEEK, node).arg(&LseekIn {
                    fh,
                    offset: u64::MAX,
                    whence: libc::SEEK_DATA as u32,
                    ..Default::default()
                }),
            ),
            (
                "copy_file_range",
                Request::new(op::COPY_FILE_RANGE, node).arg(&CopyFileRangeIn {
                    fh_in: fh,
                    offset_in: far,
                    nodeid_out: node,
                    fh_out: fh,
                    offset_out: far,
                    len: u64::MAX,
                    flags: 0,
                }),
            ),
            (
                "setattr",
                Request::new(op::SETATTR, node).arg(&SetattrIn {
                    valid: 1 << 3, // FATTR_SIZE
                    size: u64::MAX,
                    ..Default::default()
                }),
            ),
        ];
        let mut observed = Vec::new();
        let mut ok = true;
        for (label, r) in reqs {
            let what = match x.send(&r, 256)? {
                Outcome::Reply(r) if r.used_len == 0 => "chain returned empty".to_owned(),
                // errno 0 is "OK": a success that changed nothing is fine.
                Outcome::Reply(r) => errno_name(r.errno()).to_owned(),
                Outcome::NoReply => {
                    ok = false;
                    "no reply".to_owned()
                }
            };
            observed.push(format!("{label} {what}"));
            if !ok {
                break;
            }
        }
        let size = std::fs::metadata(x.share().join("o"))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(Finding {
            observed: observed.join(", "),
            ok,
        }
        .failed_if(size != 0, &format!("file grew to {size} bytes")))
    },
);

pub(super) const WRITE_BEYOND_BUFFER: Case = Case::request(
    "write-beyond-buffer",
    "WRITE claiming 1 MiB with 100 bytes of payload",
    |x| {
        let (e, o) =
            x.session()
                .create(ROOT_ID, b"w", libc::S_IFREG | 0o644, libc::O_RDWR as u32)?;
        let r = Request::new(op::WRITE, e.nodeid)
            .arg(&WriteIn {
                fh: o.fh,
                offset: 0,
                size: 1 << 20,
                ..Default::default()
            })
            .data(vec![7u8; 100]);
        let out = x.send(&r, 8)?;
        let size = std::fs::metadata(x.share().join("w"))
            .map(|m| m.len())
            .unwrap_or(0);
        let mut f = expect_error(&out);
        if let Outcome::Reply(r) = &out {
            if r.errno() == 0 {
                let n: u32 = r.parse::<WriteOut>().map(|w| w.size).unwrap_or(0);
                f = Finding {
                    observed: format!("wrote {n} (file {size} bytes)"),
                    ok: n <= 100 && size <= 100,
                };
            }
        }
        Ok(f)
    },
);

pub(super) const FD_EXHAUSTION: Case = Case::request(
    "fd-exhaustion",
    "LOOKUP+OPEN 1200 files without RELEASE under RLIMIT_NOFILE=1024",
    |x| {
        let many = x.session().lookup(ROOT_ID, b"many")?.nodeid;
        let mut errs = BTreeMap::new();
        let mut opened = 0;
        let stalled = |opened| Finding {
            observed: format!("no reply after {opened} opens"),
            ok: false,
        };
        for i in 0..FD_FILES {
            let name = format!("f{i}");
            let lookup = Request::new(op::LOOKUP, many).name(name.as_bytes());
            let Outcome::Reply(r) = x.send(&lookup, ENTRY_LEN)? else {
                return Ok(stalled(opened));
            };
            if r.errno() != 0 {
                *errs.entry(errno_name(r.errno())).or_insert(0) += 1;
                continue;
            }
            let node = r.parse::<EntryOut>()?.nodeid;
            let open = open_request(node, libc::O_RDONLY as u32, false);
            let Outcome::Reply(r) = x.send(&open, OPEN_LEN)? else {
                return Ok(stalled(opened));
            };
            if r.errno() == 0 {
                opened += 1;
            } else {
                *errs.entry(errno_name(r.errno())).or_insert(0) += 1;
            }
        }
        let errs: Vec<String> = errs.iter().map(|(k, v)| format!("{v}x{k}")).collect();
        Ok(Finding {
            observed: format!(
                "{opened} opened, then {}",
                if errs.is_empty() {
                    "no error".into()
                } else {
                    errs.join(" ")
                }
            ),
            ok: !errs.is_empty(),
        })
    },
)
.with_rlimit_nofile(FD_LIMIT);
