//! Every map the programs use, each with the reason it exists. Declared with `#[btf_map]` so the
//! object carries their key/value types and `bpftool map dump` prints named fields. Names and
//! capacities come from `l3lb_common`, the contract with the daemon.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use l3lb_common::{
    Affinity, AffinityKey, Backend, Flow, FlowKey, PacketCounter, Reason, ReplyNat, ServiceEntry,
    ServiceKey, capacity,
};

/// Which (address, port, protocol) triples are services, and where their backend table lives.
/// Written by the daemon; a miss means the packet is none of ours.
#[btf_map]
pub static L3LB_SERVICES: HashMap<ServiceKey, ServiceEntry, { capacity::SERVICES as usize }> =
    HashMap::new();

/// Backend slots, indexed by backend id: where a local pod listens. A flow remembers the slot's
/// address, so a slot cleared (`in_use == 0`) or reused for another pod never catches it.
#[btf_map]
pub static L3LB_BACKENDS: Array<Backend, { capacity::BACKENDS as usize }> = Array::new();

/// The Maglev lookup tables of all services, back to back: entry `table_base + hash % table_size`
/// is the backend id of a new flow. The object declares a placeholder size; the loader sets the
/// real one (`EbpfLoader::map_max_entries`), which the verifier then bounds-checks at run time.
#[btf_map]
pub static L3LB_MAGLEV: Array<u32, { capacity::MAGLEV_PLACEHOLDER as usize }> = Array::new();

/// Established flows (client → service 5-tuple) and the backend each was given, so a flow keeps
/// its pod when the table changes or its backend starts terminating. LRU: the least recently
/// seen flows are forgotten first when it fills, and re-hash to the same backend if the table
/// is unchanged.
#[btf_map]
pub static L3LB_FLOWS: LruHashMap<FlowKey, Flow, { capacity::FLOWS as usize }> = LruHashMap::new();

/// The reverse translation of each forwarded flow, keyed by the pod's reply 5-tuple (pod → client):
/// the service address and port the TC egress program puts back as the reply's source.
#[btf_map]
pub static L3LB_REPLIES: LruHashMap<FlowKey, ReplyNat, { capacity::FLOWS as usize }> =
    LruHashMap::new();

/// `sessionAffinity: ClientIP`: the pod each client of such a service last got a new connection
/// to, and when (see affinity.rs). LRU, like the flows.
#[btf_map]
pub static L3LB_AFFINITY: LruHashMap<AffinityKey, Affinity, { capacity::AFFINITY as usize }> =
    LruHashMap::new();

/// Datagrams in flight as fragments, whose first fragment was steered: the backend each went
/// to, so later fragments (which carry no ports) follow it (frag.rs). The key is a `FlowKey` of
/// the datagram's addresses, protocol and family with its fragment ID where the ports are
/// (network order): IPv4's 16-bit ID in `sport_be` and 0 in `dport_be`, IPv6's 32-bit one across
/// both; `pad[0]` is 1 for a pod's reply (frag_reply.rs: the value then holds the service's
/// address), 0 for a client's datagram. LRU: a datagram's entry goes when newer ones push it out.
#[btf_map]
pub static L3LB_FRAGMENTS: LruHashMap<FlowKey, Backend, { capacity::FRAGMENTS as usize }> =
    LruHashMap::new();

/// Packets and bytes forwarded per service, indexed by `ServiceEntry::id`.
#[btf_map]
pub static L3LB_SERVICE_STATS: PerCpuArray<PacketCounter, { capacity::SERVICES as usize }> =
    PerCpuArray::new();

/// Packets and bytes per verdict reason: shows what the fast path handled and what it passed
/// by, without a log line per packet.
#[btf_map]
pub static L3LB_REASONS: PerCpuArray<PacketCounter, { Reason::COUNT as usize }> =
    PerCpuArray::new();

#[inline(always)]
fn add(counter: Option<*mut PacketCounter>, bytes: u64) {
    if let Some(counter) = counter {
        // SAFETY: a per-CPU slot, so no other CPU writes it (and a program is not preempted by
        // itself); the pointer came from the kernel and is valid for the program's run.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

/// Counts one packet of `bytes` under `reason`.
#[inline(always)]
pub fn count(reason: Reason, bytes: u64) {
    add(L3LB_REASONS.get_ptr_mut(reason as u32), bytes);
}

/// Counts one forwarded packet of `bytes` for the service with this id.
#[inline(always)]
pub fn count_service(id: u32, bytes: u64) {
    add(L3LB_SERVICE_STATS.get_ptr_mut(id), bytes);
}
