//! Socket ownership read from outside against the guest's own view: a TCP
//! connection on the guest's loopback between two busybox `nc` (the
//! server's end a dual-stack IPv6 socket with v4-mapped addresses), found
//! by walking every process's descriptors with the pid, program, uid,
//! executable and both ends the guest's `/proc` shows, and queries for each
//! flow answered by the right process. One boot.

/// (pid, comm, local, remote) of every TCP socket a process holds, from
/// the guest's `/proc/*/fd` links and `/proc/net/tcp{,6}`.
fn guest_view(fds: &str, tcp: &str) -> Vec<(u32, String, SocketAddr, SocketAddr)> {
    // Addresses are 32-bit words in host (little-endian) order; a
    // v4-mapped IPv6 address is given in its IPv4 form, as packets show it.
    let addr = |hex: &str| -> Option<SocketAddr> {
        let (ip, port) = hex.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let bytes: Vec<u8> = (0..ip.len() / 8)
            .flat_map(|i| {
                u32::from_str_radix(&ip[8 * i..8 * i + 8], 16)
                    .unwrap()
                    .to_le_bytes()
            })
            .collect();
        let ip: std::net::IpAddr = match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
            16 => {
                let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
                v6.to_ipv4_mapped().map(Into::into).unwrap_or(v6.into())
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    };
    let mut by_inode = std::collections::HashMap::new();
    for line in tcp.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 {
            if let (Some(l), Some(r)) = (addr(f[1]), addr(f[2])) {
                by_inode.insert(f[9].to_string(), (l, r));
            }
        }
    }
    let mut out = Vec::new();
    for line in fds.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [pid, comm, link] = f[..] else { continue };
        let inode = link.trim_start_matches("socket:[").trim_end_matches(']');
        if let Some((l, r)) = by_inode.get(inode) {
            out.push((pid.parse().unwrap(), comm.to_string(), *l, *r));
        }
    }
    out
}

use std::net::SocketAddr;
use std::time::Instant;

use crate::common::Guest;
use monitor::sockets::SocketTable;
use monitor::vm::Vm;
use monitor_client::taint::{SocketQuery, Transport};

#[test]
fn socket_owners_match_the_guests_proc() {
    let Some(mut g) = Guest::boot("auto") else {
        return;
    };
    g.sh("ip link set lo up");
    g.sh("(sleep 600 | nc -l -p 5555) >/dev/null 2>&1 &");
    g.sh("sleep 1");
    g.sh("(sleep 600 | nc 127.0.0.1 5555) >/dev/null 2>&1 &");
    g.sh("sleep 1");
    // The guest's own view (busybox netstat has no -p): which process
    // holds which socket inode, and /proc/net/tcp for the inodes' ends.
    // Written to the share and read from the host: long outputs are safer
    // there than on the serial line.
    g.sh(
        "for p in /proc/[0-9]*; do for f in $p/fd/*; do l=$(readlink $f); case $l in socket:*) echo ${p#/proc/} $(cat $p/comm) $l;; esac; done; done >/mnt/fds.txt 2>/dev/null",
    );
    // busybox nc listens on :: (dual stack): its accepted end is in tcp6.
    g.sh("cat /proc/net/tcp /proc/net/tcp6 >/mnt/tcp.txt; sync");
    let fds = std::fs::read_to_string(g.share.join("fds.txt")).unwrap();
    let tcp = std::fs::read_to_string(g.share.join("tcp.txt")).unwrap();
    println!("guest sockets by process:\n{fds}\n/proc/net/tcp:\n{tcp}");
    let netstat = guest_view(&fds, &tcp);
    println!("guest view: {netstat:?}");

    let mut vm = Vm::attach(g.spec.clone(), Some(g.dir().join("profiles"))).unwrap();
    let mut table = SocketTable::new();
    let t = Instant::now();
    // A query nothing answers makes the table walk the guest.
    let none = table
        .owners(
            &mut vm,
            &[SocketQuery {
                transport: Transport::Udp,
                local: "127.0.0.1:9".parse().unwrap(),
                remote: None,
            }],
        )
        .unwrap();
    println!("first lookup (locate the kernel, walk): {:?}", t.elapsed());
    assert_eq!(none, vec![None]);
    for s in table.sockets() {
        println!(
            "found {:?} {} -> {} pid {} {} uid {} exe {:?}",
            s.transport, s.local, s.remote, s.owner.pid, s.owner.name, s.owner.uid, s.owner.exe
        );
    }

    let mut seen = 0;
    for (pid, comm, local, remote) in &netstat {
        let found = table
            .sockets()
            .iter()
            .find(|s| s.local == *local && s.owner.pid == *pid)
            .unwrap_or_else(|| panic!("{pid} {comm} {local}: not found from outside"));
        assert_eq!(&found.owner.name, comm);
        assert_eq!(found.owner.uid, 0);
        assert_eq!(found.owner.exe.as_deref(), Some("/bin/busybox"));
        assert_eq!(found.remote, *remote, "{pid} {comm} {local}");
        if remote.port() != 0 {
            // The flow as a packet filter would ask about it.
            let q = SocketQuery {
                transport: Transport::Tcp,
                local: *local,
                remote: Some(*remote),
            };
            let owner = table
                .owners(&mut vm, &[q])
                .unwrap()
                .remove(0)
                .expect("owner");
            assert_eq!(owner.pid, *pid, "{local} -> {remote}");
        }
        seen += 1;
    }
    assert!(seen >= 2, "the guest showed too little: {netstat:?}");
    assert!(table.stats.hits >= 1, "{:?}", table.stats);
    println!("lookup stats: {:?}", table.stats);
}
