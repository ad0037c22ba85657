//! l3lb's kernel side. Built only for `bpfel-unknown-none` by the daemon's build script.
#![no_std]
#![no_main]

mod maps;
mod packet;
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
