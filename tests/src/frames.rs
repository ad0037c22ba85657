//! Hand-built Ethernet frames with correct checksums, and an independent checksum routine to
//! verify what a program wrote. Written from the RFCs, sharing no code with the eBPF side.
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const TCP_LEN: usize = 20;
pub const UDP_LEN: usize = 8;

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
        6 => {
            segment.extend_from_slice(&1u32.to_be_bytes()); // seq
            segment.extend_from_slice(&0u32.to_be_bytes()); // ack
            segment.extend_from_slice(&[(TCP_LEN as u8 / 4) << 4, 0x02]); // data offset, SYN
            segment.extend_from_slice(&64240u16.to_be_bytes()); // window
            segment.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        }
        17 => {
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
    if proto == 6 { 16 } else { 6 }
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
    let mut segment = transport(proto, sport, dport, payload);
    let sum = checksum(pseudo_header_v4(src, dst, proto, segment.len()), &segment);
    let at = l4_checksum_offset(proto);
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());

    let mut ip = Vec::with_capacity(IPV4_LEN);
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&((IPV4_LEN + segment.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, DF
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(0, &ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut frame = ethernet(0x0800);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&segment);
    frame
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
    let mut segment = transport(proto, sport, dport, payload);
    let sum = checksum(pseudo_header_v6(src, dst, proto, segment.len()), &segment);
    let at = l4_checksum_offset(proto);
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());

    let mut frame = ethernet(0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[proto, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&segment);
    frame
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

/// True when the IPv4 header checksum of `frame` verifies.
pub fn ipv4_header_checksum_ok(frame: &[u8]) -> bool {
    ones_complement_sum(0, &frame[ETH_LEN..ETH_LEN + IPV4_LEN]) == 0xffff
}

/// True when the TCP/UDP checksum of an IPv4 `frame` verifies.
pub fn ipv4_l4_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[ETH_LEN..];
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let segment = &ip[IPV4_LEN..];
    ones_complement_sum(pseudo_header_v4(src, dst, proto, segment.len()), segment) == 0xffff
}

/// True when the TCP/UDP checksum of an IPv6 `frame` (no extension headers) verifies.
pub fn ipv6_l4_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[ETH_LEN..];
    let proto = ip[6];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let segment = &ip[IPV6_LEN..];
    ones_complement_sum(pseudo_header_v6(src, dst, proto, segment.len()), segment) == 0xffff
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
}
