//! Traffic a hostile guest may send, for the packet filter's tests: a SYN
//! flood from a raw socket (no socket of the kernel's owns those ports), a
//! port scan with ordinary connects, a UDP datagram from a raw socket (as
//! if its socket had closed before anyone looked), and malformed Ethernet
//! frames through an `AF_PACKET` socket. Each prints one summary line.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

/// The Internet checksum (RFC 1071) over `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        let mut chunks = p.chunks_exact(2);
        for c in &mut chunks {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        if let [last] = chunks.remainder() {
            sum += (*last as u32) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The address the kernel would send from towards `dst`.
pub fn source_for(dst: Ipv4Addr) -> io::Result<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(SocketAddrV4::new(dst, 9))?;
    match s.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(*a.ip()),
        _ => Err(io::Error::other("no IPv4 source")),
    }
}

/// A raw IPv4 socket for `protocol`; the kernel writes the IP header.
fn raw_socket(protocol: i32) -> io::Result<i32> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn send_to(fd: i32, buf: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `buf` and `sin` are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this module opened and owns.
    unsafe { libc::close(fd) };
}

/// A TCP SYN segment (20-byte header) with its checksum.
pub fn syn_segment(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let c = checksum(&[&pseudo(src, dst, 6, t.len()), &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram with its checksum.
pub fn udp_datagram(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let c = checksum(&[&pseudo(src, dst, 17, len), &u]);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// Sends `count` SYNs to `dst:dport` from source ports counting up from
/// `first_sport`, from a raw socket.
pub fn syn_flood(dst: Ipv4Addr, dport: u16, count: u32, first_sport: u16) -> io::Result<u32> {
    let src = source_for(dst)?;
    let fd = raw_socket(libc::IPPROTO_TCP)?;
    let mut sent = 0;
    for i in 0..count {
        let sport = first_sport.wrapping_add(i as u16).max(1024);
        let seg = syn_segment(src, dst, sport, dport, 0x1000_0000u32.wrapping_add(i));
        match send_to(fd, &seg, dst) {
            Ok(()) => sent += 1,
            // The qdisc is full: give the device a moment.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => {
                close(fd);
                return Err(e);
            }
        }
    }
    close(fd);
    Ok(sent)
}

/// One UDP datagram from a raw socket: no UDP socket owns `sport`.
pub fn raw_udp(dst: Ipv4Addr, dport: u16, sport: u16, payload: &[u8]) -> io::Result<()> {
    let src = source_for(dst)?;
    let fd = raw_socket(libc::IPPROTO_UDP)?;
    let r = send_to(fd, &udp_datagram(src, dst, sport, dport, payload), dst);
    close(fd);
    r
}

/// Connects to `dst:dport`, writes `bytes` zero bytes in 64 KiB writes,
/// shuts its side down and waits for the peer to close (so the socket stays
/// open, and owned, until everything was delivered); returns the seconds it
/// took to write.
pub fn send_bulk(dst: Ipv4Addr, dport: u16, bytes: u64) -> io::Result<f64> {
    use std::io::Write;
    let t = std::time::Instant::now();
    let mut s = TcpStream::connect(SocketAddrV4::new(dst, dport))?;
    let buf = vec![0u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    Ok(secs)
}

/// Sends `payload` from an ordinary UDP socket and waits up to `timeout`
/// for a reply.
pub fn udp_exchange(
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    timeout: Duration,
) -> io::Result<String> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(SocketAddrV4::new(dst, dport))?;
    s.set_read_timeout(Some(timeout))?;
    s.send(payload)?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// What a scan found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanResult {
    pub open: u32,
    pub refused: u32,
    pub timed_out: u32,
}

/// Connects to every port in `ports` on `dst`, one after the other.
pub fn scan(dst: Ipv4Addr, ports: std::ops::RangeInclusive<u16>, timeout: Duration) -> ScanResult {
    let mut r = ScanResult::default();
    for p in ports {
        match TcpStream::connect_timeout(&SocketAddrV4::new(dst, p).into(), timeout) {
            Ok(_) => r.open += 1,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => r.refused += 1,
            Err(_) => r.timed_out += 1,
        }
    }
    r
}

/// Malformed frames, each as it goes on the wire (Ethernet header first).
pub fn malformed_frames(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<(&'static str, Vec<u8>)> {
    let eth = |ethertype: u16| {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    };
    let ip = |proto: u8, payload: &[u8]| {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let total = (20 + payload.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    };
    let syn = syn_segment(src, dst, 40999, 80, 1);
    let mut out = Vec::new();
    let mut f = eth(0x0800);
    f.extend_from_slice(&ip(6, &syn)[..12]);
    out.push(("ipv4 header cut short", f));
    let mut f = eth(0x0800);
    let mut h = ip(6, &syn);
    h[0] = 0x42;
    f.extend_from_slice(&h);
    out.push(("ipv4 header length 8", f));
    let mut f = eth(0x0800);
    let mut h = ip(6, &syn);
    h[2..4].copy_from_slice(&1400u16.to_be_bytes());
    f.extend_from_slice(&h);
    out.push(("ipv4 total length beyond the frame", f));
    let mut f = eth(0x0800);
    f.extend_from_slice(&ip(6, &syn[..10]));
    out.push(("tcp header cut short", f));
    let mut f = eth(0x0800);
    let mut bad = syn.clone();
    bad[12] = 0xf0;
    f.extend_from_slice(&ip(6, &bad));
    out.push(("tcp data offset beyond the segment", f));
    let mut f = eth(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0xff, 0xff, 6, 64]);
    f.extend_from_slice(&[0; 8]);
    out.push(("ipv6 header cut short", f));
    let mut f = eth(0x0800);
    f.extend_from_slice(&[0x45; 60]);
    out.push(("garbage with the ipv4 type", f));
    let mut f = eth(0x0800);
    f.extend_from_slice(&[0x60; 40]);
    out.push(("ipv6 version under the ipv4 type", f));
    out
}

/// Sends frames through an `AF_PACKET` socket on interface `ifname`;
/// returns how many the kernel took.
pub fn send_frames(ifname: &str, frames: &[Vec<u8>]) -> io::Result<u32> {
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sent = 0;
    for f in frames {
        // SAFETY: an all-zero sockaddr_ll is valid; fields are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        for (d, s) in sll.sll_addr.iter_mut().zip(f.iter().take(6)) {
            *d = *s;
        }
        // SAFETY: `f` and `sll` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n >= 0 {
            sent += 1;
        }
    }
    close(fd);
    Ok(sent)
}

/// Drops to `uid`:`gid` with no supplementary groups and executes `prog`
/// (busybox's `setpriv` cannot change ids); returns only on failure.
pub fn exec_as(uid: u32, gid: u32, prog: &str, args: &[String]) -> io::Error {
    use std::os::unix::process::CommandExt;
    // Raw system calls: the statically linked C library's wrappers
    // broadcast id changes to threads through machinery that a static
    // binary here does not set up (they crash), and this process has a
    // single thread anyway.
    // SAFETY: setgroups with an empty list, then setgid and setuid, each
    // checked; no memory is passed but the empty list's null pointer.
    let dropped = unsafe {
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(libc::SYS_setgid, gid as libc::c_long) == 0
            && libc::syscall(libc::SYS_setuid, uid as libc::c_long) == 0
    };
    if !dropped {
        return io::Error::last_os_error();
    }
    std::process::Command::new(prog).args(args).exec()
}

/// The MAC address of `ifname`, from sysfs.
pub fn mac_of(ifname: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).map_err(io::Error::other)?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let src = Ipv4Addr::new(192, 0, 2, 15);
        let dst = Ipv4Addr::new(192, 0, 2, 1);
        let seg = syn_segment(src, dst, 40000, 80, 7);
        assert_eq!(checksum(&[&pseudo(src, dst, 6, seg.len()), &seg]), 0);
        let u = udp_datagram(src, dst, 5000, 53, b"odd");
        assert_eq!(checksum(&[&pseudo(src, dst, 17, u.len()), &u]), 0);
    }
}
