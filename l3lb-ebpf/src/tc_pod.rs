//! TC ingress on a local pod's host-side interface (the host end of its veth, as the pod's
//! packets arrive on the host): a reply to a flow the uplink steered gets the service address
//! and port back as its source, and leaves straight through the uplink the kernel's FIB names
//! for the client — no host routing, netfilter or conntrack, the mirror of the forward path's
//! `bpf_redirect_peer`. Every other packet of the pod (its own connections, DNS, traffic to its
//! pod address) continues untouched.
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
use l3lb_common::{FAMILY_IPV4, Reason, ReplyNat};

use crate::{
    maps::{L3LB_REPLIES, count},
    nat::{End, decrement_ttl, parse_skb, rewrite},
    parse::Packet,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[classifier]
pub fn l3lb_tc_pod(ctx: TcContext) -> i32 {
    match try_l3lb_tc_pod(&ctx) {
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
fn try_l3lb_tc_pod(ctx: &TcContext) -> Option<(i32, Reason)> {
    // The IP length is not checked: a BIG TCP GSO packet from the pod carries 0 there.
    let packet = parse_skb::<false>(ctx).ok()?;
    // SAFETY: copied out at once.
    let nat = unsafe { L3LB_REPLIES.get(packet.key) }.copied()?;
    let to_stack = Some((TC_ACT_OK, Reason::ReplyToStack));
    if rewrite(
        ctx,
        &packet,
        End::Source,
        &nat.service_addr,
        nat.service_port_be,
    )
    .is_err()
    {
        return to_stack;
    }
    let mut fib = fib_params(ctx, &packet, &nat);
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
        || !decrement_ttl(ctx, &packet).unwrap_or(false)
    {
        return to_stack;
    }
    let action = if rc == BPF_FIB_LKUP_RET_SUCCESS {
        // The lookup filled in both MAC addresses of the uplink's next hop.
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        if ctx.store(0, &macs, 0).is_err() {
            return to_stack;
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
    if action == i64::from(TC_ACT_REDIRECT) {
        Some((TC_ACT_REDIRECT, Reason::ReplyRedirected))
    } else {
        to_stack
    }
}

/// The FIB lookup for the translated reply: service → client, as received on the pod's
/// interface. `tot_len` stays 0 so the kernel checks the skb itself against the egress MTU
/// (which lets GSO packets through, to be segmented on the way out).
#[inline(always)]
fn fib_params(ctx: &TcContext, packet: &Packet, nat: &ReplyNat) -> FibLookup {
    // SAFETY: all-zero is a valid parameter block (every field is an integer or array).
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    let key = &packet.key;
    fib.l4_protocol = key.proto;
    fib.sport = nat.service_port_be;
    fib.dport = key.dport_be;
    // SAFETY: reading the context's own field.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Writing a union member is safe; the family says which one the kernel reads.
    if key.family == FAMILY_IPV4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = words(&nat.service_addr)[0];
        fib.__bindgen_anon_4.ipv4_dst = words(&key.dst)[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(&nat.service_addr);
        fib.__bindgen_anon_4.ipv6_dst = words(&key.dst);
    }
    fib
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
