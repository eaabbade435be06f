//! Which guest process owns a TCP or UDP socket, read from outside: the
//! answer a packet filter needs for the first packet of every flow.
//!
//! The walk is Volatility's `sockstat`: for every process, `task->files->fdt`
//! gives the descriptor table; a `struct file` whose `f_op` is
//! `socket_file_ops` is a socket, its `private_data` the `struct socket`,
//! whose `sk` holds the addresses and ports (`skc_rcv_saddr`,
//! `inet_sport`, `skc_daddr`, `skc_dport`, all in network order). The
//! owner is the process (pid, `comm`, `real_cred->uid`) and the path of its
//! executable (`mm->exe_file`, a dentry walk that crosses mounts).
//!
//! A walk visits every descriptor of every process, so its result is kept:
//! [`SocketTable`] remembers where each socket was found (task, descriptor,
//! file, sock) and a later query for the same flow only re-reads those few
//! pointers to check that the socket is still there and still the same. A
//! query that no remembered socket answers (a new flow, or a socket that
//! moved) walks the guest again, once for a whole batch of queries.
//!
//! The guest keeps running during a walk: pausing it through QMP would
//! cost more than the walk itself. Every pointer read from the guest is
//! bounded (tasks, descriptors, path depth) and a task whose structures
//! cannot be read is skipped, so a structure that changes under the walk
//! (or a hostile guest kernel) costs an answer, never the monitor. Page
//! tables come from `init_mm.pgd`, which lives as long as the kernel, not
//! from a vCPU's CR3, which may belong to a process that exits.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};
use crate::paging::Paging;
use crate::process;
use crate::vm::Vm;
use crate::vmi::Kernel;
use monitor_client::taint::{SocketOwner, SocketQuery, Transport};

/// Descriptors looked at per process at most (a corrupt `max_fds` cannot
/// make a walk read gigabytes).
const MAX_FDS: u64 = 1 << 16;
/// Path components of an executable's path at most.
const MAX_PATH_DEPTH: usize = 64;
/// Sockets remembered at most; a walk that finds more keeps the first.
const MAX_SOCKETS: usize = 1 << 16;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

/// Where the kernel is, found once per attachment: reading it again costs
/// a QMP round trip.
#[derive(Debug, Clone, Copy)]
struct KernelBase {
    paging: Paging,
    slide: u64,
    page_offset_base: u64,
    vmemmap_base: u64,
}

/// One INET socket found in a process's descriptor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSocket {
    pub transport: Transport,
    /// `skc_rcv_saddr`/`skc_v6_rcv_saddr` and `inet_sport`; the address is
    /// unspecified for a socket bound to all addresses.
    pub local: SocketAddr,
    /// `skc_daddr`/`skc_v6_daddr` and `skc_dport`; unspecified for an
    /// unconnected socket.
    pub remote: SocketAddr,
    /// Where it was found, to check it again cheaply.
    pub task: u64,
    pub fd: u64,
    pub file: u64,
    pub sk: u64,
    pub owner: SocketOwner,
}

/// What the last lookups cost, for benchmarks and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Queries answered.
    pub queries: u64,
    /// Answered from a remembered socket, checked in place.
    pub hits: u64,
    /// Full walks of the guest's tasks.
    pub walks: u64,
    /// Queries no guest socket matched.
    pub unknown: u64,
}

/// The sockets of one guest as last seen, and where the kernel is.
#[derive(Debug, Default)]
pub struct SocketTable {
    base: Option<KernelBase>,
    sockets: Vec<FoundSocket>,
    /// Remembered sockets by (transport, local port).
    by_port: HashMap<(Transport, u16), Vec<usize>>,
    pub stats: LookupStats,
    /// Walk even when a remembered socket answers (benchmarks measure the
    /// cache this way).
    pub always_walk: bool,
}

impl SocketTable {
    pub fn new() -> SocketTable {
        SocketTable::default()
    }

    /// Owners of `queries`, in order. At most one walk of the guest for all
    /// of them; none when every query is answered by a remembered socket
    /// that is still in place.
    pub fn owners(
        &mut self,
        vm: &mut Vm,
        queries: &[SocketQuery],
    ) -> Result<Vec<Option<SocketOwner>>> {
        match self.owners_once(vm, queries) {
            // The guest may have rebooted (a new KASLR slide) or the cached
            // page tables gone stale: locate the kernel afresh, once.
            Err(e) if self.base.is_some() && !e.vm_connection_lost() => {
                log::info!("socket lookup failed ({e}); locating the kernel again");
                self.base = None;
                self.forget();
                self.owners_once(vm, queries)
            }
            r => r,
        }
    }

    fn owners_once(
        &mut self,
        vm: &mut Vm,
        queries: &[SocketQuery],
    ) -> Result<Vec<Option<SocketOwner>>> {
        let base = match self.base {
            Some(b) => b,
            None => {
                let b = locate(vm)?;
                self.base = Some(b);
                b
            }
        };
        let k = Kernel {
            mem: &vm.ram,
            profile: &vm.profile,
            paging: base.paging,
            slide: base.slide,
            page_offset_base: base.page_offset_base,
            vmemmap_base: base.vmemmap_base,
        };
        let mut answers: Vec<Option<SocketOwner>> = vec![None; queries.len()];
        let mut missing = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            match (!self.always_walk)
                .then(|| self.remembered(&k, q))
                .flatten()
            {
                Some(owner) => {
                    self.stats.hits += 1;
                    answers[i] = Some(owner);
                }
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            self.rebuild(walk(&k)?);
            self.stats.walks += 1;
            for i in missing {
                answers[i] = self
                    .best(&queries[i])
                    .map(|s| self.sockets[s].owner.clone());
            }
        }
        self.stats.queries += queries.len() as u64;
        self.stats.unknown += answers.iter().filter(|a| a.is_none()).count() as u64;
        Ok(answers)
    }

    /// Forgets the remembered sockets (the next query walks).
    pub fn forget(&mut self) {
        self.sockets.clear();
        self.by_port.clear();
    }

    fn rebuild(&mut self, mut found: Vec<FoundSocket>) {
        found.truncate(MAX_SOCKETS);
        self.forget();
        for (i, s) in found.iter().enumerate() {
            self.by_port
                .entry((s.transport, s.local.port()))
                .or_default()
                .push(i);
        }
        self.sockets = found;
    }

    /// The remembered socket that best matches `q`.
    fn best(&self, q: &SocketQuery) -> Option<usize> {
        let candidates = self.by_port.get(&(q.transport, q.local.port()))?;
        candidates
            .iter()
            .filter_map(|&i| Some((score(&self.sockets[i], q)?, i)))
            .max_by_key(|&(score, i)| (score, std::cmp::Reverse(i)))
            .map(|(_, i)| i)
    }

    /// A remembered socket for `q` that is still where it was found.
    fn remembered(&self, k: &Kernel<'_>, q: &SocketQuery) -> Option<SocketOwner> {
        let s = &self.sockets[self.best(q)?];
        still_there(k, s).ok()?.then(|| s.owner.clone())
    }

    /// Every socket found by the last walk.
    pub fn sockets(&self) -> &[FoundSocket] {
        &self.sockets
    }
}

/// How well a socket matches a query: `None` when it cannot be the one,
/// higher for a connected socket whose peer is the query's remote.
fn score(s: &FoundSocket, q: &SocketQuery) -> Option<u8> {
    if s.transport != q.transport || s.local.port() != q.local.port() {
        return None;
    }
    let local_ip = s.local.ip();
    if !local_ip.is_unspecified() && !same_ip(local_ip, q.local.ip()) {
        return None;
    }
    let connected = s.remote.port() != 0;
    match q.remote {
        Some(r) if connected && same_ip(s.remote.ip(), r.ip()) && s.remote.port() == r.port() => {
            Some(3)
        }
        // Connected to someone else: another flow on the same port (a
        // listener's accepted socket, or a stale socket in TIME_WAIT).
        Some(_) if connected => None,
        _ if !local_ip.is_unspecified() => Some(2),
        _ => Some(1),
    }
}

/// Compares addresses, a v4-mapped IPv6 address equal to its IPv4 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    v4(a) == v4(b)
}

/// Locates the kernel: CR3 and CR4 from QMP (the guest keeps running), the
/// KASLR slide, then the kernel's own page tables from `init_mm.pgd`.
fn locate(vm: &mut Vm) -> Result<KernelBase> {
    let regs = vm.qmp.registers(0)?;
    let reg = |name: &str| {
        regs.get(name)
            .copied()
            .ok_or_else(|| Error::QmpProtocol(format!("no {name} in info registers")))
    };
    let cr4 = reg("CR4")?;
    let k = vm.kernel(Paging::from_regs(reg("CR3")?, cr4))?;
    let pgd = k.read_field(k.sym("init_mm")?, "mm_struct", "pgd")?;
    let paging = Paging::from_regs(k.virt_to_phys(pgd)?, cr4);
    Ok(KernelBase {
        paging,
        slide: k.slide,
        page_offset_base: k.page_offset_base,
        vmemmap_base: k.vmemmap_base,
    })
}

/// Every INET socket of every process.
pub fn walk(k: &Kernel<'_>) -> Result<Vec<FoundSocket>> {
    let socket_fops = k.sym("socket_file_ops")?;
    let mut out = Vec::new();
    for task in process::task_addrs(k)? {
        // A task that exits under the walk, or whose structures do not
        // read, is skipped: its sockets are gone or unreadable anyway.
        if let Err(e) = task_sockets(k, task, socket_fops, &mut out) {
            log::debug!("task {task:#x} skipped: {e}");
        }
    }
    Ok(out)
}

/// The INET sockets of one process, appended to `out`.
fn task_sockets(
    k: &Kernel<'_>,
    task: u64,
    socket_fops: u64,
    out: &mut Vec<FoundSocket>,
) -> Result<()> {
    let files = k.read_field(task, "task_struct", "files")?;
    if files == 0 {
        return Ok(());
    }
    let fdt = k.read_field(files, "files_struct", "fdt")?;
    let max = k.read_field(fdt, "fdtable", "max_fds")?.min(MAX_FDS);
    let fd_array = k.read_field(fdt, "fdtable", "fd")?;
    let mut buf = vec![0u8; max as usize * 8];
    k.read(fd_array, &mut buf)?;
    let mut owner: Option<SocketOwner> = None;
    for (fd, slot) in buf.chunks_exact(8).enumerate() {
        let file = u64::from_le_bytes(slot.try_into().expect("8-byte chunk"));
        if file == 0 || k.read_field(file, "file", "f_op")? != socket_fops {
            continue;
        }
        let socket = k.read_field(file, "file", "private_data")?;
        let sk = k.read_field(socket, "socket", "sk")?;
        if sk == 0 {
            continue;
        }
        let Some((transport, local, remote)) = read_sock(k, sk)? else {
            continue;
        };
        if owner.is_none() {
            owner = Some(read_owner(k, task)?);
        }
        out.push(FoundSocket {
            transport,
            local,
            remote,
            task,
            fd: fd as u64,
            file,
            sk,
            owner: owner.clone().expect("set above"),
        });
    }
    Ok(())
}

/// Transport and both ends of a `struct sock`; `None` for sockets that are
/// not TCP or UDP over IPv4 or IPv6.
fn read_sock(k: &Kernel<'_>, sk: u64) -> Result<Option<(Transport, SocketAddr, SocketAddr)>> {
    let family = k.read_field(sk, "sock", "__sk_common.skc_family")? as u16;
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    // A raw socket carries its protocol number too: the type tells it apart.
    let kind = (
        k.read_field(sk, "sock", "sk_type")? as u16,
        k.read_field(sk, "sock", "sk_protocol")? as u16,
    );
    let transport = match kind {
        (SOCK_STREAM, IPPROTO_TCP) => Transport::Tcp,
        (SOCK_DGRAM, IPPROTO_UDP) => Transport::Udp,
        _ => return Ok(None),
    };
    // Ports are stored in network order; read_field reads little-endian.
    let sport = (k.read_field(sk, "inet_sock", "inet_sport")? as u16).swap_bytes();
    let dport = (k.read_field(sk, "sock", "__sk_common.skc_dport")? as u16).swap_bytes();
    let v4 = |field: &str| -> Result<IpAddr> {
        let raw = k.read_field(sk, "sock", field)? as u32;
        Ok(IpAddr::V4(Ipv4Addr::from(raw.to_le_bytes())))
    };
    let v6 = |field: &str| -> Result<IpAddr> {
        let mut b = [0u8; 16];
        k.read(sk + k.off("sock", field)?, &mut b)?;
        Ok(IpAddr::V6(Ipv6Addr::from(b)))
    };
    let (lip, rip) = if family == AF_INET {
        (
            v4("__sk_common.skc_rcv_saddr")?,
            v4("__sk_common.skc_daddr")?,
        )
    } else {
        let (l, r) = (
            v6("__sk_common.skc_v6_rcv_saddr")?,
            v6("__sk_common.skc_v6_daddr")?,
        );
        // A dual-stack socket talking IPv4 keeps the v4 addresses in the
        // IPv4 fields as well; report what the packets show.
        match (l, r) {
            (IpAddr::V6(l6), IpAddr::V6(r6))
                if l6.to_ipv4_mapped().is_some() || r6.to_ipv4_mapped().is_some() =>
            {
                (
                    v4("__sk_common.skc_rcv_saddr")?,
                    v4("__sk_common.skc_daddr")?,
                )
            }
            pair => pair,
        }
    };
    Ok(Some((
        transport,
        SocketAddr::new(lip, sport),
        SocketAddr::new(rip, dport),
    )))
}

/// The process a task belongs to, with its executable's path.
fn read_owner(k: &Kernel<'_>, task: u64) -> Result<SocketOwner> {
    let p = process::read_task(k, task)?;
    let exe = exe_path(k, task).ok().flatten();
    Ok(SocketOwner {
        pid: p.pid,
        name: p.name,
        uid: p.uid,
        exe,
        task,
    })
}

/// `mm->exe_file`'s path, or `None` for a process without one.
fn exe_path(k: &Kernel<'_>, task: u64) -> Result<Option<String>> {
    let mm = k.read_field(task, "task_struct", "mm")?;
    if mm == 0 {
        return Ok(None);
    }
    let file = k.read_field(mm, "mm_struct", "exe_file")?;
    if file == 0 {
        return Ok(None);
    }
    let path = file + k.off("file", "f_path")?;
    let mnt = k.read_field(path, "path", "mnt")?;
    let dentry = k.read_field(path, "path", "dentry")?;
    d_path(k, mnt, dentry).map(Some)
}

/// The path of `dentry` under the mount `vfsmnt`, as `d_path` builds it:
/// up through `d_parent` to the mount's root, then on from the mount point
/// in the parent mount, until the root of the mount tree.
pub fn d_path(k: &Kernel<'_>, vfsmnt: u64, mut dentry: u64) -> Result<String> {
    let mnt_in_mount = k.off("mount", "mnt")?;
    let mut mount = vfsmnt.wrapping_sub(mnt_in_mount);
    let mut parts: Vec<String> = Vec::new();
    for _ in 0..MAX_PATH_DEPTH * 2 {
        let root = k.read_field(mount + mnt_in_mount, "vfsmount", "mnt_root")?;
        if dentry == root {
            let parent = k.read_field(mount, "mount", "mnt_parent")?;
            if parent == mount || parent == 0 {
                break;
            }
            dentry = k.read_field(mount, "mount", "mnt_mountpoint")?;
            mount = parent;
            continue;
        }
        let up = k.read_field(dentry, "dentry", "d_parent")?;
        if up == dentry || parts.len() >= MAX_PATH_DEPTH {
            break;
        }
        let len = (k.read_field(dentry, "dentry", "d_name.len")? as usize).min(255);
        let name = k.read_field(dentry, "dentry", "d_name.name")?;
        let mut b = vec![0u8; len];
        k.read(name, &mut b)?;
        parts.push(String::from_utf8_lossy(&b).into_owned());
        dentry = up;
    }
    parts.reverse();
    Ok(format!("/{}", parts.join("/")))
}

/// Whether a remembered socket is still open in the same process at the
/// same descriptor, with the same ports.
fn still_there(k: &Kernel<'_>, s: &FoundSocket) -> Result<bool> {
    let files = k.read_field(s.task, "task_struct", "files")?;
    if files == 0 || k.read_field(s.task, "task_struct", "pid")? as u32 != s.owner.pid {
        return Ok(false);
    }
    let fdt = k.read_field(files, "files_struct", "fdt")?;
    if s.fd >= k.read_field(fdt, "fdtable", "max_fds")? {
        return Ok(false);
    }
    let fd_array = k.read_field(fdt, "fdtable", "fd")?;
    if k.read_u64(fd_array + s.fd * 8)? != s.file {
        return Ok(false);
    }
    let socket = k.read_field(s.file, "file", "private_data")?;
    if k.read_field(socket, "socket", "sk")? != s.sk {
        return Ok(false);
    }
    Ok(read_sock(k, s.sk)?
        .is_some_and(|(t, l, r)| t == s.transport && l == s.local && r == s.remote))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(transport: Transport, local: &str, remote: &str) -> FoundSocket {
        FoundSocket {
            transport,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            task: 1,
            fd: 3,
            file: 2,
            sk: 4,
            owner: SocketOwner {
                pid: 7,
                name: "x".into(),
                uid: 0,
                exe: None,
                task: 1,
            },
        }
    }

    fn query(transport: Transport, local: &str, remote: Option<&str>) -> SocketQuery {
        SocketQuery {
            transport,
            local: local.parse().unwrap(),
            remote: remote.map(|r| r.parse().unwrap()),
        }
    }

    #[test]
    fn matching_prefers_the_connected_socket_of_the_flow() {
        let listener = found(Transport::Tcp, "0.0.0.0:80", "0.0.0.0:0");
        let accepted = found(Transport::Tcp, "10.0.2.15:80", "10.0.2.2:5000");
        let q = query(Transport::Tcp, "10.0.2.15:80", Some("10.0.2.2:5000"));
        assert_eq!(score(&listener, &q), Some(1));
        assert_eq!(score(&accepted, &q), Some(3));
        // Another peer on the same port is another flow.
        let q2 = query(Transport::Tcp, "10.0.2.15:80", Some("10.0.2.2:5001"));
        assert_eq!(score(&accepted, &q2), None);
        assert_eq!(score(&listener, &q2), Some(1));
        // Wrong transport, port or local address never match.
        assert_eq!(
            score(&listener, &query(Transport::Udp, "10.0.2.15:80", None)),
            None
        );
        assert_eq!(
            score(&accepted, &query(Transport::Tcp, "10.0.2.16:80", None)),
            None
        );
        assert_eq!(
            score(&accepted, &query(Transport::Tcp, "10.0.2.15:81", None)),
            None
        );
    }

    #[test]
    fn table_picks_the_best_candidate() {
        let mut t = SocketTable::new();
        t.rebuild(vec![
            found(Transport::Udp, "0.0.0.0:53", "0.0.0.0:0"),
            found(Transport::Udp, "10.0.2.15:53", "0.0.0.0:0"),
        ]);
        assert_eq!(
            t.best(&query(Transport::Udp, "10.0.2.15:53", Some("10.0.2.3:53"))),
            Some(1)
        );
        assert_eq!(
            t.best(&query(Transport::Udp, "10.0.2.99:53", None)),
            Some(0)
        );
        assert_eq!(t.best(&query(Transport::Udp, "10.0.2.15:54", None)), None);
    }

    #[test]
    fn v4_mapped_addresses_equal_their_v4_form() {
        let a: IpAddr = "::ffff:10.0.2.15".parse().unwrap();
        let b: IpAddr = "10.0.2.15".parse().unwrap();
        assert!(same_ip(a, b));
        assert!(!same_ip("::1".parse().unwrap(), b));
    }
}
