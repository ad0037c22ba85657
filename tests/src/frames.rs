//! Hand-built Ethernet frames with correct checksums, and an independent checksum routine to
//! verify what a program wrote. Written from the RFCs, sharing no code with the eBPF side.
//!
//! Builders: [`ipv4`]/[`ipv6`] for plain TCP/UDP, [`Ipv4`] for everything else IPv4 can carry
//! (options, fragments, other protocols, no UDP checksum), [`ipv6_with_extension`],
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
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
    let sum = checksum(0, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Ipv4::new(PROTO_ICMP, src, dst).packet(&icmp)
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
    let mut icmp = vec![128, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
    let sum = checksum(pseudo_header_v6(src, dst, PROTO_ICMPV6, icmp.len()), &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv6_frame(PROTO_ICMPV6, src, dst, &icmp)
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
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quote);
    let sum = checksum(0, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Ipv4::new(PROTO_ICMP, src, dst).packet(&icmp)
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
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quote);
    let sum = checksum(pseudo_header_v6(src, dst, PROTO_ICMPV6, icmp.len()), &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv6_frame(PROTO_ICMPV6, src, dst, &icmp)
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

/// Where the headers of an IPv4 or IPv6 (no extension headers) frame are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// Offset of the transport header (after IPv4 options).
    pub l4: usize,
    /// End of the IP packet (frames may carry Ethernet padding after it).
    pub end: usize,
}

/// The layout of an IPv4 or IPv6 frame; panics on anything else.
pub fn layout(frame: &[u8]) -> Layout {
    let ip = &frame[ETH_LEN..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            Layout {
                family: 4,
                proto: ip[9],
                l4: ETH_LEN + header_len,
                end: ETH_LEN + total,
            }
        }
        0x86dd => {
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            Layout {
                family: 6,
                proto: ip[6],
                l4: ETH_LEN + IPV6_LEN,
                end: ETH_LEN + IPV6_LEN + payload,
            }
        }
        other => panic!("layout(): EtherType {other:#06x} is neither IPv4 nor IPv6"),
    }
}

fn addr_range(layout: &Layout, destination: bool) -> std::ops::Range<usize> {
    let (at, len) = match (layout.family, destination) {
        (4, false) => (12, 4),
        (4, true) => (16, 4),
        (_, false) => (8, 16),
        (_, true) => (24, 16),
    };
    ETH_LEN + at..ETH_LEN + at + len
}

fn read_addr(frame: &[u8], range: std::ops::Range<usize>) -> IpAddr {
    let bytes = &frame[range];
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
        _ => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
    }
}

fn write_addr(frame: &mut [u8], range: std::ops::Range<usize>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => frame[range].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => frame[range].copy_from_slice(&v6.octets()),
    }
}

/// The destination address and port of a TCP/UDP frame.
pub fn destination(frame: &[u8]) -> (IpAddr, u16) {
    let layout = layout(frame);
    let port = u16::from_be_bytes([frame[layout.l4 + 2], frame[layout.l4 + 3]]);
    (read_addr(frame, addr_range(&layout, true)), port)
}

/// The source address and port of a TCP/UDP frame.
pub fn source(frame: &[u8]) -> (IpAddr, u16) {
    let layout = layout(frame);
    let port = u16::from_be_bytes([frame[layout.l4], frame[layout.l4 + 1]]);
    (read_addr(frame, addr_range(&layout, false)), port)
}

/// Overwrites the destination address and port, leaving the checksums stale.
pub fn set_destination(frame: &mut [u8], addr: IpAddr, port: u16) {
    let layout = layout(frame);
    write_addr(frame, addr_range(&layout, true), addr);
    frame[layout.l4 + 2..layout.l4 + 4].copy_from_slice(&port.to_be_bytes());
}

/// Overwrites the source address and port, leaving the checksums stale.
pub fn set_source(frame: &mut [u8], addr: IpAddr, port: u16) {
    let layout = layout(frame);
    write_addr(frame, addr_range(&layout, false), addr);
    frame[layout.l4..layout.l4 + 2].copy_from_slice(&port.to_be_bytes());
}

/// Offset of the IPv4 TTL or the IPv6 hop limit.
fn ttl_offset(frame: &[u8]) -> usize {
    ETH_LEN + if layout(frame).family == 4 { 8 } else { 7 }
}

/// The IPv4 TTL or IPv6 hop limit.
pub fn ttl(frame: &[u8]) -> u8 {
    frame[ttl_offset(frame)]
}

/// Overwrites the TTL (hop limit), leaving the IPv4 header checksum stale.
pub fn set_ttl(frame: &mut [u8], ttl: u8) {
    let at = ttl_offset(frame);
    frame[at] = ttl;
}

/// Overwrites the Ethernet destination and source addresses.
pub fn set_macs(frame: &mut [u8], destination: [u8; 6], source: [u8; 6]) {
    frame[..6].copy_from_slice(&destination);
    frame[6..12].copy_from_slice(&source);
}

/// The TCP/UDP checksum field.
pub fn l4_checksum(frame: &[u8]) -> u16 {
    let layout = layout(frame);
    let at = layout.l4 + l4_checksum_offset(layout.proto);
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// `frame` with its IPv4 header checksum and TCP/UDP checksum zeroed: for comparing everything
/// else byte for byte.
pub fn without_checksums(frame: &[u8]) -> Vec<u8> {
    let layout = layout(frame);
    let mut masked = frame.to_vec();
    if layout.family == 4 {
        masked[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    }
    let at = layout.l4 + l4_checksum_offset(layout.proto);
    masked[at..at + 2].fill(0);
    masked
}

/// True when the IPv4 header checksum of `frame` (options included) verifies.
pub fn ipv4_header_checksum_ok(frame: &[u8]) -> bool {
    let header_len = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    ones_complement_sum(0, &frame[ETH_LEN..ETH_LEN + header_len]) == 0xffff
}

/// True when the TCP/UDP checksum of an IPv4 `frame` verifies (options skipped, Ethernet
/// padding ignored). A UDP checksum of 0 ("none") does not verify: check for it separately.
pub fn ipv4_l4_checksum_ok(frame: &[u8]) -> bool {
    let layout = layout(frame);
    let ip = &frame[ETH_LEN..];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let segment = &frame[layout.l4..layout.end];
    ones_complement_sum(
        pseudo_header_v4(src, dst, layout.proto, segment.len()),
        segment,
    ) == 0xffff
}

/// True when the TCP/UDP checksum of an IPv6 `frame` (no extension headers) verifies.
pub fn ipv6_l4_checksum_ok(frame: &[u8]) -> bool {
    let layout = layout(frame);
    let ip = &frame[ETH_LEN..];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let segment = &frame[layout.l4..layout.end];
    ones_complement_sum(
        pseudo_header_v6(src, dst, layout.proto, segment.len()),
        segment,
    ) == 0xffff
}

/// True when every checksum of a TCP/UDP frame verifies: the IPv4 header's, and the TCP/UDP
/// one (an IPv4 UDP checksum of 0 counts as valid: "none").
pub fn checksums_ok(frame: &[u8]) -> bool {
    let layout = layout(frame);
    if layout.family == 4 {
        ipv4_header_checksum_ok(frame)
            && ((layout.proto == PROTO_UDP && l4_checksum(frame) == 0)
                || ipv4_l4_checksum_ok(frame))
    } else {
        ipv6_l4_checksum_ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify_and_corruption_is_caught() {
        let mut v4 = ipv4(
            6,
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(10, 0, 100, 7),
            40000,
            80,
            b"hi",
        );
        assert!(ipv4_header_checksum_ok(&v4));
        assert!(ipv4_l4_checksum_ok(&v4));
        v4[ETH_LEN + 16] ^= 1; // flip a destination address bit
        assert!(!ipv4_header_checksum_ok(&v4));
        assert!(!ipv4_l4_checksum_ok(&v4));

        let mut v6 = ipv6(
            17,
            "2001:db8::1".parse().unwrap(),
            "2001:db8:100::7".parse().unwrap(),
            5353,
            53,
            b"q",
        );
        assert!(ipv6_l4_checksum_ok(&v6));
        *v6.last_mut().unwrap() ^= 0x80;
        assert!(!ipv6_l4_checksum_ok(&v6));
    }

    #[test]
    fn options_and_padding_are_accounted_for() {
        let client = Ipv4Addr::new(192, 0, 2, 1);
        let service = Ipv4Addr::new(10, 0, 100, 7);
        // Router alert (RFC 2113) plus NOPs: IHL 7.
        let frame = Ipv4::new(PROTO_UDP, client, service)
            .options(&[0x94, 0x04, 0, 0, 1, 1, 1, 0])
            .segment(5000, 53, b"query");
        assert_eq!(frame[ETH_LEN] & 0x0f, 7);
        assert_eq!(layout(&frame).l4, ETH_LEN + 28);
        assert!(checksums_ok(&frame));
        assert_eq!(destination(&frame), (IpAddr::V4(service), 53));
        assert_eq!(source(&frame), (IpAddr::V4(client), 5000));

        // Ethernet padding after the IP packet is not part of the TCP/UDP checksum.
        let mut padded = frame.clone();
        padded.extend_from_slice(&[0xee; 8]);
        assert!(checksums_ok(&padded));

        let mut moved = frame.clone();
        set_destination(&mut moved, IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5)), 5353);
        assert!(!checksums_ok(&moved));
        assert_ne!(without_checksums(&moved), without_checksums(&frame));
        set_destination(&mut moved, IpAddr::V4(service), 53);
        assert_eq!(moved, frame);

        let zero = Ipv4::new(PROTO_UDP, client, service).udp_without_checksum(5000, 53, b"q");
        assert_eq!(l4_checksum(&zero), 0);
        assert!(checksums_ok(&zero));
        assert!(!ipv4_l4_checksum_ok(&zero));
    }

    #[test]
    fn other_builders_are_well_formed() {
        let v6_src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let v6_dst: Ipv6Addr = "2001:db8:100::7".parse().unwrap();
        for extension in [IPV6_HOP_BY_HOP, IPV6_FRAGMENT] {
            let frame = ipv6_with_extension(extension, PROTO_TCP, v6_src, v6_dst, 1, 2, b"x");
            assert_eq!(frame[ETH_LEN + 6], extension);
            // The upper-layer checksum covers the segment after the 8-byte extension header.
            let segment = &frame[ETH_LEN + IPV6_LEN + 8..];
            let sum = ones_complement_sum(
                pseudo_header_v6(v6_src, v6_dst, PROTO_TCP, segment.len()),
                segment,
            );
            assert_eq!(sum, 0xffff);
        }

        let echo = icmpv6_echo(v6_src, v6_dst);
        let body = &echo[ETH_LEN + IPV6_LEN..];
        assert_eq!(
            ones_complement_sum(pseudo_header_v6(v6_src, v6_dst, 58, body.len()), body),
            0xffff
        );

        let v4_echo = icmpv4_echo(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 0, 0, 1));
        assert!(ipv4_header_checksum_ok(&v4_echo));
        assert_eq!(
            ones_complement_sum(0, &v4_echo[ETH_LEN + IPV4_LEN..]),
            0xffff
        );

        // ICMP errors: every checksum verifies, and a flipped quoted byte is caught.
        let reply = ipv4(
            PROTO_TCP,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(192, 0, 2, 1),
            80,
            40000,
            b"x",
        );
        let mut error = icmpv4_error(
            Ipv4Addr::new(192, 0, 2, 254),
            Ipv4Addr::new(10, 0, 0, 1),
            3,
            4,
            1400,
            ip_packet(&reply),
        );
        assert!(icmp_checksums_ok(&error));
        assert_eq!(&error[ETH_LEN + IPV4_LEN + 8..], ip_packet(&reply));
        error[ETH_LEN + IPV4_LEN + 8 + 12] ^= 1; // the quoted source address
        assert!(!icmp_checksums_ok(&error));
        let reply6 = ipv6(PROTO_UDP, v6_dst, v6_src, 53, 5353, b"a");
        let mut error6 = icmpv6_error(v6_dst, v6_src, 2, 0, 1280, &ip_packet(&reply6)[..48]);
        assert!(icmp_checksums_ok(&error6));
        error6[ETH_LEN + 8] ^= 1; // the outer source, in the pseudo-header
        assert!(!icmp_checksums_ok(&error6));

        let tagged = vlan_tagged(&v4_echo, 100);
        assert_eq!(tagged.len(), v4_echo.len() + 4);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(&tagged[16..], &v4_echo[12..]);
    }
}
