//! Reading frames back: where the headers are, the addresses, ports and TTL a program wrote,
//! and the independent checksum verification.
use super::*;

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
