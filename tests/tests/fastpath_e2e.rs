//! The fast path straight into the pod and straight back out, end to end on the real kernel:
//!
//! ```text
//! client 10.1.0.2 ── router ── uplink 10.2.0.2 [node: l3lb, TC] ── veth ── pods 10.244.1.2…
//!        fd01::2                      fd02::2                              fd00:244::2…
//! ```
//!
//! The node runs `l3lb run --xdp` in its default mode (TC ingress on the uplink, the reply
//! program on each pod's host-side veth), with kube-proxy-style DNAT rules loaded for the same
//! service: were a steered packet to reach the host's netfilter, conntrack would record it and
//! the rules would DNAT it. So the proof that the fast path bypassed the host is in the node's
//! conntrack table (empty for steered flows, while a flow routed the ordinary way does appear
//! there) and in the counters (`redirect_peer` forward, `reply_redirected` back). The
//! unnumbered run also sends complete checksums from client and pods (transmit offload off), so
//! the receivers verify every rewrite.
use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use l3lb_tests::{
    daemon::L3lb,
    fastpath::{
        Scratch, client_behind, inspect, namespace, packets, reasons, start, sysctl, write_manifest,
    },
    netns::{self, NetNs, sh},
    privileged,
    traffic::{Connection, ask, serve_pod},
    wait_until,
};

const SERVICE_V4: &str = "10.0.100.7";
const SERVICE_V6: &str = "2001:db8:100::7";
const DEADLINE: Duration = Duration::from_secs(15);

fn service(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 80)
}

/// How the node reaches the client, and the router the service.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Uplink {
    /// Addresses on both ends of the link, routes via them.
    Numbered,
    /// BGP unnumbered (RFC 5549): no IPv4 address on the link; IPv4 routes in both directions
    /// go via the other end's IPv6 link-local address.
    Unnumbered,
}

struct Net {
    client: NetNs,
    _router: NetNs,
    node: NetNs,
    pods: Vec<NetNs>,
}

fn topology(uplink: Uplink) -> Net {
    let client = namespace("fc");
    let router = namespace("fr");
    let node = namespace("fn");
    client_behind(&router, &client);
    match uplink {
        Uplink::Numbered => {
            netns::veth_pair(
                &router,
                "to-node",
                "10.2.0.1/24",
                &node,
                "uplink",
                "10.2.0.2/24",
            );
            router.ip(&["addr", "add", "fd02::1/64", "dev", "to-node", "nodad"]);
            node.ip(&["addr", "add", "fd02::2/64", "dev", "uplink", "nodad"]);
            node.ip(&["route", "add", "default", "via", "10.2.0.1"]);
            // What BGP would install: the service prefix and the pods via the node.
            for prefix in ["10.0.100.0/24", "10.244.1.0/24"] {
                router.ip(&["route", "add", prefix, "via", "10.2.0.2"]);
            }
        }
        Uplink::Unnumbered => {
            sh(Command::new("ip").args([
                "link",
                "add",
                "to-node",
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
            for (ns, iface, link_local) in [
                (&router, "to-node", "fe80::1"),
                (&node, "uplink", "fe80::2"),
            ] {
                ns.ip(&["link", "set", iface, "up"]);
                ns.ip(&[
                    "addr",
                    "add",
                    &format!("{link_local}/64"),
                    "dev",
                    iface,
                    "nodad",
                ]);
            }
            router.ip(&["addr", "add", "fd02::1/64", "dev", "to-node", "nodad"]);
            node.ip(&["addr", "add", "fd02::2/64", "dev", "uplink", "nodad"]);
            // The node's own IPv4 address lives on lo, as on an unnumbered fabric.
            node.ip(&["addr", "add", "10.255.0.2/32", "dev", "lo"]);
            node.ip(&[
                "-4", "route", "add", "default", "via", "inet6", "fe80::1", "dev", "uplink",
            ]);
            for prefix in ["10.0.100.0/24", "10.244.1.0/24"] {
                router.ip(&[
                    "route", "add", prefix, "via", "inet6", "fe80::2", "dev", "to-node",
                ]);
            }
        }
    }
    node.ip(&["-6", "route", "add", "default", "via", "fd02::1"]);
    for prefix in ["2001:db8:100::/64", "fd00:244::/64"] {
        router.ip(&["-6", "route", "add", prefix, "via", "fd02::2"]);
    }
    for ns in [&router, &node] {
        sysctl(
            ns,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        );
    }
    Net {
        client,
        _router: router,
        node,
        pods: Vec::new(),
    }
}

impl Net {
    /// Plugs in pod number `i` (`vp{i}` on the node, 10.244.1.{i+2} and fd00:244::{i+2}) and
    /// starts its servers on 8080.
    fn add_pod(&mut self, i: usize, stop: &Arc<AtomicBool>) {
        let pod = namespace("fp");
        let host_side = format!("vp{i}");
        netns::attach_pod(&self.node, &pod, &host_side, &format!("10.244.1.{}", i + 2));
        netns::attach_pod_v6(
            &self.node,
            &pod,
            &host_side,
            &format!("fd00:244::{}", i + 2),
        );
        serve_pod(&pod, format!("pod-{i}"), 8080, stop.clone());
        self.pods.push(pod);
    }

    /// The index of one of the node's interfaces.
    fn ifindex(&self, interface: &str) -> u64 {
        let out = self.node.ip(&["-j", "link", "show", interface]);
        let links: serde_json::Value = serde_json::from_str(&out).unwrap();
        links[0]["ifindex"].as_u64().unwrap()
    }

    /// Whether the reply program is attached to a pod interface of the node: `l3lb inspect`
    /// lists it, and its pinned link is a live kernel link (bpftool resolves it).
    fn reply_program_on(&self, scratch: &Scratch, interface: &str) -> bool {
        let index = self.ifindex(interface);
        let listed = inspect(scratch)["reply_program_on"]
            .as_array()
            .is_some_and(|on| on.iter().any(|i| i.as_u64() == Some(index)));
        let pin = scratch.pin_root.join(format!("links/pods/{index}"));
        let live = Command::new("bpftool")
            .args(["link", "show", "pinned"])
            .arg(&pin)
            .output()
            .is_ok_and(|out| out.status.success());
        listed && live
    }

    /// The node's conntrack entries (all of them, one per line).
    fn conntrack(&self) -> String {
        let out = self
            .node
            .command("conntrack")
            .args(["-L", "-f", "ipv4"])
            .output()
            .expect("conntrack runs");
        let out6 = self
            .node
            .command("conntrack")
            .args(["-L", "-f", "ipv6"])
            .output()
            .expect("conntrack runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out6.stdout)
        )
    }

    /// kube-proxy's rules for the service as it would write them (DNAT to pod 0), so the host's
    /// netfilter and conntrack are live for anything that reaches them.
    fn load_kube_proxy_rules(&self) {
        for (tool, service, pod) in [
            ("iptables-restore", "10.0.100.7/32", "10.244.1.2:8080"),
            (
                "ip6tables-restore",
                "2001:db8:100::7/128",
                "[fd00:244::2]:8080",
            ),
        ] {
            let rules = format!(
                "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
                 -A PREROUTING -j KUBE-SERVICES\n\
                 -A KUBE-SERVICES -d {service} -p tcp --dport 80 -j DNAT --to-destination {pod}\n\
                 -A KUBE-SERVICES -d {service} -p udp --dport 80 -j DNAT --to-destination {pod}\n\
                 COMMIT\n"
            );
            let mut child = self
                .node
                .command(tool)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("iptables-restore runs");
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(rules.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success(), "{tool} loads the rules");
        }
    }
}

/// The Service (both families, TCP and UDP on 80 → 8080) with the given pods (by number) ready
/// on this node.
fn manifests(dir: &Path, pods: &[usize]) {
    let slice = |family: &str, address: &dyn Fn(usize) -> String| {
        let endpoints: String = pods
            .iter()
            .map(|&i| {
                format!(
                    "  - {{addresses: [\"{}\"], nodeName: node-a, conditions: {{ready: true}}}}\n",
                    address(i)
                )
            })
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-{family}, labels: {{kubernetes.io/service-name: web}}}}\naddressType: {family}\n\
             endpoints:\n{endpoints}ports:\n  - {{name: http, port: 8080, protocol: TCP}}\n  - {{name: echo, port: 8080, protocol: UDP}}\n"
        )
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, annotations: {{l3lb.io/loadBalancerIPs: \"{SERVICE_V4},{SERVICE_V6}\"}}}}\n\
         spec:\n  type: LoadBalancer\n  ports:\n  - {{name: http, port: 80, protocol: TCP}}\n  - {{name: echo, port: 80, protocol: UDP}}\n{}{}",
        slice("IPv4", &|i| format!("10.244.1.{}", i + 2)),
        slice("IPv6", &|i| format!("fd00:244::{}", i + 2)),
    );
    write_manifest(dir, "web", yaml);
}

/// Flows from many source ports through both service addresses, TCP and UDP: each reaches a
/// pod that saw the client's own address. Returns the pods that answered.
fn flows_work(
    net: &Net,
    scratch: &Scratch,
    daemon: &L3lb,
    ports: std::ops::Range<u16>,
) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for (ip, client) in [(SERVICE_V4, "10.1.0.2"), (SERVICE_V6, "fd01::2")] {
        for port in ports.clone() {
            let (tcp, udp) = ask(&net.client, service(ip), port);
            for (what, answer) in [("TCP", tcp), ("UDP", udp)] {
                let answer = answer.unwrap_or_else(|| {
                    panic!(
                        "{what} to {ip} from port {port} failed; fast path: {}\nlog:\n{}",
                        inspect(scratch),
                        daemon.log()
                    )
                });
                assert!(
                    answer.ends_with(&format!("saw {client}")),
                    "the pod saw the client's address: {answer}"
                );
                seen.insert(answer.split_whitespace().next().unwrap().to_owned());
            }
        }
    }
    seen
}

#[test]
fn steered_flows_skip_the_host_both_ways() {
    if !privileged("steered_flows_skip_the_host_both_ways") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut net = topology(Uplink::Numbered);
    for i in 0..2 {
        net.add_pod(i, &stop);
    }
    net.load_kube_proxy_rules();
    let scratch = Scratch::new("fpe2e");
    manifests(scratch.dir.path(), &[0, 1]);
    let mut daemon = start(&net.node, &scratch, &["--retain-on-exit"], "l3lb-1.log");
    assert!(
        wait_until(DEADLINE, || net.reply_program_on(&scratch, "vp0")
            && net.reply_program_on(&scratch, "vp1")),
        "the reply program runs on both pods' interfaces; log:\n{}",
        daemon.log()
    );
    assert!(
        !net.node.ip(&["link", "show", "uplink"]).contains("xdp"),
        "no XDP on a veth uplink by default"
    );

    let before = reasons(&scratch);
    let pods = flows_work(&net, &scratch, &daemon, 40000..40012);
    assert_eq!(pods.len(), 2, "flows spread over both pods: {pods:?}");
    let after = reasons(&scratch);
    let delta = |reason: &str| packets(&after, reason) - packets(&before, reason);
    // 12 source ports × 2 families × (TCP handshake + request + FIN…, UDP datagram).
    assert!(
        delta("redirect_peer") >= 48 && delta("reply_redirected") >= 48,
        "both directions took the redirect: {after}"
    );
    assert_eq!(
        delta("forwarded") + delta("reply_translated") + delta("reply_to_stack"),
        0,
        "nothing went through the host's routing: {after}"
    );

    // The host's conntrack never saw a steered flow, though its rules would have DNATed them…
    let table = net.conntrack();
    for needle in [SERVICE_V4, SERVICE_V6, "10.244.1.", "fd00:244::"] {
        assert!(
            !table.contains(needle),
            "no conntrack entry for steered flows ({needle}):\n{table}"
        );
    }
    // …while a flow routed the ordinary way (client → pod address) does show there.
    let direct = Connection::open_from(&net.client, "10.244.1.2:8080".parse().unwrap())
        .and_then(|mut c| c.request());
    assert!(direct.is_some(), "the client reaches a pod directly");
    assert!(
        net.conntrack().contains("dst=10.244.1.2"),
        "conntrack is live in the node:\n{}",
        net.conntrack()
    );

    // A pod added and one removed while a connection stays open: the reply program follows
    // the pods' interfaces, and the open connection keeps working.
    let mut held = Connection::open_from(&net.client, service(SERVICE_V4)).expect("connect");
    let first = held.request().expect("an answer on the held connection");
    let held_pod = first.split_whitespace().next().unwrap().to_owned();
    let kept = if held_pod == "pod-0" { 0 } else { 1 };
    net.add_pod(2, &stop);
    manifests(scratch.dir.path(), &[kept, 2]);
    let removed = format!("vp{}", 1 - kept);
    assert!(
        wait_until(DEADLINE, || net.reply_program_on(&scratch, "vp2")
            && !net.reply_program_on(&scratch, &removed)),
        "attached to the new pod's interface, detached from the removed one's; log:\n{}",
        daemon.log()
    );
    assert_eq!(
        held.request().as_deref(),
        Some(first.as_str()),
        "the held connection is undisturbed"
    );
    let pods = flows_work(&net, &scratch, &daemon, 41000..41012);
    assert!(
        pods.contains("pod-2") && !pods.contains(&format!("pod-{}", 1 - kept)),
        "new flows go to the current pods: {pods:?}"
    );

    // A restart (--retain-on-exit) keeps the held connection working, while l3lb is down and
    // after the new run swapped its programs into the pinned links.
    assert!(daemon.terminate(), "clean exit");
    assert_eq!(
        held.request().as_deref(),
        Some(first.as_str()),
        "while down"
    );
    let daemon = start(&net.node, &scratch, &["--retain-on-exit"], "l3lb-2.log");
    daemon.wait_for_log("updated in place on pod interfaces", DEADLINE);
    assert_eq!(
        held.request().as_deref(),
        Some(first.as_str()),
        "after the restart"
    );
    flows_work(&net, &scratch, &daemon, 42000..42004);
    let table = net.conntrack();
    assert!(
        !table.contains(SERVICE_V4) && !table.contains(SERVICE_V6),
        "still no conntrack entry for steered flows:\n{table}"
    );
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn replies_go_straight_out_of_an_unnumbered_uplink() {
    if !privileged("replies_go_straight_out_of_an_unnumbered_uplink") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut net = topology(Uplink::Unnumbered);
    for i in 0..2 {
        net.add_pod(i, &stop);
    }
    // Complete checksums from both ends, which the receivers verify: a wrong incremental
    // update in either direction shows as lost packets here.
    net.client.tx_checksum_off("eth0");
    for pod in &net.pods {
        pod.tx_checksum_off("eth0");
    }
    assert!(
        net.node
            .ip(&["route", "show", "default"])
            .contains("via inet6 fe80::1"),
        "the node's IPv4 route to the client goes via an IPv6 link-local next hop"
    );
    let scratch = Scratch::new("fpunnum");
    manifests(scratch.dir.path(), &[0, 1]);
    let daemon = start(&net.node, &scratch, &["--retain-on-exit"], "l3lb.log");
    assert!(
        wait_until(DEADLINE, || net.reply_program_on(&scratch, "vp0")),
        "reply program attached; log:\n{}",
        daemon.log()
    );
    let before = reasons(&scratch);
    flows_work(&net, &scratch, &daemon, 40000..40008);
    let after = reasons(&scratch);
    let delta = |reason: &str| packets(&after, reason) - packets(&before, reason);
    assert!(
        delta("reply_redirected") >= 32,
        "IPv4 replies left through the IPv6 next hop directly: {after}"
    );
    assert_eq!(
        delta("reply_to_stack") + delta("reply_translated"),
        0,
        "no reply needed the host's routing: {after}"
    );
    stop.store(true, Ordering::Relaxed);
}
