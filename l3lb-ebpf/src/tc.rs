//! The TC egress classifier on the uplinks: a pod's reply to a flow the XDP program steered gets
//! the service address and port back as its source, so the client sees the address it talked
//! to. Every other packet continues (`TC_ACT_PIPE`) untouched.
//!
//! Egress skbs from pods' veths are often CHECKSUM_PARTIAL (the TCP/UDP checksum field holds
//! only the pseudo-header sum, to be completed by the NIC or `skb_checksum_help`). The kernel's
//! `bpf_l3_csum_replace`/`bpf_l4_csum_replace` know the skb's checksum state and update the
//! field the right way for each; a hand-rolled RFC 1624 update, as in the XDP program, would
//! corrupt partial checksums.
//!
//! Only `ReplyTranslated` is counted here: the pass-through reasons describe the uplink's
//! ingress (XDP), and the node's own egress traffic would drown them.
use aya_ebpf::{
    bindings::{BPF_F_MARK_ENFORCE, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_PIPE},
    helpers::bpf_csum_diff,
    macros::classifier,
    programs::TcContext,
};
use l3lb_common::{FAMILY_IPV4, PROTO_UDP, Reason, ReplyNat};

use crate::{
    maps::{L3LB_REPLIES, count},
    parse::{ETH_LEN, IPV4_CHECK, IPV4_SRC, IPV6_SRC, L4_SPORT, Packet, TCP_LEN, parse},
};

/// `bpf_l4_csum_replace` flag (Linux 6.16+, not yet in aya's bindings): the pseudo-header
/// change is an IPv6 one, which must not be folded into a CHECKSUM_COMPLETE `skb->csum`.
/// Older kernels reject unknown flags with `-EINVAL` before touching the packet, so the update
/// is retried without it there.
const BPF_F_IPV6: u64 = 1 << 7;

/// Bytes pulled into the linear area when the headers are not all there: Ethernet, the
/// longest IPv4 header, and a TCP header (the longest fixed transport header).
const PULL_LEN: u32 = (ETH_LEN + 60 + TCP_LEN) as u32;

#[classifier]
pub fn l3lb_tc_egress(ctx: TcContext) -> i32 {
    if try_l3lb_tc_egress(&ctx).is_ok() {
        count(Reason::ReplyTranslated, u64::from(ctx.len()));
    }
    TC_ACT_PIPE
}

/// `Ok` when the packet was a reply to a steered flow and has been translated back.
#[inline(always)]
fn try_l3lb_tc_egress(ctx: &TcContext) -> Result<(), ()> {
    let packet = match parse::<false>(ctx.data(), ctx.data_end()) {
        Ok(packet) => packet,
        // The headers may sit partly outside the skb's linear area, where direct access cannot
        // reach: pull them in once and look again.
        Err(Reason::Truncated) if (ctx.len() as usize) > ctx.data_end() - ctx.data() => {
            ctx.pull_data(ctx.len().min(PULL_LEN)).map_err(drop)?;
            parse::<false>(ctx.data(), ctx.data_end()).map_err(drop)?
        }
        Err(_) => return Err(()),
    };
    // SAFETY: copied out at once.
    let nat = unsafe { L3LB_REPLIES.get(packet.key) }.copied().ok_or(())?;
    rewrite_source(ctx, &packet, &nat).map_err(drop)
}

/// Writes the service's address and port into the source fields, fixing the IPv4 header
/// checksum and the TCP/UDP checksum through the kernel helpers. Helpers that change the packet
/// invalidate direct packet pointers, so from here on the packet is touched only through them.
#[inline(always)]
fn rewrite_source(ctx: &TcContext, packet: &Packet, nat: &ReplyNat) -> Result<(), i64> {
    let key = &packet.key;
    let check = packet.l4_check();
    let udp = key.proto == PROTO_UDP;

    if key.family == FAMILY_IPV4 {
        // An IPv4 UDP checksum of 0 means "none" and is left so; an update that yields 0 is
        // written as 0xffff.
        let l4_flags = if udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        let old = [key.src[0], key.src[1], key.src[2], key.src[3]];
        let new = [
            nat.service_addr[0],
            nat.service_addr[1],
            nat.service_addr[2],
            nat.service_addr[3],
        ];
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
        ctx.store(packet.l3 + IPV4_SRC, &new, 0)?;
        rewrite_port(ctx, packet, nat, l4_flags)
    } else {
        // IPv6 UDP must have a checksum: always updated (ENFORCE), a resulting 0 sent as 0xffff.
        let l4_flags = if udp {
            u64::from(BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE)
        } else {
            0
        };
        let mut old = [0u32; 4];
        let mut new = [0u32; 4];
        for i in 0..4 {
            let at = i * 4;
            old[i] = u32::from_ne_bytes([
                key.src[at],
                key.src[at + 1],
                key.src[at + 2],
                key.src[at + 3],
            ]);
            new[i] = u32::from_ne_bytes([
                nat.service_addr[at],
                nat.service_addr[at + 1],
                nat.service_addr[at + 2],
                nat.service_addr[at + 3],
            ]);
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
        ctx.store(packet.l3 + IPV6_SRC, &nat.service_addr, 0)?;
        rewrite_port(ctx, packet, nat, l4_flags)
    }
}

/// The source port, with its (non-pseudo-header) part of the TCP/UDP checksum.
#[inline(always)]
fn rewrite_port(
    ctx: &TcContext,
    packet: &Packet,
    nat: &ReplyNat,
    l4_flags: u64,
) -> Result<(), i64> {
    ctx.l4_csum_replace(
        packet.l4_check(),
        u64::from(packet.key.sport_be),
        u64::from(nat.service_port_be),
        l4_flags | 2,
    )?;
    ctx.store(packet.l4 + L4_SPORT, &nat.service_port_be, 0)
}
