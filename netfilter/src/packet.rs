//! What a frame is, as far as the filter cares: parsed with `etherparse`
//! into a flow (transport, guest end, peer end, TCP flags) or one of the
//! kinds that carry no flow (ARP, ICMP, fragments, other EtherTypes), or
//! refused as malformed.

use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use monitor_client::taint::Transport;
use serde::Serialize;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the guest (QEMU) towards passt.
    Egress,
    /// From passt towards the guest.
    Ingress,
}

/// A flow as the guest sees it: its own end and the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    pub transport: Transport,
    /// The guest's address and port.
    pub guest: SocketAddr,
    /// The other end.
    pub peer: SocketAddr,
}

/// TCP flags the connection table follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// One parsed TCP or UDP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub key: FlowKey,
    /// All false for UDP.
    pub flags: TcpFlags,
    /// TCP sequence and acknowledgement numbers (for a reset), 0 for UDP.
    pub seq: u32,
    pub ack_no: u32,
    /// TCP/UDP payload length.
    pub payload: usize,
    /// Source and destination MAC, for frames sent back to the guest.
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// What a frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP over IPv4 or IPv6: decided per flow.
    Flow(Flow),
    /// ICMP or ICMPv6 (echo, errors, neighbour discovery).
    Icmp,
    /// ARP: needed for the link to work at all.
    Arp,
    /// A fragment of an IP packet: carries no ports to decide on.
    Fragment,
    /// IP with another transport (SCTP, GRE, ...), or another EtherType.
    Other,
    /// Not a well-formed frame (truncated, lengths that do not add up).
    Malformed(String),
}

/// Classifies a frame that travels in direction `dir`.
pub fn classify(frame: &[u8], dir: Direction) -> Kind {
    if frame.is_empty() {
        return Kind::Malformed("empty frame".into());
    }
    let p = match SlicedPacket::from_ethernet(frame) {
        Ok(p) => p,
        Err(e) => return Kind::Malformed(e.to_string()),
    };
    let (src_ip, dst_ip, fragmented): (IpAddr, IpAddr, bool) = match &p.net {
        Some(NetSlice::Ipv4(v4)) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
            v4.is_payload_fragmented(),
        ),
        Some(NetSlice::Ipv6(v6)) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
            v6.is_payload_fragmented(),
        ),
        Some(NetSlice::Arp(_)) => return Kind::Arp,
        None => return Kind::Other,
    };
    if fragmented {
        return Kind::Fragment;
    }
    let (transport, sport, dport, flags, seq, ack_no, payload) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (
            Transport::Tcp,
            t.source_port(),
            t.destination_port(),
            TcpFlags {
                syn: t.syn(),
                ack: t.ack(),
                fin: t.fin(),
                rst: t.rst(),
            },
            t.sequence_number(),
            t.acknowledgment_number(),
            t.payload().len(),
        ),
        Some(TransportSlice::Udp(u)) => (
            Transport::Udp,
            u.source_port(),
            u.destination_port(),
            TcpFlags::default(),
            0,
            0,
            u.payload().len(),
        ),
        Some(TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_)) => return Kind::Icmp,
        Some(_) | None => return Kind::Other,
    };
    let (src_mac, dst_mac) = match &p.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => (e.source(), e.destination()),
        _ => return Kind::Malformed("no Ethernet II header".into()),
    };
    let src = SocketAddr::new(src_ip, sport);
    let dst = SocketAddr::new(dst_ip, dport);
    let (guest, peer) = match dir {
        Direction::Egress => (src, dst),
        Direction::Ingress => (dst, src),
    };
    Kind::Flow(Flow {
        key: FlowKey {
            transport,
            guest,
            peer,
        },
        flags,
        seq,
        ack_no,
        payload,
        src_mac,
        dst_mac,
    })
}

/// A TCP reset answering the guest's segment `f` as if it came from the
/// peer: the guest's connect fails at once ("connection refused") instead
/// of retrying for minutes. `None` for a segment that must not be answered
/// (a reset itself) or a mix of address families.
pub fn tcp_reset_for(f: &Flow) -> Option<Vec<u8>> {
    if f.key.transport != Transport::Tcp || f.flags.rst {
        return None;
    }
    // RFC 9293 3.10.7.1: ack what the segment occupied; a SYN and a FIN
    // count one each.
    let ack = f
        .seq
        .wrapping_add(f.payload as u32)
        .wrapping_add(f.flags.syn as u32)
        .wrapping_add(f.flags.fin as u32);
    let seq = if f.flags.ack { f.ack_no } else { 0 };
    let eth = PacketBuilder::ethernet2(f.dst_mac, f.src_mac);
    let ip = match (f.key.peer.ip(), f.key.guest.ip()) {
        (IpAddr::V4(p), IpAddr::V4(g)) => eth.ipv4(p.octets(), g.octets(), 64),
        (IpAddr::V6(p), IpAddr::V6(g)) => eth.ipv6(p.octets(), g.octets(), 64),
        _ => return None,
    };
    let b = ip
        .tcp(f.key.peer.port(), f.key.guest.port(), seq, 0)
        .rst()
        .ack(ack);
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).ok()?;
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    pub const PEER_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];

    /// A TCP segment from `src` to `dst` (IPv4) with the given flags.
    pub fn tcp(src: &str, dst: &str, syn: bool, fin: bool, rst: bool, payload: &[u8]) -> Vec<u8> {
        let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let (IpAddr::V4(si), IpAddr::V4(di)) = (s.ip(), d.ip()) else {
            panic!("v4 only")
        };
        let mut b = PacketBuilder::ethernet2(GUEST_MAC, PEER_MAC)
            .ipv4(si.octets(), di.octets(), 64)
            .tcp(s.port(), d.port(), 1000, 65535);
        if syn {
            b = b.syn();
        }
        if fin {
            b = b.fin();
        }
        if rst {
            b = b.rst();
        }
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    /// A UDP datagram from `src` to `dst` (IPv4).
    pub fn udp(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let (IpAddr::V4(si), IpAddr::V4(di)) = (s.ip(), d.ip()) else {
            panic!("v4 only")
        };
        let mut v = Vec::new();
        PacketBuilder::ethernet2(GUEST_MAC, PEER_MAC)
            .ipv4(si.octets(), di.octets(), 64)
            .udp(s.port(), d.port())
            .write(&mut v, payload)
            .unwrap();
        v
    }

    #[test]
    fn flows_from_both_directions_share_a_key() {
        let out = tcp("192.0.2.15:40000", "192.0.2.1:80", true, false, false, b"");
        let back = {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(PEER_MAC, GUEST_MAC)
                .ipv4([192, 0, 2, 1], [192, 0, 2, 15], 64)
                .tcp(80, 40000, 5, 100)
                .syn()
                .ack(1001)
                .write(&mut v, &[])
                .unwrap();
            v
        };
        let (Kind::Flow(a), Kind::Flow(b)) = (
            classify(&out, Direction::Egress),
            classify(&back, Direction::Ingress),
        ) else {
            panic!()
        };
        assert_eq!(a.key, b.key);
        assert_eq!(a.key.guest, "192.0.2.15:40000".parse().unwrap());
        assert!(a.flags.syn && !a.flags.ack && b.flags.ack);
        let u = udp("192.0.2.15:5000", "192.0.2.1:53", b"q");
        assert!(
            matches!(classify(&u, Direction::Egress), Kind::Flow(f) if f.key.transport == Transport::Udp && f.payload == 1)
        );
    }

    #[test]
    fn malformed_frames_are_named_not_trusted() {
        let good = tcp(
            "192.0.2.15:40000",
            "192.0.2.1:80",
            true,
            false,
            false,
            b"hello",
        );
        assert!(matches!(
            classify(&[], Direction::Egress),
            Kind::Malformed(_)
        ));
        assert!(matches!(
            classify(&good[..10], Direction::Egress),
            Kind::Malformed(_)
        ));
        // Cut inside the TCP header.
        assert!(matches!(
            classify(&good[..40], Direction::Egress),
            Kind::Malformed(_)
        ));
        // IPv4 header length field of 2 words.
        let mut bad = good.clone();
        bad[14] = 0x42;
        assert!(matches!(
            classify(&bad, Direction::Egress),
            Kind::Malformed(_)
        ));
        // Total length larger than the frame.
        let mut bad = good.clone();
        bad[16] = 0xff;
        assert!(matches!(
            classify(&bad, Direction::Egress),
            Kind::Malformed(_)
        ));
        // Unknown EtherType: passed on as something without a flow.
        let mut other = good.clone();
        other[12] = 0x88;
        other[13] = 0xb5;
        assert_eq!(classify(&other, Direction::Egress), Kind::Other);
    }

    #[test]
    fn a_reset_answers_a_syn() {
        let syn = tcp("192.0.2.15:40000", "192.0.2.1:80", true, false, false, b"");
        let Kind::Flow(f) = classify(&syn, Direction::Egress) else {
            panic!()
        };
        let rst = tcp_reset_for(&f).unwrap();
        let Kind::Flow(r) = classify(&rst, Direction::Ingress) else {
            panic!()
        };
        assert_eq!(r.key, f.key);
        assert!(r.flags.rst && r.flags.ack);
        assert_eq!(r.ack_no, 1001);
        assert_eq!((r.src_mac, r.dst_mac), (PEER_MAC, GUEST_MAC));
        assert!(tcp_reset_for(&r).is_none());
    }
}
