//! Every map the programs use, each with the reason it exists. Declared with `#[btf_map]` so the
//! object carries their key/value types and `bpftool map dump` prints named fields.
use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use l3lb_common::{PacketCounter, ProtoCounter};

/// Packets and bytes seen on the uplink per protocol bucket: proves the program runs and what
/// it sees, without a log line per packet.
#[btf_map]
pub static L3LB_PROTO_COUNTERS: PerCpuArray<PacketCounter, { ProtoCounter::COUNT as usize }> =
    PerCpuArray::new();

#[inline(always)]
pub fn count(bucket: ProtoCounter, bytes: u64) {
    if let Some(counter) = L3LB_PROTO_COUNTERS.get_ptr_mut(bucket as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it; the pointer came from the kernel.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
