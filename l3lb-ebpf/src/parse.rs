//! Header parsing shared by the XDP and TC programs: Ethernet → IPv4/IPv6 → TCP/UDP, on direct
//! packet memory between `data` and `data_end`, with a bounds check the verifier can follow
//! before every access. Anything the fast path does not steer comes back as the [`Reason`] it
//! passes with.
use core::mem::offset_of;

use l3lb_common::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

// Header sizes and field offsets, from `network-types`' wire layouts. The programs read and
// write single fields at these offsets rather than whole header structs: each access then gets
// its own bounds check at a constant offset, which the verifier follows, and nothing is copied
// to the stack (the programs sit close to its 512-byte limit).
pub const ETH_LEN: usize = EthHdr::LEN;
pub const IPV4_LEN: usize = Ipv4Hdr::LEN;
pub const IPV6_LEN: usize = Ipv6Hdr::LEN;
pub const TCP_LEN: usize = TcpHdr::LEN;
pub const UDP_LEN: usize = UdpHdr::LEN;

/// Offset of the EtherType within the Ethernet header.
pub const ETH_TYPE: usize = offset_of!(EthHdr, ether_type);
/// Offsets within the IPv4 header.
pub const IPV4_TOTAL_LENGTH: usize = offset_of!(Ipv4Hdr, tot_len);
pub const IPV4_ID: usize = offset_of!(Ipv4Hdr, id);
pub const IPV4_FRAGMENT: usize = offset_of!(Ipv4Hdr, frags);
pub const IPV4_TTL: usize = offset_of!(Ipv4Hdr, ttl);
pub const IPV4_PROTO: usize = offset_of!(Ipv4Hdr, proto);
pub const IPV4_CHECK: usize = offset_of!(Ipv4Hdr, check);
pub const IPV4_SRC: usize = offset_of!(Ipv4Hdr, src_addr);
pub const IPV4_DST: usize = offset_of!(Ipv4Hdr, dst_addr);
/// Offsets within the IPv6 header.
pub const IPV6_PAYLOAD_LENGTH: usize = offset_of!(Ipv6Hdr, payload_len);
pub const IPV6_NEXT_HEADER: usize = offset_of!(Ipv6Hdr, next_hdr);
pub const IPV6_HOP_LIMIT: usize = offset_of!(Ipv6Hdr, hop_limit);
pub const IPV6_SRC: usize = offset_of!(Ipv6Hdr, src_addr);
pub const IPV6_DST: usize = offset_of!(Ipv6Hdr, dst_addr);
/// Offsets of the ports within the TCP and UDP headers (the same for both).
pub const L4_SPORT: usize = offset_of!(UdpHdr, src);
pub const L4_DPORT: usize = offset_of!(UdpHdr, dst);
const _: () = assert!(
    offset_of!(TcpHdr, source) == L4_SPORT && offset_of!(TcpHdr, dest) == L4_DPORT,
    "TCP and UDP ports sit at the same offsets"
);
/// Offsets of the checksum within the TCP and UDP headers.
pub const TCP_CHECK: usize = offset_of!(TcpHdr, check);
pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);
/// Offset of the UDP length, and of the TCP data offset (its high nibble).
pub const UDP_LENGTH: usize = offset_of!(UdpHdr, len);
pub const TCP_DATA_OFFSET: usize = offset_of!(TcpHdr, _bitfield_1);

const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();

/// The IPv6 fragment header's next-header value.
const IPV6_FRAGMENT_HEADER: u8 = 44;

/// IPv4 "more fragments" flag and fragment offset, in host order of the flags/offset field.
const IPV4_MF_OFFSET: u16 = 0x3fff;

/// A TCP or UDP packet that could be steered.
pub struct Packet {
    /// The 5-tuple as on the wire (client → service for XDP, pod → client for TC egress).
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP/UDP header (after any IPv4 options).
    pub l4: usize,
}

impl Packet {
    /// Offset of the TCP or UDP checksum.
    #[inline(always)]
    pub fn l4_check(&self) -> usize {
        self.l4
            + if self.key.proto == PROTO_TCP {
                TCP_CHECK
            } else {
                UDP_CHECK
            }
    }
}

/// A pointer to a `T` at `offset` into the packet, or `Truncated` when the packet is shorter.
/// Every packet access goes through here (or [`ptr_at_mut`]), right before it is made, so the
/// verifier sees the check against `data_end` on the very pointer it then dereferences.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Result<*const T, Reason> {
    if data + offset + core::mem::size_of::<T>() > data_end {
        return Err(Reason::Truncated);
    }
    Ok((data + offset) as *const T)
}

/// [`ptr_at`] for writing.
#[inline(always)]
pub fn ptr_at_mut<T>(data: usize, data_end: usize, offset: usize) -> Result<*mut T, Reason> {
    ptr_at::<T>(data, data_end, offset).map(|ptr| ptr as *mut T)
}

/// Reads a `T` (byte arrays and integers only) at `offset`.
#[inline(always)]
fn read<T: Copy>(data: usize, data_end: usize, offset: usize) -> Result<T, Reason> {
    let ptr = ptr_at::<T>(data, data_end, offset)?;
    // SAFETY: `ptr_at` checked that the `T` lies inside the packet; packet memory has no
    // alignment guarantee, hence the unaligned read.
    Ok(unsafe { ptr.read_unaligned() })
}

/// Whether `next_header` is an IPv6 extension header (RFC 8200 and the IANA registry: hop-by-hop,
/// routing, fragment, ESP, AH, destination options, mobility, HIP, shim6, experimental). The
/// program does not walk them, so such packets are passed.
#[inline(always)]
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// The 5-tuple and header offsets of a TCP or UDP packet, or why it is none the fast path
/// handles. The packet is not modified.
///
/// `CHECK_IP_LENGTH`: whether the IP length field must cover the headers. On receive (XDP) a
/// packet claiming less is malformed and left to the kernel to drop. On egress (TC) the field
/// is not trustworthy: a BIG TCP GSO packet carries 0 there.
#[inline(always)]
pub fn parse<const CHECK_IP_LENGTH: bool>(data: usize, data_end: usize) -> Result<Packet, Reason> {
    let ether_type: u16 = read(data, data_end, ETH_TYPE)?;
    let l3 = ETH_LEN;
    let mut key = FlowKey::default();
    let l4;
    if ether_type == ETH_P_IPV4_BE {
        // The fixed header first; options (IHL > 5) are skipped, not interpreted: the fields
        // rewritten (destination address, checksum) sit in the fixed part, and the TCP/UDP
        // header is found after the options.
        //
        // The fixed header is checked against `data_end` on its own, at a constant offset,
        // before the options: were the compiler left to derive it from the variable-length
        // check below, the verifier (which does not credit a variable offset's minimum) would
        // reject the reads.
        ptr_at::<[u8; IPV4_LEN]>(data, data_end, l3)?;
        let vihl: u8 = read(data, data_end, l3)?;
        let ihl = (vihl & 0x0f) as usize;
        if vihl >> 4 != 4 || ihl < 5 {
            return Err(Reason::Truncated);
        }
        let frags: [u8; 2] = read(data, data_end, l3 + IPV4_FRAGMENT)?;
        if u16::from_be_bytes(frags) & IPV4_MF_OFFSET != 0 {
            return Err(Reason::Fragment);
        }
        let header_len = ihl * 4;
        let proto: u8 = read(data, data_end, l3 + IPV4_PROTO)?;
        let l4_min = match proto {
            PROTO_TCP => TCP_LEN,
            PROTO_UDP => UDP_LEN,
            _ => return Err(Reason::NotTcpUdp),
        };
        if CHECK_IP_LENGTH {
            let tot_len: [u8; 2] = read(data, data_end, l3 + IPV4_TOTAL_LENGTH)?;
            if (u16::from_be_bytes(tot_len) as usize) < header_len + l4_min {
                return Err(Reason::Truncated);
            }
        }
        let src: [u8; 4] = read(data, data_end, l3 + IPV4_SRC)?;
        let dst: [u8; 4] = read(data, data_end, l3 + IPV4_DST)?;
        key.src[..4].copy_from_slice(&src);
        key.dst[..4].copy_from_slice(&dst);
        key.proto = proto;
        key.family = FAMILY_IPV4;
        // The whole header, options included, must be in the packet (implied by the transport
        // header check below, which starts after it).
        l4 = l3 + header_len;
    } else if ether_type == ETH_P_IPV6_BE {
        ptr_at::<[u8; IPV6_LEN]>(data, data_end, l3)?;
        let version: u8 = read(data, data_end, l3)?;
        if version >> 4 != 6 {
            return Err(Reason::Truncated);
        }
        let next_header: u8 = read(data, data_end, l3 + IPV6_NEXT_HEADER)?;
        let l4_min = match next_header {
            PROTO_TCP => TCP_LEN,
            PROTO_UDP => UDP_LEN,
            // A fragment header right after the IPv6 header: frag.rs follows the datagram.
            IPV6_FRAGMENT_HEADER => return Err(Reason::Fragment),
            other if is_ipv6_extension(other) => return Err(Reason::Ipv6Extension),
            _ => return Err(Reason::NotTcpUdp),
        };
        if CHECK_IP_LENGTH {
            let payload_len: [u8; 2] = read(data, data_end, l3 + IPV6_PAYLOAD_LENGTH)?;
            if (u16::from_be_bytes(payload_len) as usize) < l4_min {
                return Err(Reason::Truncated);
            }
        }
        key.src = read(data, data_end, l3 + IPV6_SRC)?;
        key.dst = read(data, data_end, l3 + IPV6_DST)?;
        key.proto = next_header;
        key.family = FAMILY_IPV6;
        l4 = l3 + IPV6_LEN;
    } else {
        // ARP, LLDP, and VLAN-tagged frames (802.1Q/802.1ad): the uplinks of a pure-L3 fabric
        // carry no tagged service traffic.
        return Err(Reason::NotIp);
    }

    // The fixed transport header must be in the packet; the ports are its first 4 bytes.
    let l4_len = if key.proto == PROTO_TCP {
        TCP_LEN
    } else {
        UDP_LEN
    };
    if data + l4 + l4_len > data_end {
        return Err(Reason::Truncated);
    }
    key.sport_be = read(data, data_end, l4 + L4_SPORT)?;
    key.dport_be = read(data, data_end, l4 + L4_DPORT)?;
    Ok(Packet { key, l3, l4 })
}

/// Checks a packet that is about to be steered (it hit a service) for the malformations the
/// kernel would drop it for: an IP length beyond the frame (`frame_len`: the whole packet from
/// the Ethernet header, which for an skb can reach past the linear area), a bad IPv4 header
/// checksum, a UDP length that disagrees with the IP length, a TCP data offset below 5. Such a
/// packet passes untouched and leaves no flow behind, so a forged one cannot fill the flow
/// table. Only service packets pay for it; the rest pass before it. A call of its own, to keep
/// its locals out of the callers' stack frames.
#[inline(never)]
pub fn validate(
    data: usize,
    data_end: usize,
    packet: &Packet,
    frame_len: usize,
) -> Result<(), Reason> {
    let l3 = packet.l3;
    let ip_end = if packet.key.family == FAMILY_IPV4 {
        let total: [u8; 2] = read(data, data_end, l3 + IPV4_TOTAL_LENGTH)?;
        let header_len = packet.l4 - l3;
        // The header's one's-complement sum, options included, must be all ones. Words are
        // summed as read (RFC 1071 §2(B): byte order does not matter).
        let mut sum: u64 = 0;
        for i in 0..15 {
            if i * 4 >= header_len {
                break;
            }
            let word: u32 = read(data, data_end, l3 + i * 4)?;
            sum += u64::from(word);
        }
        let sum = (sum & 0xffff_ffff) + (sum >> 32);
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        if sum != 0xffff {
            return Err(Reason::Truncated);
        }
        l3 + u16::from_be_bytes(total) as usize
    } else {
        let payload: [u8; 2] = read(data, data_end, l3 + IPV6_PAYLOAD_LENGTH)?;
        l3 + IPV6_LEN + u16::from_be_bytes(payload) as usize
    };
    if ip_end > frame_len || ip_end < packet.l4 {
        return Err(Reason::Truncated);
    }
    let l4_len = ip_end - packet.l4;
    if packet.key.proto == PROTO_UDP {
        let udp_len: [u8; 2] = read(data, data_end, packet.l4 + UDP_LENGTH)?;
        if u16::from_be_bytes(udp_len) as usize != l4_len {
            return Err(Reason::Truncated);
        }
    } else {
        let offset: u8 = read(data, data_end, packet.l4 + TCP_DATA_OFFSET)?;
        let header_len = usize::from(offset >> 4) * 4;
        if header_len < TCP_LEN || header_len > l4_len {
            return Err(Reason::Truncated);
        }
    }
    Ok(())
}
