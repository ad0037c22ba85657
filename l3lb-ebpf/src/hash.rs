//! The flow hash that picks a new flow's slot in its service's Maglev table.
//!
//! It must be deterministic: a pure function of the 5-tuple, with a fixed seed and no per-boot,
//! per-CPU or per-node salt. Then every packet of a flow lands on the same table entry even when
//! its `L3LB_FLOWS` entry is gone — evicted by the LRU, or lost when the daemon restarts and
//! reloads the program — and every node with the same table (the daemon builds Maglev tables
//! deterministically too) maps a flow to the same backend, so an ECMP reshuffle in the fabric
//! does not break it. The kernel's random-seeded `skb->hash` would give neither.
//!
//! MurmurHash3 (x86_32) over the 5-tuple as ten 32-bit words taken little-endian from the wire
//! bytes, so the value does not depend on the host's byte order either.
use l3lb_common::FlowKey;

const SEED: u32 = 0x6c33_6c62; // "l3lb"
const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(hash: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (hash ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn word(bytes: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
}

/// The 32-bit hash of a flow's 5-tuple (addresses, ports, protocol, family).
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut hash = SEED;
    hash = mix(hash, word(&key.src, 0));
    hash = mix(hash, word(&key.src, 4));
    hash = mix(hash, word(&key.src, 8));
    hash = mix(hash, word(&key.src, 12));
    hash = mix(hash, word(&key.dst, 0));
    hash = mix(hash, word(&key.dst, 4));
    hash = mix(hash, word(&key.dst, 8));
    hash = mix(hash, word(&key.dst, 12));
    let [s0, s1] = key.sport_be.to_ne_bytes();
    let [d0, d1] = key.dport_be.to_ne_bytes();
    hash = mix(hash, u32::from_le_bytes([s0, s1, d0, d1]));
    hash = mix(hash, u32::from_le_bytes([key.proto, key.family, 0, 0]));
    // Finalisation: length in bytes, then the avalanche mix.
    hash ^= 40;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}
