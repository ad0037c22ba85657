//! The walk-through's look at the fast path, on the first step (the service on every node): what
//! one node's kernel holds (`l3lb inspect`, a `bpftool` dump of a pinned map with its BTF field
//! names), that no node has a DNAT rule, the per-service counters moving under the client's
//! connections, and large downloads through the router's narrow link to the client (path MTU
//! discovery through the fast path, both families).
use std::{collections::BTreeSet, net::IpAddr};

use l3lb_common::map_names;
use l3lb_tests::lab::{self, CLIENT_IPV4, CLIENT_IPV6, CLIENT_LINK_MTU, Lab, LabError};

use super::print_indented;

/// Lines of the `bpftool map dump` shown.
const DUMP_EXCERPT: usize = 24;
/// The download through the narrow link.
const DOWNLOAD: u64 = 1 << 20;

pub fn tour(lab: &mut Lab, service: &str, v4: IpAddr, v6: IpAddr) -> Result<(), LabError> {
    let nodes = lab.nodes();
    let node = lab::node_name(0);
    println!("  the fast path (every node runs `l3lb run --xdp --xdp-iface uplink`):");
    for index in 0..nodes {
        let rules = lab.dnat_rules(index);
        if !rules.is_empty() {
            return Err(LabError::Failed(format!(
                "{} has DNAT rules with the fast path on: {rules:?}",
                lab::node_name(index)
            )));
        }
    }
    println!("    no node has a DNAT rule (`nft list ruleset` shows no dnat on any node)");
    println!(
        "    $ l3lb inspect --pin-root {}   # on {node}",
        lab.pin_root(0).display()
    );
    print_indented(&lab.inspect(0)?, "      ");
    let map = lab.pin_root(0).join(map_names::SERVICES);
    println!(
        "    $ bpftool map dump pinned {}   # first {DUMP_EXCERPT} lines",
        map.display()
    );
    let dump = lab.map_dump(0, map_names::SERVICES)?;
    let excerpt: Vec<&str> = dump.lines().take(DUMP_EXCERPT).collect();
    print_indented(&excerpt.join("\n"), "      ");

    let steered = |lab: &Lab| -> Result<Vec<u64>, LabError> {
        (0..nodes)
            .map(|n| Ok(lab.steered_packets(n, v4)? + lab.steered_packets(n, v6)?))
            .collect()
    };
    let before = steered(lab)?;
    let mut seen = BTreeSet::new();
    for ip in [v4, v4, v4, v6, v6, v6] {
        let reply = lab.client_get(ip).map_err(LabError::Failed)?;
        seen.insert(reply.peer.rsplit_once(':').map(|(addr, _)| addr.to_owned()));
    }
    let after = steered(lab)?;
    let moved: Vec<String> = (0..nodes)
        .map(|n| format!("{} +{}", lab::node_name(n), after[n] - before[n]))
        .collect();
    println!(
        "    6 more connections: packets each node's fast path steered to {service}'s pods: {}",
        moved.join(", ")
    );
    if after.iter().sum::<u64>() <= before.iter().sum::<u64>() {
        return Err(LabError::Failed(
            "the per-service counters did not move".into(),
        ));
    }
    let seen: Vec<String> = seen.into_iter().flatten().collect();
    println!(
        "    the pods saw the client's own addresses ({}): nothing SNATs",
        seen.join(", ")
    );
    let client = [CLIENT_IPV4.to_string(), format!("[{CLIENT_IPV6}]")];
    if let Some(other) = seen.iter().find(|addr| !client.contains(addr)) {
        return Err(LabError::Failed(format!(
            "a pod saw {other} instead of the client's address"
        )));
    }
    println!();
    path_mtu(lab, service, v4, v6)
}

/// 1 MiB through the router's link to the client, which is narrower than the client says: the
/// pod's full-size segments draw ICMP errors to the service address, which the fast path hands to
/// the pod, whose route cache then holds the smaller MTU.
fn path_mtu(lab: &mut Lab, service: &str, v4: IpAddr, v6: IpAddr) -> Result<(), LabError> {
    let (mtu_v4, mtu_v6) = CLIENT_LINK_MTU;
    println!(
        "  a client behind a narrower link: the router's link to it has MTU {mtu_v4} (IPv6 \
         {mtu_v6}), the client and the pods 1500"
    );
    for (ip, client) in [
        (v4, std::net::IpAddr::V4(CLIENT_IPV4)),
        (v6, std::net::IpAddr::V6(CLIENT_IPV6)),
    ] {
        let download = lab
            .client_download(ip, DOWNLOAD)
            .map_err(LabError::Failed)?;
        let learned: Vec<String> = (0..lab.nodes())
            .filter_map(|n| {
                let pod = format!("{service}-{}", &lab::node_name(n)[5..]);
                lab.pod_path_mtu(&pod, client)
                    .map(|mtu| format!("{pod} mtu {mtu}"))
            })
            .collect();
        println!(
            "    GET http://{}/bytes/{DOWNLOAD}: {} bytes in {} ms; pods' route cache towards \
             {client}: {}",
            match ip {
                IpAddr::V4(_) => ip.to_string(),
                IpAddr::V6(_) => format!("[{ip}]"),
            },
            download.bytes,
            download.took.as_millis(),
            if learned.is_empty() {
                "nothing learned".to_owned()
            } else {
                learned.join(", ")
            }
        );
    }
    Ok(())
}
