//! Large READs handed to fsd's bulk-read threads (`--bulk-read-threads`,
//! on by default where the host has two cores or more).
//!
//! When several requests wait on a queue, fsd's queue thread hands READs
//! of 256 KiB and more to other threads and goes on with the rest. Each
//! batch here mixes large reads (whole, cut short at the end of the file,
//! on a handle that does not exist) with small requests, all published
//! before one kick, and every answer must be the one a lone request gets:
//! the right bytes at the right offset, the right length, the right error.
//! The same batches run against fsd with the threads off and on.
//!
//! A lone large READ (nothing else in flight) is instead cut into parts
//! that helper threads read beside the request's own thread
//! (`fs::split_read`); those reads, one at a time, must come back as
//! whole as one `preadv` would: ending in the first part, in a later part,
//! at the end of the file, or not at all.

use std::mem::size_of;
use std::path::Path;
use std::time::Duration;

use driver::chain::OUT_HEADER_LEN;
use driver::session::{getattr_request, next_unique, read_request};
use driver::{Chain, DaemonKind, Harness, HarnessOptions, Reply, Session};
use fuse_backend_rs::abi::fuse_abi::AttrOut;

/// 8 MiB and a bit: the last large read is cut short by the end of file.
const FILE_LEN: u64 = (8 << 20) + 12345;
const READ: u32 = 512 << 10;
const T: Duration = Duration::from_secs(30);

fn byte_at(off: u64) -> u8 {
    (off.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn populate(share: &Path) -> std::io::Result<()> {
    let data: Vec<u8> = (0..FILE_LEN).map(byte_at).collect();
    std::fs::write(share.join("big"), data)
}

/// What one request of a batch must get back.
enum Want {
    /// `len` bytes of the file from `off`.
    Data {
        off: u64,
        len: u32,
    },
    Error(i32),
    Attr,
}

/// fsd with `args`, its session up, and `big` open: the node and handle.
fn start(args: &[&str]) -> Option<(Harness, u64, u64)> {
    if !Harness::require(DaemonKind::Fsd) {
        return None;
    }
    let opts = HarnessOptions {
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let mut h = Harness::start(DaemonKind::Fsd, &opts, populate).unwrap();
    let q = h.device.queue(1).unwrap();
    let mut s = Session::new(q);
    s.init().unwrap();
    let node = s.lookup(1, b"big").unwrap().nodeid;
    let fh = s.open(node, libc::O_RDONLY as u32, false).unwrap().fh;
    Some((h, node, fh))
}

fn batches(args: &[&str]) {
    let Some((mut h, node, fh)) = start(args) else {
        return;
    };
    let q = h.device.queue(1).unwrap();
    let mem = q.mem().clone();
    let bufs: Vec<_> = (0..12)
        .map(|_| mem.alloc(u64::from(READ), 4096).unwrap())
        .collect();
    for round in 0..6u64 {
        let mut sent = Vec::new();
        for (i, buf) in bufs.iter().enumerate() {
            let i = i as u64;
            let (req, want) = match i % 6 {
                // Beyond the end: cut short at the file's length.
                5 => {
                    let off = FILE_LEN - 1000 - round;
                    (
                        read_request(node, fh, off, READ),
                        Want::Data {
                            off,
                            len: (FILE_LEN - off) as u32,
                        },
                    )
                }
                4 => (
                    read_request(node, fh ^ 0xdead, 0, READ),
                    Want::Error(libc::EBADF),
                ),
                3 => (getattr_request(node), Want::Attr),
                _ => {
                    let off = (i * 7 + round * 3) * 65536 + round * 4096;
                    (
                        read_request(node, fh, off, READ),
                        Want::Data { off, len: READ },
                    )
                }
            };
            let chain = match want {
                Want::Attr => req.chain(next_unique(), 256),
                _ => Chain::request_into(req.encode(next_unique()), buf.addr, READ),
            };
            // Poison the buffer so that a reply that says more than it wrote
            // shows.
            mem.write(buf.addr, &vec![0xee; READ as usize]).unwrap();
            sent.push((q.publish(&chain).unwrap(), buf.addr, want));
        }
        q.notify().unwrap();
        let mut left = sent.len();
        while left > 0 {
            for c in q.wait(T).unwrap() {
                let (_, addr, want) = sent
                    .iter()
                    .find(|(t, _, _)| *t == c.token)
                    .expect("an answer to a request of this batch");
                let reply = Reply::decode(&c).unwrap();
                let got = reply.header.len.saturating_sub(OUT_HEADER_LEN);
                match *want {
                    Want::Data { off, len } => {
                        assert_eq!(reply.header.error, 0, "round {round}, read at {off}");
                        assert_eq!(got, len, "round {round}, read at {off}");
                        let mut data = vec![0u8; len as usize];
                        mem.read(*addr, &mut data).unwrap();
                        let bad = (0..len as u64).find(|&k| data[k as usize] != byte_at(off + k));
                        assert_eq!(bad, None, "round {round}, read at {off}: wrong byte");
                    }
                    Want::Error(e) => assert_eq!(reply.header.error, -e, "round {round}"),
                    Want::Attr => {
                        assert_eq!(reply.header.error, 0, "round {round}, getattr");
                        assert_eq!(
                            reply.header.len,
                            OUT_HEADER_LEN + size_of::<AttrOut>() as u32
                        );
                    }
                }
                left -= 1;
            }
        }
    }
    assert!(h.escaped().is_empty(), "{:?}", h.escaped());
    assert!(h.daemon.status().is_none(), "fsd ended");
}

#[test]
fn batches_of_large_reads_answer_as_lone_ones_with_bulk_threads() {
    batches(&["--bulk-read-threads=2"]);
}

#[test]
fn batches_of_large_reads_answer_as_lone_ones_without_bulk_threads() {
    batches(&["--bulk-read-threads=0"]);
}

/// 1 MiB READs one at a time, from offsets that end them in each part, at
/// the end of the file and beyond it; with `split`, fsd has helpers.
fn lone_reads(args: &[&str], split: bool) {
    const BIG: u32 = 1 << 20;
    let Some((mut h, node, fh)) = start(args) else {
        return;
    };
    let helpers = h
        .daemon
        .thread_names()
        .iter()
        .filter(|n| n.starts_with("fsd-split-read"))
        .count();
    assert_eq!(helpers > 0, split, "split-read helpers: {helpers}");
    let q = h.device.queue(1).unwrap();
    let mem = q.mem().clone();
    let buf = mem.alloc(u64::from(BIG), 4096).unwrap();
    // One READ of BIG bytes into `buf`, alone in flight.
    let mut read = |fh: u64, off: u64| {
        let chain = Chain::request_into(
            read_request(node, fh, off, BIG).encode(next_unique()),
            buf.addr,
            BIG,
        );
        q.publish(&chain).unwrap();
        q.notify().unwrap();
        let c = q.wait(T).unwrap().pop().expect("an answer");
        Reply::decode(&c).unwrap()
    };
    let mut offsets: Vec<u64> = vec![0, 4095, 123_457, 3 << 20];
    // The file ends 100 KiB in (in the first part), 700 KiB in (a later
    // part), exactly at the end of the read, and before the read begins.
    offsets.extend([100 << 10, 700 << 10, u64::from(BIG), 0].map(|left| FILE_LEN - left));
    offsets.push(FILE_LEN + 4096);
    for round in 0..3u64 {
        for &off in &offsets {
            let off = off.saturating_sub(round * 512);
            let want = FILE_LEN.saturating_sub(off).min(u64::from(BIG)) as u32;
            mem.write(buf.addr, &vec![0xee; BIG as usize]).unwrap();
            let reply = read(fh, off);
            assert_eq!(reply.header.error, 0, "read at {off}");
            let got = reply.header.len.saturating_sub(OUT_HEADER_LEN);
            assert_eq!(got, want, "read at {off}");
            let mut data = vec![0u8; got as usize];
            mem.read(buf.addr, &mut data).unwrap();
            let bad = (0..u64::from(got)).find(|&k| data[k as usize] != byte_at(off + k));
            assert_eq!(bad, None, "read at {off}: wrong byte");
        }
    }
    // A bad handle, and offsets no file reaches (the guest's numbers, which
    // the split must not do arithmetic on unchecked): the errors, as
    // without helpers.
    for (fh, off, errno) in [
        (fh ^ 0xdead, 0, libc::EBADF),
        (fh, u64::MAX - 4096, libc::EINVAL),
        (fh, i64::MAX as u64 - 4096, libc::EINVAL),
    ] {
        assert_eq!(read(fh, off).header.error, -errno, "read at {off}");
    }
    assert!(h.escaped().is_empty(), "{:?}", h.escaped());
    assert!(h.daemon.status().is_none(), "fsd ended");
}

#[test]
fn lone_large_reads_split_over_helpers_answer_as_one_preadv() {
    lone_reads(&["--bulk-read-threads=2"], true);
}

#[test]
fn lone_large_reads_without_helpers() {
    lone_reads(&["--bulk-read-threads=0"], false);
}
