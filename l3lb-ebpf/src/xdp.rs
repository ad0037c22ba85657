//! The XDP entry point on the uplinks. For now it classifies and counts; every verdict is
//! `XDP_PASS`, because a frame the program does not own must reach the stack untouched.
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use l3lb_common::Reason;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
};

use crate::{maps::count, packet::ptr_at};

#[xdp]
pub fn l3lb_xdp(ctx: XdpContext) -> u32 {
    let reason = classify(&ctx).unwrap_or(Reason::Truncated);
    count(reason, (ctx.data_end() - ctx.data()) as u64);
    xdp_action::XDP_PASS
}

/// Why the frame passes; `None` when it is shorter than its headers claim.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Option<Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    let proto = if ether_type == EtherType::Ipv4 as u16 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
        unsafe { (*ip).proto }
    } else if ether_type == EtherType::Ipv6 as u16 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
        unsafe { (*ip).next_hdr }
    } else {
        return Some(Reason::NotIp);
    };
    Some(if proto == IpProto::Tcp as u8 || proto == IpProto::Udp as u8 {
        Reason::NotService
    } else {
        Reason::NotTcpUdp
    })
}
