//! Bounds-checked access to packet memory, in the form the verifier can follow.
use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` into the packet, or `None` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}
