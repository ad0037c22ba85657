//! l3lb's kernel side. Built only for `bpfel-unknown-none` by the daemon's build script.
//!
//! - `l3lb_xdp` (xdp.rs), XDP on the uplinks: client → service packets are rewritten to a local
//!   pod (destination address and port), keeping the client's source address.
//! - `l3lb_tc_egress` (tc.rs), TC egress on the uplinks: the pods' replies get the service
//!   address and port back as their source.
//!
//! One concern per file: maps.rs (every map and counter), parse.rs (headers), flow.rs (backend
//! choice and flow memory), hash.rs (the flow hash), csum.rs (incremental checksums).
//! No logging on the packet path: counters in maps say what happened.
#![no_std]
#![no_main]

mod csum;
mod flow;
mod hash;
mod maps;
mod parse;
mod tc;
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
