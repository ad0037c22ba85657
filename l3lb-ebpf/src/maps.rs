//! Every map the programs use, each with the reason it exists. Declared with `#[btf_map]` so the
//! object carries their key/value types and `bpftool map dump` prints named fields.
use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use l3lb_common::{PacketCounter, Reason};

/// Packets and bytes per verdict reason: shows what the fast path handled and what it passed
/// by, without a log line per packet.
#[btf_map]
pub static L3LB_REASONS: PerCpuArray<PacketCounter, { Reason::COUNT as usize }> =
    PerCpuArray::new();

#[inline(always)]
pub fn count(reason: Reason, bytes: u64) {
    if let Some(counter) = L3LB_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it; the pointer came from the kernel.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
