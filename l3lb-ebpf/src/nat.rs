//! Address and port translation on socket buffers, for the TC programs: the forward rewrite
//! (client → service becomes client → pod) on the uplinks' ingress, and the reverse one (pod →
//! client becomes service → client) as a reply leaves the pod or the uplink.
//!
//! Skbs are often CHECKSUM_PARTIAL (the TCP/UDP checksum field holds only the pseudo-header
//! sum, to be completed by the NIC or `skb_checksum_help`: the pods' and any local sender's
//! traffic over veth), or CHECKSUM_COMPLETE (`skb->csum` covers the packet, from most NICs).
//! The kernel's `bpf_l4_csum_replace` knows the skb's checksum state and updates the TCP/UDP
//! checksum field, and `skb->csum`, the right way for each; a hand-rolled RFC 1624 update of
//! that field, as in the XDP program (which only sees complete wire checksums), would corrupt
//! partial checksums and leave a stale `skb->csum` behind. The rest is written directly (see
//! [`rewrite`]).
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use l3lb_common::{FAMILY_IPV4, PROTO_UDP, Reason};

use crate::{
    csum::CsumDelta,
    parse::{
        ETH_LEN, IPV4_CHECK, IPV4_DST, IPV4_SRC, IPV4_TTL, IPV6_DST, IPV6_HOP_LIMIT, IPV6_LEN,
        IPV6_SRC, L4_DPORT, L4_SPORT, Packet, TCP_LEN, parse, ptr_at, ptr_at_mut,
    },
};

/// `bpf_l4_csum_replace` flag (Linux 6.16+, not yet in aya's bindings): the pseudo-header
/// change is an IPv6 one, which must not be folded into a CHECKSUM_COMPLETE `skb->csum`.
/// Older kernels reject unknown flags with `-EINVAL` before touching the packet, so the update
/// is retried without it there.
const BPF_F_IPV6: u64 = 1 << 7;

/// Bytes pulled into the linear area when the headers are not all there: Ethernet, the
/// longest IPv4 header, and a TCP header (the longest fixed transport header).
const PULL_LEN: u32 = (ETH_LEN + 60 + TCP_LEN) as u32;

/// The TCP/UDP packet in `ctx`, pulling its headers into the linear area first when they may
/// not all be there (direct packet access reaches only that area): one parse, inlined once, so
/// its locals take one stack slot set, not two. `CHECK_IP_LENGTH` as in [`parse`].
#[inline(always)]
pub fn parse_skb<const CHECK_IP_LENGTH: bool>(ctx: &TcContext) -> Result<Packet, Reason> {
    let linear = ctx.data_end() - ctx.data();
    if linear < PULL_LEN as usize && ctx.len() as usize > linear {
        ctx.pull_data(ctx.len().min(PULL_LEN))
            .map_err(|_| Reason::Truncated)?;
    }
    parse::<CHECK_IP_LENGTH>(ctx.data(), ctx.data_end())
}

/// Which end of the packet a translation rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source: a reply leaves with the service's address and port.
    Source,
    /// The destination: a service packet goes to the pod's address and port.
    Destination,
}

/// The packet's TTL (IPv4) or hop limit (IPv6).
#[inline(always)]
pub fn ttl(ctx: &TcContext, packet: &Packet) -> Result<u8, Reason> {
    let at = if packet.key.family == FAMILY_IPV4 {
        IPV4_TTL
    } else {
        IPV6_HOP_LIMIT
    };
    let ptr = ptr_at::<u8>(ctx.data(), ctx.data_end(), packet.l3 + at)?;
    // SAFETY: checked to lie inside the packet just above.
    Ok(unsafe { ptr.read() })
}

/// Writes `addr`/`port_be` into the source or destination fields of `packet`, and with
/// `forward` decrements the TTL (hop limit) as the router that forwards it without the kernel's
/// routing (the caller checked it is above 1).
///
/// Addresses, port, TTL and the IPv4 header checksum are written directly: the IP header
/// checksum is always complete, and a change that keeps the header's sum constant leaves a
/// CHECKSUM_COMPLETE `skb->csum` right. Only the TCP/UDP checksum goes through
/// `bpf_l4_csum_replace`, twice: the pseudo-header part (which a CHECKSUM_PARTIAL field holds
/// and a CHECKSUM_COMPLETE `skb->csum` must follow) and the port (which a partial field must
/// not see). Helpers that change the packet invalidate direct packet pointers, so they come
/// last.
///
/// UDP checksums: an IPv4 checksum of 0 means "none" and stays so; an IPv6 one of 0 is invalid
/// (RFC 8200 §8.1, except tunnels under RFC 6935) and is also left as it came, as Linux's own
/// NAT does (`BPF_F_MARK_MANGLED_0` without `BPF_F_MARK_ENFORCE`); an update that yields 0 is
/// written as 0xffff.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    packet: &Packet,
    end: End,
    addr: &[u8; 16],
    port_be: u16,
    forward: bool,
) -> Result<(), i64> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let truncated = |_| -1i64;
    let key = &packet.key;
    let (old_addr, old_port, addr_at, port_at) = match end {
        End::Source => (&key.src, key.sport_be, IPV4_SRC, L4_SPORT),
        End::Destination => (&key.dst, key.dport_be, IPV4_DST, L4_DPORT),
    };
    let mut pseudo = CsumDelta::new();
    if key.family == FAMILY_IPV4 {
        let old = [old_addr[0], old_addr[1], old_addr[2], old_addr[3]];
        let new = [addr[0], addr[1], addr[2], addr[3]];
        pseudo.bytes(&old, &new);
        let mut header = pseudo;
        let field =
            ptr_at_mut::<[u8; 4]>(data, data_end, packet.l3 + addr_at).map_err(truncated)?;
        let ttl = ptr_at_mut::<[u8; 2]>(data, data_end, packet.l3 + IPV4_TTL).map_err(truncated)?;
        let check = ptr_at_mut::<u16>(data, data_end, packet.l3 + IPV4_CHECK).map_err(truncated)?;
        // SAFETY: all three checked to lie inside the packet just above.
        unsafe {
            field.write_unaligned(new);
            if forward {
                // TTL and protocol share one 16-bit word of the header checksum.
                let word = ttl.read_unaligned();
                let new_word = [word[0].wrapping_sub(1), word[1]];
                header.bytes(&word, &new_word);
                ttl.write_unaligned(new_word);
            }
            check.write_unaligned(header.apply(check.read_unaligned()));
        }
    } else {
        pseudo.bytes(old_addr, addr);
        let at = match end {
            End::Source => IPV6_SRC,
            End::Destination => IPV6_DST,
        };
        let field = ptr_at_mut::<[u8; 16]>(data, data_end, packet.l3 + at).map_err(truncated)?;
        let hop_limit =
            ptr_at_mut::<u8>(data, data_end, packet.l3 + IPV6_HOP_LIMIT).map_err(truncated)?;
        // SAFETY: both checked to lie inside the packet just above.
        unsafe {
            field.write_unaligned(*addr);
            if forward {
                hop_limit.write(hop_limit.read().wrapping_sub(1));
            }
        }
    }
    let port = ptr_at_mut::<u16>(data, data_end, packet.l4 + port_at).map_err(truncated)?;
    // SAFETY: checked to lie inside the packet just above.
    unsafe { port.write_unaligned(port_be) };

    let check = packet.l4_check();
    let l4_flags = if key.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    // Size 0: `to` carries a precomputed checksum difference.
    let flags = l4_flags | u64::from(BPF_F_PSEUDO_HDR);
    let diff = u64::from(pseudo.sum());
    let ipv6 = if key.family == FAMILY_IPV4 {
        0
    } else {
        BPF_F_IPV6
    };
    if ctx.l4_csum_replace(check, 0, diff, flags | ipv6).is_err() {
        ctx.l4_csum_replace(check, 0, diff, flags)?;
    }
    ctx.l4_csum_replace(check, u64::from(old_port), u64::from(port_be), l4_flags | 2)
}

/// Decrements the TTL (IPv4, with its header checksum) or hop limit (IPv6) of a packet the node
/// forwards itself without rewriting it through [`rewrite`] (which does both at once): a
/// translated ICMP error, a later fragment. `Ok(false)`: it would expire here, so it is left as
/// it is, for the kernel to answer with ICMP time exceeded.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, packet: &Packet) -> Result<bool, i64> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let truncated = |_| -1i64;
    if packet.key.family == FAMILY_IPV4 {
        let ttl = ptr_at_mut::<[u8; 2]>(data, data_end, packet.l3 + IPV4_TTL).map_err(truncated)?;
        let check = ptr_at_mut::<u16>(data, data_end, packet.l3 + IPV4_CHECK).map_err(truncated)?;
        // SAFETY: both checked to lie inside the packet just above.
        unsafe {
            // TTL and protocol share one 16-bit word of the header checksum.
            let word = ttl.read_unaligned();
            if word[0] <= 1 {
                return Ok(false);
            }
            let new_word = [word[0] - 1, word[1]];
            let mut delta = CsumDelta::new();
            delta.bytes(&word, &new_word);
            ttl.write_unaligned(new_word);
            check.write_unaligned(delta.apply(check.read_unaligned()));
        }
    } else {
        let hop_limit =
            ptr_at_mut::<u8>(data, data_end, packet.l3 + IPV6_HOP_LIMIT).map_err(truncated)?;
        // SAFETY: checked to lie inside the packet just above.
        unsafe {
            let value = hop_limit.read();
            if value <= 1 {
                return Ok(false);
            }
            hop_limit.write(value - 1);
        }
    }
    Ok(true)
}

/// Whether the IP packet in `ctx` is one the kernel would accept, as `validate` (parse.rs) asks
/// of whole TCP/UDP packets, for the paths that translate other packets towards a pod (IPv4
/// fragments, ICMP errors): an IP length that lies within the frame and covers the header and
/// `transport` bytes after it, and for IPv4 a header checksum that verifies. Such a packet is
/// otherwise left untouched, leaves no state behind, and is not redirected. A call of its own,
/// beside the backend choice's (its locals stay out of the callers' frames).
#[inline(never)]
pub fn well_formed(ctx: &TcContext, transport: usize) -> bool {
    let Ok(head) = ctx.load::<[u8; 6]>(ETH_LEN) else {
        return false;
    };
    if head[0] >> 4 == 6 {
        let payload = usize::from(u16::from_be_bytes([head[4], head[5]]));
        return ETH_LEN + IPV6_LEN + payload <= ctx.len() as usize && payload >= transport;
    }
    let header_len = usize::from(head[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if total < header_len + transport || ETH_LEN + total > ctx.len() as usize {
        return false;
    }
    // RFC 1071 §2(B): the words may be summed in either byte order.
    let mut sum: u64 = 0;
    for i in 0..15 {
        if i * 4 >= header_len {
            break;
        }
        let Ok(word) = ctx.load::<u32>(ETH_LEN + i * 4) else {
            return false;
        };
        sum += u64::from(word);
    }
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}
