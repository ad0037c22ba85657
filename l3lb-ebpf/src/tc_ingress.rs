//! TC ingress on the uplinks: service packets go straight into the pod. `l3lb_tc_ingress` does
//! the whole forward path: parse, service lookup, backend choice (flow memory, Maglev),
//! destination rewrite, TTL, and the redirect.
//!
//! Why TC and not XDP, measured here: on veth uplinks a packet already is a socket buffer,
//! which an XDP program first copies into an XDP buffer (the bench's "empty XDP" lane: about
//! 20 % of the packet rate for that alone, before any work); and on any NIC only TC can hand
//! the packet to another namespace's ingress (`bpf_redirect_peer` needs the skb), which is
//! what skips the host's routing, netfilter and conntrack. See xdp.rs for the XDP mode.
//!
//! The redirect is `bpf_redirect_peer` for pods on a veth/netkit pair (the packet enters the
//! pod's namespace as if received there: no host routing, netfilter, conntrack or veth queue),
//! `bpf_redirect_neigh` for pods behind another host interface, and the kernel's own routing
//! (`TC_ACT_OK`, counted `Forwarded`) for backends userspace could not place, or a TTL that
//! runs out here.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use l3lb_common::{BACKEND_DELIVERY, BACKEND_REDIRECT_PEER, Backend, Reason, ServiceKey};

use crate::{
    flow::select,
    frag, icmp,
    maps::{L3LB_SERVICES, count, count_service},
    nat::{End, parse_skb, rewrite, ttl},
    parse::{Packet, validate},
};

#[classifier]
pub fn l3lb_tc_ingress(ctx: TcContext) -> i32 {
    let bytes = u64::from(ctx.len());
    match forward(&ctx, bytes) {
        // ICMP errors about steered flows follow their flow into the pod (icmp.rs).
        icmp::NOT_TCP_UDP => {
            let (action, reason) = match icmp::to_pod(&ctx) {
                icmp::NOT_OURS => (TC_ACT_OK, Reason::NotTcpUdp),
                icmp::FAILED => (TC_ACT_OK, Reason::Truncated),
                action => (action, Reason::IcmpTranslated),
            };
            count(reason, bytes);
            action
        }
        // Fragments of service datagrams follow their first fragment (frag.rs).
        frag::FRAGMENT => frag::forward(&ctx, bytes),
        action => action,
    }
}

/// The forward path, counted; [`icmp::NOT_TCP_UDP`] / [`frag::FRAGMENT`] (uncounted) for a
/// packet that is neither TCP nor UDP / a fragment. A call of its own, for the stack (see there).
#[inline(never)]
fn forward(ctx: &TcContext, bytes: u64) -> i32 {
    let (action, reason) = match try_l3lb_tc_ingress(ctx, bytes) {
        Ok(done) => done,
        Err(Reason::NotTcpUdp) => return icmp::NOT_TCP_UDP,
        Err(Reason::Fragment) => return frag::FRAGMENT,
        Err(reason) => (TC_ACT_OK, reason),
    };
    count(reason, bytes);
    action
}

/// The verdict and the way the packet went, or why it passes untouched.
#[inline(always)]
fn try_l3lb_tc_ingress(ctx: &TcContext, bytes: u64) -> Result<(i32, Reason), Reason> {
    let packet = parse_skb::<true>(ctx)?;
    let key = &packet.key;
    let service_key = ServiceKey {
        addr: key.dst,
        port_be: key.dport_be,
        proto: key.proto,
        family: key.family,
    };
    // SAFETY: copied out at once (see the XDP program).
    let service = unsafe { L3LB_SERVICES.get(service_key) }
        .copied()
        .ok_or(Reason::NotService)?;
    validate(ctx.data(), ctx.data_end(), &packet, ctx.len() as usize)?;
    let backend = select(key, &service, bytes)?;
    // The node forwards the packet itself (and so decrements the TTL) only into a pod it can
    // reach directly; a TTL that would expire here is the kernel's to answer.
    let direct = backend.flags & BACKEND_DELIVERY != 0 && ttl(ctx, &packet)? > 1;
    // A failed helper leaves a packet that may be half rewritten: the kernel's checks (and the
    // counters) are all that is left to it, so it goes on rather than being dropped here.
    if !rewrite_to_backend(ctx, &packet, &backend, direct) {
        return Ok((TC_ACT_OK, Reason::Truncated));
    }
    count_service(service.id, bytes);
    if !direct {
        return Ok((TC_ACT_OK, Reason::Forwarded));
    }
    Ok(redirect(&backend))
}

/// The destination rewrite, a call of its own: its locals then share no stack frame with the
/// backend choice's (flow.rs, affinity.rs), which keeps the call chain under the verifier's
/// 512 bytes.
#[inline(never)]
fn rewrite_to_backend(ctx: &TcContext, packet: &Packet, backend: &Backend, direct: bool) -> bool {
    rewrite(
        ctx,
        packet,
        End::Destination,
        &backend.addr,
        backend.port_be,
        direct,
    )
    .is_ok()
}

/// Sends a rewritten packet (TTL already decremented) to its backend's interface. The helpers
/// only refuse unknown flags (with `TC_ACT_SHOT`); should one ever do, the packet goes to the
/// kernel's routing instead of being dropped.
#[inline(always)]
pub fn redirect(backend: &Backend) -> (i32, Reason) {
    let ifindex = backend.ifindex;
    let (action, reason) = if backend.flags & BACKEND_REDIRECT_PEER != 0 {
        // SAFETY: a helper call with plain arguments.
        let action = unsafe { bpf_redirect_peer(ifindex, 0) };
        (action, Reason::RedirectPeer)
    } else {
        // No next hop given: the kernel resolves the packet's own destination (the pod) on
        // that interface.
        // SAFETY: a null parameter block with length 0 is the documented "no next hop" form.
        let action = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
        (action, Reason::RedirectNeigh)
    };
    if action == i64::from(TC_ACT_REDIRECT) {
        (TC_ACT_REDIRECT, reason)
    } else {
        (TC_ACT_OK, Reason::Forwarded)
    }
}
