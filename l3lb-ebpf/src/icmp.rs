//! ICMP errors about steered flows, which must follow their flow through the translation as
//! kube-proxy's conntrack makes them do. Without this a router's "fragmentation needed" /
//! "packet too big" about a pod's large reply goes to the node's stack (it is addressed to the
//! service address) and dies there: the pod never learns the path MTU, and large responses
//! hang in a PMTUD black hole.
//!
//! - Towards the pod ([`to_pod`], uplink TC ingress): an ICMPv4 destination unreachable / time
//!   exceeded or ICMPv6 destination unreachable / packet too big / time exceeded to a service
//!   address, quoting a translated reply (service → client) of a flow in `L3LB_FLOWS`: the
//!   outer destination and the quoted source (address and port) become the pod's.
//! - Away from the pod ([`from_pod`], the pod's TC ingress and the uplink's TC egress): an ICMP
//!   error the pod sends about a steered flow (port unreachable, quoting client → pod): its
//!   source and the quoted destination become the service's again.
//!
//! Everything else (echo requests to a service address, which the node answers; errors about
//! unknown flows or with a quote too short to name the flow) is left untouched.
//!
//! Checksums, as Katran's `handle_icmp.h` and Cilium's ICMP NAT do: the outer IPv4 header's;
//! the quoted IPv4 header's; the quoted TCP/UDP checksum, updated incrementally only when the
//! quote contains it (a router quotes as little as the IP header plus 8 bytes, RFC 792, which
//! holds the ports but not the TCP checksum), and an IPv4 UDP checksum of 0 stays "none"; and
//! the ICMP checksum over every changed quoted byte, plus for ICMPv6 the pseudo-header's
//! changed address. All are updated by hand (RFC 1624) rather than with the kernel's helpers:
//! ICMP is never CHECKSUM_PARTIAL (the kernel completes ICMP checksums in software), and with
//! every checksum compensating its change the packet's one's-complement sum stays what it was,
//! so a CHECKSUM_COMPLETE `skb->csum` stays right as well (for IPv6, the ICMPv6 checksum
//! absorbs the outer address change, as the pseudo-header makes it). The packet is read and
//! written through the skb helpers (`bpf_skb_load_bytes`/`store_bytes`), which reach quotes
//! beyond the linear area and take the variable offsets that IPv4 options give.
use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_skb_load_bytes, programs::TcContext};
use l3lb_common::{BACKEND_DELIVERY, FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_TCP, PROTO_UDP};
use network_types::icmp::Icmpv4Hdr;

use crate::{
    csum::CsumDelta,
    maps::{L3LB_BACKENDS, L3LB_FLOWS, L3LB_REPLIES},
    nat::{decrement_ttl, well_formed},
    parse::{
        ETH_LEN, ETH_TYPE, IPV4_CHECK, IPV4_DST, IPV4_FRAGMENT, IPV4_LEN, IPV4_PROTO, IPV4_SRC,
        IPV4_TOTAL_LENGTH, IPV6_DST, IPV6_LEN, IPV6_NEXT_HEADER, IPV6_PAYLOAD_LENGTH, IPV6_SRC,
        L4_DPORT, L4_SPORT, Packet, TCP_CHECK, UDP_CHECK,
    },
    tc_ingress::redirect,
};

const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// ICMP header: type, code, checksum, and 4 bytes (unused, or the next-hop MTU).
/// The ICMP header up to the quote; v4 and v6 share its layout.
const ICMP_LEN: usize = Icmpv4Hdr::LEN;
const ICMP_CHECK: usize = core::mem::offset_of!(Icmpv4Hdr, check);
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// IPv4 "more fragments" flag and fragment offset, and the offset alone (host order): a quote
/// of a later fragment carries no ports.
const IPV4_MF_OFFSET: u16 = 0x3fff;
const IPV4_OFFSET: u16 = 0x1fff;

/// An ICMP error and the TCP/UDP packet it quotes.
#[derive(Default)]
struct Quote {
    /// Offset of the ICMP header.
    icmp: usize,
    /// Offsets of the quoted IP and transport headers.
    inner_l3: usize,
    inner_l4: usize,
    /// The quoted packet's 5-tuple reversed: the key its flow is known under (client → service
    /// in `L3LB_FLOWS` for a router's error about a reply; pod → client in `L3LB_REPLIES` for
    /// the pod's error about a request).
    key: FlowKey,
    /// Whether the quoted transport checksum lies inside the ICMP message.
    has_l4_check: bool,
}

impl Quote {
    fn l4_check(&self) -> usize {
        self.inner_l4
            + if self.key.proto == PROTO_TCP {
                TCP_CHECK
            } else {
                UDP_CHECK
            }
    }
}

/// Which of a flow's two directions the quoted packet travelled, and so what is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// A router's error about a translated reply (service → client): the outer destination and
    /// the quoted source become the pod's.
    ToPod,
    /// The pod's error about a translated request (client → pod): the outer source and the
    /// quoted destination become the service's.
    FromPod,
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Option<T> {
    ctx.load::<T>(offset).ok()
}

/// Loads the `len` bytes at `offset` into the start of `buf`. (aya's `load_bytes` clamps the
/// length to the packet's, which the verifier rejects as a possibly empty read.)
#[inline(always)]
fn load_into(ctx: &TcContext, offset: usize, buf: &mut [u8; IPV6_LEN], len: usize) -> Option<()> {
    let len = len.min(IPV6_LEN) as u32;
    // SAFETY: at most the buffer's size is written, into this stack buffer.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            buf.as_mut_ptr().cast(),
            len,
        )
    };
    (ret == 0).then_some(())
}

/// 16-byte equality without `memcmp`.
#[inline(always)]
fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    (w(a, 0) ^ w(b, 0)) | (w(a, 4) ^ w(b, 4)) | (w(a, 8) ^ w(b, 8)) | (w(a, 12) ^ w(b, 12)) == 0
}

/// The ICMP error in `ctx` and the flow its quote names, or `None` for anything else. The
/// outer address on the translated side must be the quote's: a router's error goes to the
/// address the reply came from (the service), the pod's comes from the address the request
/// went to (the pod).
///
/// This and [`rewrite`] are BPF-to-BPF calls of their own, so that their stack frames are not
/// added to each other's and the calling program's (BPF allows 512 bytes for the whole chain).
#[inline(never)]
fn parse_error(ctx: &TcContext, direction: Direction, quote: &mut Quote) -> bool {
    parse_into(ctx, direction, quote).is_some()
}

#[inline(always)]
fn parse_into(ctx: &TcContext, direction: Direction, quote: &mut Quote) -> Option<()> {
    // One buffer, reloaded header by header: every separate load would take its own stack slot.
    let mut buf = [0u8; IPV6_LEN];
    let ether_type: u16 = load(ctx, ETH_TYPE)?;
    let key = &mut quote.key;
    let mut outer = [0u8; 16];
    let (icmp, inner_l3, inner_l4, ip_end);
    if ether_type == ETH_P_IPV4_BE {
        load_into(ctx, ETH_LEN, &mut buf, IPV4_LEN)?;
        let ihl = usize::from(buf[0] & 0x0f);
        // A fragmented error is left alone: its quote may be in another fragment.
        let frag = u16::from_be_bytes([buf[IPV4_FRAGMENT], buf[IPV4_FRAGMENT + 1]]);
        if buf[0] >> 4 != 4
            || ihl < 5
            || frag & IPV4_MF_OFFSET != 0
            || buf[IPV4_PROTO] != PROTO_ICMP
        {
            return None;
        }
        ip_end = ETH_LEN
            + usize::from(u16::from_be_bytes([
                buf[IPV4_TOTAL_LENGTH],
                buf[IPV4_TOTAL_LENGTH + 1],
            ]));
        let at = if direction == Direction::ToPod {
            IPV4_DST
        } else {
            IPV4_SRC
        };
        outer[..4].copy_from_slice(&buf[at..at + 4]);
        icmp = ETH_LEN + ihl * 4;
        let kind: u8 = load(ctx, icmp)?;
        if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
            return None;
        }
        inner_l3 = icmp + ICMP_LEN;
        load_into(ctx, inner_l3, &mut buf, IPV4_LEN)?;
        let inner_ihl = usize::from(buf[0] & 0x0f);
        let frag = u16::from_be_bytes([buf[IPV4_FRAGMENT], buf[IPV4_FRAGMENT + 1]]);
        if buf[0] >> 4 != 4 || inner_ihl < 5 || frag & IPV4_OFFSET != 0 {
            return None;
        }
        key.proto = buf[IPV4_PROTO];
        key.family = FAMILY_IPV4;
        key.dst[..4].copy_from_slice(&buf[IPV4_SRC..IPV4_SRC + 4]);
        key.src[..4].copy_from_slice(&buf[IPV4_DST..IPV4_DST + 4]);
        inner_l4 = inner_l3 + inner_ihl * 4;
    } else if ether_type == ETH_P_IPV6_BE {
        load_into(ctx, ETH_LEN, &mut buf, IPV6_LEN)?;
        if buf[0] >> 4 != 6 || buf[IPV6_NEXT_HEADER] != PROTO_ICMPV6 {
            return None;
        }
        ip_end = ETH_LEN
            + IPV6_LEN
            + usize::from(u16::from_be_bytes([
                buf[IPV6_PAYLOAD_LENGTH],
                buf[IPV6_PAYLOAD_LENGTH + 1],
            ]));
        let at = if direction == Direction::ToPod {
            IPV6_DST
        } else {
            IPV6_SRC
        };
        outer.copy_from_slice(&buf[at..at + 16]);
        icmp = ETH_LEN + IPV6_LEN;
        let kind: u8 = load(ctx, icmp)?;
        if kind != ICMPV6_DEST_UNREACH
            && kind != ICMPV6_PACKET_TOO_BIG
            && kind != ICMPV6_TIME_EXCEEDED
        {
            return None;
        }
        inner_l3 = icmp + ICMP_LEN;
        load_into(ctx, inner_l3, &mut buf, IPV6_LEN)?;
        if buf[0] >> 4 != 6 {
            return None;
        }
        // Extension headers in the quote are not walked (as on the forward path).
        key.proto = buf[IPV6_NEXT_HEADER];
        key.family = FAMILY_IPV6;
        key.dst.copy_from_slice(&buf[IPV6_SRC..IPV6_SRC + 16]);
        key.src.copy_from_slice(&buf[IPV6_DST..IPV6_DST + 16]);
        inner_l4 = inner_l3 + IPV6_LEN;
    } else {
        return None;
    }
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return None;
    }
    let quoted = if direction == Direction::ToPod {
        &key.dst
    } else {
        &key.src
    };
    if !addr_eq(&outer, quoted) {
        return None;
    }
    // The quote must hold the ports; bytes after the IP packet (Ethernet padding) are not
    // part of it.
    if inner_l4 + 4 > ip_end {
        return None;
    }
    load_into(ctx, inner_l4, &mut buf, 4)?;
    key.dport_be = u16::from_ne_bytes([buf[0], buf[1]]);
    key.sport_be = u16::from_ne_bytes([buf[2], buf[3]]);
    quote.icmp = icmp;
    quote.inner_l3 = inner_l3;
    quote.inner_l4 = inner_l4;
    let check_end = quote.l4_check() + 2;
    quote.has_l4_check = check_end <= ip_end && check_end <= ctx.len() as usize;
    Some(())
}

/// Rewrites the quote's `direction` end (and the matching outer address) to `new`/`port_be`,
/// with every checksum. `Err` when a helper failed: the packet may then be half rewritten, and
/// is left to the kernel's checks.
#[inline(never)]
fn rewrite(
    ctx: &TcContext,
    quote: &Quote,
    direction: Direction,
    new: &[u8; 16],
    port_be: u16,
) -> bool {
    rewrite_fields(ctx, quote, direction, new, port_be).is_ok()
}

#[inline(always)]
fn rewrite_fields(
    ctx: &TcContext,
    quote: &Quote,
    direction: Direction,
    new: &[u8; 16],
    port_be: u16,
) -> Result<(), ()> {
    let key = &quote.key;
    let v4 = key.family == FAMILY_IPV4;
    // The key is the quote reversed: its destination is the quoted source and vice versa.
    let (old, old_port) = match direction {
        Direction::ToPod => (&key.dst, key.dport_be),
        Direction::FromPod => (&key.src, key.sport_be),
    };

    // The address change, as a checksum delta of its 4 or 16 bytes.
    let mut addr = CsumDelta::new();
    if v4 {
        addr.bytes(
            &[old[0], old[1], old[2], old[3]],
            &[new[0], new[1], new[2], new[3]],
        );
    } else {
        addr.bytes(old, new);
    }
    let mut icmp_delta = addr;

    // The quoted IPv4 header's checksum.
    if v4 {
        let words = update_check(ctx, quote.inner_l3 + IPV4_CHECK, addr, 0);
        add_words(&mut icmp_delta, words)?;
    }

    // The quoted TCP/UDP checksum covers the pseudo-header's address and the port.
    icmp_delta.word(old_port, port_be);
    if quote.has_l4_check {
        let mut l4 = addr;
        l4.word(old_port, port_be);
        let rule = match (key.proto == PROTO_UDP, v4) {
            (false, _) => 0,
            (true, false) => UDP,
            (true, true) => UDP | UDP_ZERO_IS_NONE,
        };
        let words = update_check(ctx, quote.l4_check(), l4, rule);
        add_words(&mut icmp_delta, words)?;
    }
    let port_at = if direction == Direction::ToPod {
        L4_SPORT
    } else {
        L4_DPORT
    };
    store_port(ctx, quote.inner_l4 + port_at, port_be)?;

    // The outer header: IPv4's checksum covers the address; ICMPv6's covers it through the
    // pseudo-header.
    if v4 {
        update_check(ctx, ETH_LEN + IPV4_CHECK, addr, 0);
    } else {
        icmp_delta.bytes(old, new);
    }
    let (outer_at, inner_at) = match (direction, v4) {
        (Direction::ToPod, true) => (IPV4_DST, IPV4_SRC),
        (Direction::ToPod, false) => (IPV6_DST, IPV6_SRC),
        (Direction::FromPod, true) => (IPV4_SRC, IPV4_DST),
        (Direction::FromPod, false) => (IPV6_SRC, IPV6_DST),
    };
    store_addr(ctx, quote.inner_l3 + inner_at, new, v4)?;
    store_addr(ctx, ETH_LEN + outer_at, new, v4)?;
    let words = update_check(ctx, quote.icmp + ICMP_CHECK, icmp_delta, 0);
    if words < 0 { Err(()) } else { Ok(()) }
}

/// [`update_check`] rule: a UDP checksum, which is never written as 0 (0xffff instead).
const UDP: u32 = 1;
/// [`update_check`] rule: an IPv4 UDP checksum of 0 means "none" and stays so.
const UDP_ZERO_IS_NONE: u32 = 2;

/// Applies `delta` to the checksum at `at`. Returns the old and new checksum words (old in the
/// upper half), for a checksum that covers this one, or -1 when a helper failed.
///
/// This and the two stores below are calls of their own: inlined, their temporaries made the
/// rewrite's stack frame too big for the chain under the TC programs.
#[inline(never)]
fn update_check(ctx: &TcContext, at: usize, delta: CsumDelta, rule: u32) -> i64 {
    let Ok(old) = ctx.load::<u16>(at) else {
        return -1;
    };
    if rule & UDP_ZERO_IS_NONE != 0 && old == 0 {
        return 0;
    }
    let mut new = delta.apply(old);
    if rule & UDP != 0 && new == 0 {
        new = 0xffff;
    }
    if ctx.store(at, &new, 0).is_err() {
        return -1;
    }
    (i64::from(old) << 16) | i64::from(new)
}

/// Adds the checksum words [`update_check`] returned to `delta`.
#[inline(always)]
fn add_words(delta: &mut CsumDelta, words: i64) -> Result<(), ()> {
    if words < 0 {
        return Err(());
    }
    delta.word((words >> 16) as u16, words as u16);
    Ok(())
}

#[inline(never)]
fn store_port(ctx: &TcContext, at: usize, port_be: u16) -> Result<(), ()> {
    ctx.store(at, &port_be, 0).map_err(drop)
}

#[inline(never)]
fn store_addr(ctx: &TcContext, at: usize, new: &[u8; 16], v4: bool) -> Result<(), ()> {
    if v4 {
        let bytes = [new[0], new[1], new[2], new[3]];
        ctx.store(at, &bytes, 0).map_err(drop)
    } else {
        ctx.store(at, new, 0).map_err(drop)
    }
}

/// What the programs' TCP/UDP paths return, as BPF-to-BPF calls, for a packet that is neither
/// (so maybe an ICMP error for this module); not counted yet. Those paths are separate calls
/// so that their stack frames and this module's are not added up: BPF allows 512 bytes for a
/// whole call chain, and the forward path alone takes most of that.
pub const NOT_TCP_UDP: i32 = i32::MIN;

/// [`to_pod`] and [`from_pod`]: not an ICMP error about a steered flow (left untouched).
pub const NOT_OURS: i32 = -1;
/// [`to_pod`] and [`from_pod`]: a helper failed mid-rewrite, or (towards the pod) the error is
/// malformed: an IP length beyond the frame, a bad outer IPv4 header checksum. The packet goes
/// on as it is, counted as truncated.
pub const FAILED: i32 = -2;

/// Uplink ingress: an ICMP error to a service address about a steered flow's reply goes to the
/// flow's pod, the way the flow's packets do. Returns the TC verdict, or [`NOT_OURS`] /
/// [`FAILED`].
///
/// Not inlined, and returning a plain integer: a BPF-to-BPF call with its own stack frame,
/// which the forward path's frame would otherwise have to hold as well (beyond BPF's 512
/// bytes).
#[inline(never)]
pub fn to_pod(ctx: &TcContext) -> i32 {
    let mut quote = Quote::default();
    if !parse_error(ctx, Direction::ToPod, &mut quote) {
        return NOT_OURS;
    }
    // SAFETY: copied out at once. The key by reference: a copy would grow the stack frame
    // past what the call chain allows.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let Some(flow) = (unsafe { L3LB_FLOWS.get(&quote.key) }).copied() else {
        return NOT_OURS;
    };
    // The slot must still hold the flow's pod (see flow.rs); otherwise the flow is stale and
    // the error goes where it was sent.
    let Some(backend) = L3LB_BACKENDS.get(flow.backend_id).copied() else {
        return NOT_OURS;
    };
    if backend.in_use == 0
        || backend.port_be != flow.backend_port_be
        || !addr_eq(&backend.addr, &flow.backend_addr)
    {
        return NOT_OURS;
    }
    // A malformed error (found by `cargo xtask fuzz`) is not redirected into the pod.
    if !well_formed(ctx, 0) {
        return FAILED;
    }
    if !rewrite(
        ctx,
        &quote,
        Direction::ToPod,
        &flow.backend_addr,
        flow.backend_port_be,
    ) {
        return FAILED;
    }
    let packet = Packet {
        key: FlowKey {
            family: quote.key.family,
            ..FlowKey::default()
        },
        l3: ETH_LEN,
        l4: quote.icmp,
    };
    if backend.flags & BACKEND_DELIVERY == 0 || !decrement_ttl(ctx, &packet).unwrap_or(false) {
        return TC_ACT_OK;
    }
    // Delivered like the flow's packets (or, should the redirect fail, routed by the kernel).
    redirect(&backend).0
}

/// Leaving the pod (its TC ingress, or the uplink's TC egress): a pod's ICMP error about a
/// steered flow gets the service address back as its source and in its quote. Returns 0 when
/// translated, or [`NOT_OURS`] (also for an error already translated) / [`FAILED`]. Not
/// inlined, as [`to_pod`].
#[inline(never)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    let mut quote = Quote::default();
    if !parse_error(ctx, Direction::FromPod, &mut quote) {
        return NOT_OURS;
    }
    // SAFETY: copied out at once. The key by reference: a copy would grow the stack frame
    // past what the call chain allows.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let Some(nat) = (unsafe { L3LB_REPLIES.get(&quote.key) }).copied() else {
        return NOT_OURS;
    };
    if rewrite(
        ctx,
        &quote,
        Direction::FromPod,
        &nat.service_addr,
        nat.service_port_be,
    ) {
        0
    } else {
        FAILED
    }
}
