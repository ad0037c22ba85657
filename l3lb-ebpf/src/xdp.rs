//! The XDP entry point on the uplinks (`--xdp-mode native|generic`): client → service packets
//! get the destination address and port of a local pod (DNAT, the client's source address
//! kept), everything else goes on untouched. The verdict is always `XDP_PASS`: a rewritten
//! packet is routed to the pod by the kernel like any other, and a packet the program does not
//! own must reach the stack as it came.
//!
//! This is not the default path: XDP cannot hand a packet to another namespace's ingress, so
//! a packet it rewrites still takes the host's routing, netfilter and conntrack to the pod
//! (`XDP_REDIRECT` into a veth would need an XDP program inside the pod's namespace). Handing
//! the choice to TC in the packet's metadata was the plan, but this kernel (6.18) refuses
//! `bpf_xdp_adjust_meta` to the program at load time. `l3lb_tc_ingress` does the whole path
//! on the skb instead, and redirects.
//!
//! Built frags-aware (`xdp.frags`), so it attaches natively to interfaces whose MTU is above
//! one page (jumbo frames; veth refuses other programs there): a packet may then come in
//! several buffers, and the program reads and rewrites only the headers, which are in the
//! first (`data`..`data_end`); what it cannot parse there it passes. Its byte counters count
//! that first buffer.
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_get_buff_len, macros::xdp, programs::XdpContext,
};
use l3lb_common::{Backend, FAMILY_IPV4, PROTO_UDP, Reason, ServiceKey};

use crate::{
    csum::CsumDelta,
    flow::select,
    maps::{L3LB_SERVICES, count, count_service},
    parse::{IPV4_CHECK, IPV4_DST, IPV6_DST, L4_DPORT, Packet, parse, ptr_at_mut, validate},
};

#[xdp(frags)]
pub fn l3lb_xdp(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let reason = match try_l3lb_xdp(&ctx, bytes) {
        Ok(()) => Reason::Forwarded,
        Err(reason) => reason,
    };
    count(reason, bytes);
    xdp_action::XDP_PASS
}

/// `Ok` when the packet was rewritten towards a backend; otherwise why it passes untouched.
#[inline(always)]
fn try_l3lb_xdp(ctx: &XdpContext, bytes: u64) -> Result<(), Reason> {
    let packet = parse::<true>(ctx.data(), ctx.data_end())?;
    let key = &packet.key;
    let service_key = ServiceKey {
        addr: key.dst,
        port_be: key.dport_be,
        proto: key.proto,
        family: key.family,
    };
    // SAFETY: copied out at once; the daemon replaces entries whole (BPF_ANY updates of a hash
    // map swap in a new element), so the copy is one consistent entry.
    let service = unsafe { L3LB_SERVICES.get(service_key) }
        .copied()
        .ok_or(Reason::NotService)?;
    // The whole packet's length: with frags (jumbo frames) it reaches past this buffer.
    // SAFETY: a helper call on the program's own context.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    validate(ctx.data(), ctx.data_end(), &packet, frame_len)?;
    let backend = select(key, &service, bytes)?;
    rewrite_destination(ctx.data(), ctx.data_end(), &packet, &backend)?;
    count_service(service.id, bytes);
    Ok(())
}

/// Puts the backend's address and port into the destination fields and updates the IPv4 header
/// checksum and the TCP/UDP checksum (whose pseudo-header covers the address) incrementally. A
/// call of its own, so its locals share no stack frame with the backend choice's (flow.rs,
/// affinity.rs): the chain stays under the verifier's 512 bytes.
#[inline(never)]
/// `data`/`data_end` come from the caller: read from the context here, the kernel's 32-bit
/// fields would be widened on the packet-end pointer, which the verifier refuses.
fn rewrite_destination(
    data: usize,
    data_end: usize,
    packet: &Packet,
    backend: &Backend,
) -> Result<(), Reason> {
    let key = &packet.key;
    let mut l4_delta = CsumDelta::new();
    l4_delta.word(key.dport_be, backend.port_be);

    if key.family == FAMILY_IPV4 {
        let old: [u8; 4] = [key.dst[0], key.dst[1], key.dst[2], key.dst[3]];
        let new: [u8; 4] = [
            backend.addr[0],
            backend.addr[1],
            backend.addr[2],
            backend.addr[3],
        ];
        let mut ip_delta = CsumDelta::new();
        ip_delta.bytes(&old, &new);
        l4_delta.bytes(&old, &new);

        let dst = ptr_at_mut::<[u8; 4]>(data, data_end, packet.l3 + IPV4_DST)?;
        let check = ptr_at_mut::<u16>(data, data_end, packet.l3 + IPV4_CHECK)?;
        // SAFETY: both checked to lie inside the packet just above.
        unsafe {
            dst.write_unaligned(new);
            check.write_unaligned(ip_delta.apply(check.read_unaligned()));
        }
    } else {
        // No IPv6 header checksum: only the pseudo-header in the TCP/UDP checksum changes.
        l4_delta.bytes(&key.dst, &backend.addr);
        let dst = ptr_at_mut::<[u8; 16]>(data, data_end, packet.l3 + IPV6_DST)?;
        // SAFETY: checked to lie inside the packet just above.
        unsafe { dst.write_unaligned(backend.addr) };
    }

    let port = ptr_at_mut::<u16>(data, data_end, packet.l4 + L4_DPORT)?;
    let check = ptr_at_mut::<u16>(data, data_end, packet.l4_check())?;
    // SAFETY: both checked to lie inside the packet just above.
    unsafe {
        port.write_unaligned(backend.port_be);
        let old = check.read_unaligned();
        if key.proto == PROTO_UDP {
            // IPv4 UDP may go without a checksum (0), and stays so; a computed 0 is sent as
            // 0xffff, its one's-complement twin, because 0 would mean "none" (RFC 768). An IPv6
            // checksum of 0 is invalid (RFC 8200 §8.1, except tunnels under RFC 6935) and is
            // left as it came too, as Linux's own NAT does.
            if old != 0 {
                let new = l4_delta.apply(old);
                check.write_unaligned(if new == 0 { 0xffff } else { new });
            }
        } else {
            check.write_unaligned(l4_delta.apply(old));
        }
    }
    Ok(())
}
