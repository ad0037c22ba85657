//! The fabric's namespaces, links and addresses: the client and router; node `i` behind the
//! router on a link with IPv6 link-local addresses only (BGP unnumbered, the default) or, with
//! [`super::LabOptions::numbered`], on `172.16.{i+1}.0/30` and `fd00:16:{i+1}::/64`; and pod `k`
//! of node `i` behind its node on `10.244.{i+1}.{4k}/30` and `fd00:244:{i+1}:{k}::/64`.
use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

use super::{
    CLIENT_IPV4, CLIENT_IPV6, CLIENT_LINK_MTU, FIRST_NODE_ASN, ROUTER_ASN, SERVICE_PREFIXES,
};
use crate::netns::{self, NetNs, sh};

/// The ranges the nodes peer from (the router's `bgp listen range`).
pub(super) const NODE_LINKS_V4: &str = "172.16.0.0/16";
pub(super) const NODE_LINKS_V6: &str = "fd00:16::/32";
/// The router's end of the link to the client.
const ROUTER_CLIENT_IPV4: &str = "192.168.100.1";
const ROUTER_CLIENT_IPV6: &str = "fd00:c::1";

/// Name of node `index`: `node-a`, `node-b`, …
pub fn node_name(index: usize) -> String {
    assert!(index < 26, "the lab names nodes node-a to node-z");
    format!("node-{}", char::from(b'a' + index as u8))
}

/// The router's interface towards node `index`.
pub(super) fn router_device(index: usize) -> String {
    format!("to-{}", node_name(index))
}

/// The router's ID: its address towards the client.
pub(super) fn router_id() -> &'static str {
    ROUTER_CLIENT_IPV4
}

/// Node `index`'s uplink addresses (`.2`) and the router's across the link (`.1`), without
/// prefix lengths: `(node v4, router v4, node v6, router v6)`.
pub(super) fn node_uplink(index: usize) -> (String, String, String, String) {
    let n = index + 1;
    (
        format!("172.16.{n}.2"),
        format!("172.16.{n}.1"),
        format!("fd00:16:{n:x}::2"),
        format!("fd00:16:{n:x}::1"),
    )
}

/// Pod `k` of node `index`: its addresses (the gateways are the node's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PodAddresses {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl PodAddresses {
    pub fn of(node: usize, k: u8) -> PodAddresses {
        assert!(k < 64, "at most 64 pods per node");
        let n = node + 1;
        PodAddresses {
            ipv4: Ipv4Addr::new(10, 244, n as u8, 4 * k + 2),
            ipv6: Ipv6Addr::new(0xfd00, 0x244, n as u16, k as u16, 0, 0, 0, 2),
        }
    }

    fn gateways(&self) -> (Ipv4Addr, Ipv6Addr) {
        let [a, b, c, d] = self.ipv4.octets();
        let mut v6 = self.ipv6.segments();
        v6[7] = 1;
        (Ipv4Addr::new(a, b, c, d - 1), Ipv6Addr::from(v6))
    }
}

/// Forwarding on, with what the client's single address and ECMP need.
pub(super) fn wire_router_and_client(router: &NetNs, client: &NetNs) {
    sysctl(
        router,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // Spread flows over the ECMP nexthops by ports too, not only by addresses: the lab
            // has one client address. Policy 3 with these fields (addresses, protocol, ports) is
            // the 5-tuple hash computed from the packet itself, and symmetric: the ICMP errors
            // the router sends about a pod's reply hash onto the node that holds the flow.
            // Policy 1 prefers a hash the packet already carries (the sender's socket hash
            // here, a NIC's RSS hash on hardware), and then sent some of them elsewhere.
            ("net.ipv4.fib_multipath_hash_policy", "3"),
            ("net.ipv4.fib_multipath_hash_fields", "0x0037"),
            ("net.ipv6.fib_multipath_hash_policy", "3"),
            ("net.ipv6.fib_multipath_hash_fields", "0x0037"),
            // Replies come back from whichever node the flow hashed to.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ],
    );
    no_dad(client);
    netns::veth_pair(
        router,
        "to-client",
        &format!("{ROUTER_CLIENT_IPV4}/24"),
        client,
        "uplink",
        &format!("{CLIENT_IPV4}/24"),
    );
    router.ip(&[
        "addr",
        "add",
        &format!("{ROUTER_CLIENT_IPV6}/64"),
        "dev",
        "to-client",
    ]);
    client.ip(&["addr", "add", &format!("{CLIENT_IPV6}/64"), "dev", "uplink"]);
    // Narrower towards the client than the client itself says: full-size replies from the pods
    // make the router send "fragmentation needed" / "packet too big" to the service address.
    let (mtu_v4, mtu_v6) = CLIENT_LINK_MTU;
    router.ip(&["link", "set", "to-client", "mtu", &mtu_v4.to_string()]);
    sysctl(
        router,
        &[("net.ipv6.conf.to-client.mtu", &mtu_v6.to_string())],
    );
    default_routes(client, ROUTER_CLIENT_IPV4, ROUTER_CLIENT_IPV6);
}

/// Links node `index` to the router. Numbered: a /30 and a /64, static default routes via the
/// router. Unnumbered: only the link-local addresses IPv6 gives every link (DAD is off on both
/// ends, so they are usable as soon as the link is up); the default routes come from the router
/// over BGP, via its link-local address (`default via inet6 fe80::… dev uplink` for IPv4 too).
pub(super) fn wire_node(router: &NetNs, node: &NetNs, index: usize, numbered: bool) {
    sysctl(
        node,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            // BGP unnumbered runs over IPv6 link-local addresses: IPv6 must be on for the
            // uplink (it is by default; a host that turns it off breaks the session).
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
        ],
    );
    let device = router_device(index);
    if !numbered {
        sh(Command::new("ip").args([
            "link",
            "add",
            &device,
            "netns",
            router.name(),
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            node.name(),
        ]));
        router.ip(&["link", "set", &device, "up"]);
        node.ip(&["link", "set", "uplink", "up"]);
        return;
    }
    let (node_v4, router_v4, node_v6, router_v6) = node_uplink(index);
    netns::veth_pair(
        router,
        &device,
        &format!("{router_v4}/30"),
        node,
        "uplink",
        &format!("{node_v4}/30"),
    );
    router.ip(&["addr", "add", &format!("{router_v6}/64"), "dev", &device]);
    node.ip(&["addr", "add", &format!("{node_v6}/64"), "dev", "uplink"]);
    default_routes(node, &router_v4, &router_v6);
}

/// Links pod `k` (namespace `pod`) to its node: the node's `pod<k>` and the pod's `eth0`.
pub(super) fn wire_pod(node: &NetNs, pod: &NetNs, k: u8, addresses: PodAddresses) {
    no_dad(pod);
    let (gateway4, gateway6) = addresses.gateways();
    let device = format!("pod{k}");
    netns::veth_pair(
        node,
        &device,
        &format!("{gateway4}/30"),
        pod,
        "eth0",
        &format!("{}/30", addresses.ipv4),
    );
    node.ip(&["addr", "add", &format!("{gateway6}/64"), "dev", &device]);
    pod.ip(&[
        "addr",
        "add",
        &format!("{}/64", addresses.ipv6),
        "dev",
        "eth0",
    ]);
    default_routes(pod, &gateway4.to_string(), &gateway6.to_string());
}

fn default_routes(ns: &NetNs, via4: &str, via6: &str) {
    ns.ip(&["route", "add", "default", "via", via4]);
    ns.ip(&["-6", "route", "add", "default", "via", via6]);
}

fn no_dad(ns: &NetNs) {
    sysctl(
        ns,
        &[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ],
    );
}

/// Sets sysctls inside `ns` (from a thread that entered it: /proc/sys/net is per namespace).
fn sysctl(ns: &NetNs, settings: &[(&str, &str)]) {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    ns.run_inside(move || {
        for (key, value) in settings {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            fs::write(&path, &value).unwrap_or_else(|err| panic!("sysctl {key}={value}: {err}"));
        }
    });
}

/// A description of the fabric of lab `name` with node namespaces `nodes`: namespaces, links,
/// addresses, ASNs.
pub(super) fn describe(name: &str, nodes: &[&str], numbered: bool, weights: bool) -> String {
    let mut out = String::new();
    let multipath = if weights { "weighted ECMP" } else { "ECMP" };
    let head = format!("  client ─── router (AS {ROUTER_ASN}, {multipath}) ─");
    let indent = " ".repeat(head.chars().count());
    for index in 0..nodes.len() {
        let branch = match (index, nodes.len()) {
            (_, 1) => "──",
            (0, _) => "┬─",
            (i, n) if i + 1 == n => "└─",
            _ => "├─",
        };
        let lead = if index == 0 { &head } else { &indent };
        out += &format!(
            "{lead}{branch} {} (AS {}, FRR + l3lb)\n",
            node_name(index),
            FIRST_NODE_ASN + index as u32
        );
    }
    out += &format!(
        "  service prefixes {} and {}\n\n",
        SERVICE_PREFIXES[0], SERVICE_PREFIXES[1]
    );
    let client = format!("{name}-client");
    out += &format!(
        "  {:<8} {client:<22} uplink {CLIENT_IPV4}/24 {CLIENT_IPV6}/64, default via the \
         router\n",
        "client"
    );
    let (mtu_v4, mtu_v6) = CLIENT_LINK_MTU;
    let peers = if numbered {
        format!("listens for BGP from {NODE_LINKS_V4} and {NODE_LINKS_V6}")
    } else {
        "BGP unnumbered: one session per to-node-x interface (IPv4 and IPv6 over IPv6 \
         link-local, RFC 5549), sends each node default routes"
            .to_owned()
    };
    out += &format!(
        "  {:<8} {:<22} AS {ROUTER_ASN}, to-client {ROUTER_CLIENT_IPV4}/24 \
         {ROUTER_CLIENT_IPV6}/64 (MTU {mtu_v4}, IPv6 {mtu_v6}: narrower than the client says), \
         {peers}\n",
        "router",
        format!("{name}-router")
    );
    for (index, ns) in nodes.iter().enumerate() {
        let n = index + 1;
        let uplink = if numbered {
            format!("uplink 172.16.{n}.2/30 fd00:16:{n:x}::2/64 (router .1)")
        } else {
            "uplink with only its IPv6 link-local address, default routes from the router"
                .to_owned()
        };
        let l3lb = if weights {
            ", l3lb --weights endpoints"
        } else {
            ""
        };
        out += &format!(
            "  {:<8} {:<22} AS {}, {uplink}, pods in 10.244.{n}.0/24 fd00:244:{n:x}::/48{l3lb}\n",
            node_name(index),
            ns,
            FIRST_NODE_ASN + index as u32
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_a_slash_30_and_a_slash_64_each_behind_their_node() {
        let first = PodAddresses::of(0, 0);
        assert_eq!(first.ipv4, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(first.ipv6, "fd00:244:1:0::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            first.gateways(),
            (
                Ipv4Addr::new(10, 244, 1, 1),
                "fd00:244:1:0::1".parse().unwrap()
            )
        );
        let later = PodAddresses::of(2, 5);
        assert_eq!(later.ipv4, Ipv4Addr::new(10, 244, 3, 22));
        assert_eq!(later.gateways().0, Ipv4Addr::new(10, 244, 3, 21));
        assert_eq!(later.ipv6, "fd00:244:3:5::2".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn nodes_are_lettered_and_peer_from_their_own_link() {
        assert_eq!(node_name(0), "node-a");
        assert_eq!(node_name(25), "node-z");
        assert_eq!(router_device(1), "to-node-b");
        assert_eq!(
            node_uplink(10),
            (
                "172.16.11.2".to_owned(),
                "172.16.11.1".to_owned(),
                "fd00:16:b::2".to_owned(),
                "fd00:16:b::1".to_owned()
            )
        );
    }
}
