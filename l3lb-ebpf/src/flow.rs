//! Which backend a service packet goes to: its flow's, while that backend is still there, else a
//! fresh pick from the service's Maglev table (or, with session affinity, the client's pod:
//! affinity.rs), remembered in `L3LB_FLOWS` (and its reverse in `L3LB_REPLIES`).
use aya_ebpf::bindings::BPF_ANY;
use l3lb_common::{
    Backend, Flow, FlowKey, REPLY_CHECK_INTERVAL, Reason, ReplyNat, SERVICE_AFFINITY, ServiceEntry,
};

use crate::{
    affinity,
    hash::flow_hash,
    maps::{L3LB_BACKENDS, L3LB_FLOWS, L3LB_MAGLEV, L3LB_REPLIES, count},
};

/// 16-byte equality without `memcmp` (which BPF has not): four word compares.
#[inline(always)]
fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    (w(a, 0) ^ w(b, 0)) | (w(a, 4) ^ w(b, 4)) | (w(a, 8) ^ w(b, 8)) | (w(a, 12) ^ w(b, 12)) == 0
}

/// The key under which the TC program finds the pod's replies to `key` once it is sent to
/// `backend`: pod → client.
#[inline(always)]
fn reply_key(key: &FlowKey, backend_addr: &[u8; 16], backend_port_be: u16) -> FlowKey {
    FlowKey {
        src: *backend_addr,
        dst: key.src,
        sport_be: backend_port_be,
        dport_be: key.sport_be,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    }
}

#[inline(always)]
fn reply_nat(key: &FlowKey) -> ReplyNat {
    ReplyNat {
        service_addr: key.dst,
        service_port_be: key.dport_be,
        pad: [0; 2],
    }
}

/// The backend for the packet with 5-tuple `key` to `service`, or `NoBackend`. `bytes` is the
/// packet's length, for the `Rescheduled` counter.
// Map keys and values by reference: a by-value argument is one more stack copy, and the
// programs' call chains are close to the verifier's 512 bytes.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn select(key: &FlowKey, service: &ServiceEntry, bytes: u64) -> Result<Backend, Reason> {
    if let Some(flow_ptr) = L3LB_FLOWS.get_ptr_mut(key) {
        // SAFETY: the kernel's pointer to the entry; copied out at once, and an LRU entry
        // rewritten concurrently yields at worst a stale copy, which the checks below catch.
        let flow = unsafe { flow_ptr.read() };
        if let Some(backend) = L3LB_BACKENDS.get(flow.backend_id) {
            // The slot must still hold the pod the flow was sent to. A terminating backend
            // keeps its established flows: only the table stops giving it new ones.
            if backend.in_use != 0
                && backend.family == key.family
                && backend.port_be == flow.backend_port_be
                && addr_eq(&backend.addr, &flow.backend_addr)
            {
                let backend = *backend;
                // The reply entry lives in its own LRU and may have been evicted on its own:
                // without it the pod's replies would leave with the pod's address. Looked at
                // every REPLY_CHECK_INTERVAL packets, not on each.
                let check_in = if flow.reply_check_in == 0 {
                    let reply = reply_key(key, &backend.addr, backend.port_be);
                    if L3LB_REPLIES.get_ptr(&reply).is_none() {
                        let _ = L3LB_REPLIES.insert(&reply, &reply_nat(key), u64::from(BPF_ANY));
                    }
                    REPLY_CHECK_INTERVAL
                } else {
                    flow.reply_check_in - 1
                };
                // SAFETY: the same entry; a racing writer on another CPU only changes when
                // the next check happens.
                unsafe { (*flow_ptr).reply_check_in = check_in };
                return Ok(backend);
            }
        }
        // Its backend is gone (slot cleared or given to another pod): rescheduled below, and
        // the stale reverse translation goes with it.
        count(Reason::Rescheduled, bytes);
        let _ = L3LB_REPLIES.remove(&reply_key(key, &flow.backend_addr, flow.backend_port_be));
        let _ = L3LB_FLOWS.remove(key);
    }
    new_flow(key, service)
}

/// A fresh pick for a new (or rescheduled) flow: the client's pod under session affinity, else
/// the service's Maglev table; remembered in `L3LB_FLOWS` and its reverse in `L3LB_REPLIES`.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn new_flow(key: &FlowKey, service: &ServiceEntry) -> Result<Backend, Reason> {
    if service.table_size == 0 {
        return Err(Reason::NoBackend);
    }
    let sticky = service.flags & SERVICE_AFFINITY != 0;
    let mut backend_id = affinity::NONE;
    if sticky {
        backend_id = affinity::lookup(key, service.id, service.affinity_timeout_secs);
    }
    if backend_id == affinity::NONE {
        let slot = service
            .table_base
            .wrapping_add(flow_hash(key) % service.table_size);
        backend_id = *L3LB_MAGLEV.get(slot).ok_or(Reason::NoBackend)?;
    }
    let backend = *L3LB_BACKENDS.get(backend_id).ok_or(Reason::NoBackend)?;
    if backend.in_use == 0 || backend.family != key.family {
        return Err(Reason::NoBackend);
    }
    if sticky {
        affinity::remember(key, service.id, backend_id);
    }

    let flow = Flow {
        backend_id,
        service_id: service.id,
        backend_addr: backend.addr,
        backend_port_be: backend.port_be,
        reply_check_in: REPLY_CHECK_INTERVAL,
    };
    // A full LRU map evicts instead of failing; should an insert fail anyway, this packet
    // still goes to the backend the table names, and so does the next one (same hash).
    let _ = L3LB_FLOWS.insert(key, &flow, u64::from(BPF_ANY));
    let _ = L3LB_REPLIES.insert(
        &reply_key(key, &backend.addr, backend.port_be),
        &reply_nat(key),
        u64::from(BPF_ANY),
    );
    Ok(backend)
}
