//! The namespaces of one mode: client, node and pods joined by veth pairs, the pods' servers
//! running, and the interface counters the lanes read.
use anyhow::{Context as _, Result};

use super::{
    CLIENT, NODE_UPLINK,
    servers::{Servers, start_servers},
};
use crate::{
    bench::{kubeproxy::PODS, sys},
    netns::{NetNs, sh},
};

pub(super) struct Topology {
    // Dropped in this order: the servers stop before the namespaces go.
    pub(super) servers: Servers,
    pub(super) pods: Vec<NetNs>,
    pub(super) client: NetNs,
    pub(super) node: NetNs,
}

pub(super) fn topology(tag: &str) -> Result<Topology> {
    let client = NetNs::new(&format!("b{tag}c"));
    let node = NetNs::new(&format!("b{tag}n"));
    crate::netns::veth_pair(
        &client,
        "eth0",
        &format!("{CLIENT}/24"),
        &node,
        "uplink",
        &format!("{NODE_UPLINK}/24"),
    );
    client.ip(&["route", "add", "default", "via", NODE_UPLINK]);
    sh(node
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"]));
    // The client reuses ports quickly: connections end with a reset, and every port is fair game.
    sh(client
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_local_port_range=1024 65000"]));
    let mut pods = Vec::new();
    for (i, pod_ip) in PODS.iter().enumerate() {
        let pod = NetNs::new(&format!("b{tag}p"));
        crate::netns::attach_pod(&node, &pod, &format!("vp{i}"), &pod_ip.to_string());
        pods.push(pod);
    }
    let servers = start_servers(&pods)?;
    Ok(Topology {
        servers,
        pods,
        client,
        node,
    })
}

/// Sum of `rx_packets` on the pods' `eth0`.
pub(super) fn pods_rx(topo: &Topology) -> Result<u64> {
    let mut total = 0;
    for pod in &topo.pods {
        total += sys::in_netns(pod.name(), || sys::rx_packets("eth0"))??;
    }
    Ok(total)
}

/// `rx_packets` of the node's uplink.
pub(super) fn uplink_rx(topo: &Topology) -> Result<u64> {
    Ok(sys::in_netns(topo.node.name(), || {
        sys::rx_packets("uplink")
    })??)
}

/// The MAC address of `interface` in namespace `ns`.
pub(super) fn mac_of(ns: &NetNs, interface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-o", "link", "show", "dev", interface]);
    let text = out
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC address for {interface}: {out}"))?;
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16)?;
    }
    Ok(mac)
}
