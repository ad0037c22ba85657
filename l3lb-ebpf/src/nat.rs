//! Address and port translation on socket buffers, for the TC programs: the forward rewrite
//! (client → service becomes client → pod) on the uplinks' ingress, and the reverse one (pod →
//! client becomes service → client) as a reply leaves the pod or the uplink.
//!
//! Skbs are often CHECKSUM_PARTIAL (the TCP/UDP checksum field holds only the pseudo-header
//! sum, to be completed by the NIC or `skb_checksum_help`: the pods' and any local sender's
//! traffic over veth), or CHECKSUM_COMPLETE (`skb->csum` covers the packet, from most NICs).
//! The kernel's `bpf_l3_csum_replace`/`bpf_l4_csum_replace` know the skb's checksum state and
//! update the field, and `skb->csum`, the right way for each; a hand-rolled RFC 1624 update, as
//! in the XDP program (which only sees complete wire checksums), would corrupt partial
//! checksums and leave a stale `skb->csum` behind.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use l3lb_common::{FAMILY_IPV4, PROTO_UDP, Reason};

use crate::parse::{
    ETH_LEN, IPV4_CHECK, IPV4_DST, IPV4_SRC, IPV4_TTL, IPV6_DST, IPV6_HOP_LIMIT, IPV6_SRC,
    L4_DPORT, L4_SPORT, Packet, TCP_LEN, parse,
};

/// `bpf_l4_csum_replace` flag (Linux 6.16+, not yet in aya's bindings): the pseudo-header
/// change is an IPv6 one, which must not be folded into a CHECKSUM_COMPLETE `skb->csum`.
/// Older kernels reject unknown flags with `-EINVAL` before touching the packet, so the update
/// is retried without it there.
const BPF_F_IPV6: u64 = 1 << 7;

/// Bytes pulled into the linear area when the headers are not all there: Ethernet, the
/// longest IPv4 header, and a TCP header (the longest fixed transport header).
const PULL_LEN: u32 = (ETH_LEN + 60 + TCP_LEN) as u32;

/// The TCP/UDP packet in `ctx`, pulling its headers into the linear area first when they are
/// not all there (direct packet access reaches only that area). `CHECK_IP_LENGTH` as in
/// [`parse`].
#[inline(always)]
pub fn parse_skb<const CHECK_IP_LENGTH: bool>(ctx: &TcContext) -> Result<Packet, Reason> {
    match parse::<CHECK_IP_LENGTH>(ctx.data(), ctx.data_end()) {
        Err(Reason::Truncated) if (ctx.len() as usize) > ctx.data_end() - ctx.data() => {
            ctx.pull_data(ctx.len().min(PULL_LEN))
                .map_err(|_| Reason::Truncated)?;
            parse::<CHECK_IP_LENGTH>(ctx.data(), ctx.data_end())
        }
        other => other,
    }
}

/// Which end of the packet a translation rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source: a reply leaves with the service's address and port.
    Source,
    /// The destination: a service packet goes to the pod's address and port.
    Destination,
}

/// Writes `addr`/`port_be` into the source or destination fields of `packet`, fixing the IPv4
/// header checksum and the TCP/UDP checksum through the kernel helpers. Helpers that change
/// the packet invalidate direct packet pointers, so from here on the packet is touched only
/// through them.
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
) -> Result<(), i64> {
    let key = &packet.key;
    let check = packet.l4_check();
    let l4_flags = if key.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let (old_addr, old_port) = match end {
        End::Source => (&key.src, key.sport_be),
        End::Destination => (&key.dst, key.dport_be),
    };

    if key.family == FAMILY_IPV4 {
        let old = [old_addr[0], old_addr[1], old_addr[2], old_addr[3]];
        let new = [addr[0], addr[1], addr[2], addr[3]];
        let (old_word, new_word) = (
            u64::from(u32::from_ne_bytes(old)),
            u64::from(u32::from_ne_bytes(new)),
        );
        ctx.l4_csum_replace(
            check,
            old_word,
            new_word,
            l4_flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
        )?;
        ctx.l3_csum_replace(packet.l3 + IPV4_CHECK, old_word, new_word, 4)?;
        let at = match end {
            End::Source => IPV4_SRC,
            End::Destination => IPV4_DST,
        };
        ctx.store(packet.l3 + at, &new, 0)?;
    } else {
        let mut old = [0u32; 4];
        let mut new = [0u32; 4];
        for i in 0..4 {
            let at = i * 4;
            old[i] = u32::from_ne_bytes([
                old_addr[at],
                old_addr[at + 1],
                old_addr[at + 2],
                old_addr[at + 3],
            ]);
            new[i] = u32::from_ne_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]]);
        }
        // SAFETY: both buffers are 16 bytes on this stack frame, as the sizes say.
        let diff = unsafe { bpf_csum_diff(old.as_mut_ptr(), 16, new.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return Err(diff);
        }
        // Size 0: `to` carries a precomputed checksum difference.
        let flags = l4_flags | u64::from(BPF_F_PSEUDO_HDR);
        let diff = diff as u64 & 0xffff_ffff;
        if ctx
            .l4_csum_replace(check, 0, diff, flags | BPF_F_IPV6)
            .is_err()
        {
            ctx.l4_csum_replace(check, 0, diff, flags)?;
        }
        let at = match end {
            End::Source => IPV6_SRC,
            End::Destination => IPV6_DST,
        };
        ctx.store(packet.l3 + at, addr, 0)?;
    }

    // The port, with its (non-pseudo-header) part of the TCP/UDP checksum.
    ctx.l4_csum_replace(check, u64::from(old_port), u64::from(port_be), l4_flags | 2)?;
    let at = match end {
        End::Source => L4_SPORT,
        End::Destination => L4_DPORT,
    };
    ctx.store(packet.l4 + at, &port_be, 0)
}

/// Decrements the TTL (IPv4, with its header checksum) or hop limit (IPv6) as the router this
/// node is, when the packet is forwarded without the kernel's routing. `Ok(false)`: it would
/// expire here, so it is left as it is, for the kernel to answer with ICMP time exceeded.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, packet: &Packet) -> Result<bool, i64> {
    if packet.key.family == FAMILY_IPV4 {
        // TTL and protocol share one 16-bit word of the header checksum.
        let word: [u8; 2] = ctx.load(packet.l3 + IPV4_TTL)?;
        if word[0] <= 1 {
            return Ok(false);
        }
        let new = [word[0] - 1, word[1]];
        ctx.l3_csum_replace(
            packet.l3 + IPV4_CHECK,
            u64::from(u16::from_ne_bytes(word)),
            u64::from(u16::from_ne_bytes(new)),
            2,
        )?;
        ctx.store(packet.l3 + IPV4_TTL, &new[0], 0)?;
    } else {
        let hop_limit: u8 = ctx.load(packet.l3 + IPV6_HOP_LIMIT)?;
        if hop_limit <= 1 {
            return Ok(false);
        }
        ctx.store(packet.l3 + IPV6_HOP_LIMIT, &(hop_limit - 1), 0)?;
    }
    Ok(true)
}
