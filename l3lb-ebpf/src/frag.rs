//! IPv4 fragments of service datagrams, on the uplinks' TC ingress. Only a datagram's first
//! fragment carries the ports, so it is steered like a whole packet (its UDP/TCP checksum,
//! which covers the whole datagram, is updated incrementally: the delta needs none of the rest)
//! and its backend remembered under (source, destination, protocol, IP ID) in `L3LB_FRAGMENTS`,
//! as Cilium does; later fragments with the same identity get the same destination address
//! (the IP header checksum is all they carry) and the same delivery. The pod reassembles the
//! datagram. kube-proxy gets the same from conntrack's defragmentation.
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
//! Not handled yet: IPv6 fragment headers (passed as `Ipv6Extension`), fragments on the XDP
//! path, and a pod's fragmented replies (they leave untranslated, as before).
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK},
    programs::TcContext,
};
use l3lb_common::{
    BACKEND_DELIVERY, Backend, FAMILY_IPV4, FlowKey, PROTO_TCP, PROTO_UDP, Reason, ServiceEntry,
    ServiceKey,
};

use crate::{
    flow::select,
    maps::{L3LB_FRAGMENTS, L3LB_SERVICES, count, count_service},
    nat::{decrement_ttl, well_formed},
    parse::{
        ETH_LEN, IPV4_CHECK, IPV4_DST, IPV4_LEN, IPV4_SRC, L4_DPORT, Packet, TCP_LEN, UDP_LEN,
    },
    tc_ingress::redirect,
};

const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
/// The fragment offset bits of the flags/offset field (host order).
const IPV4_OFFSET: u16 = 0x1fff;
/// The "more fragments" flag.
const IPV4_MF: u16 = 0x2000;

/// What the forward path returns (uncounted) for a fragment, which the entry point then hands
/// to [`forward`]: a separate BPF-to-BPF call, whose stack frame is not added to the forward
/// path's.
pub const FRAGMENT: i32 = i32::MIN + 1;

/// Steers a fragment of a service datagram, counted; returns the TC verdict.
///
/// The steps of a first fragment are calls of their own, made one after the other from here:
/// nested or inlined, their stack frames (the backend choice's above all) would add up past
/// BPF's 512 bytes for the call chain. What they share lives in this frame.
#[inline(never)]
pub fn forward(ctx: &TcContext, bytes: u64) -> i32 {
    let ether_type: u16 = ctx.load(12).unwrap_or(0);
    let frag: u16 = ctx.load(ETH_LEN + 6).unwrap_or(0);
    if ether_type != ETH_P_IPV4_BE {
        count(Reason::Fragment, bytes);
        return TC_ACT_OK;
    }
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
const DONE: u32 = u32::MAX;

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
fn header(ctx: &TcContext) -> Result<[u8; IPV4_LEN], Reason> {
    let head: [u8; IPV4_LEN] = ctx.load(ETH_LEN).map_err(|_| Reason::Fragment)?;
    let proto = head[9];
    if head[0] >> 4 != 4 || head[0] & 0x0f < 5 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(Reason::Fragment);
    }
    Ok(head)
}

/// The datagram's addresses and protocol from `head` into `key` (ports left as they are).
#[inline(always)]
fn fill(key: &mut FlowKey, head: &[u8; IPV4_LEN]) {
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
        let Ok(id) = ctx.load::<u16>(ETH_LEN + 4) else {
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
            family: FAMILY_IPV4,
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
