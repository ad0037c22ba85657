//! The XDP entry point on the uplinks. For now it classifies and counts; every verdict is
//! `XDP_PASS`, because a frame the program does not own must reach the stack untouched.
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use l3lb_common::ProtoCounter;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
};

use crate::{maps::count, packet::ptr_at};

#[xdp]
pub fn l3lb_xdp(ctx: XdpContext) -> u32 {
    let bucket = classify(&ctx).unwrap_or(ProtoCounter::Truncated);
    count(bucket, (ctx.data_end() - ctx.data()) as u64);
    xdp_action::XDP_PASS
}

/// The protocol bucket of a frame; `None` when it is shorter than its headers claim.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Option<ProtoCounter> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv4 as u16 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
        let proto = unsafe { (*ip).proto };
        Some(match proto {
            p if p == IpProto::Tcp as u8 => ProtoCounter::Ipv4Tcp,
            p if p == IpProto::Udp as u8 => ProtoCounter::Ipv4Udp,
            _ => ProtoCounter::Ipv4Other,
        })
    } else if ether_type == EtherType::Ipv6 as u16 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
        let next = unsafe { (*ip).next_hdr };
        Some(match next {
            n if n == IpProto::Tcp as u8 => ProtoCounter::Ipv6Tcp,
            n if n == IpProto::Udp as u8 => ProtoCounter::Ipv6Udp,
            _ => ProtoCounter::Ipv6Other,
        })
    } else {
        Some(ProtoCounter::NonIp)
    }
}
