//! Incremental Internet checksum updates (RFC 1624): every checksum of the XDP program, which
//! sees wire packets whose checksums are complete, and the IPv4 header checksum (always
//! complete) in the TC programs. The TCP/UDP checksum of a socket buffer, which may be
//! CHECKSUM_PARTIAL, is left to the kernel's `bpf_l4_csum_replace` (see nat.rs), to which
//! [`CsumDelta::sum`] hands the pseudo-header change.
//!
//! Words are read and written in the packet's own byte order: the one's-complement sum is
//! byte-order independent as long as every word, the checksum included, is taken the same way
//! (RFC 1071 §2(B)), so nothing is swapped.

/// The change of some 16-bit words of a checksummed region, accumulated as `~m + m'` per word
/// (RFC 1624 eqn. 3 without the final step). Small: at most 9 words are ever added, each below
/// 0x2_0000, so a `u32` cannot overflow before [`CsumDelta::apply`] folds it.
#[derive(Clone, Copy)]
pub struct CsumDelta(u32);

impl CsumDelta {
    #[inline(always)]
    pub const fn new() -> Self {
        CsumDelta(0)
    }

    /// One 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u32::from(!old) + u32::from(new);
    }

    /// Bytes changed from `old` to `new` (an even number: addresses and ports).
    #[inline(always)]
    pub fn bytes<const N: usize>(&mut self, old: &[u8; N], new: &[u8; N]) {
        let mut i = 0;
        while i + 1 < N {
            self.word(
                u16::from_ne_bytes([old[i], old[i + 1]]),
                u16::from_ne_bytes([new[i], new[i + 1]]),
            );
            i += 2;
        }
    }

    /// The change as a 32-bit one's-complement sum, the form `bpf_l4_csum_replace` takes for a
    /// precomputed difference (like `bpf_csum_diff`'s result).
    #[inline(always)]
    pub fn sum(self) -> u32 {
        u32::from(fold(self.0))
    }

    /// The checksum field `check` updated by this change: `HC' = ~(~HC + ~m + m')`.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold(u32::from(!check) + self.0)
    }
}

/// Folds a 32-bit one's-complement sum into 16 bits. Two rounds suffice for any `u32`.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
