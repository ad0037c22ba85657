//! The fuzzer's own reading of a frame, written from the RFCs and sharing nothing with the eBPF
//! side: lenient (it reads what is there and reports what is wrong) where the programs are
//! strict, so that the oracle can say what the programs should have made of any frame.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use l3lb_common::{PROTO_TCP, PROTO_UDP};

use crate::frames::{self, ETH_LEN, IPV4_LEN, IPV6_LEN, ones_complement_sum};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

pub fn be16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// The IP header of an IPv4 or IPv6 frame (no VLAN tag), whole in the frame.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub family: u8,
    /// Offset of what follows the IP header (IPv4 options skipped; IPv6 extension headers not).
    pub l4: usize,
    /// The IPv4 protocol or the IPv6 next header.
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Where the IP length fields say the packet ends (may lie beyond the frame).
    pub end: usize,
    /// "More fragments" and the fragment offset: IPv4's, or an IPv6 fragment header's right
    /// after the IPv6 header (then `l4` and `proto` are what follows it).
    pub more_fragments: bool,
    pub offset: u16,
    pub id: u32,
    /// An IPv6 fragment header, even an atomic one (offset 0, no more fragments).
    pub fragment_header: bool,
    /// Offset of the TTL (hop limit).
    pub ttl_at: usize,
    /// The IPv4 header checksum verifies (always true for IPv6, which has none).
    pub header_ok: bool,
}

impl Ip {
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.offset != 0 || self.fragment_header
    }

    /// The smallest TCP/UDP header, or `None` for another protocol.
    pub fn l4_min(&self) -> Option<usize> {
        match self.proto {
            PROTO_TCP => Some(frames::TCP_LEN),
            PROTO_UDP => Some(frames::UDP_LEN),
            _ => None,
        }
    }
}

fn addr4(frame: &[u8], at: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        frame[at],
        frame[at + 1],
        frame[at + 2],
        frame[at + 3],
    ))
}

fn addr16(frame: &[u8], at: usize) -> IpAddr {
    let bytes: [u8; 16] = frame[at..at + 16].try_into().expect("16 bytes");
    IpAddr::V6(Ipv6Addr::from(bytes))
}

/// The IP header at `l3`, when it is a well-versioned IPv4 (IHL ≥ 5, options included) or IPv6
/// header that the frame holds whole.
pub fn ip_at(frame: &[u8], l3: usize, family: u8) -> Option<Ip> {
    if family == 4 {
        if frame.len() < l3 + IPV4_LEN || frame[l3] >> 4 != 4 || frame[l3] & 0x0f < 5 {
            return None;
        }
        let header_len = usize::from(frame[l3] & 0x0f) * 4;
        if frame.len() < l3 + header_len {
            return None;
        }
        let flags = be16(frame, l3 + 6);
        Some(Ip {
            family,
            l4: l3 + header_len,
            proto: frame[l3 + 9],
            src: addr4(frame, l3 + 12),
            dst: addr4(frame, l3 + 16),
            end: l3 + usize::from(be16(frame, l3 + 2)),
            more_fragments: flags & 0x2000 != 0,
            offset: flags & 0x1fff,
            id: u32::from(be16(frame, l3 + 4)),
            fragment_header: false,
            ttl_at: l3 + 8,
            header_ok: ones_complement_sum(0, &frame[l3..l3 + header_len]) == 0xffff,
        })
    } else {
        if frame.len() < l3 + IPV6_LEN || frame[l3] >> 4 != 6 {
            return None;
        }
        let mut ip = Ip {
            family,
            l4: l3 + IPV6_LEN,
            proto: frame[l3 + 6],
            src: addr16(frame, l3 + 8),
            dst: addr16(frame, l3 + 24),
            end: l3 + IPV6_LEN + usize::from(be16(frame, l3 + 4)),
            more_fragments: false,
            offset: 0,
            id: 0,
            fragment_header: false,
            ttl_at: l3 + 7,
            header_ok: true,
        };
        // A fragment header right after the IPv6 header (RFC 8200 §4.5): next header,
        // reserved, offset and M flag, identification.
        const FRAGMENT_HEADER: u8 = 44;
        let fragment = l3 + IPV6_LEN;
        if ip.proto == FRAGMENT_HEADER && frame.len() >= fragment + 8 {
            let flags = be16(frame, fragment + 2);
            ip.proto = frame[fragment];
            ip.l4 = fragment + 8;
            ip.more_fragments = flags & 1 != 0;
            ip.offset = flags >> 3;
            ip.id = u32::from_be_bytes(frame[fragment + 4..fragment + 8].try_into().expect("4"));
            ip.fragment_header = true;
        }
        Some(ip)
    }
}

/// The IP header of an Ethernet frame.
pub fn ip(frame: &[u8]) -> Option<Ip> {
    if frame.len() < ETH_LEN {
        return None;
    }
    match be16(frame, 12) {
        0x0800 => ip_at(frame, ETH_LEN, 4),
        0x86dd => ip_at(frame, ETH_LEN, 6),
        _ => None,
    }
}

/// The one's-complement sum of the TCP/UDP (or ICMPv6) pseudo-header.
pub fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (s, d) => {
            let bytes = |a: IpAddr| match a {
                IpAddr::V6(v6) => v6.octets(),
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            };
            pseudo.extend_from_slice(&bytes(s));
            pseudo.extend_from_slice(&bytes(d));
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
    }
    ones_complement_sum(0, &pseudo)
}

/// Whether the TCP/UDP checksum of the packet at `ip` verifies, or `None` when it cannot be
/// judged: the IP length puts the end beyond the frame or inside the transport header.
pub fn l4_checksum_ok(frame: &[u8], ip: &Ip) -> Option<bool> {
    let min = ip.l4_min()?;
    if ip.end > frame.len() || ip.end < ip.l4 + min {
        return None;
    }
    let segment = &frame[ip.l4..ip.end];
    let sum = ones_complement_sum(pseudo_sum(ip.src, ip.dst, ip.proto, segment.len()), segment);
    Some(sum == 0xffff)
}

/// Offset of the TCP/UDP checksum field of the transport header at `l4`.
pub fn l4_check_at(l4: usize, proto: u8) -> usize {
    l4 + frames::l4_checksum_offset(proto)
}

/// An ICMP error message and the TCP/UDP packet it quotes (RFC 792, RFC 4443).
#[derive(Clone, Copy, Debug)]
pub struct Quote {
    pub icmp: usize,
    pub inner: Ip,
    pub sport: u16,
    pub dport: u16,
}

/// The quote of an ICMPv4 destination unreachable / time exceeded or ICMPv6 destination
/// unreachable / packet too big / time exceeded in an unfragmented packet, when it names a
/// TCP/UDP flow: the quoted header whole and its ports inside both the frame and the message.
pub fn icmp_error(frame: &[u8], ip: &Ip) -> Option<Quote> {
    let icmp = ip.l4;
    let (is_error, inner_family) = match (ip.family, ip.proto) {
        (4, PROTO_ICMP) if !ip.is_fragment() => (matches!(frame.get(icmp)?, 3 | 11), 4),
        (6, PROTO_ICMPV6) => (matches!(frame.get(icmp)?, 1..=3), 6),
        _ => return None,
    };
    if !is_error {
        return None;
    }
    let inner = ip_at(frame, icmp + 8, inner_family)?;
    inner.l4_min()?;
    if inner.offset != 0 || inner.l4 + 4 > ip.end || inner.l4 + 4 > frame.len() {
        return None;
    }
    Some(Quote {
        icmp,
        inner,
        sport: be16(frame, inner.l4),
        dport: be16(frame, inner.l4 + 2),
    })
}
