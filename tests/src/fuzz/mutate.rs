//! Mutations of a generated frame: truncation at any offset, bit flips in each header (Ethernet,
//! IP, TCP/UDP, the quoted packet of an ICMP error), odd IHLs, IP lengths and fragment fields,
//! UDP lengths and TCP data offsets, a TTL at its end, Ethernet padding, a VLAN tag, random
//! bytes anywhere. After an IPv4 header mutation the header checksum is fixed half the time, so
//! that the checks behind it are reached too.
use fastrand::Rng;

use super::{generate::fix_ipv4_checksum, parse};
use crate::frames::{self, ETH_LEN};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutation {
    None,
    Truncate,
    /// One of the truncations at every offset of a frame (`fuzz::Sweep`), not made here.
    TruncateSweep,
    FlipEthernet,
    FlipIp,
    FlipL4,
    FlipQuote,
    Ihl,
    IpLength,
    FragmentField,
    UdpLength,
    TcpDataOffset,
    Ttl,
    Padding,
    VlanTag,
    RandomBytes,
}

impl Mutation {
    pub fn label(self) -> &'static str {
        match self {
            Mutation::None => "none",
            Mutation::Truncate => "truncated",
            Mutation::TruncateSweep => "truncated, every offset of a frame in turn",
            Mutation::FlipEthernet => "bit flip, Ethernet header",
            Mutation::FlipIp => "bit flip, IP header",
            Mutation::FlipL4 => "bit flip, TCP/UDP/ICMP header",
            Mutation::FlipQuote => "bit flip, quoted packet",
            Mutation::Ihl => "IHL",
            Mutation::IpLength => "IP total/payload length",
            Mutation::FragmentField => "IPv4 flags/fragment offset",
            Mutation::UdpLength => "UDP length",
            Mutation::TcpDataOffset => "TCP data offset",
            Mutation::Ttl => "TTL/hop limit",
            Mutation::Padding => "Ethernet padding",
            Mutation::VlanTag => "VLAN tag",
            Mutation::RandomBytes => "random bytes",
        }
    }
}

fn flip(rng: &mut Rng, frame: &mut [u8], range: std::ops::Range<usize>) -> bool {
    let end = range.end.min(frame.len());
    if range.start >= end {
        return false;
    }
    let at = rng.usize(range.start..end);
    frame[at] ^= 1 << rng.u8(0..8);
    true
}

/// Mutates `frame` (or leaves it, a third of the time); returns what was done. A mutation
/// that does not apply to the frame (a TCP data offset in a UDP datagram) counts as `None`.
pub fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) -> Mutation {
    if rng.u8(0..3) == 0 {
        return Mutation::None;
    }
    let ip = parse::ip(frame);
    let l3 = ETH_LEN;
    let v4 = ip.is_some_and(|ip| ip.family == 4);
    let mutation = match rng.u8(0..14) {
        0 => {
            let len = rng.usize(0..=frame.len());
            frame.truncate(len);
            return Mutation::Truncate;
        }
        1 => flip(rng, frame, 0..ETH_LEN).then_some(Mutation::FlipEthernet),
        2 => ip.and_then(|ip| flip(rng, frame, l3..ip.l4).then_some(Mutation::FlipIp)),
        3 => ip.and_then(|ip| {
            let len = if ip.proto == frames::PROTO_TCP { 20 } else { 8 };
            flip(rng, frame, ip.l4..ip.l4 + len).then_some(Mutation::FlipL4)
        }),
        4 => ip.and_then(|ip| {
            let quote = ip.l4 + 8;
            let end = quote + if ip.family == 4 { 28 } else { 48 };
            let is_icmp = matches!(ip.proto, parse::PROTO_ICMP | parse::PROTO_ICMPV6);
            (is_icmp && flip(rng, frame, quote..end)).then_some(Mutation::FlipQuote)
        }),
        5 if v4 => {
            frame[l3] = 0x40 | rng.u8(0..16);
            Some(Mutation::Ihl)
        }
        6 => ip.map(|ip| {
            let at = if ip.family == 4 { l3 + 2 } else { l3 + 4 };
            let current = parse::be16(frame, at);
            let value = match rng.u8(0..4) {
                0 => rng.u16(..),
                1 => current.wrapping_sub(rng.u16(1..64)),
                2 => current.wrapping_add(rng.u16(1..64)),
                _ => ((frame.len() - l3) as u16).wrapping_sub(rng.u16(0..48)),
            };
            frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
            Mutation::IpLength
        }),
        7 if v4 => {
            let value: u16 = match rng.u8(0..4) {
                0 => frames::IPV4_MF,
                1 => rng.u16(1..0x2000),
                2 => frames::IPV4_MF | rng.u16(1..0x2000),
                _ => rng.u16(..),
            };
            frame[l3 + 6..l3 + 8].copy_from_slice(&value.to_be_bytes());
            Some(Mutation::FragmentField)
        }
        8 => ip.and_then(|ip| {
            (ip.proto == frames::PROTO_UDP && frame.len() >= ip.l4 + 6).then(|| {
                let value = match rng.u8(0..3) {
                    0 => rng.u16(..),
                    _ => parse::be16(frame, ip.l4 + 4)
                        .wrapping_add(rng.u16(0..16))
                        .wrapping_sub(8),
                };
                frame[ip.l4 + 4..ip.l4 + 6].copy_from_slice(&value.to_be_bytes());
                Mutation::UdpLength
            })
        }),
        9 => ip.and_then(|ip| {
            (ip.proto == frames::PROTO_TCP && frame.len() > ip.l4 + 12).then(|| {
                frame[ip.l4 + 12] = (rng.u8(0..16) << 4) | (frame[ip.l4 + 12] & 0x0f);
                Mutation::TcpDataOffset
            })
        }),
        10 => ip.map(|ip| {
            frame[ip.ttl_at] = rng.u8(0..3);
            Mutation::Ttl
        }),
        11 => {
            let extra = rng.usize(1..64);
            frame.extend((0..extra).map(|_| rng.u8(..)));
            Some(Mutation::Padding)
        }
        12 if frame.len() >= ETH_LEN => {
            *frame = frames::vlan_tagged(frame, rng.u16(..4096));
            Some(Mutation::VlanTag)
        }
        _ if !frame.is_empty() => {
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(..frame.len());
                frame[at] = rng.u8(..);
            }
            Some(Mutation::RandomBytes)
        }
        _ => None,
    };
    let Some(mutation) = mutation else {
        return Mutation::None;
    };
    let touches_ip_header = matches!(
        mutation,
        Mutation::FlipIp
            | Mutation::Ihl
            | Mutation::IpLength
            | Mutation::FragmentField
            | Mutation::Ttl
            | Mutation::RandomBytes
    );
    if touches_ip_header && rng.bool() {
        fix_ipv4_checksum(frame, l3);
    }
    mutation
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::fuzz::{generate::Generator, world::World};

    fn frames(seed: u64, n: usize) -> Vec<(Vec<u8>, Mutation)> {
        let mut generator = Generator::new(seed, World::new());
        (0..n)
            .map(|_| {
                let mut frame = generator.frame().bytes;
                let mutation = mutate(generator.rng(), &mut frame);
                (frame, mutation)
            })
            .collect()
    }

    #[test]
    fn a_seed_gives_the_same_frames_again() {
        assert!(frames(7, 2000) == frames(7, 2000), "same seed, same frames");
        assert!(
            frames(7, 2000) != frames(8, 2000),
            "another seed, other frames"
        );
    }

    #[test]
    fn every_mutation_happens() {
        let seen: BTreeSet<Mutation> = frames(1, 20_000).into_iter().map(|(_, m)| m).collect();
        // All but the sweep's, which the runner makes.
        assert_eq!(seen.len(), 15, "all 15 mutations (none included): {seen:?}");
        assert!(!seen.contains(&Mutation::TruncateSweep));
    }
}
