//! Turning a hook hit into an [`Event`]: the arguments in registers, the
//! current task through the per-CPU `current_task`, and the few struct
//! fields each kind needs, read through [`GuestMem`].
//!
//! Nothing here dereferences a guest pointer on the host: every access goes
//! through `GuestMem::read`, which walks the guest's page tables and fails
//! on anything unmapped. Struct pointers must also lie in the kernel half of
//! the address space; a pointer that does not is a fault, never read.
//! Separate from QEMU's API so it can be tested against a fake memory.

use std::net::{IpAddr, SocketAddr};

use crate::config::{Hook, Kind, Offsets};
use crate::event::{Detail, Event, File, Inet, Sock, Task, COMM_LEN, FILENAME_LEN, MAX_FAULTS};

/// Guest virtual memory as the vCPU that hit the hook sees it.
pub trait GuestMem {
    /// Fills `buf` from `addr`; false when any byte is unmapped.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;
}

/// The registers a hook reads at the function's first instruction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    /// rdi, rsi, rdx, rcx: the first four integer arguments (System V).
    pub args: [u64; 4],
    /// The kernel's GS base (the per-CPU area) while in kernel mode.
    pub gs_base: Option<u64>,
}

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Lowest address of the kernel half (canonical upper half, 4- and 5-level).
const KERNEL_HALF: u64 = 0xff00_0000_0000_0000;

fn kernel_ptr(p: u64) -> bool {
    p >= KERNEL_HALF
}

/// The largest span of a struct read at once (one page walk, one copy).
const MAX_SPAN: usize = 4096;

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

/// Reads the fields `want` (offset, size; `None` for a field whose offset is
/// unknown) of a struct at `base` with one read covering all of them; calls
/// `f` with the bytes and the span's start. None when no field is wanted,
/// `base` is no kernel pointer, the span is too large or the read fails (the
/// last three recorded as a fault). No allocation: this runs in a vCPU
/// callback.
fn read_span<M: GuestMem, R>(
    mem: &mut M,
    ev: &mut Event,
    what: &'static str,
    base: u64,
    want: &[Option<(u64, u64)>],
    f: impl FnOnce(&[u8], u64) -> R,
) -> Option<R> {
    let lo = want.iter().flatten().map(|w| w.0).min()?;
    let hi = want.iter().flatten().map(|w| w.0 + w.1).max()?;
    let len = (hi - lo) as usize;
    let start = base.wrapping_add(lo);
    if !kernel_ptr(base) || len > MAX_SPAN || start < base {
        ev.fault(what, base);
        return None;
    }
    let mut buf = [0u8; MAX_SPAN];
    if !mem.read(start, &mut buf[..len]) {
        ev.fault(what, start);
        return None;
    }
    Some(f(&buf[..len], lo))
}

fn read_u64<M: GuestMem>(
    mem: &mut M,
    ev: &mut Event,
    what: &'static str,
    addr: u64,
) -> Option<u64> {
    let mut b = [0u8; 8];
    if !kernel_ptr(addr) || !mem.read(addr, &mut b) {
        ev.fault(what, addr);
        return None;
    }
    Some(u64::from_le_bytes(b))
}

/// A `task_struct`: pid, tgid, comm and start time in one read, then, when
/// `parent` is set, the parent's tgid (one more read; each read is a page
/// walk in QEMU, about half a microsecond, so only fork events pay it).
pub fn read_task<M: GuestMem>(
    mem: &mut M,
    o: &Offsets,
    ev: &mut Event,
    what: &'static str,
    ptr: u64,
    parent: bool,
) -> Task {
    let mut t = Task {
        ptr,
        ..Task::default()
    };
    let (Some(pid), Some(tgid), Some(comm)) = (o.task_pid, o.task_tgid, o.task_comm) else {
        return t;
    };
    let want = [
        Some((pid, 4)),
        Some((tgid, 4)),
        Some((comm, COMM_LEN as u64)),
        o.task_real_parent.map(|x| (x, 8)),
        o.task_start_time.map(|x| (x, 8)),
        o.task_group_leader.map(|x| (x, 8)),
    ];
    let mut leader = None;
    let parent = read_span(mem, ev, what, ptr, &want, |b, lo| {
        let at = |off: u64| (off - lo) as usize;
        t.read = true;
        t.pid = u32_at(b, at(pid)).unwrap_or(0) as i32;
        t.tgid = u32_at(b, at(tgid)).unwrap_or(0) as i32;
        t.comm.copy_from_slice(&b[at(comm)..at(comm) + COMM_LEN]);
        t.start_ns = o.task_start_time.and_then(|s| u64_at(b, at(s)));
        leader = o
            .task_group_leader
            .and_then(|g| u64_at(b, at(g)))
            .filter(|&l| l != ptr && l != 0);
        o.task_real_parent
            .filter(|_| parent)
            .and_then(|p| u64_at(b, at(p)))
    })
    .flatten();
    if let Some(parent) = parent {
        let mut b = [0u8; 4];
        let addr = parent.wrapping_add(tgid);
        if kernel_ptr(parent) && mem.read(addr, &mut b) {
            t.ppid = Some(u32::from_le_bytes(b) as i32);
        } else {
            ev.fault("parent", addr);
        }
    }
    // A thread other than the leader: the leader names the process. One
    // more read, for such threads only.
    if let Some(l) = leader {
        t.leader = Some(l);
        if let Some(s) = o.task_start_time {
            t.leader_start_ns = read_u64(mem, ev, "leader", l.wrapping_add(s));
        }
    }
    t
}

/// A NUL-terminated kernel string of at most [`FILENAME_LEN`] bytes, read
/// page by page so a string ending before an unmapped page still reads.
fn read_cstr<M: GuestMem>(
    mem: &mut M,
    ev: &mut Event,
    what: &'static str,
    addr: u64,
) -> ([u8; FILENAME_LEN], usize, bool) {
    let mut out = [0u8; FILENAME_LEN];
    if !kernel_ptr(addr) {
        ev.fault(what, addr);
        return (out, 0, false);
    }
    let mut got = 0;
    while got < FILENAME_LEN {
        let at = addr.wrapping_add(got as u64);
        let to_page_end = (4096 - (at & 4095)) as usize;
        let n = to_page_end.min(FILENAME_LEN - got);
        if !mem.read(at, &mut out[got..got + n]) {
            ev.fault(what, at);
            return (out, 0, false);
        }
        if let Some(nul) = out[got..got + n].iter().position(|&c| c == 0) {
            return (out, got + nul, true);
        }
        got += n;
    }
    (out, FILENAME_LEN, true)
}

/// A `struct socket` and its `struct sock`.
fn read_sock<M: GuestMem>(mem: &mut M, o: &Offsets, ev: &mut Event, ptr: u64) -> Sock {
    let mut s = Sock {
        ptr,
        ..Sock::default()
    };
    let want = [o.socket_type.map(|x| (x, 2)), o.socket_sk.map(|x| (x, 8))];
    let sk = read_span(mem, ev, "sock", ptr, &want, |b, lo| {
        s.stype = o.socket_type.and_then(|t| u16_at(b, (t - lo) as usize));
        o.socket_sk.and_then(|k| u64_at(b, (k - lo) as usize))
    })
    .flatten();
    let Some(sk) = sk else { return s };
    s.sk = Some(sk);
    let ports = (o.skc_dport, o.skc_num);
    let v4 = (o.skc_daddr, o.skc_rcv_saddr);
    let v6 = (o.skc_v6_daddr, o.skc_v6_rcv_saddr);
    let want = [
        o.skc_family.map(|x| (x, 2)),
        o.skc_dport.map(|x| (x, 2)),
        o.skc_num.map(|x| (x, 2)),
        o.inet_sport.map(|x| (x, 2)),
        o.skc_daddr.map(|x| (x, 4)),
        o.skc_rcv_saddr.map(|x| (x, 4)),
        o.skc_v6_daddr.map(|x| (x, 16)),
        o.skc_v6_rcv_saddr.map(|x| (x, 16)),
    ];
    read_span(mem, ev, "sk", sk, &want, |b, lo| {
        let at = |off: u64| (off - lo) as usize;
        s.family = o.skc_family.and_then(|f| u16_at(b, at(f)));
        let (Some(dp), Some(n)) = ports else { return };
        // skc_num is in host order, skc_dport and inet_sport in network
        // order. A socket whose connection closed (TCP_CLOSE: the peer
        // reset it, say) has given its port back and skc_num reads 0, while
        // the data it received can still be read: inet_sport still names
        // the port.
        let local_port = match u16_at(b, at(n)).unwrap_or(0) {
            0 => o
                .inet_sport
                .and_then(|p| u16_at(b, at(p)))
                .map_or(0, u16::from_be),
            p => p,
        };
        let remote_port = u16::from_be(u16_at(b, at(dp)).unwrap_or(0));
        let ip = |off: u64, len: usize| -> Option<IpAddr> {
            let bytes = b.get(at(off)..at(off) + len)?;
            Some(match len {
                4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
                _ => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
            })
        };
        let addrs = match (s.family, v4, v6) {
            (Some(AF_INET), (Some(d), Some(r)), _) => ip(r, 4).zip(ip(d, 4)),
            (Some(AF_INET6), _, (Some(d), Some(r))) => ip(r, 16).zip(ip(d, 16)),
            _ => None,
        };
        s.inet = addrs.map(|(local, remote)| Inet {
            local: SocketAddr::new(local, local_port),
            remote: SocketAddr::new(remote, remote_port),
        });
    });
    // AF_UNIX: the peer's sock, which pairs the two ends of a conversation
    // (one more read, for UNIX sockets only).
    if let (Some(AF_UNIX), Some(p)) = (s.family, o.unix_peer) {
        s.peer_sk = read_u64(mem, ev, "unix_peer", sk.wrapping_add(p));
    }
    s
}

/// A `struct file`: its inode number and the device of its superblock.
fn read_file<M: GuestMem>(mem: &mut M, o: &Offsets, ev: &mut Event, ptr: u64) -> File {
    let mut f = File {
        ptr,
        ..File::default()
    };
    let Some(inode_off) = o.file_inode else {
        return f;
    };
    let Some(inode) = read_u64(mem, ev, "file", ptr.wrapping_add(inode_off)) else {
        return f;
    };
    let want = [o.inode_ino.map(|x| (x, 8)), o.inode_sb.map(|x| (x, 8))];
    let sb = read_span(mem, ev, "inode", inode, &want, |b, lo| {
        f.ino = o.inode_ino.and_then(|i| u64_at(b, (i - lo) as usize));
        o.inode_sb.and_then(|s| u64_at(b, (s - lo) as usize))
    })
    .flatten();
    if let (Some(sb), Some(dev)) = (sb, o.sb_dev) {
        let mut b = [0u8; 4];
        let addr = sb.wrapping_add(dev);
        if kernel_ptr(sb) && mem.read(addr, &mut b) {
            f.dev = Some(u32::from_le_bytes(b));
        } else {
            ev.fault("super_block", addr);
        }
    }
    f
}

/// Where and when a hook was hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hit {
    pub seq: u64,
    pub ns: u64,
    pub vcpu: u32,
    /// The hook table's generation.
    pub generation: u64,
}

/// The whole event for one hit of `hook`.
pub fn capture<M: GuestMem>(
    mem: &mut M,
    hook: &'static Hook,
    o: &Offsets,
    regs: &Regs,
    hit: Hit,
) -> Event {
    let mut ev = Event {
        seq: hit.seq,
        ns: hit.ns,
        vcpu: hit.vcpu,
        generation: hit.generation,
        kind: hook.kind,
        function: &hook.name,
        task: Task::default(),
        detail: Detail::Call { args: regs.args },
        faults: [None; MAX_FAULTS],
    };
    if let (Some(gs), Some(off)) = (regs.gs_base, o.current_task) {
        if let Some(cur) = read_u64(mem, &mut ev, "current", gs.wrapping_add(off)) {
            let fork = hook.kind == Kind::Fork;
            ev.task = read_task(mem, o, &mut ev, "task", cur, fork);
        }
    }
    let [a0, a1, a2, _] = regs.args;
    ev.detail = match hook.kind {
        Kind::Fork => Detail::Fork {
            child: read_task(mem, o, &mut ev, "child", a0, true),
        },
        Kind::Exit => Detail::Exit { code: a0 as i64 },
        Kind::Exec => {
            let name = o
                .binprm_filename
                .and_then(|f| read_u64(mem, &mut ev, "bprm", a0.wrapping_add(f)));
            match name {
                Some(p) => {
                    let (filename, len, read) = read_cstr(mem, &mut ev, "filename", p);
                    Detail::Exec {
                        filename,
                        len,
                        read,
                    }
                }
                None => Detail::Exec {
                    filename: [0; FILENAME_LEN],
                    len: 0,
                    read: false,
                },
            }
        }
        Kind::Send | Kind::Recv => {
            let sock = read_sock(mem, o, &mut ev, a0);
            let len = o
                .msghdr_count
                .and_then(|c| read_u64(mem, &mut ev, "msghdr", a1.wrapping_add(c)));
            Detail::Sock { sock, len }
        }
        Kind::Read | Kind::Write => Detail::File {
            file: read_file(mem, o, &mut ev, a0),
            len: a2,
        },
        Kind::Call => Detail::Call { args: regs.args },
    };
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Guest memory made of mapped 4 KiB pages.
    #[derive(Default)]
    struct FakeMem {
        pages: BTreeMap<u64, Box<[u8; 4096]>>,
    }

    impl FakeMem {
        fn write(&mut self, addr: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                let a = addr + i as u64;
                self.pages
                    .entry(a & !4095)
                    .or_insert_with(|| Box::new([0; 4096]))[(a & 4095) as usize] = *b;
            }
        }
        fn put_u64(&mut self, addr: u64, v: u64) {
            self.write(addr, &v.to_le_bytes());
        }
        fn put_u32(&mut self, addr: u64, v: u32) {
            self.write(addr, &v.to_le_bytes());
        }
    }

    impl GuestMem for FakeMem {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                let a = addr.wrapping_add(i as u64);
                match self.pages.get(&(a & !4095)) {
                    Some(p) => *b = p[(a & 4095) as usize],
                    None => return false,
                }
            }
            true
        }
    }

    /// The 6.1 layout the tests of this file use (Debian 6.1.0-57's BTF).
    fn offsets() -> Offsets {
        Offsets {
            current_task: Some(0x1fb80),
            task_pid: Some(2416),
            task_tgid: Some(2420),
            task_comm: Some(2976),
            task_real_parent: Some(2432),
            task_start_time: Some(2776),
            task_group_leader: Some(2504),
            binprm_filename: Some(96),
            socket_type: Some(4),
            socket_sk: Some(24),
            skc_daddr: Some(0),
            skc_rcv_saddr: Some(4),
            skc_dport: Some(12),
            skc_num: Some(14),
            inet_sport: Some(784),
            skc_family: Some(16),
            skc_v6_daddr: Some(56),
            skc_v6_rcv_saddr: Some(72),
            unix_peer: Some(1000),
            msghdr_count: Some(32),
            file_inode: Some(32),
            inode_ino: Some(64),
            inode_sb: Some(40),
            sb_dev: Some(16),
        }
    }

    const GS: u64 = 0xffff_8880_1fc0_0000;
    const PARENT: u64 = 0xffff_8880_0100_0000;
    const CHILD: u64 = 0xffff_8880_0200_0000;

    fn put_task(m: &mut FakeMem, at: u64, pid: u32, tgid: u32, name: &str, parent: u64) {
        let o = offsets();
        m.put_u32(at + o.task_pid.unwrap(), pid);
        m.put_u32(at + o.task_tgid.unwrap(), tgid);
        let mut c = [0u8; 16];
        c[..name.len()].copy_from_slice(name.as_bytes());
        m.write(at + o.task_comm.unwrap(), &c);
        m.put_u64(at + o.task_real_parent.unwrap(), parent);
        m.put_u64(at + o.task_start_time.unwrap(), 1234);
        m.put_u64(at + o.task_group_leader.unwrap(), at);
    }

    fn guest() -> FakeMem {
        let mut m = FakeMem::default();
        m.put_u64(GS + 0x1fb80, PARENT);
        put_task(&mut m, PARENT, 70, 70, "sh", PARENT + 0x10000);
        put_task(&mut m, PARENT + 0x10000, 1, 1, "init", PARENT + 0x10000);
        put_task(&mut m, CHILD, 71, 71, "sh", PARENT);
        m
    }

    fn hook(name: &str) -> &'static Hook {
        Box::leak(Box::new(Hook {
            name: name.to_string(),
            addr: 0xffffffff81000000,
            kind: Kind::of_function(name),
        }))
    }

    fn regs(args: [u64; 4]) -> Regs {
        Regs {
            args,
            gs_base: Some(GS),
        }
    }

    #[test]
    fn fork_reads_parent_and_child() {
        let mut m = guest();
        let ev = capture(
            &mut m,
            hook("wake_up_new_task"),
            &offsets(),
            &regs([CHILD, 0, 0, 0]),
            Hit::default(),
        );
        assert_eq!(ev.task.pid, 70);
        assert_eq!(ev.task.ppid, Some(1));
        assert_eq!(ev.task.start_ns, Some(1234));
        let Detail::Fork { child } = ev.detail else {
            panic!("{ev:?}")
        };
        assert!(child.read);
        assert_eq!((child.pid, child.tgid, child.ppid), (71, 71, Some(70)));
        assert_eq!(&child.comm[..3], b"sh\0");
        assert!(ev.faults.iter().all(Option::is_none), "{ev:?}");
        // Other events do not pay for the parent's read.
        let ev = capture(
            &mut m,
            hook("do_exit"),
            &offsets(),
            &regs([0, 0, 0, 0]),
            Hit::default(),
        );
        assert_eq!((ev.task.pid, ev.task.ppid), (70, None));
    }

    #[test]
    fn garbage_pointers_are_faults_not_reads() {
        let mut m = guest();
        // An unmapped kernel address, a user address and a pointer whose
        // span wraps around the top of the address space.
        for bad in [0xffff_8880_dead_0000, 0x7fff_0000_1000, u64::MAX - 8, 0] {
            let ev = capture(
                &mut m,
                hook("wake_up_new_task"),
                &offsets(),
                &regs([bad, 0, 0, 0]),
                Hit::default(),
            );
            let Detail::Fork { child } = ev.detail else {
                panic!()
            };
            assert!(!child.read, "{bad:#x}: {ev:?}");
            assert_eq!(ev.faults[0].map(|f| f.what), Some("child"), "{bad:#x}");
            assert_eq!(ev.task.pid, 70, "the caller is still reported");
        }
        // No GS base: no current task, no read at all.
        let ev = capture(
            &mut m,
            hook("do_exit"),
            &offsets(),
            &Regs {
                args: [0x700, 0, 0, 0],
                gs_base: None,
            },
            Hit::default(),
        );
        assert!(!ev.task.read);
        assert_eq!(ev.detail, Detail::Exit { code: 0x700 });
        // Missing offsets: fields left out, nothing guessed.
        let ev = capture(
            &mut m,
            hook("wake_up_new_task"),
            &Offsets::default(),
            &regs([CHILD, 0, 0, 0]),
            Hit::default(),
        );
        assert!(!ev.task.read);
        assert!(ev.faults.iter().all(Option::is_none));
    }

    #[test]
    fn exec_filename_up_to_an_unmapped_page() {
        let mut m = guest();
        let bprm = 0xffff_8880_0300_0000u64;
        // The name ends 6 bytes before a page boundary; the next page is unmapped.
        let name_at = 0xffff_8880_0400_0ffa_u64 - 5;
        m.put_u64(bprm + 96, name_at);
        m.write(name_at, b"/bin/sl\0");
        let ev = capture(
            &mut m,
            hook("begin_new_exec"),
            &offsets(),
            &regs([bprm, 0, 0, 0]),
            Hit::default(),
        );
        let Detail::Exec {
            filename,
            len,
            read,
        } = ev.detail
        else {
            panic!()
        };
        assert!(read, "{ev:?}");
        assert_eq!(&filename[..len], b"/bin/sl");
        // A name running into the unmapped page is a fault.
        m.write(name_at, b"/bin/sleep-");
        assert_eq!((name_at + 11) & 4095, 0);
        let ev = capture(
            &mut m,
            hook("begin_new_exec"),
            &offsets(),
            &regs([bprm, 0, 0, 0]),
            Hit::default(),
        );
        assert!(matches!(ev.detail, Detail::Exec { read: false, .. }));
        assert_eq!(ev.faults[0].map(|f| f.what), Some("filename"));
    }

    #[test]
    fn a_thread_names_its_leader_and_a_unix_socket_its_peer() {
        let mut m = guest();
        // pid 72 is a thread of process 70 (PARENT leads it).
        let thread = 0xffff_8880_0700_0000u64;
        put_task(&mut m, thread, 72, 70, "worker", PARENT);
        m.put_u64(thread + 2504, PARENT);
        m.put_u64(PARENT + 2504, PARENT);
        m.put_u64(PARENT + 2776, 999);
        m.put_u64(GS + 0x1fb80, thread);
        let sock = 0xffff_8880_0500_0000u64;
        let sk = 0xffff_8880_0600_0000u64;
        m.put_u64(sock + 24, sk);
        m.write(sk + 16, &1u16.to_le_bytes());
        m.put_u64(sk + 1000, 0xffff_8880_0600_4000);
        let ev = capture(
            &mut m,
            hook("__sock_sendmsg"),
            &offsets(),
            &regs([sock, 0xffff_c900_0000_1000, 0, 0]),
            Hit::default(),
        );
        assert_eq!((ev.task.pid, ev.task.tgid), (72, 70));
        assert_eq!(
            (ev.task.leader, ev.task.leader_start_ns),
            (Some(PARENT), Some(999))
        );
        let Detail::Sock { sock: s, .. } = ev.detail else {
            panic!("{ev:?}")
        };
        assert_eq!((s.family, s.inet), (Some(1), None));
        assert_eq!((s.sk, s.peer_sk), (Some(sk), Some(0xffff_8880_0600_4000)));
        let line = ev.to_json();
        assert_eq!(line["task"]["leader"], PARENT);
        assert_eq!(line["sock"]["peer_sk"], 0xffff_8880_0600_4000u64);
        // A leader names no other leader.
        m.put_u64(GS + 0x1fb80, PARENT);
        let ev = capture(
            &mut m,
            hook("do_exit"),
            &offsets(),
            &regs([0, 0, 0, 0]),
            Hit::default(),
        );
        assert_eq!(ev.task.leader, None);
        assert!(ev.to_json()["task"].get("leader").is_none());
    }

    #[test]
    fn socket_send_on_inet() {
        let mut m = guest();
        let sock = 0xffff_8880_0500_0000u64;
        let sk = 0xffff_8880_0600_0000u64;
        let msg = 0xffff_c900_0000_1000u64;
        m.write(sock + 4, &1u16.to_le_bytes());
        m.put_u64(sock + 24, sk);
        m.write(sk, &[127, 0, 0, 1]); // daddr
        m.write(sk + 4, &[127, 0, 0, 1]); // rcv_saddr
        m.write(sk + 12, &5555u16.to_be_bytes());
        m.write(sk + 14, &41000u16.to_le_bytes());
        m.write(sk + 16, &2u16.to_le_bytes());
        m.put_u64(msg + 32, 6);
        let ev = capture(
            &mut m,
            hook("__sock_sendmsg"),
            &offsets(),
            &regs([sock, msg, 0, 0]),
            Hit::default(),
        );
        let Detail::Sock { sock: s, len } = ev.detail else {
            panic!()
        };
        assert_eq!(len, Some(6));
        assert_eq!((s.stype, s.family), (Some(1), Some(2)));
        let inet = s.inet.unwrap();
        assert_eq!(inet.local.to_string(), "127.0.0.1:41000");
        assert_eq!(inet.remote.to_string(), "127.0.0.1:5555");
        assert_eq!(ev.kind, Kind::Send);
        // A closed connection gave its port back (skc_num 0): inet_sport
        // still names it.
        m.write(sk + 14, &0u16.to_le_bytes());
        m.write(sk + 784, &41000u16.to_be_bytes());
        let ev = capture(
            &mut m,
            hook("sock_recvmsg"),
            &offsets(),
            &regs([sock, msg, 0, 0]),
            Hit::default(),
        );
        let Detail::Sock { sock: s, .. } = ev.detail else {
            panic!()
        };
        assert_eq!(s.inet.unwrap().local.to_string(), "127.0.0.1:41000");
        // The same socket as AF_INET6 with v4-mapped addresses.
        let mapped: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
        m.write(sk + 16, &10u16.to_le_bytes());
        m.write(sk + 56, &mapped);
        m.write(sk + 72, &mapped);
        let ev = capture(
            &mut m,
            hook("sock_recvmsg"),
            &offsets(),
            &regs([sock, msg, 0, 0]),
            Hit::default(),
        );
        let Detail::Sock { sock: s, .. } = ev.detail else {
            panic!()
        };
        assert_eq!(
            s.inet.unwrap().remote.to_string(),
            "[::ffff:127.0.0.1]:5555"
        );
    }

    #[test]
    fn file_read_reports_inode_and_device() {
        let mut m = guest();
        let file = 0xffff_8880_0700_0000u64;
        let inode = 0xffff_8880_0800_0000u64;
        let sb = 0xffff_8880_0900_0000u64;
        m.put_u64(file + 32, inode);
        m.put_u64(inode + 64, 4242);
        m.put_u64(inode + 40, sb);
        m.put_u32(sb + 16, 0x0030_0001);
        let ev = capture(
            &mut m,
            hook("vfs_read"),
            &offsets(),
            &regs([file, 0x7ff0_0000, 4096, 0]),
            Hit::default(),
        );
        assert_eq!(
            ev.detail,
            Detail::File {
                file: File {
                    ptr: file,
                    ino: Some(4242),
                    dev: Some(0x0030_0001)
                },
                len: 4096
            }
        );
    }
}
