//! `sessionAffinity: ClientIP`, as kube-proxy keeps it: a client's new connections to such a
//! service go to the pod its previous new connection went to, as long as that pod still takes
//! new flows and the service's timeout has not passed since then. Established flows need none
//! of this (flow memory keeps them on their pod); only the choice for a new flow changes.
//!
//! The timer restarts with each new connection, as kube-proxy's `recent` match does (it is set
//! on the NEW packets that reach its DNAT rule). Both functions are BPF-to-BPF calls of their
//! own so their stack frames stay out of the forward path's, which is near the 512-byte limit.
use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use l3lb_common::{Affinity, AffinityKey, BACKEND_TERMINATING, FlowKey};

use crate::maps::{L3LB_AFFINITY, L3LB_BACKENDS};

/// [`lookup`]: no affinity (none recorded, expired, or its pod no longer takes new flows).
pub const NONE: u32 = u32::MAX;

#[inline(always)]
fn affinity_key(key: &FlowKey, service_id: u32) -> AffinityKey {
    AffinityKey {
        client: key.src,
        service_id,
        family: key.family,
        pad: [0; 3],
    }
}

/// 16-byte equality without `memcmp`.
#[inline(always)]
fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    (w(a, 0) ^ w(b, 0)) | (w(a, 4) ^ w(b, 4)) | (w(a, 8) ^ w(b, 8)) | (w(a, 12) ^ w(b, 12)) == 0
}

/// The backend id the client of `key` is bound to for service `service_id`, or [`NONE`]. The
/// entry is read in place, field by field: the callers' frames leave this one little stack.
// Map keys and values by reference: a by-value argument is one more stack copy.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(never)]
pub fn lookup(key: &FlowKey, service_id: u32, timeout_secs: u32) -> u32 {
    let akey = affinity_key(key, service_id);
    let Some(affinity) = L3LB_AFFINITY.get_ptr(&akey) else {
        return NONE;
    };
    // SAFETY (the reads through `affinity`): the kernel's pointer to the entry, valid for this
    // run; a concurrent update gives at worst a mix of old and new fields, which the checks
    // against the backend slot below reject like any stale entry.
    let (last_seen_ns, backend_id, port_be) = unsafe {
        (
            (*affinity).last_seen_ns,
            (*affinity).backend_id,
            (*affinity).backend_port_be,
        )
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(last_seen_ns) >= u64::from(timeout_secs) * 1_000_000_000 {
        return NONE;
    }
    let Some(backend) = L3LB_BACKENDS.get(backend_id) else {
        return NONE;
    };
    // The slot must still hold that pod, and the pod take new flows.
    if backend.in_use == 0
        || backend.family != key.family
        || backend.flags & BACKEND_TERMINATING != 0
        || backend.port_be != port_be
        || !addr_eq(&backend.addr, unsafe { &(*affinity).backend_addr })
    {
        return NONE;
    }
    backend_id
}

/// Binds the client of `key` to `backend_id` for service `service_id`, from now on.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(never)]
pub fn remember(key: &FlowKey, service_id: u32, backend_id: u32) {
    let Some(backend) = L3LB_BACKENDS.get(backend_id) else {
        return;
    };
    let affinity = Affinity {
        // SAFETY: a helper without arguments.
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        backend_id,
        backend_port_be: backend.port_be,
        pad: [0; 2],
        backend_addr: backend.addr,
    };
    // A full LRU evicts the least recently used client instead of failing.
    let _ = L3LB_AFFINITY.insert(
        &affinity_key(key, service_id),
        &affinity,
        u64::from(BPF_ANY),
    );
}
