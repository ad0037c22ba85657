//! The TC egress classifier on the uplinks: a pod's reply that the kernel routed (its pod was not
//! reached directly, see `tc_pod.rs` for the direct way) gets the service address and port back
//! as its source, so the client sees the address it talked to. Every other packet continues
//! (`TC_ACT_PIPE`) untouched.
//!
//! Only `ReplyTranslated` and `IcmpReplyTranslated` are counted here: the pass-through reasons
//! describe the uplink's ingress, and the node's own egress traffic would drown them.
use aya_ebpf::{bindings::TC_ACT_PIPE, macros::classifier, programs::TcContext};
use l3lb_common::Reason;

use crate::{
    icmp,
    maps::{L3LB_REPLIES, count},
    nat::{End, parse_skb, rewrite},
};

#[classifier]
pub fn l3lb_tc_egress(ctx: TcContext) -> i32 {
    let reason = match translate(&ctx) {
        // A pod's ICMP error about a steered flow (icmp.rs).
        icmp::NOT_TCP_UDP => (icmp::from_pod(&ctx) == 0).then_some(Reason::IcmpReplyTranslated),
        0 => Some(Reason::ReplyTranslated),
        _ => None,
    };
    if let Some(reason) = reason {
        count(reason, u64::from(ctx.len()));
    }
    TC_ACT_PIPE
}

/// 0 when the packet was a reply to a steered flow and has been translated back,
/// [`icmp::NOT_TCP_UDP`] for a packet that is neither TCP nor UDP, -1 otherwise. A call of its
/// own, for the stack (see there).
#[inline(never)]
fn translate(ctx: &TcContext) -> i32 {
    match try_l3lb_tc_egress(ctx) {
        Ok(()) => 0,
        Err(Reason::NotTcpUdp) => icmp::NOT_TCP_UDP,
        Err(_) => -1,
    }
}

/// `Ok` when the packet was a reply to a steered flow and has been translated back.
#[inline(always)]
fn try_l3lb_tc_egress(ctx: &TcContext) -> Result<(), Reason> {
    // The IP length is not checked on egress: a BIG TCP GSO packet carries 0 there.
    let packet = parse_skb::<false>(ctx)?;
    // SAFETY: copied out at once.
    let nat = unsafe { L3LB_REPLIES.get(packet.key) }
        .copied()
        .ok_or(Reason::NotService)?;
    rewrite(
        ctx,
        &packet,
        End::Source,
        &nat.service_addr,
        nat.service_port_be,
        false,
    )
    .map_err(|_| Reason::Truncated)
}
