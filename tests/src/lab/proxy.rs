//! The lab's kube-proxy: per node, one nftables DNAT rule per service IP on port 80 to the node's
//! own endpoints, as kube-proxy does with `externalTrafficPolicy: Local` (the policy l3lb's
//! announcements follow). Routing the service IP on to a pod does not work: the node holds the IP
//! on its own `lo`, so the local table delivers it first.
use std::{io::Write as _, net::IpAddr, os::unix::process::CommandExt as _, process::Stdio};

use super::{SERVICE_PORT, Service, topology::PodAddresses};
use crate::netns::NetNs;

/// nftables table holding each node's DNAT rules.
const TABLE: &str = "l3lb_lab_proxy";

/// The nft script that replaces node `node`'s table: each service IP goes to the node's own
/// endpoints that are ready (or, when none is ready anywhere, that still serve), spread over
/// several with `numgen`. `pod` gives a pod's addresses (unknown pods are skipped).
pub(super) fn script<'a>(
    node: usize,
    services: impl IntoIterator<Item = &'a Service>,
    pod: impl Fn(&str) -> Option<PodAddresses>,
) -> String {
    let mut rules = String::new();
    for service in services {
        let ready_anywhere = service.endpoints.iter().any(|e| e.ready);
        let local: Vec<PodAddresses> = service
            .endpoints
            .iter()
            .filter(|e| e.node == node && if ready_anywhere { e.ready } else { e.serving })
            .filter_map(|e| pod(&e.pod))
            .collect();
        if local.is_empty() {
            continue;
        }
        for ip in &service.ips {
            let (family, targets): (&str, Vec<String>) = match ip {
                IpAddr::V4(_) => ("ip", local.iter().map(|p| p.ipv4.to_string()).collect()),
                IpAddr::V6(_) => ("ip6", local.iter().map(|p| p.ipv6.to_string()).collect()),
            };
            let to = if targets.len() == 1 {
                targets[0].clone()
            } else {
                let map: Vec<String> = targets
                    .iter()
                    .enumerate()
                    .map(|(i, target)| format!("{i} : {target}"))
                    .collect();
                format!(
                    "numgen inc mod {} map {{ {} }}",
                    targets.len(),
                    map.join(", ")
                )
            };
            rules += &format!(
                "    {family} daddr {ip} tcp dport {SERVICE_PORT} dnat {family} to {to}\n"
            );
        }
    }
    format!(
        "add table inet {TABLE}\n\
         flush table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         {rules}\
         \x20 }}\n\
         }}\n"
    )
}

/// Runs `nft -f -` with `script` in `ns` (node `node`, for the message).
pub(super) fn load(ns: &NetNs, node: &str, script: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("starting nft (install nftables): {err}"));
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .expect("feeding nft");
    let out = child.wait_with_output().expect("waiting for nft");
    assert!(
        out.status.success(),
        "nft in {node} failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Endpoint;

    fn addresses(pod: &str) -> Option<PodAddresses> {
        match pod {
            "a1" => Some(PodAddresses::of(0, 0)),
            "a2" => Some(PodAddresses::of(0, 1)),
            "b1" => Some(PodAddresses::of(1, 0)),
            _ => None,
        }
    }

    #[test]
    fn ready_local_endpoints_get_the_traffic() {
        let web = Service::new("web", &["10.0.100.7", "2001:db8:100::7"])
            .endpoint(Endpoint::ready("a1", 0))
            .endpoint(Endpoint::ready("a2", 0))
            .endpoint(Endpoint::ready("b1", 1));
        let a = script(0, [&web], addresses);
        assert!(
            a.contains(
                "ip daddr 10.0.100.7 tcp dport 80 dnat ip to numgen inc mod 2 map \
                 { 0 : 10.244.1.2, 1 : 10.244.1.6 }"
            ),
            "{a}"
        );
        assert!(
            a.contains("ip6 daddr 2001:db8:100::7 tcp dport 80 dnat ip6 to numgen"),
            "{a}"
        );
        let b = script(1, [&web], addresses);
        assert!(
            b.contains("ip daddr 10.0.100.7 tcp dport 80 dnat ip to 10.244.2.2\n"),
            "{b}"
        );
        assert!(!script(2, [&web], addresses).contains("daddr"));
    }

    #[test]
    fn serving_endpoints_count_only_when_none_is_ready() {
        let draining = Service::new("web", &["10.0.100.7"])
            .endpoint(Endpoint::terminating("a1", 0))
            .endpoint(Endpoint::not_ready("b1", 1));
        assert!(script(0, [&draining], addresses).contains("dnat ip to 10.244.1.2"));
        assert!(!script(1, [&draining], addresses).contains("daddr"));
        let mixed = draining.clone().endpoint(Endpoint::ready("b1", 1));
        assert!(
            !script(0, [&mixed], addresses).contains("daddr"),
            "a ready endpoint elsewhere takes the draining one's new connections"
        );
    }
}
