//! `#[repr(C)]` layouts shared by the kernel programs and the daemon.
//!
//! Every type here crosses the user/kernel boundary through a BPF map, so each is laid out
//! explicitly with no implicit padding (checked by size asserts) and uses fixed-width integers
//! instead of `bool` or enums.
#![no_std]

/// Protocol buckets of the packet counter map. The index into `L3LB_PROTO_COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoCounter {
    /// IPv4 carrying TCP.
    Ipv4Tcp = 0,
    /// IPv4 carrying UDP.
    Ipv4Udp = 1,
    /// IPv4 carrying anything else (ICMP, GRE, ...).
    Ipv4Other = 2,
    /// IPv6 carrying TCP (directly after the fixed header).
    Ipv6Tcp = 3,
    /// IPv6 carrying UDP (directly after the fixed header).
    Ipv6Udp = 4,
    /// IPv6 carrying anything else, extension headers included.
    Ipv6Other = 5,
    /// An Ethernet frame that is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    NonIp = 6,
    /// Too short to hold the headers its EtherType promises.
    Truncated = 7,
}

impl ProtoCounter {
    /// Number of buckets; the `max_entries` of the counter map.
    pub const COUNT: u32 = 8;

    pub const ALL: [ProtoCounter; Self::COUNT as usize] = [
        ProtoCounter::Ipv4Tcp,
        ProtoCounter::Ipv4Udp,
        ProtoCounter::Ipv4Other,
        ProtoCounter::Ipv6Tcp,
        ProtoCounter::Ipv6Udp,
        ProtoCounter::Ipv6Other,
        ProtoCounter::NonIp,
        ProtoCounter::Truncated,
    ];

    /// Stable label used in logs, `l3lb inspect` and metrics.
    pub const fn label(self) -> &'static str {
        match self {
            ProtoCounter::Ipv4Tcp => "ipv4_tcp",
            ProtoCounter::Ipv4Udp => "ipv4_udp",
            ProtoCounter::Ipv4Other => "ipv4_other",
            ProtoCounter::Ipv6Tcp => "ipv6_tcp",
            ProtoCounter::Ipv6Udp => "ipv6_udp",
            ProtoCounter::Ipv6Other => "ipv6_other",
            ProtoCounter::NonIp => "non_ip",
            ProtoCounter::Truncated => "truncated",
        }
    }
}

/// One bucket of `L3LB_PROTO_COUNTERS`: per-CPU, so the hot path never contends on a cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCounter>() == 16);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data with no padding (asserted above); any bit pattern is valid.
    unsafe impl aya::Pod for super::PacketCounter {}
}

/// Names of the maps as they appear in the object and under the pin root, so that the daemon,
/// `l3lb inspect` and the tests never spell them twice.
pub mod map_names {
    pub const PROTO_COUNTERS: &str = "L3LB_PROTO_COUNTERS";
}

/// Names of the programs in the object.
pub mod program_names {
    pub const XDP_INGRESS: &str = "l3lb_xdp";
}
