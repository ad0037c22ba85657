//! Fragments of service datagrams, on the uplinks' TC ingress: IPv4 fragments, and IPv6 ones
//! whose fragment header directly follows the IPv6 header (what senders emit; other extension
//! headers pass, as everywhere). Only a datagram's first fragment carries the ports, so it is
//! steered like a whole packet (its UDP/TCP checksum, which covers the whole datagram, is
//! updated incrementally: the delta needs none of the rest) and its backend remembered under
//! (source, destination, protocol, fragment ID) in `L3LB_FRAGMENTS`, as Cilium does; later
//! fragments with the same identity get the same destination address (the IPv4 header checksum
//! is all they carry; IPv6 has none) and the same delivery. The pod reassembles the datagram.
//! kube-proxy gets the same from conntrack's defragmentation.
//!
//! A malformed fragment of a service datagram (an IP length beyond the frame or short of the
//! headers, a bad IPv4 header checksum) passes untouched, counted `Truncated`, and leaves no
//! entry: found by `cargo xtask fuzz` (docs/reliability.md).
//!
//! A later fragment with no entry (one that arrived before its first fragment, or belongs to no
//! steered datagram) passes untouched and is counted as `Fragment`: the kernel then has a
//! datagram it cannot complete, which times out in its reassembly queue. Reordering that puts
//! a later fragment first is rare on a routed path; buffering it here is not possible in TC.
//!
//! Not handled: fragments on the XDP path (passed, counted as `Fragment`). A pod's fragmented
//! replies are frag_reply.rs's.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK},
    programs::TcContext,
};
use l3lb_common::{
    BACKEND_DELIVERY, Backend, FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_TCP, PROTO_UDP, Reason,
    ServiceEntry, ServiceKey,
};

use crate::{
    flow::select,
    maps::{L3LB_FRAGMENTS, L3LB_SERVICES, count, count_service},
    nat::{End, decrement_ttl, rewrite, ttl, well_formed},
    parse::{
        ETH_LEN, ETH_TYPE, IPV4_CHECK, IPV4_DST, IPV4_FRAGMENT, IPV4_ID, IPV4_LEN, IPV4_SRC,
        IPV6_DST, IPV6_LEN, IPV6_SRC, L4_DPORT, Packet, TCP_LEN, UDP_LEN,
    },
    tc_ingress::redirect,
};

pub const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
/// The IPv6 fragment header (RFC 8200 §4.5): next header, reserved, offset and M flag, ID.
pub const IPV6_FRAGMENT_LEN: usize = 8;
/// The fragment offset bits (host order) of its offset/flags field, and the M flag.
pub const IPV6_OFFSET: u16 = 0xfff8;
pub const IPV6_MORE: u16 = 0x0001;
/// The fragment offset bits of the flags/offset field (host order).
pub const IPV4_OFFSET: u16 = 0x1fff;
/// The "more fragments" flag.
pub const IPV4_MF: u16 = 0x2000;

/// What the forward path returns (uncounted) for a fragment, which the entry point then hands
/// to [`forward`]: a separate BPF-to-BPF call, whose stack frame is not added to the forward
/// path's.
pub const FRAGMENT: i32 = i32::MIN + 1;

/// Steers a fragment of a service datagram, counted; returns the TC verdict.
///
/// Inlined into the entry point, so that each family's chain starts right below it: one more
/// frame in between would push the chain past BPF's 512 bytes.
#[inline(always)]
pub fn forward(ctx: &TcContext, bytes: u64) -> i32 {
    let ether_type: u16 = ctx.load(ETH_TYPE).unwrap_or(0);
    if ether_type == ETH_P_IPV6_BE {
        forward_v6(ctx, bytes)
    } else if ether_type == ETH_P_IPV4_BE {
        forward_v4(ctx, bytes)
    } else {
        count(Reason::Fragment, bytes);
        TC_ACT_OK
    }
}

/// An IPv4 fragment; returns the TC verdict, counted.
///
/// The steps of a first fragment are calls of their own, made one after the other from here:
/// nested or inlined, their stack frames (the backend choice's above all) would add up past
/// BPF's 512 bytes for the call chain. What they share lives in this frame.
#[inline(never)]
fn forward_v4(ctx: &TcContext, bytes: u64) -> i32 {
    let frag: u16 = ctx.load(ETH_LEN + IPV4_FRAGMENT).unwrap_or(0);
    if u16::from_be(frag) & IPV4_OFFSET != 0 {
        return later(ctx, bytes);
    }
    let mut packet = Packet {
        key: FlowKey::default(),
        l3: ETH_LEN,
        l4: 0,
    };
    let mut service = ServiceEntry::default();
    let mut backend = Backend::default();
    let mut reason = prepare(ctx, &mut packet, &mut service);
    if reason == DONE && !well_formed(ctx, transport_len(packet.key.proto)) {
        reason = Reason::Truncated as u32;
    }
    if reason == DONE {
        reason = pick(&packet.key, &service, bytes, &mut backend);
    }
    let action = if reason == DONE {
        finish(ctx, &mut packet, &backend, u64::from(frag), bytes)
    } else {
        count(reason_of(reason), bytes);
        TC_ACT_OK
    };
    if reason == DONE {
        count_service(service.id, bytes);
    }
    action
}

/// The transport header a first fragment must hold whole: the rewrite updates its checksum.
#[inline(always)]
fn transport_len(proto: u8) -> usize {
    if proto == PROTO_TCP { TCP_LEN } else { UDP_LEN }
}

/// A step went through.
pub const DONE: u32 = u32::MAX;

/// The `Reason` a step returned as a number (one of the four it can give).
#[inline(always)]
fn reason_of(reason: u32) -> Reason {
    if reason == Reason::NotService as u32 {
        Reason::NotService
    } else if reason == Reason::NoBackend as u32 {
        Reason::NoBackend
    } else if reason == Reason::Truncated as u32 {
        Reason::Truncated
    } else {
        Reason::Fragment
    }
}

/// The fixed IPv4 header of a TCP/UDP fragment, or `Fragment` (left untouched).
#[inline(always)]
pub fn header(ctx: &TcContext) -> Result<[u8; IPV4_LEN], Reason> {
    let head: [u8; IPV4_LEN] = ctx.load(ETH_LEN).map_err(|_| Reason::Fragment)?;
    let proto = head[9];
    if head[0] >> 4 != 4 || head[0] & 0x0f < 5 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(Reason::Fragment);
    }
    Ok(head)
}

/// The datagram's addresses and protocol from `head` into `key` (ports left as they are).
#[inline(always)]
pub fn fill(key: &mut FlowKey, head: &[u8; IPV4_LEN]) {
    key.proto = head[9];
    key.family = FAMILY_IPV4;
    key.src[..4].copy_from_slice(&head[IPV4_SRC..IPV4_SRC + 4]);
    key.dst[..4].copy_from_slice(&head[IPV4_DST..IPV4_DST + 4]);
}

/// The first fragment's 5-tuple and offsets into `packet`, its service into `service`. Returns
/// [`DONE`] or the reason it passes.
#[inline(never)]
fn prepare(ctx: &TcContext, packet: &mut Packet, service: &mut ServiceEntry) -> u32 {
    let Ok(head) = header(ctx) else {
        return Reason::Fragment as u32;
    };
    fill(&mut packet.key, &head);
    packet.l4 = ETH_LEN + usize::from(head[0] & 0x0f) * 4;
    let Ok(ports) = ctx.load::<[u16; 2]>(packet.l4) else {
        return Reason::Fragment as u32;
    };
    packet.key.sport_be = ports[0];
    packet.key.dport_be = ports[1];
    let service_key = ServiceKey {
        addr: packet.key.dst,
        port_be: ports[1],
        proto: packet.key.proto,
        family: FAMILY_IPV4,
    };
    // SAFETY: copied out at once.
    match unsafe { L3LB_SERVICES.get(service_key) } {
        Some(entry) => {
            *service = *entry;
            DONE
        }
        None => Reason::NotService as u32,
    }
}

/// `flow::select`, the backend written to `out`. Returns [`DONE`] or the reason it failed.
#[inline(never)]
fn pick(key: &FlowKey, service: &ServiceEntry, bytes: u64, out: &mut Backend) -> u32 {
    match select(key, service, bytes) {
        Ok(backend) => {
            *out = backend;
            DONE
        }
        Err(_) => Reason::NoBackend as u32,
    }
}

/// Rewrites the first fragment to `backend`, remembers the datagram's backend when more
/// fragments follow (`frag`: the flags/offset field as loaded), delivers it, and counts it.
#[inline(never)]
fn finish(ctx: &TcContext, packet: &mut Packet, backend: &Backend, frag: u64, bytes: u64) -> i32 {
    if rewrite_first(ctx, packet, backend).is_err() {
        count(Reason::Truncated, bytes);
        return TC_ACT_OK;
    }
    if u16::from_be(frag as u16) & IPV4_MF != 0 {
        // The datagram's key, in the flow key's place: its IP ID where the source port was.
        let Ok(id) = ctx.load::<u16>(ETH_LEN + IPV4_ID) else {
            count(Reason::Truncated, bytes);
            return TC_ACT_OK;
        };
        packet.key.sport_be = id;
        packet.key.dport_be = 0;
        let _ = L3LB_FRAGMENTS.insert(packet.key, *backend, u64::from(BPF_ANY));
    }
    let (action, reason) = deliver(ctx, backend);
    count(reason, bytes);
    action
}

/// A later fragment: only the address, and the IP header checksum over it.
#[inline(never)]
fn later(ctx: &TcContext, bytes: u64) -> i32 {
    let (action, reason) = match try_later(ctx) {
        Ok(done) => done,
        Err(reason) => (TC_ACT_OK, reason),
    };
    count(reason, bytes);
    action
}

#[inline(always)]
fn try_later(ctx: &TcContext) -> Result<(i32, Reason), Reason> {
    let head = header(ctx)?;
    let mut datagram = FlowKey {
        sport_be: u16::from_ne_bytes([head[4], head[5]]),
        ..FlowKey::default()
    };
    fill(&mut datagram, &head);
    // SAFETY: copied out at once.
    let backend = unsafe { L3LB_FRAGMENTS.get(datagram) }
        .copied()
        .ok_or(Reason::Fragment)?;
    if !well_formed(ctx, 0) {
        return Err(Reason::Truncated);
    }
    if rewrite_destination(ctx, &datagram.dst, &backend.addr).is_err() {
        return Ok((TC_ACT_OK, Reason::Truncated));
    }
    Ok(deliver(ctx, &backend))
}

/// The first fragment's destination address and port to the backend's, with the IP header's
/// and the TCP/UDP checksum. nat.rs's `rewrite` does the same for both families; this IPv4-only
/// twin keeps the IPv6 case's temporaries off this call chain's tight stack.
#[inline(always)]
fn rewrite_first(ctx: &TcContext, packet: &Packet, backend: &Backend) -> Result<(), i64> {
    let key = &packet.key;
    let check = packet.l4_check();
    // As nat.rs: an IPv4 UDP checksum of 0 ("none") stays so, an update yielding 0 is 0xffff.
    let l4_flags = if key.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let old = u64::from(u32::from_ne_bytes([
        key.dst[0], key.dst[1], key.dst[2], key.dst[3],
    ]));
    let addr = [
        backend.addr[0],
        backend.addr[1],
        backend.addr[2],
        backend.addr[3],
    ];
    let new = u64::from(u32::from_ne_bytes(addr));
    ctx.l4_csum_replace(check, old, new, l4_flags | u64::from(BPF_F_PSEUDO_HDR) | 4)?;
    ctx.l3_csum_replace(ETH_LEN + IPV4_CHECK, old, new, 4)?;
    ctx.store(ETH_LEN + IPV4_DST, &addr, 0)?;
    ctx.l4_csum_replace(
        check,
        u64::from(key.dport_be),
        u64::from(backend.port_be),
        l4_flags | 2,
    )?;
    ctx.store(packet.l4 + L4_DPORT, &backend.port_be, 0)
}

/// The IPv4 destination address from `old` to `new`, with the header checksum.
#[inline(always)]
fn rewrite_destination(ctx: &TcContext, old: &[u8; 16], new: &[u8; 16]) -> Result<(), i64> {
    let old = [old[0], old[1], old[2], old[3]];
    let new = [new[0], new[1], new[2], new[3]];
    ctx.l3_csum_replace(
        ETH_LEN + IPV4_CHECK,
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
        4,
    )?;
    ctx.store(ETH_LEN + IPV4_DST, &new, 0)
}

/// As the forward path delivers (tc_ingress.rs).
#[inline(always)]
fn deliver(ctx: &TcContext, backend: &Backend) -> (i32, Reason) {
    let packet = Packet {
        key: FlowKey {
            family: backend.family,
            ..FlowKey::default()
        },
        l3: ETH_LEN,
        l4: 0,
    };
    if backend.flags & BACKEND_DELIVERY == 0 || !decrement_ttl(ctx, &packet).unwrap_or(false) {
        return (TC_ACT_OK, Reason::Forwarded);
    }
    redirect(backend)
}

/// An IPv6 fragment (its fragment header right after the IPv6 header; the parser sends no
/// other here); returns the TC verdict, counted. Its own call chain, laid out as the IPv4 one.
#[inline(never)]
fn forward_v6(ctx: &TcContext, bytes: u64) -> i32 {
    let mut packet = Packet {
        key: FlowKey::default(),
        l3: ETH_LEN,
        l4: ETH_LEN + IPV6_LEN + IPV6_FRAGMENT_LEN,
    };
    // The offset/flags field and the ID, once the addresses and protocol are in the key.
    let mut fragment = Fragment6::default();
    let reason = datagram_v6(ctx, &mut packet.key, &mut fragment);
    if reason != DONE {
        count(Reason::Fragment, bytes);
        return TC_ACT_OK;
    }
    // As IPv4's: a malformed fragment passes untouched and leaves no entry.
    let later = fragment.offset_flags & IPV6_OFFSET != 0;
    let headers = if later {
        IPV6_FRAGMENT_LEN
    } else {
        IPV6_FRAGMENT_LEN + transport_len(packet.key.proto)
    };
    if !well_formed(ctx, headers) {
        count(Reason::Truncated, bytes);
        return TC_ACT_OK;
    }
    if later {
        return later_v6(ctx, &packet.key, &fragment, bytes);
    }
    let mut service = ServiceEntry::default();
    let mut backend = Backend::default();
    let mut reason = prepare_v6(ctx, &mut packet, &mut service);
    if reason == DONE {
        reason = pick(&packet.key, &service, bytes, &mut backend);
    }
    if reason != DONE {
        count(reason_of(reason), bytes);
        return TC_ACT_OK;
    }
    let action = finish_v6(ctx, &mut packet, &backend, &fragment, bytes);
    count_service(service.id, bytes);
    action
}

/// What an IPv6 fragment header says besides the next header.
#[derive(Default)]
pub struct Fragment6 {
    /// Offset (in 8-byte units, shifted left by 3) and the M flag, host order.
    pub offset_flags: u16,
    /// The identification, as on the wire.
    pub id: [u8; 4],
}

/// The datagram's addresses and protocol into `key`, the fragment header into `fragment`.
/// Returns [`DONE`], or `Fragment` for what is not a TCP/UDP fragment the program can follow.
#[inline(never)]
pub fn datagram_v6(ctx: &TcContext, key: &mut FlowKey, fragment: &mut Fragment6) -> u32 {
    let Ok(header) = ctx.load::<[u8; IPV6_FRAGMENT_LEN]>(ETH_LEN + IPV6_LEN) else {
        return Reason::Fragment as u32;
    };
    let proto = header[0];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Reason::Fragment as u32;
    }
    let (Ok(src), Ok(dst)) = (
        ctx.load::<[u8; 16]>(ETH_LEN + IPV6_SRC),
        ctx.load::<[u8; 16]>(ETH_LEN + IPV6_DST),
    ) else {
        return Reason::Fragment as u32;
    };
    key.src = src;
    key.dst = dst;
    key.proto = proto;
    key.family = FAMILY_IPV6;
    fragment.offset_flags = u16::from_be_bytes([header[2], header[3]]);
    fragment.id = [header[4], header[5], header[6], header[7]];
    DONE
}

/// The datagram's key in `L3LB_FRAGMENTS`: its addresses and protocol, the 32-bit ID where the
/// ports are (IPv4 entries hold a 16-bit ID and the family tells them apart).
#[inline(always)]
pub fn datagram_key_v6(key: &FlowKey, fragment: &Fragment6) -> FlowKey {
    FlowKey {
        sport_be: u16::from_ne_bytes([fragment.id[0], fragment.id[1]]),
        dport_be: u16::from_ne_bytes([fragment.id[2], fragment.id[3]]),
        ..*key
    }
}

/// The first fragment's ports into `packet`, its service into `service`. Returns [`DONE`] or
/// the reason it passes.
#[inline(never)]
fn prepare_v6(ctx: &TcContext, packet: &mut Packet, service: &mut ServiceEntry) -> u32 {
    let Ok(ports) = ctx.load::<[u16; 2]>(packet.l4) else {
        return Reason::Fragment as u32;
    };
    packet.key.sport_be = ports[0];
    packet.key.dport_be = ports[1];
    let service_key = ServiceKey {
        addr: packet.key.dst,
        port_be: ports[1],
        proto: packet.key.proto,
        family: FAMILY_IPV6,
    };
    // SAFETY: copied out at once.
    match unsafe { L3LB_SERVICES.get(service_key) } {
        Some(entry) => {
            *service = *entry;
            DONE
        }
        None => Reason::NotService as u32,
    }
}

/// Rewrites the first fragment to `backend` (nat.rs's rewrite: the fragment header sits
/// between the IPv6 and the TCP/UDP header, which `packet.l4` accounts for), remembers the
/// datagram's backend when more fragments follow, delivers it, and counts it.
#[inline(never)]
fn finish_v6(
    ctx: &TcContext,
    packet: &mut Packet,
    backend: &Backend,
    fragment: &Fragment6,
    bytes: u64,
) -> i32 {
    // The headers up to the ports must be in the linear area for direct access.
    let end = (packet.l4 + 4) as u32;
    if (ctx.data_end() - ctx.data()) < end as usize && ctx.pull_data(end).is_err() {
        count(Reason::Truncated, bytes);
        return TC_ACT_OK;
    }
    let direct = backend.flags & BACKEND_DELIVERY != 0 && ttl(ctx, packet).unwrap_or(0) > 1;
    if rewrite(
        ctx,
        packet,
        End::Destination,
        &backend.addr,
        backend.port_be,
        direct,
    )
    .is_err()
    {
        count(Reason::Truncated, bytes);
        return TC_ACT_OK;
    }
    if fragment.offset_flags & IPV6_MORE != 0 {
        let datagram = datagram_key_v6(&packet.key, fragment);
        let _ = L3LB_FRAGMENTS.insert(datagram, *backend, u64::from(BPF_ANY));
    }
    let (action, reason) = if direct {
        redirect(backend)
    } else {
        (TC_ACT_OK, Reason::Forwarded)
    };
    count(reason, bytes);
    action
}

/// A later IPv6 fragment: only the destination address (IPv6 has no header checksum).
#[inline(never)]
fn later_v6(ctx: &TcContext, key: &FlowKey, fragment: &Fragment6, bytes: u64) -> i32 {
    let datagram = datagram_key_v6(key, fragment);
    // SAFETY: copied out at once.
    let Some(backend) = (unsafe { L3LB_FRAGMENTS.get(datagram) }).copied() else {
        count(Reason::Fragment, bytes);
        return TC_ACT_OK;
    };
    if ctx.store(ETH_LEN + IPV6_DST, &backend.addr, 0).is_err() {
        count(Reason::Truncated, bytes);
        return TC_ACT_OK;
    }
    let (action, reason) = deliver(ctx, &backend);
    count(reason, bytes);
    action
}
