//! l3lb's kernel side. Built only for `bpfel-unknown-none` by the daemon's build script.
//!
//! Forward, on the uplinks: client → service packets are rewritten to a local pod (destination
//! address and port; the client's source address is kept) and redirected into the pod.
//! - `l3lb_tc_ingress` (tc_ingress.rs), TC ingress: the whole forward path (the default).
//! - `l3lb_xdp` (xdp.rs), XDP (`--xdp-mode native|generic`): the rewrite only; the kernel
//!   routes the packet to the pod.
//!
//! Back: replies get the service address and port back as their source.
//! - `l3lb_tc_pod` (tc_pod.rs), TC ingress on a local pod's host-side interface: as the reply
//!   leaves the pod, then straight out of the uplink.
//! - `l3lb_tc_egress` (tc_egress.rs), TC egress on the uplinks: replies the kernel routed.
//!
//! ICMP errors about steered flows (PMTU discovery) follow their flow both ways (icmp.rs);
//! fragments of service datagrams follow their first fragment (frag.rs), and so do the
//! fragments of a pod's replies (frag_reply.rs).
//!
//! One concern per file besides: maps.rs (every map and counter), parse.rs (headers), flow.rs
//! (backend choice and flow memory), hash.rs (the flow hash), csum.rs (incremental checksums
//! for XDP), nat.rs (translation on socket buffers, TTL).
//! No logging on the packet path: counters in maps say what happened.
#![no_std]
#![no_main]

mod affinity;
mod csum;
mod flow;
mod frag;
mod frag_reply;
mod hash;
mod icmp;
mod maps;
mod nat;
mod parse;
mod tc_egress;
mod tc_ingress;
mod tc_pod;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies `no_std`.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
