//! Differential tests: one operation sequence against fsd and virtiofsd must
//! give equivalent replies (errno, sizes, modes, link counts, names; never
//! timestamps or inode numbers). A first test checks the sequence against
//! the host file system through virtiofsd alone, so that the driver itself is
//! known to be right.

mod common;

use driver::fuse::fuse_abi::SetattrIn;
use driver::fuse::ROOT_ID;
use driver::{DaemonKind, Harness, HarnessOptions, Session};

/// Runs the sequence and describes each reply in a daemon-neutral line.
fn scenario(h: &mut Harness) -> Vec<String> {
    let mut out = Vec::new();
    let log = h.daemon.log_tail();
    let mut s = Session::new(h.device.queue(1).expect("request queue"));
    let init = match s.init() {
        Ok(i) => i,
        Err(e) => panic!("FUSE_INIT: {e}; daemon log:\n{log}"),
    };
    out.push(format!("init major={}", init.major));

    macro_rules! rec {
        ($label:expr, $e:expr, $fmt:expr) => {{
            let r = $e;
            out.push(match &r {
                Ok(v) => format!("{}: OK {}", $label, $fmt(v)),
                Err(driver::Error::Fuse { name, .. }) => format!("{}: {}", $label, name),
                Err(e) => panic!("{}: transport failure {e}", $label),
            });
            r.ok()
        }};
    }
    let entry = |e: &driver::fuse::fuse_abi::EntryOut| {
        format!(
            "mode={:o} size={} nlink={}",
            e.attr.mode, e.attr.size, e.attr.nlink
        )
    };
    let unit = |_: &()| String::new();

    rec!(
        "getattr /",
        s.getattr(ROOT_ID),
        |a: &driver::fuse::fuse_abi::AttrOut| format!("mode={:o}", a.attr.mode & 0o170000)
    );
    let a = rec!("lookup a.txt", s.lookup(ROOT_ID, b"a.txt"), entry).unwrap();
    rec!("lookup missing", s.lookup(ROOT_ID, b"missing"), entry);
    rec!("lookup a.txt/x", s.lookup(a.nodeid, b"x"), entry);
    let fh = rec!(
        "open a.txt",
        s.open(a.nodeid, libc::O_RDONLY as u32, false),
        |_: &_| String::new()
    )
    .unwrap()
    .fh;
    let checksum = |b: &Vec<u8>| {
        format!(
            "len={} sum={}",
            b.len(),
            b.iter().map(|&x| u64::from(x)).sum::<u64>()
        )
    };
    rec!("read 0+4096", s.read(a.nodeid, fh, 0, 4096), checksum);
    rec!("read 8192+4096", s.read(a.nodeid, fh, 8192, 4096), checksum);
    rec!(
        "read past eof",
        s.read(a.nodeid, fh, 20_000, 4096),
        checksum
    );
    rec!(
        "write on O_RDONLY",
        s.write(a.nodeid, fh, 0, b"no"),
        |n: &u32| n.to_string()
    );
    rec!("release a.txt", s.release(a.nodeid, fh, false), unit);

    let (n, o) = rec!(
        "create new.txt",
        s.create(
            ROOT_ID,
            b"new.txt",
            libc::S_IFREG | 0o644,
            libc::O_RDWR as u32
        ),
        |(e, _): &(driver::fuse::fuse_abi::EntryOut, _)| entry(e)
    )
    .unwrap();
    rec!(
        "create new.txt O_EXCL",
        s.create(
            ROOT_ID,
            b"new.txt",
            libc::S_IFREG | 0o644,
            (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32
        ),
        |(e, _): &(driver::fuse::fuse_abi::EntryOut, _)| entry(e)
    );
    let payload = vec![0x5au8; 5000];
    rec!(
        "write 5000",
        s.write(n.nodeid, o.fh, 0, &payload),
        |n: &u32| n.to_string()
    );
    rec!("read back", s.read(n.nodeid, o.fh, 0, 8192), checksum);
    rec!("release new.txt", s.release(n.nodeid, o.fh, false), unit);
    rec!(
        "getattr new.txt",
        s.getattr(n.nodeid),
        |a: &driver::fuse::fuse_abi::AttrOut| {
            format!("size={} nlink={}", a.attr.size, a.attr.nlink)
        }
    );

    let sub = rec!("mkdir sub", s.mkdir(ROOT_ID, b"sub", 0o755), entry).unwrap();
    rec!("mkdir sub again", s.mkdir(ROOT_ID, b"sub", 0o755), entry);
    rec!("rmdir missing", s.rmdir(ROOT_ID, b"nothere"), unit);
    rec!(
        "link new.txt sub/hard",
        s.link(n.nodeid, sub.nodeid, b"hard"),
        entry
    );
    rec!(
        "rename new.txt renamed.txt",
        s.rename(ROOT_ID, b"new.txt", ROOT_ID, b"renamed.txt"),
        unit
    );
    rec!(
        "lookup new.txt after rename",
        s.lookup(ROOT_ID, b"new.txt"),
        entry
    );
    let sl = rec!(
        "symlink sub/sl",
        s.symlink(sub.nodeid, b"sl", b"target"),
        entry
    )
    .unwrap();
    rec!("readlink sub/sl", s.readlink(sl.nodeid), |b: &Vec<u8>| {
        String::from_utf8_lossy(b).into_owned()
    });
    rec!("readlink a.txt", s.readlink(a.nodeid), |b: &Vec<u8>| {
        String::from_utf8_lossy(b).into_owned()
    });
    rec!("rmdir non-empty sub", s.rmdir(ROOT_ID, b"sub"), unit);
    rec!("unlink sub/hard", s.unlink(sub.nodeid, b"hard"), unit);
    rec!(
        "getattr renamed",
        s.getattr(n.nodeid),
        |a: &driver::fuse::fuse_abi::AttrOut| format!("nlink={}", a.attr.nlink)
    );
    rec!("unlink dir d", s.unlink(ROOT_ID, b"d"), unit);
    rec!("rmdir file a.txt", s.rmdir(ROOT_ID, b"a.txt"), unit);
    rec!(
        "open dir as file O_WRONLY",
        s.open(ROOT_ID, libc::O_WRONLY as u32, false),
        |_: &_| String::new()
    );
    let mut trunc = SetattrIn {
        valid: 1 << 3, // FATTR_SIZE
        size: 100,
        ..Default::default()
    };
    rec!(
        "truncate renamed to 100",
        s.setattr(n.nodeid, &trunc),
        |a: &driver::fuse::fuse_abi::AttrOut| format!("size={}", a.attr.size)
    );
    trunc.valid = 1; // FATTR_MODE
    trunc.mode = 0o600;
    rec!(
        "chmod renamed 600",
        s.setattr(n.nodeid, &trunc),
        |a: &driver::fuse::fuse_abi::AttrOut| format!("mode={:o}", a.attr.mode)
    );
    rec!(
        "mknod fifo",
        s.mknod(ROOT_ID, b"fifo", libc::S_IFIFO | 0o644, 0),
        entry
    );
    rec!("statfs", s.statfs(), |_: &_| String::new());
    rec!(
        "readdirplus /",
        s.readdir_all(ROOT_ID, true, 4096),
        |v: &Vec<driver::fuse::DirEntry>| {
            let mut names: Vec<String> = v
                .iter()
                .map(|e| format!("{}:{}", String::from_utf8_lossy(&e.name), e.kind))
                .collect();
            names.sort();
            names.join(",")
        }
    );
    let d = s_lookup_d(&mut s);
    rec!("readdir /d", s.readdir_all(d, false, 4096), |v: &Vec<
        driver::fuse::DirEntry,
    >| {
        let mut names: Vec<String> = v
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        names.sort();
        names.join(",")
    });
    out
}

fn s_lookup_d(s: &mut Session<'_>) -> u64 {
    s.lookup(ROOT_ID, b"d").expect("lookup d").nodeid
}

#[test]
fn driver_sees_the_host_tree_through_virtiofsd() {
    let Some(mut h) = common::start(
        DaemonKind::Virtiofsd,
        &HarnessOptions::default(),
        common::populate,
    ) else {
        return;
    };
    let share = h.share();
    let mut s = Session::new(h.device.queue(1).unwrap());
    s.init().unwrap();
    let a = s.lookup(ROOT_ID, b"a.txt").unwrap();
    let host = std::fs::read(share.join("a.txt")).unwrap();
    assert_eq!(a.attr.size, host.len() as u64);
    let fh = s.open(a.nodeid, libc::O_RDONLY as u32, false).unwrap().fh;
    let mut got = Vec::new();
    loop {
        let b = s.read(a.nodeid, fh, got.len() as u64, 3000).unwrap();
        if b.is_empty() {
            break;
        }
        got.extend(b);
    }
    assert_eq!(got, host);
    let (n, o) = s
        .create(
            ROOT_ID,
            b"w.bin",
            libc::S_IFREG | 0o600,
            libc::O_RDWR as u32,
        )
        .unwrap();
    assert_eq!(s.write(n.nodeid, o.fh, 4096, b"tail").unwrap(), 4);
    s.release(n.nodeid, o.fh, false).unwrap();
    let w = std::fs::read(share.join("w.bin")).unwrap();
    assert_eq!(w.len(), 4100);
    assert_eq!(&w[4096..], b"tail");
    let mut names: Vec<String> = s
        .readdir_all(ROOT_ID, true, 256)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    let mut host_names: Vec<String> = std::fs::read_dir(&share)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_names.sort();
    assert_eq!(names, host_names);
    assert!(h.escaped().is_empty());
}

#[test]
fn fsd_and_virtiofsd_reply_alike() {
    if !common::both_available() {
        return;
    }
    let mut results = Vec::new();
    for kind in [DaemonKind::Virtiofsd, DaemonKind::Fsd] {
        let mut h = common::start(kind, &HarnessOptions::default(), common::populate).unwrap();
        results.push(scenario(&mut h));
        assert!(
            h.escaped().is_empty(),
            "{} wrote outside the share",
            kind.name()
        );
    }
    let (v, f) = (&results[0], &results[1]);
    println!("virtiofsd replies:\n  {}", v.join("\n  "));
    let diffs: Vec<String> = v
        .iter()
        .zip(f.iter())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("  virtiofsd: {a}\n  fsd:       {b}"))
        .collect();
    assert_eq!(v.len(), f.len());
    assert!(diffs.is_empty(), "replies differ:\n{}", diffs.join("\n"));
}

/// Many chains in flight at once, with and without EVENT_IDX, on every
/// daemon available: each must come back exactly once with its own reply.
#[test]
fn deep_queue_with_and_without_event_idx() {
    use driver::fuse::{op, Reply, Request};
    use driver::session::next_unique;
    for kind in [DaemonKind::Virtiofsd, DaemonKind::Fsd] {
        for event_idx in [false, true] {
            let opts = HarnessOptions {
                device: driver::DeviceConfig {
                    event_idx,
                    queue_size: 256,
                    ..Default::default()
                },
                ..Default::default()
            };
            let Some(mut h) = common::start(kind, &opts, common::populate) else {
                continue;
            };
            let q = h.device.queue(1).unwrap();
            Session::new(q).init().unwrap();
            // 64 LOOKUPs of alternating names, all published before one kick.
            let mut want = std::collections::HashMap::new();
            for i in 0..64u64 {
                let (name, ok) = if i % 2 == 0 {
                    (&b"a.txt"[..], true)
                } else {
                    (&b"nope"[..], false)
                };
                let req = Request::new(op::LOOKUP, ROOT_ID).name(name);
                let token = q
                    .publish(&req.chain(next_unique(), driver::session::ENTRY_LEN))
                    .unwrap();
                want.insert(token, ok);
            }
            q.notify().unwrap();
            while !want.is_empty() {
                for c in q.wait(std::time::Duration::from_secs(10)).unwrap() {
                    let ok = want
                        .remove(&c.token)
                        .expect("completion for a chain in flight");
                    let r = Reply::decode(&c).unwrap();
                    assert_eq!(r.errno() == 0, ok, "{} event_idx={event_idx}", kind.name());
                }
            }
            assert_eq!(q.in_flight(), 0);
            assert_eq!(
                h.device.features() & driver::device::VIRTIO_RING_F_EVENT_IDX != 0,
                event_idx
            );
        }
    }
}

/// A drop-in must behave like virtiofsd when the VMM goes away: serve one
/// connection, then exit successfully (libvirt and QEMU start one daemon per
/// VM and expect it to end with the VM).
#[test]
fn daemon_exits_when_the_vmm_disconnects() {
    for kind in [DaemonKind::Virtiofsd, DaemonKind::Fsd] {
        let Some(mut h) = common::start(kind, &HarnessOptions::default(), common::populate) else {
            continue;
        };
        Session::new(h.device.queue(1).unwrap()).init().unwrap();
        let (mut daemon, device, _scratch) = h.into_parts();
        drop(device);
        let status = daemon.wait_exit(std::time::Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} after disconnect: {status:?} (still running if None); log:\n{}",
            kind.name(),
            daemon.log_tail()
        );
    }
}
