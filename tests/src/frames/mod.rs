//! Hand-built Ethernet frames with correct checksums, and an independent checksum routine to
//! verify what a program wrote. Written from the RFCs, sharing no code with the eBPF side.
//!
//! Builders: [`ipv4`]/[`ipv6`] for plain TCP/UDP, [`Ipv4`] for everything else IPv4 can carry
//! (options, fragments, other protocols, no UDP checksum), [`ipv6_with_extension`],
//! [`ipv4_udp_fragments`]/[`ipv6_udp_fragments`],
//! [`icmpv4_echo`], [`icmpv6_echo`], [`vlan_tagged`], [`arp_request`]. Readers: [`layout`],
//! [`destination`]/[`source`], [`set_destination`]/[`set_source`], [`checksums_ok`],
//! [`without_checksums`].
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const TCP_LEN: usize = 20;
pub const UDP_LEN: usize = 8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_GRE: u8 = 47;
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers used by the tests.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_FRAGMENT: u8 = 44;

/// IPv4 flags/fragment-offset field values.
pub const IPV4_DF: u16 = 0x4000;
pub const IPV4_MF: u16 = 0x2000;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// RFC 1071 one's-complement sum of `data`, folded, not yet inverted.
pub fn ones_complement_sum(initial: u32, data: &[u8]) -> u32 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The checksum to store: the inverted folded sum.
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    !(ones_complement_sum(initial, data) as u16)
}

fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    ones_complement_sum(0, &pseudo)
}

fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    ones_complement_sum(0, &pseudo)
}

fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&NODE_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

/// A transport segment (TCP or UDP header + payload) with a zero checksum field.
pub fn transport(proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut segment = Vec::new();
    segment.extend_from_slice(&sport.to_be_bytes());
    segment.extend_from_slice(&dport.to_be_bytes());
    match proto {
        PROTO_TCP => {
            segment.extend_from_slice(&1u32.to_be_bytes()); // seq
            segment.extend_from_slice(&0u32.to_be_bytes()); // ack
            segment.extend_from_slice(&[(TCP_LEN as u8 / 4) << 4, 0x02]); // data offset, SYN
            segment.extend_from_slice(&64240u16.to_be_bytes()); // window
            segment.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        }
        PROTO_UDP => {
            segment.extend_from_slice(&((UDP_LEN + payload.len()) as u16).to_be_bytes());
            segment.extend_from_slice(&[0, 0]);
        }
        _ => panic!("transport() builds TCP (6) or UDP (17), not {proto}"),
    }
    segment.extend_from_slice(payload);
    segment
}

/// Offset of the checksum field within a TCP or UDP header.
pub fn l4_checksum_offset(proto: u8) -> usize {
    if proto == PROTO_TCP { 16 } else { 6 }
}

/// An IPv4 packet in an Ethernet frame, for the cases [`ipv4`] does not cover.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Bytes of options (padded with end-of-options to a multiple of 4).
    pub options: Vec<u8>,
    /// The flags/fragment-offset field (host order): [`IPV4_DF`], [`IPV4_MF`], offset in 8s.
    pub frag: u16,
    /// IHL to write instead of the true one (to build malformed headers).
    pub ihl_override: Option<u8>,
    /// Total length to write instead of the true one.
    pub total_length_override: Option<u16>,
    /// The identification field (0x1234 unless set).
    pub id: u16,
}

impl Ipv4 {
    pub fn new(proto: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Ipv4 {
            proto,
            src,
            dst,
            options: Vec::new(),
            frag: IPV4_DF,
            ihl_override: None,
            total_length_override: None,
            id: 0x1234,
        }
    }

    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        while !self.options.len().is_multiple_of(4) {
            self.options.push(0);
        }
        assert!(self.options.len() <= 40, "at most 40 bytes of IPv4 options");
        self
    }

    pub fn frag(mut self, frag: u16) -> Self {
        self.frag = frag;
        self
    }

    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ihl_override = Some(ihl);
        self
    }

    pub fn total_length(mut self, total: u16) -> Self {
        self.total_length_override = Some(total);
        self
    }

    /// The frame with `body` (whatever follows the IP header) and a valid header checksum.
    pub fn packet(&self, body: &[u8]) -> Vec<u8> {
        let header_len = IPV4_LEN + self.options.len();
        let ihl = self.ihl_override.unwrap_or((header_len / 4) as u8);
        let total = self
            .total_length_override
            .unwrap_or((header_len + body.len()) as u16);
        let mut ip = Vec::with_capacity(header_len);
        ip.extend_from_slice(&[0x40 | (ihl & 0x0f), 0]);
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[64, self.proto, 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let sum = checksum(0, &ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());

        let mut frame = ethernet(0x0800);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(body);
        frame
    }

    /// A TCP/UDP frame with valid checksums.
    pub fn segment(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut segment = transport(self.proto, sport, dport, payload);
        let sum = checksum(
            pseudo_header_v4(self.src, self.dst, self.proto, segment.len()),
            &segment,
        );
        let at = l4_checksum_offset(self.proto);
        segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        self.packet(&segment)
    }

    /// A UDP frame sent without a checksum (0, allowed for IPv4 by RFC 768).
    pub fn udp_without_checksum(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.proto, PROTO_UDP);
        self.packet(&transport(PROTO_UDP, sport, dport, payload))
    }
}

/// Ethernet + IPv4 + TCP/UDP with valid IP and L4 checksums.
pub fn ipv4(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    Ipv4::new(proto, src, dst).segment(sport, dport, payload)
}

/// An ICMP echo request with a valid checksum.
pub fn icmpv4_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    icmpv4_packet(
        src,
        dst,
        vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'],
    )
}

/// `icmp` (its checksum field zero) with its checksum filled in, in an IPv4 packet.
fn icmpv4_packet(src: Ipv4Addr, dst: Ipv4Addr, mut icmp: Vec<u8>) -> Vec<u8> {
    let sum = checksum(0, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Ipv4::new(PROTO_ICMP, src, dst).packet(&icmp)
}

/// `icmp` (its checksum field zero) with its checksum over the IPv6 pseudo-header filled in, in
/// an IPv6 frame.
fn icmpv6_packet(src: Ipv6Addr, dst: Ipv6Addr, mut icmp: Vec<u8>) -> Vec<u8> {
    let sum = checksum(pseudo_header_v6(src, dst, PROTO_ICMPV6, icmp.len()), &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv6_frame(PROTO_ICMPV6, src, dst, &icmp)
}

/// An ICMP (v4 or v6) error message, checksum zero: `kind`, `code`, the 4 bytes of `rest`, then
/// `quote`.
fn icmp_error_message(kind: u8, code: u8, rest: u32, quote: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quote);
    icmp
}

fn ipv6_frame(next_header: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[next_header, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(payload);
    frame
}

fn segment_v6(
    proto: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut segment = transport(proto, sport, dport, payload);
    let sum = checksum(pseudo_header_v6(src, dst, proto, segment.len()), &segment);
    let at = l4_checksum_offset(proto);
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    segment
}

/// Ethernet + IPv6 + TCP/UDP with a valid L4 checksum.
pub fn ipv6(
    proto: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let segment = segment_v6(proto, src, dst, sport, dport, payload);
    ipv6_frame(proto, src, dst, &segment)
}

/// Ethernet + IPv6 + one extension header ([`IPV6_HOP_BY_HOP`] with padding, or an atomic
/// [`IPV6_FRAGMENT`] header) + TCP/UDP with a valid checksum.
pub fn ipv6_with_extension(
    extension: u8,
    proto: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let header: [u8; 8] = match extension {
        // Next header, length 0 (8 bytes), PadN option filling the other 6.
        IPV6_HOP_BY_HOP => [proto, 0, 1, 4, 0, 0, 0, 0],
        // Next header, reserved, offset 0 and M=0 (an atomic fragment), identification.
        IPV6_FRAGMENT => [proto, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef],
        other => panic!("ipv6_with_extension builds hop-by-hop (0) or fragment (44), not {other}"),
    };
    let mut body = header.to_vec();
    body.extend_from_slice(&segment_v6(proto, src, dst, sport, dport, payload));
    ipv6_frame(extension, src, dst, &body)
}

/// An ICMPv6 echo request with a valid checksum.
pub fn icmpv6_echo(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    icmpv6_packet(
        src,
        dst,
        vec![128, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'],
    )
}

/// An ICMPv4 error from `src` to `dst`: `kind`/`code`, the 4 bytes after the checksum (`rest`:
/// unused, or the next-hop MTU of "fragmentation needed"), then `quote` (the offending IP
/// packet, or its start). Valid IP and ICMP checksums.
pub fn icmpv4_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    code: u8,
    rest: u32,
    quote: &[u8],
) -> Vec<u8> {
    icmpv4_packet(src, dst, icmp_error_message(kind, code, rest, quote))
}

/// An ICMPv6 error (`kind` 1 unreachable, 2 packet too big with the MTU in `rest`, 3 time
/// exceeded) quoting `quote`, with a valid checksum over its pseudo-header.
pub fn icmpv6_error(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    rest: u32,
    quote: &[u8],
) -> Vec<u8> {
    icmpv6_packet(src, dst, icmp_error_message(kind, code, rest, quote))
}

/// A UDP datagram from `src` to `dst` (valid checksum over all of it) as IPv4 fragments: the
/// first carrying the UDP header and `first_len - 8` bytes of payload (`first_len` a multiple
/// of 8), the second the rest; both with IP ID `id`.
pub fn ipv4_udp_fragments(
    (src, dst, id): (Ipv4Addr, Ipv4Addr, u16),
    sport: u16,
    dport: u16,
    payload: &[u8],
    first_len: usize,
) -> [Vec<u8>; 2] {
    assert!(first_len.is_multiple_of(8) && first_len < UDP_LEN + payload.len());
    let mut segment = transport(PROTO_UDP, sport, dport, payload);
    let sum = checksum(
        pseudo_header_v4(src, dst, PROTO_UDP, segment.len()),
        &segment,
    );
    segment[6..8].copy_from_slice(&sum.to_be_bytes());
    let ip = Ipv4::new(PROTO_UDP, src, dst).id(id);
    [
        ip.clone().frag(IPV4_MF).packet(&segment[..first_len]),
        ip.frag((first_len / 8) as u16)
            .packet(&segment[first_len..]),
    ]
}

/// [`ipv4_udp_fragments`] for IPv6: each fragment an IPv6 header, a fragment header (RFC 8200
/// §4.5, ID `id`) and its part of the datagram (`first_len` a multiple of 8).
pub fn ipv6_udp_fragments(
    (src, dst, id): (Ipv6Addr, Ipv6Addr, u32),
    sport: u16,
    dport: u16,
    payload: &[u8],
    first_len: usize,
) -> [Vec<u8>; 2] {
    assert!(first_len.is_multiple_of(8) && first_len < UDP_LEN + payload.len());
    let segment = segment_v6(PROTO_UDP, src, dst, sport, dport, payload);
    let fragment = |offset: usize, more: bool, part: &[u8]| {
        let offset_flags = ((offset / 8) as u16 * 8) | u16::from(more);
        let mut body = vec![PROTO_UDP, 0];
        body.extend_from_slice(&offset_flags.to_be_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(part);
        ipv6_frame(IPV6_FRAGMENT, src, dst, &body)
    };
    [
        fragment(0, true, &segment[..first_len]),
        fragment(first_len, false, &segment[first_len..]),
    ]
}

/// The IP packet of `frame`: without the Ethernet header (and any padding after it). What an
/// ICMP error quotes.
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    &frame[ETH_LEN..layout(frame).end]
}

/// True when every checksum of an ICMP(v6) frame verifies: the outer IPv4 header's, the ICMP
/// checksum (ICMPv6's over its pseudo-header), and the quoted IPv4 header's when the quote
/// holds all of it. (A quoted TCP/UDP checksum covers the whole quoted packet, which a quote
/// may cut: compare the quote with the packet it stands for instead.)
pub fn icmp_checksums_ok(frame: &[u8]) -> bool {
    let layout = layout(frame);
    let message = &frame[layout.l4..layout.end];
    let icmp_ok = if layout.family == 4 {
        ipv4_header_checksum_ok(frame) && ones_complement_sum(0, message) == 0xffff
    } else {
        let ip = &frame[ETH_LEN..];
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
        ones_complement_sum(
            pseudo_header_v6(src, dst, PROTO_ICMPV6, message.len()),
            message,
        ) == 0xffff
    };
    let quote = &message[8..];
    let quote_ok = match quote.first().map(|b| b >> 4) {
        Some(4) => {
            let header_len = usize::from(quote[0] & 0x0f) * 4;
            quote.len() < header_len || ones_complement_sum(0, &quote[..header_len]) == 0xffff
        }
        _ => true,
    };
    icmp_ok && quote_ok
}

/// `frame` with an 802.1Q tag (VLAN `vid`) between the MAC addresses and the EtherType.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&0x8100u16.to_be_bytes());
    tagged.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// An ARP who-has request.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet(0x0806);
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

mod read;
pub use read::*;
