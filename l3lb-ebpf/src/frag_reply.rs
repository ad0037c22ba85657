//! A pod's fragmented replies, on its host-side interface (tc_pod.rs): a reply datagram larger
//! than the pod's link (a big UDP answer) leaves the pod as fragments, and only the first
//! carries the ports that find its steered flow in `L3LB_REPLIES`. That one gets the service
//! address and port as its source like a whole reply (its UDP/TCP checksum, which covers the
//! whole datagram, updated incrementally), and the service address is remembered under (source,
//! destination, protocol, fragment ID) in `L3LB_FRAGMENTS`; later fragments of the datagram get
//! the same source address (and IPv4's header checksum). All leave through the uplink the FIB
//! names, as replies do. kube-proxy gets the same from conntrack's defragmentation.
//!
//! A fragment of no steered flow (the pod's own traffic) passes untouched and uncounted, as
//! the pod's other packets do; a later fragment whose first has not been seen (reordered inside
//! the node, which veth does not do) passes untouched and is counted as `Fragment`.
use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_OK, TC_ACT_REDIRECT},
    programs::TcContext,
};
use l3lb_common::{Backend, FAMILY_IPV6, FlowKey, Reason};

use crate::{
    frag::{
        DONE, ETH_P_IPV4_BE, ETH_P_IPV6_BE, Fragment6, IPV4_MF, IPV4_OFFSET, IPV6_FRAGMENT_LEN,
        IPV6_MORE, IPV6_OFFSET, datagram_key_v6, datagram_v6, fill, header,
    },
    maps::{L3LB_FRAGMENTS, L3LB_REPLIES, count},
    nat::{End, rewrite},
    parse::{ETH_LEN, ETH_TYPE, IPV4_CHECK, IPV4_FRAGMENT, IPV4_SRC, IPV6_LEN, IPV6_SRC, Packet},
    tc_pod::{fib_params, send_out},
};

/// `FlowKey::pad[0]` of the reply direction's entries in `L3LB_FRAGMENTS` (0: forward).
const REPLY_DATAGRAM: u8 = 1;

/// A fragment of the pod's reply: translated and sent out when it belongs to a steered flow;
/// returns the TC verdict. A call of its own: in the entry point, its locals would add to the
/// frame below the reply path's, which already takes most of the 512 bytes.
#[inline(never)]
pub fn reply(ctx: &TcContext) -> i32 {
    let mut packet = Packet {
        key: FlowKey::default(),
        l3: ETH_LEN,
        l4: 0,
    };
    let mut fragment = Fragment6::default();
    if identify(ctx, &mut packet, &mut fragment) != DONE {
        return TC_ACT_OK;
    }
    translate(ctx, &mut packet, &fragment)
}

/// The datagram's addresses, protocol and family into `packet.key` and where its TCP/UDP
/// header would be into `packet.l4`; the fragment's offset, M flag and ID into `fragment`, in
/// IPv6's layout (an IPv4 ID in the first two bytes, its offset shifted left by 3 and MF as the
/// M flag). Returns [`DONE`] for a TCP/UDP fragment the program can follow.
#[inline(never)]
fn identify(ctx: &TcContext, packet: &mut Packet, fragment: &mut Fragment6) -> u32 {
    let Ok(ether_type) = ctx.load::<u16>(ETH_TYPE) else {
        return 0;
    };
    if ether_type == ETH_P_IPV6_BE {
        packet.l4 = ETH_LEN + IPV6_LEN + IPV6_FRAGMENT_LEN;
        return datagram_v6(ctx, &mut packet.key, fragment);
    }
    if ether_type != ETH_P_IPV4_BE {
        return 0;
    }
    let Ok(head) = header(ctx) else {
        return 0;
    };
    fill(&mut packet.key, &head);
    packet.l4 = ETH_LEN + usize::from(head[0] & 0x0f) * 4;
    let flags = u16::from_be_bytes([head[IPV4_FRAGMENT], head[IPV4_FRAGMENT + 1]]);
    fragment.offset_flags = ((flags & IPV4_OFFSET) << 3) | u16::from(flags & IPV4_MF != 0);
    fragment.id = [head[4], head[5], 0, 0];
    DONE
}

/// Translates a fragment of a steered flow's reply and sends it out, counted; anything else
/// passes.
#[inline(never)]
fn translate(ctx: &TcContext, packet: &mut Packet, fragment: &Fragment6) -> i32 {
    // The datagram's key: its ID where the ports are, as frag.rs keys the forward direction's,
    // marked as a reply's: a packet through here with a client's and a service's addresses (a
    // pod spoofing, or hairpinning) must not find a forward datagram's entry, nor make one.
    let datagram = FlowKey {
        pad: [REPLY_DATAGRAM, 0],
        ..datagram_key_v6(&packet.key, fragment)
    };
    let bytes = u64::from(ctx.len());
    let (source, sport_be) = if fragment.offset_flags & IPV6_OFFSET == 0 {
        // The first fragment: the ports find the flow.
        let Ok(ports) = ctx.load::<[u16; 2]>(packet.l4) else {
            return TC_ACT_OK;
        };
        packet.key.sport_be = ports[0];
        packet.key.dport_be = ports[1];
        // SAFETY: copied out at once.
        let Some(nat) = (unsafe { L3LB_REPLIES.get(packet.key) }).copied() else {
            return TC_ACT_OK;
        };
        // The headers up to the ports must be in the linear area for direct access.
        let end = (packet.l4 + 4) as u32;
        let pulled = ctx.data_end() - ctx.data() >= end as usize || ctx.pull_data(end).is_ok();
        let source = (&nat.service_addr, nat.service_port_be);
        if !pulled || rewrite(ctx, packet, End::Source, source.0, source.1, false).is_err() {
            count(Reason::Truncated, bytes);
            return TC_ACT_OK;
        }
        if fragment.offset_flags & IPV6_MORE != 0 {
            let service = Backend {
                addr: nat.service_addr,
                port_be: nat.service_port_be,
                family: packet.key.family,
                ..Backend::default()
            };
            let _ = L3LB_FRAGMENTS.insert(datagram, service, u64::from(BPF_ANY));
        }
        (nat.service_addr, nat.service_port_be)
    } else {
        // SAFETY: copied out at once.
        let Some(service) = (unsafe { L3LB_FRAGMENTS.get(datagram) }).copied() else {
            count(Reason::Fragment, bytes);
            return TC_ACT_OK;
        };
        if rewrite_source(ctx, &packet.key, &service.addr).is_err() {
            count(Reason::Truncated, bytes);
            return TC_ACT_OK;
        }
        (service.addr, 0)
    };
    let key = &packet.key;
    let fib = fib_params(
        ctx,
        key.family,
        key.proto,
        (&source, sport_be),
        (&key.dst, key.dport_be),
    );
    let (action, reason) = if send_out(ctx, fib, packet) {
        (TC_ACT_REDIRECT, Reason::ReplyRedirected)
    } else {
        (TC_ACT_OK, Reason::ReplyToStack)
    };
    count(reason, bytes);
    action
}

/// A later fragment's source address to the service's (with IPv4's header checksum).
#[inline(always)]
fn rewrite_source(ctx: &TcContext, key: &FlowKey, new: &[u8; 16]) -> Result<(), i64> {
    if key.family == FAMILY_IPV6 {
        return ctx.store(ETH_LEN + IPV6_SRC, new, 0);
    }
    let old = [key.src[0], key.src[1], key.src[2], key.src[3]];
    let new = [new[0], new[1], new[2], new[3]];
    ctx.l3_csum_replace(
        ETH_LEN + IPV4_CHECK,
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
        4,
    )?;
    ctx.store(ETH_LEN + IPV4_SRC, &new, 0)
}
