//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M in
//! which every backend owns close to M/N entries, and removing one backend reassigns only the
//! entries it owned (plus a small fraction). The kernel indexes the table with a flow hash, so
//! the spread across pods is the table's spread, and a backend-set change moves few new flows.
//!
//! The table is built from backend *names* (address and port), never from their positions, so
//! every node and every restart builds the same table for the same set.

/// The default table size: prime, and about 100× the handful of local backends a service has
/// on one node, which keeps each backend within ~1% of its fair share (the paper's guidance).
/// Each service costs `2 × M × 4` bytes in the kernel (two halves for atomic swaps): 8 KiB.
pub const DEFAULT_TABLE_SIZE: u32 = 1021;

/// Largest table size accepted; beyond it one service's table would not be "small".
pub const MAX_TABLE_SIZE: u32 = 65_537;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the Maglev table size {0} is not a prime (try 251, 509, 1021, 2039, 4093 or 65537)")]
    NotPrime(u32),
    #[error("the Maglev table size {size} is outside 3..={MAX_TABLE_SIZE}")]
    OutOfRange { size: u32 },
}

/// Checks a table size: a prime in range, so every skip value walks the whole table.
pub fn validate_table_size(size: u32) -> Result<u32, Error> {
    if !(3..=MAX_TABLE_SIZE).contains(&size) {
        return Err(Error::OutOfRange { size });
    }
    let prime = (2..)
        .take_while(|d: &u32| d * d <= size)
        .all(|d| !size.is_multiple_of(d));
    if prime {
        Ok(size)
    } else {
        Err(Error::NotPrime(size))
    }
}

/// Builds a table of `size` entries (a prime) for backends identified by `names`; each entry is
/// an index into `names`. Empty `names` gives an empty table.
pub fn build_table(names: &[impl AsRef<[u8]>], size: u32) -> Vec<u32> {
    if names.is_empty() {
        return Vec::new();
    }
    let m = u64::from(size);
    let permutation: Vec<(u64, u64)> = names
        .iter()
        .map(|name| {
            let name = name.as_ref();
            let offset = hash(name, 0x9e37_79b9_7f4a_7c15) % m;
            let skip = hash(name, 0xc2b2_ae3d_27d4_eb4f) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; names.len()];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0;
    // Backends take turns claiming their next preferred free entry; the turn order is what
    // makes the shares even.
    'fill: loop {
        for (backend, (offset, skip)) in permutation.iter().enumerate() {
            let mut slot = (offset + next[backend] * skip) % m;
            while table[slot as usize] != u32::MAX {
                next[backend] += 1;
                slot = (offset + next[backend] * skip) % m;
            }
            table[slot as usize] = backend as u32;
            next[backend] += 1;
            filled += 1;
            if filled == table.len() {
                break 'fill;
            }
        }
    }
    table
}

/// FNV-1a with a seed folded in, then a final avalanche: stable across platforms and releases
/// (a std `Hasher` is not), which the "same table everywhere" property needs.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &byte in bytes {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 2).into_bytes())
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &entry in table {
            counts[entry as usize] += 1;
        }
        counts
    }

    #[test]
    fn sizes_must_be_primes_in_range() {
        assert_eq!(validate_table_size(1021), Ok(1021));
        assert_eq!(validate_table_size(65_537), Ok(65_537));
        assert_eq!(validate_table_size(1000), Err(Error::NotPrime(1000)));
        assert!(matches!(
            validate_table_size(2),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            validate_table_size(70_001),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn every_entry_is_filled_and_shares_are_even() {
        for (n, size) in [(1, 251), (3, 1021), (7, 1021), (10, 1021), (50, 65_537)] {
            let table = build_table(&names(n), size);
            assert_eq!(table.len(), size as usize);
            let fair = size as f64 / n as f64;
            for (backend, count) in shares(&table, n).into_iter().enumerate() {
                let deviation = (count as f64 - fair).abs() / fair;
                // Maglev's round-robin fill keeps shares within one entry of each other.
                assert!(
                    count.abs_diff(fair as usize) <= 1 || deviation <= 0.01,
                    "n={n} M={size}: backend {backend} has {count} entries, fair share {fair:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_little_beyond_its_own_entries() {
        let n = 10;
        let size = 1021;
        let all = names(n);
        let before = build_table(&all, size);
        let removed = 3;
        let mut fewer = all.clone();
        fewer.remove(removed);
        let after = build_table(&fewer, size);
        // Map `after` indices back to names' indices in `all`.
        let original = |i: u32| if (i as usize) < removed { i } else { i + 1 };
        let mut moved_elsewhere = 0;
        for (slot, (&old, &new)) in before.iter().zip(&after).enumerate() {
            let new = original(new);
            if old as usize == removed {
                assert_ne!(
                    new as usize, removed,
                    "slot {slot} still points at the removed backend"
                );
            } else if old != new {
                moved_elsewhere += 1;
            }
        }
        // The paper reports a few percent of disruption for the other backends' entries.
        let fraction = moved_elsewhere as f64 / size as f64;
        assert!(
            fraction < 0.05,
            "{:.1}% of the other backends' entries moved",
            fraction * 100.0
        );
    }

    #[test]
    fn the_table_is_a_function_of_the_names_alone() {
        // Every node (and every restart) that sees the same sorted backends builds the same
        // table; the caller sorts, so only the names matter.
        assert_eq!(build_table(&names(4), 251), build_table(&names(4), 251));
        let mut other = names(4);
        other[0] = b"10.244.9.9:8080".to_vec();
        assert_ne!(build_table(&other, 251), build_table(&names(4), 251));
        assert!(build_table(&[] as &[Vec<u8>], 251).is_empty());
    }
}
