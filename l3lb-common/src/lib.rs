//! `#[repr(C)]` layouts shared by the kernel programs and the daemon.
//!
//! Every type here crosses the user/kernel boundary through a BPF map, so each is laid out
//! explicitly with no implicit padding (checked by size asserts) and uses fixed-width integers
//! instead of `bool` or enums. Fields named `*_be` hold network byte order, exactly as in the
//! packet, so the hot path compares and copies them without swapping.
#![no_std]

/// `family` value of IPv4 keys and backends. IPv4 addresses sit in the first 4 bytes of a
/// 16-byte address field, the rest zero.
pub const FAMILY_IPV4: u8 = 4;
/// `family` value of IPv6 keys and backends.
pub const FAMILY_IPV6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Why the XDP or TC program let a packet go the way it did: the index into
/// `L3LB_REASONS`. The programs never drop. `Forwarded`, `ReplyTranslated`, the redirect and
/// the ICMP reasons count packets the fast path handled (each packet once, by the way it took); every
/// other reason is a pass-through, counted so an operator can see what the fast path skipped
/// and why.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A service packet rewritten towards a local pod and handed to the kernel's routing (XDP,
    /// or TC for a backend that cannot be reached directly, or whose TTL runs out here).
    Forwarded = 0,
    /// A pod's reply rewritten back to the service address on the uplink's egress, after the
    /// kernel routed it (the way back for `Forwarded` packets).
    ReplyTranslated = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 2,
    /// IP, but not TCP or UDP (ICMP, GRE, ...).
    NotTcpUdp = 3,
    /// TCP/UDP to an address/port/protocol that is no service here.
    NotService = 4,
    /// A fragment the fast path does not translate: a later fragment (IPv4, or IPv6 with its
    /// fragment header right after the IPv6 header) of no datagram whose first fragment it
    /// steered (also one that arrived before its first), a fragment of neither TCP nor UDP, or
    /// any fragment on the XDP path. (Fragments of steered datagrams are counted by the way
    /// they went, like whole packets.)
    Fragment = 5,
    /// IPv6 with extension headers (other than a fragment header right after the IPv6 header),
    /// which the program does not walk.
    Ipv6Extension = 6,
    /// Malformed: shorter than the headers or the length it announces, an IPv4 header it cannot
    /// parse or whose checksum is wrong, a UDP length that disagrees with the IP length, a TCP
    /// data offset below 5. Passed untouched for the kernel to drop, leaving no flow behind.
    Truncated = 7,
    /// A service with no usable local backend (left to the kernel and kube-proxy).
    NoBackend = 8,
    /// An established flow whose backend was removed; rescheduled through the table.
    Rescheduled = 9,
    /// A service packet rewritten and redirected straight into the pod's namespace
    /// (`bpf_redirect_peer` to the pod's veth/netkit peer): no host routing, netfilter or queue.
    RedirectPeer = 10,
    /// A service packet rewritten and sent out of the pod's host-side interface with the
    /// kernel's neighbour resolution (`bpf_redirect_neigh`): for pods behind a bridge or an
    /// interface that is not a veth/netkit pair.
    RedirectNeigh = 11,
    /// A pod's reply translated as it left the pod and sent straight out of the uplink the
    /// kernel's FIB names (`bpf_redirect`, or `bpf_redirect_neigh` before the neighbour is known).
    ReplyRedirected = 12,
    /// A pod's reply translated as it left the pod, then handed to the kernel's routing: no
    /// route, a packet too big for the uplink, or a TTL that runs out here.
    ReplyToStack = 13,
    /// An ICMP error to a service address about a steered flow's reply (a router's "packet too
    /// big", "fragmentation needed", unreachable or time exceeded): its destination and the
    /// quoted reply's source translated to the pod, and delivered to it like the flow.
    IcmpTranslated = 14,
    /// An ICMP error a pod sent about a steered flow (e.g. port unreachable): its source and
    /// the quoted packet's destination translated back to the service.
    IcmpReplyTranslated = 15,
}

impl Reason {
    /// Number of reasons; the `max_entries` of `L3LB_REASONS`.
    pub const COUNT: u32 = 16;

    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::Forwarded,
        Reason::ReplyTranslated,
        Reason::NotIp,
        Reason::NotTcpUdp,
        Reason::NotService,
        Reason::Fragment,
        Reason::Ipv6Extension,
        Reason::Truncated,
        Reason::NoBackend,
        Reason::Rescheduled,
        Reason::RedirectPeer,
        Reason::RedirectNeigh,
        Reason::ReplyRedirected,
        Reason::ReplyToStack,
        Reason::IcmpTranslated,
        Reason::IcmpReplyTranslated,
    ];

    /// Stable label for `l3lb inspect` and metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::ReplyTranslated => "reply_translated",
            Reason::NotIp => "not_ip",
            Reason::NotTcpUdp => "not_tcp_udp",
            Reason::NotService => "not_service",
            Reason::Fragment => "fragment",
            Reason::Ipv6Extension => "ipv6_extension",
            Reason::Truncated => "truncated",
            Reason::NoBackend => "no_backend",
            Reason::Rescheduled => "rescheduled",
            Reason::RedirectPeer => "redirect_peer",
            Reason::RedirectNeigh => "redirect_neigh",
            Reason::ReplyRedirected => "reply_redirected",
            Reason::ReplyToStack => "reply_to_stack",
            Reason::IcmpTranslated => "icmp_translated",
            Reason::IcmpReplyTranslated => "icmp_reply_translated",
        }
    }
}

/// Packets and bytes: per-CPU values of `L3LB_REASONS` and `L3LB_SERVICE_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

/// Key of `L3LB_SERVICES`: one service address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of `L3LB_SERVICES`. Replaced as a whole when the backend set changes: the new Maglev
/// table is written to the half of the service's region that packets are not reading, then this
/// entry is swapped to point at it, so no packet ever sees a half-written table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Index into `L3LB_SERVICE_STATS`.
    pub id: u32,
    /// First index of the active table in `L3LB_MAGLEV`.
    pub table_base: u32,
    /// Entries in the table (a prime); 0 when the service has no backend that takes new flows.
    pub table_size: u32,
    /// `SERVICE_*` bits.
    pub flags: u32,
    /// With [`SERVICE_AFFINITY`]: how long a client keeps its pod after its last new
    /// connection (`sessionAffinityConfig.clientIP.timeoutSeconds`).
    pub affinity_timeout_secs: u32,
}

/// `ServiceEntry::flags`: `sessionAffinity: ClientIP`. A client's new connections go to the pod
/// its previous one went to (`L3LB_AFFINITY`), while that pod takes new flows and the timeout
/// has not passed; otherwise Maglev picks, per flow.
pub const SERVICE_AFFINITY: u32 = 1;

/// Key of `L3LB_AFFINITY`: a client of a service (by `ServiceEntry::id`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: [u8; 16],
    pub service_id: u32,
    pub family: u8,
    pub pad: [u8; 3],
}

/// Value of `L3LB_AFFINITY`: the backend a client's last new connection to the service went
/// to, and when (`bpf_ktime_get_ns`, monotonic since boot). The address is kept, as in
/// [`Flow`], so a reused backend slot never catches the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub backend_port_be: u16,
    pub pad: [u8; 2],
    pub backend_addr: [u8; 16],
}

/// `Backend::flags`: the endpoint is terminating. It keeps its established flows but is in no
/// Maglev table, so it gets no new ones.
pub const BACKEND_TERMINATING: u32 = 1;
/// `Backend::flags`: `ifindex` is the host side of a veth/netkit pair whose peer is the pod's
/// interface in another namespace: packets go there with `bpf_redirect_peer`.
pub const BACKEND_REDIRECT_PEER: u32 = 2;
/// `Backend::flags`: `ifindex` is the host interface the pod is reached through (a bridge, or a
/// device without a peer): packets go out of it with `bpf_redirect_neigh`.
pub const BACKEND_REDIRECT_NEIGH: u32 = 4;
/// The delivery bits of `Backend::flags`; neither set: the kernel routes the rewritten packet.
pub const BACKEND_DELIVERY: u32 = BACKEND_REDIRECT_PEER | BACKEND_REDIRECT_NEIGH;

/// Value of `L3LB_BACKENDS` (an array indexed by backend id): where a pod listens, and how
/// packets reach it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub family: u8,
    /// Nonzero while the slot holds a backend, so a cleared slot never matches a flow.
    pub in_use: u8,
    pub flags: u32,
    /// The host-side interface of the pod (see the `BACKEND_REDIRECT_*` flags); 0 when packets
    /// are left to the kernel's routing.
    pub ifindex: u32,
}

/// A flow's 5-tuple as seen on the wire: key of `L3LB_FLOWS` (client → service) and of
/// `L3LB_REPLIES` (pod → client).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// Value of `L3LB_FLOWS`: the backend a flow was given. The backend's address is kept so a
/// flow never follows a reused backend id to a different pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    pub service_id: u32,
    pub backend_addr: [u8; 16],
    pub backend_port_be: u16,
    /// Packets until the program next makes sure the flow's `L3LB_REPLIES` entry is still
    /// there (see `REPLY_CHECK_INTERVAL`).
    pub reply_check_in: u16,
}

/// How often (in forward packets of an established flow) the programs make sure its reply
/// entry was not evicted from `L3LB_REPLIES` on its own, and restore it if it was. Every packet
/// would cost a hash lookup each; a flow whose reply entry went missing gets it back within this
/// many packets, and the first packet of every flow writes both.
pub const REPLY_CHECK_INTERVAL: u16 = 32;

/// Value of `L3LB_REPLIES`: the service address and port a pod's reply must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyNat {
    pub service_addr: [u8; 16],
    pub service_port_be: u16,
    pub pad: [u8; 2],
}

const _: () = {
    assert!(core::mem::size_of::<PacketCounter>() == 16);
    assert!(core::mem::size_of::<ServiceKey>() == 20);
    assert!(core::mem::size_of::<ServiceEntry>() == 20);
    assert!(core::mem::size_of::<AffinityKey>() == 24);
    assert!(core::mem::size_of::<Affinity>() == 32);
    assert!(core::mem::size_of::<Backend>() == 28);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<Flow>() == 28);
    assert!(core::mem::size_of::<ReplyNat>() == 20);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY (all): plain-old-data with no padding (asserted above); any bit pattern is valid.
    unsafe impl aya::Pod for super::PacketCounter {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::ReplyNat {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::Affinity {}
}

/// Capacities the object is built with. `L3LB_MAGLEV` is sized at load time from the table
/// size and service capacity (see the daemon's fast-path loader).
pub mod capacity {
    /// Service address/port/protocol triples.
    pub const SERVICES: u32 = 16_384;
    /// Backend slots across all services.
    pub const BACKENDS: u32 = 65_536;
    /// Tracked flows (LRU: the least recently used are evicted when full).
    pub const FLOWS: u32 = 262_144;
    /// Datagrams in flight as fragments, both families (LRU; an entry lives until evicted).
    pub const FRAGMENTS: u32 = 8_192;
    /// Clients with session affinity, across services (LRU).
    pub const AFFINITY: u32 = 65_536;
    /// Placeholder size of `L3LB_MAGLEV` in the object; the loader sets the real one.
    pub const MAGLEV_PLACEHOLDER: u32 = 1;
}

/// Names of the maps as they appear in the object and under the pin root, so that the daemon,
/// `l3lb inspect` and the tests never spell them twice.
pub mod map_names {
    pub const SERVICES: &str = "L3LB_SERVICES";
    pub const BACKENDS: &str = "L3LB_BACKENDS";
    pub const MAGLEV: &str = "L3LB_MAGLEV";
    pub const FLOWS: &str = "L3LB_FLOWS";
    pub const REPLIES: &str = "L3LB_REPLIES";
    pub const SERVICE_STATS: &str = "L3LB_SERVICE_STATS";
    pub const REASONS: &str = "L3LB_REASONS";
    pub const AFFINITY: &str = "L3LB_AFFINITY";
    pub const FRAGMENTS: &str = "L3LB_FRAGMENTS";
    pub const ALL: [&str; 9] = [
        SERVICES,
        BACKENDS,
        MAGLEV,
        FLOWS,
        REPLIES,
        SERVICE_STATS,
        REASONS,
        AFFINITY,
        FRAGMENTS,
    ];
}

/// Names of the programs in the object.
pub mod program_names {
    /// TC ingress on the uplinks (the default): client → service packets rewritten to a local
    /// pod and redirected into it.
    pub const TC_INGRESS: &str = "l3lb_tc_ingress";
    /// XDP on the uplinks (`--xdp-mode native|generic`): client → service packets rewritten to
    /// a local pod, then routed by the kernel.
    pub const XDP_INGRESS: &str = "l3lb_xdp";
    /// TC egress on the uplinks: pod → client replies that the kernel routed (the pod could not
    /// be reached directly) rewritten back to the service address.
    pub const TC_EGRESS: &str = "l3lb_tc_egress";
    /// TC ingress on a local pod's host-side interface: its replies rewritten back to the
    /// service address and sent straight out of the uplink.
    pub const TC_POD: &str = "l3lb_tc_pod";
}

/// Conversions between `core::net` addresses and the map types' address fields.
#[cfg(feature = "user")]
pub mod addr;
