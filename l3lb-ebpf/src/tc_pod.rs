//! TC ingress on a local pod's host-side interface (the host end of its veth, as the pod's
//! packets arrive on the host): a reply to a flow the uplink steered gets the service address
//! and port back as its source, and leaves straight through the uplink the kernel's FIB names
//! for the client — no host routing, netfilter or conntrack, the mirror of the forward path's
//! `bpf_redirect_peer`. Every other packet of the pod (its own connections, DNS, traffic to its
//! pod address) continues untouched. So does its ICMP, but for errors about a steered flow
//! (icmp.rs), which are translated and leave the same way.
//!
//! The next hop comes from `bpf_fib_lookup` on the translated packet. A route via an IPv6
//! link-local next hop for an IPv4 destination (BGP unnumbered, RFC 5549) comes back as an
//! IPv6 neighbour, which the redirect handles the same way. When the kernel does not know the
//! neighbour's MAC yet, `bpf_redirect_neigh` resolves it. When the lookup says anything else
//! (no route, forwarding off, a packet too big for the uplink's MTU), the translated packet is
//! handed to the kernel's routing, which answers it as it would any routed packet.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_REDIRECT,
        bpf_fib_lookup as FibLookup, bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use l3lb_common::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, Reason};

use crate::{
    frag, frag_reply, icmp,
    maps::{L3LB_REPLIES, count},
    nat::{End, decrement_ttl, parse_skb, rewrite},
    parse::{ETH_LEN, IPV4_DST, IPV4_SRC, IPV6_DST, IPV6_SRC, Packet},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[classifier]
pub fn l3lb_tc_pod(ctx: TcContext) -> i32 {
    match reply(&ctx) {
        icmp::NOT_TCP_UDP => icmp_error(&ctx),
        // Fragments of a reply to a steered flow follow their first (frag_reply.rs).
        frag::FRAGMENT => frag_reply::reply(&ctx),
        action => action,
    }
}

/// The reply path, counted; [`icmp::NOT_TCP_UDP`] / [`frag::FRAGMENT`] (uncounted) for a
/// packet that is neither TCP nor UDP / a fragment.
/// A call of its own, for the stack (see there).
#[inline(never)]
fn reply(ctx: &TcContext) -> i32 {
    // The IP length is not checked: a BIG TCP GSO packet from the pod carries 0 there.
    let packet = match parse_skb::<false>(ctx) {
        Ok(packet) => packet,
        Err(Reason::NotTcpUdp) => return icmp::NOT_TCP_UDP,
        Err(Reason::Fragment) => return frag::FRAGMENT,
        Err(_) => return TC_ACT_OK,
    };
    match try_l3lb_tc_pod(ctx, packet) {
        Some((action, reason)) => {
            count(reason, u64::from(ctx.len()));
            action
        }
        None => TC_ACT_OK,
    }
}

/// `None` for a packet that is no reply of a steered flow (untouched); otherwise the verdict
/// and the way the translated reply went.
#[inline(always)]
fn try_l3lb_tc_pod(ctx: &TcContext, packet: Packet) -> Option<(i32, Reason)> {
    // SAFETY: copied out at once.
    let nat = unsafe { L3LB_REPLIES.get(packet.key) }.copied()?;
    let to_stack = Some((TC_ACT_OK, Reason::ReplyToStack));
    if rewrite(
        ctx,
        &packet,
        End::Source,
        &nat.service_addr,
        nat.service_port_be,
        false,
    )
    .is_err()
    {
        return to_stack;
    }
    let key = &packet.key;
    let fib = fib_params(
        ctx,
        key.family,
        key.proto,
        (&nat.service_addr, nat.service_port_be),
        (&key.dst, key.dport_be),
    );
    if send_out(ctx, fib, &packet) {
        Some((TC_ACT_REDIRECT, Reason::ReplyRedirected))
    } else {
        to_stack
    }
}

/// The pod's ICMP error about a steered flow (icmp.rs), translated and sent out the way its
/// replies go, counted; any other ICMP passes untouched. A call of its own, for the stack.
#[inline(never)]
fn icmp_error(ctx: &TcContext) -> i32 {
    let (action, reason) = match translated_icmp(ctx) {
        Some(done) => done,
        None => return TC_ACT_OK,
    };
    count(reason, u64::from(ctx.len()));
    action
}

#[inline(always)]
fn translated_icmp(ctx: &TcContext) -> Option<(i32, Reason)> {
    match icmp::from_pod(ctx) {
        0 => {}
        icmp::FAILED => return Some((TC_ACT_OK, Reason::Truncated)),
        _ => return None,
    }
    // The translated error's own addresses (service → client) for the FIB.
    let ether_type: u16 = ctx.load(12).ok()?;
    let mut packet = Packet {
        key: FlowKey::default(),
        l3: ETH_LEN,
        l4: 0,
    };
    let key = &mut packet.key;
    if ether_type == 0x0800u16.to_be() {
        key.family = FAMILY_IPV4;
        key.proto = 1;
        let src: [u8; 4] = ctx.load(ETH_LEN + IPV4_SRC).ok()?;
        let dst: [u8; 4] = ctx.load(ETH_LEN + IPV4_DST).ok()?;
        key.src[..4].copy_from_slice(&src);
        key.dst[..4].copy_from_slice(&dst);
    } else {
        key.family = FAMILY_IPV6;
        key.proto = 58;
        key.src = ctx.load(ETH_LEN + IPV6_SRC).ok()?;
        key.dst = ctx.load(ETH_LEN + IPV6_DST).ok()?;
    }
    let fib = fib_params(ctx, key.family, key.proto, (&key.src, 0), (&key.dst, 0));
    let action = if send_out(ctx, fib, &packet) {
        TC_ACT_REDIRECT
    } else {
        TC_ACT_OK
    };
    Some((action, Reason::IcmpReplyTranslated))
}

/// Sends the translated packet straight out of the uplink the FIB names for it; `false` when
/// it is to go to the kernel's routing instead (no route, forwarding off, too big for the
/// uplink, a TTL that runs out here, or a helper that refused).
#[inline(always)]
pub fn send_out(ctx: &TcContext, mut fib: FibLookup, packet: &Packet) -> bool {
    // SAFETY: the parameter block is on this stack frame with the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut fib,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    let rc = rc as u32;
    if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
        || !decrement_ttl(ctx, packet).unwrap_or(false)
    {
        return false;
    }
    let action = if rc == BPF_FIB_LKUP_RET_SUCCESS {
        // The lookup filled in both MAC addresses of the uplink's next hop.
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        if ctx.store(0, &macs, 0).is_err() {
            return false;
        }
        // SAFETY: a helper call with plain arguments.
        unsafe { bpf_redirect(fib.ifindex, 0) }
    } else {
        // The lookup put the next hop (gateway, or the client itself) in the destination.
        let mut next_hop = bpf_redir_neigh {
            nh_family: u32::from(fib.family),
            __bindgen_anon_1: unsafe { core::mem::zeroed() },
        };
        // SAFETY: plain-old-data unions; the family says which member the kernel reads.
        unsafe {
            if fib.family == AF_INET {
                next_hop.__bindgen_anon_1.ipv4_nh = fib.__bindgen_anon_4.ipv4_dst;
            } else {
                next_hop.__bindgen_anon_1.ipv6_nh = fib.__bindgen_anon_4.ipv6_dst;
            }
        }
        // SAFETY: the parameter block is on this stack frame with the size given.
        unsafe {
            bpf_redirect_neigh(
                fib.ifindex,
                &mut next_hop,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        }
    };
    action == i64::from(TC_ACT_REDIRECT)
}

/// The FIB lookup for the translated packet: service → client (address, port), as received
/// on the pod's interface. `tot_len` stays 0 so the kernel checks the skb itself against the
/// egress MTU (which lets GSO packets through, to be segmented on the way out).
#[inline(always)]
pub fn fib_params(
    ctx: &TcContext,
    family: u8,
    proto: u8,
    src: (&[u8; 16], u16),
    dst: (&[u8; 16], u16),
) -> FibLookup {
    // SAFETY: all-zero is a valid parameter block (every field is an integer or array).
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    fib.l4_protocol = proto;
    fib.sport = src.1;
    fib.dport = dst.1;
    // SAFETY: reading the context's own field.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Writing a union member is safe; the family says which one the kernel reads.
    if family == FAMILY_IPV4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = words(src.0)[0];
        fib.__bindgen_anon_4.ipv4_dst = words(dst.0)[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(src.0);
        fib.__bindgen_anon_4.ipv6_dst = words(dst.0);
    }
    fib
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
