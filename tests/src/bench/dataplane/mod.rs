//! Part 2: the data path end to end, in network namespaces:
//!
//! ```text
//! client 10.1.0.2 ── eth0 │ uplink 10.1.0.1 [node] vp0 ── pod 10.244.1.2
//!                                                  vp1 ── pod 10.244.1.3
//! ```
//!
//! The same topology once per [`Mode`]: two references without any service (the node only
//! routes), kube-proxy's iptables rules, kube-proxy's nftables rules (both from
//! [`super::kubeproxy`]), `l3lb run --xdp` with a file source (the fast path, no netfilter rule
//! at all in its node), and l3lb next to kube-proxy's iptables rules. Each mode gets N Services
//! (one measured, in the middle of kube-proxy's list), and every round measures each mode once,
//! in a rotating order, so that a busy moment of the machine hits all of them alike.
//!
//! - UDP: one sender thread in the client pushes 60-byte frames (16 flows, `sendmmsg` in
//!   batches of 64) to the measured service for a bounded time and count; delivered = packets
//!   received on the pods' `eth0` (kernel counters), per second of sending. After the UDP lane
//!   of each mode, the node's conntrack entries for the client's UDP flows are counted.
//! - Node cost: the same sender with a drop program at TC ingress of each pod's `eth0`, so the
//!   pods' IP/UDP stack is out of the figure, against the same drop program at TC ingress of the
//!   node's uplink: the difference of the per-packet times is what the node does.
//! - TCP: one client thread connects to the service and resets the connection at once (no
//!   TIME_WAIT), for a bounded time and count: completed handshakes per second. Every
//!   connection is a new flow, so this is where kube-proxy's per-connection rule walk shows.
//! - Request/response: one established TCP connection, 1-byte request, 1-byte answer echoed by
//!   the pod, as many round trips as fit (netperf's `TCP_RR`): transactions per second.
//!
//! The whole path of a packet (sender's syscall, node, pod) runs in softirq on the sending CPU,
//! so packets per second is the inverse of the per-packet cost of the path, sender included.
//!
//! In this directory: `topology` builds the namespaces, `servers` runs the pods' servers,
//! `install` sets a mode up on the node; `udp`, `tcp`, `node_cost` and `rr` are the lanes;
//! `rounds` measures every mode round after round and gathers the rows.
mod install;
mod node_cost;
mod rounds;
mod rr;
mod servers;
mod tcp;
mod topology;
mod udp;

use serde::Serialize;

pub use self::rounds::run_part;
use super::{stats::Summary, sys};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No load balancing: packets go to a pod's address and the node only routes them. The
    /// floor of the data path, for the overhead each mode adds.
    Direct,
    /// The same with an empty XDP program (`XDP_PASS`) on the node's uplink: what any XDP
    /// program costs on a veth before doing anything.
    DirectXdp,
    Iptables,
    Nftables,
    /// `l3lb run --xdp` with the default `--xdp-mode auto`: the fast path as the daemon picks it
    /// for the uplink, no netfilter rule in the node.
    L3lb,
    /// l3lb on a node that still has kube-proxy's iptables rules loaded (a migration, or
    /// kube-proxy left running): whether the fast path steers clear of netfilter.
    L3lbIptables,
}

impl Mode {
    /// The reference first: no service at all, the client talks to a pod's own address.
    pub const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::DirectXdp,
        Mode::Iptables,
        Mode::Nftables,
        Mode::L3lb,
        Mode::L3lbIptables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "no service (direct to a pod)",
            Mode::DirectXdp => "no service, empty XDP program",
            Mode::Iptables => "kube-proxy iptables",
            Mode::Nftables => "kube-proxy nftables",
            Mode::L3lb => "l3lb",
            Mode::L3lbIptables => "l3lb, kube-proxy's iptables rules still loaded",
        }
    }

    /// The label in the plot's legend, where the long one does not fit.
    pub fn short_label(self) -> &'static str {
        match self {
            Mode::Direct => "direct to a pod",
            Mode::DirectXdp => "direct, empty XDP",
            Mode::L3lbIptables => "l3lb + iptables rules",
            other => other.label(),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Mode::Direct => "dir",
            Mode::DirectXdp => "dxp",
            Mode::Iptables => "ipt",
            Mode::Nftables => "nft",
            Mode::L3lb => "l3l",
            Mode::L3lbIptables => "l3i",
        }
    }

    /// The references: the client sends to a pod's own address, no service involved.
    pub fn is_direct(self) -> bool {
        matches!(self, Mode::Direct | Mode::DirectXdp)
    }

    pub fn runs_l3lb(self) -> bool {
        matches!(self, Mode::L3lb | Mode::L3lbIptables)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mode: Mode,
    pub services: u32,
    /// Seconds from an empty node to forwarding: `iptables-restore`, `nft -f`, or l3lb's start
    /// until every service is in the fast path's maps.
    pub setup_seconds: f64,
    /// Packets per second received by the pods.
    pub udp_pps: Summary,
    /// Packets per second the client sent.
    pub udp_sent_pps: Summary,
    /// Packets per second the pods' server read from its sockets.
    pub udp_read_pps: Summary,
    /// Entries in the node's conntrack table for the client's UDP flows after the UDP lane, the
    /// most seen over the rounds (`None`: `conntrack` could not be run).
    pub conntrack_udp_entries: Option<u64>,
    /// New TCP connections per second.
    pub tcp_cps: Summary,
    /// Connection attempts that failed (1 s timeout), all rounds.
    pub tcp_failed: u64,
    /// The node-cost lane (only at the service counts in [`Part2::extended_services`]).
    pub node: Option<NodeCost>,
    /// Request/response transactions per second on one TCP connection (same service counts).
    pub rr_tps: Option<Summary>,
    pub error: Option<String>,
}

/// The UDP sender with a drop program at TC ingress of the pods' `eth0`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeCost {
    /// Packets per second the sender wrote (the drop program keeps the pods' stack out).
    pub sent_pps: Summary,
    /// Per round: `1/sent_pps − 1/uplink drop pps` in nanoseconds, the node's own work.
    pub ns: Summary,
    /// The smallest share, over the rounds, of the sent packets the pods' `eth0` counted (that
    /// is, that reached the drop program).
    pub reached: f64,
}

/// The reference of the node-cost lane: the drop program at TC ingress of the node's uplink.
#[derive(Clone, Debug, Serialize)]
pub struct UplinkDrop {
    pub services: u32,
    pub sent_pps: Summary,
    /// The smallest share, over the rounds, of the sent packets the uplink counted.
    pub reached: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Part2 {
    pub rounds: usize,
    pub udp_seconds: f64,
    pub tcp_seconds: f64,
    pub rr_seconds: f64,
    pub udp_flows: u16,
    pub tcp_in_flight: usize,
    /// The service counts at which the node-cost and request/response lanes ran.
    pub extended_services: Vec<u32>,
    pub uplink_drop: Vec<UplinkDrop>,
    pub rows: Vec<Row>,
}

const CLIENT: &str = "10.1.0.2";
const NODE_UPLINK: &str = "10.1.0.1";
const UDP_FLOWS: u16 = 16;
const BATCH: usize = 64;
/// Connections a client keeps in flight.
const IN_FLIGHT: usize = 64;
const PAYLOAD: [u8; 18] = [0x5a; 18];
/// Client ports of the request/response lane: above the client's ephemeral range
/// (`ip_local_port_range` ends at 65000), so the pods' servers can tell its connection from the
/// new-connections lane's by the client port alone.
const RR_PORTS: std::ops::Range<u16> = 65001..65535;
/// The CPU both ends of the request/response lane run on (the first this process may use): on
/// one CPU a transaction is the path's cost and two context switches, where across CPUs it
/// would hang on wake-up latencies (idle states, inter-processor interrupts, other tenants' time
/// slices).
fn rr_cpu() -> usize {
    static CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| sys::first_allowed_cpu().unwrap_or(0))
}
/// `TC_ACT_SHOT`: the node-cost lane's drop program's verdict.
const TC_ACT_SHOT: i32 = 2;

/// `setsockopt(2)` of an int option, for the pods' servers and the lanes' sockets alike.
fn set_int(fd: i32, level: libc::c_int, option: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid socket and an int option.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        );
    }
}
