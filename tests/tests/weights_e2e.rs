//! Weighted anycast end to end, with real FRR (zebra + bgpd, 8.4 here) in network namespaces: a
//! router and two nodes, each node running the shipped `deploy/frr/node.conf` plus
//! `deploy/frr/weights.conf` and `l3lb --weights endpoints` on a manifest directory.
//!
//! - node A with 2 ready pods and node B with 1: the router's kernel route to the service IP has
//!   next-hop weights in the ratio 2:1, IPv4 and IPv6;
//! - A scaled to 3, 4, 3, 4, 3: the ratio follows, while a sampler at the router (every ~10 ms)
//!   sees the route with both next hops in every sample and `ip monitor route` sees it replaced,
//!   never deleted: re-weighting never withdraws the route.
//!
//! - node A's `kind: Node` manifest labelled node.kubernetes.io/exclude-from-external-load-balancers:
//!   its next hop leaves the router's route; without the label it comes back, weighted.
//!
//! It prints how long a weight change takes: from the manifest write to the node's address
//! metric, and to the router's kernel route.
use std::{
    net::IpAddr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use l3lb_tests::{
    daemon::{L3lb, l3lb_binary},
    fixtures::{self, endpoint, port, slice},
    frr_fabric::{
        Frr, Hops, NODE_CONF, ROUTER_CONF, RouteMonitor, Sample, Sampler, WEIGHTS_CONF, fill,
        nexthop_weights, parse_route_event,
    },
    netns::{NetNs, veth_pair},
    privileged, wait_until,
};

const V4: &str = "10.0.100.7";
const V6: &str = "2001:db8:100::7";
const PREFIXES: &str = "10.0.100.0/24,2001:db8:100::/64";
const NODES: [&str; 2] = ["a", "b"];

/// One node: its l3lb and FRR stop before its namespace goes (fields drop in this order).
struct Node {
    l3lb: Option<L3lb>,
    _frr: Frr,
    ns: NetNs,
}

struct Fabric {
    nodes: Vec<Node>,
    _router_frr: Frr,
    router: NetNs,
    manifests: tempfile::TempDir,
    _scratch: tempfile::TempDir,
}

impl Fabric {
    /// The router and the nodes, their links, FRR everywhere with all sessions up, and l3lb on
    /// every node reading one manifest directory, node `i` with `--weights weights[i]`.
    fn start(weights: [&str; 2]) -> Fabric {
        // Unique per fabric: the tests of this file run in parallel in one process.
        static FABRICS: AtomicU32 = AtomicU32::new(0);
        let pid = format!(
            "{}-{}",
            std::process::id(),
            FABRICS.fetch_add(1, Ordering::Relaxed)
        );
        let scratch = tempfile::Builder::new()
            .prefix("w8-")
            .tempdir()
            .expect("a scratch directory");
        let manifests = tempfile::Builder::new()
            .prefix("w8-manifests-")
            .tempdir()
            .expect("a manifest directory");
        let router = NetNs::named(&format!("w8-r-{pid}"));
        let mut namespaces = Vec::new();
        for (i, letter) in NODES.iter().enumerate() {
            let n = i + 1;
            let ns = NetNs::named(&format!("w8-{letter}-{pid}"));
            let to_node = format!("to-{letter}");
            veth_pair(
                &router,
                &to_node,
                &format!("172.31.{n}.1/30"),
                &ns,
                "uplink",
                &format!("172.31.{n}.2/30"),
            );
            router.ip(&[
                "addr",
                "add",
                &format!("fd00:31:{n}::1/64"),
                "dev",
                &to_node,
                "nodad",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd00:31:{n}::2/64"),
                "dev",
                "uplink",
                "nodad",
            ]);
            namespaces.push(ns);
        }
        let router_conf = fill(
            ROUTER_CONF,
            &[
                ("HOSTNAME", "router"),
                ("ROUTER_ID", "172.31.0.1"),
                ("ROUTER_ASN", "65000"),
                ("NODES_IPV4", "172.31.0.0/16"),
                ("NODES_IPV6", "fd00:31::/32"),
            ],
        );
        // Without --v6-rr-semantics zebra changes an IPv6 route by deleting and re-adding it
        // (see deploy/frr/README.md): the router itself would withdraw it for a moment.
        let router_frr = Frr::start(
            &router,
            &scratch.path().join("router"),
            "router",
            &router_conf,
            &["--v6-rr-semantics"],
        );
        let mut nodes = Vec::new();
        for (i, ns) in namespaces.into_iter().enumerate() {
            let n = i + 1;
            let name = format!("node-{}", NODES[i]);
            let node_conf = fill(
                NODE_CONF,
                &[
                    ("HOSTNAME", name.as_str()),
                    ("ROUTER_ID", &format!("172.31.{n}.2")),
                    ("NODE_ASN", &(65000 + n).to_string()),
                    ("ROUTER_ASN", "65000"),
                    ("ROUTER_IPV4", &format!("172.31.{n}.1")),
                    ("ROUTER_IPV6", &format!("fd00:31:{n}::1")),
                ],
            ) + WEIGHTS_CONF;
            let frr = Frr::start(&ns, &scratch.path().join(&name), &name, &node_conf, &[]);
            nodes.push(Node {
                l3lb: None,
                _frr: frr,
                ns,
            });
        }
        router_frr.wait_sessions(2 * NODES.len(), Duration::from_secs(60));

        let mut fabric = Fabric {
            nodes,
            _router_frr: router_frr,
            router,
            manifests,
            _scratch: scratch,
        };
        for (i, letter) in NODES.iter().enumerate() {
            let name = format!("node-{letter}");
            let mut command = fabric.nodes[i].ns.command(&l3lb_binary().to_string_lossy());
            command
                .args(["run", "--node-name", &name, "--prefix", PREFIXES])
                .arg("--source")
                .arg(format!("file:{}", fabric.manifests.path().display()))
                .args(["--weights", weights[i]]);
            let log = fabric._scratch.path().join(format!("{name}-l3lb.log"));
            fabric.nodes[i].l3lb = Some(L3lb::spawn(command, log));
        }
        fabric
    }

    /// Writes the Service with `pods[i]` ready pods on node `i` (one slice per family); returns
    /// when the file was in place.
    fn scale(&self, pods: [usize; 2]) -> Instant {
        let mut yamls = vec![
            fixtures::service("web")
                .namespace("default")
                .annotated_ips(&format!("{V4},{V6}"))
                .load_balancer()
                .selector("app", "web")
                .port(port("TCP", 80).named("http").target(8080))
                .yaml(),
        ];
        for (family, suffix) in [("IPv4", "v4"), ("IPv6", "v6")] {
            let mut family_slice = slice(&format!("web-{suffix}"), "web", family)
                .namespace("default")
                .port(port("TCP", 8080).named("http"));
            for (i, &count) in pods.iter().enumerate() {
                for k in 0..count {
                    let address = if suffix == "v4" {
                        format!("10.244.{}.{}", i + 1, k + 2)
                    } else {
                        format!("fd00:244:{}::{}", i + 1, k + 2)
                    };
                    family_slice = family_slice.endpoint(
                        endpoint([address])
                            .node(&format!("node-{}", NODES[i]))
                            .pod("default", &format!("web-{}{k}", NODES[i]))
                            .conditions(true, true, false),
                    );
                }
            }
            yamls.push(family_slice.yaml());
        }
        let dir = self.manifests.path();
        let temporary = dir.join(".web.yaml.tmp");
        std::fs::write(&temporary, fixtures::documents(yamls)).expect("writing the manifest");
        // A rename, so that no l3lb reads half of it.
        std::fs::rename(&temporary, dir.join("web.yaml")).expect("moving the manifest in place");
        Instant::now()
    }

    /// Writes node A's Node manifest, with the exclusion label or without; returns when.
    fn node_a(&self, excluded: bool) -> Instant {
        let labels = if excluded {
            "  labels: {node.kubernetes.io/exclude-from-external-load-balancers: \"\"}\n"
        } else {
            ""
        };
        let text = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n{labels}");
        let dir = self.manifests.path();
        let temporary = dir.join(".node-a.yaml.tmp");
        std::fs::write(&temporary, text).expect("writing the Node manifest");
        std::fs::rename(&temporary, dir.join("node-a.yaml")).expect("moving it in place");
        Instant::now()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|node| node.l3lb.as_ref())
            .map(L3lb::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

/// Node A's share over node B's at the router for `ip`, when the route has both next hops.
fn ratio(router: &str, ip: IpAddr) -> Option<f64> {
    let weights = nexthop_weights(router, ip)?;
    ratio_of(&weights)
}

fn ratio_of(weights: &Hops) -> Option<f64> {
    let (a, b) = (weights.get("to-a")?, weights.get("to-b")?);
    Some(f64::from(*a) / f64::from(*b))
}

fn near(ratio: Option<f64>, want: f64) -> bool {
    ratio.is_some_and(|r| (r - want).abs() <= want * 0.1)
}

/// The metric of `ip` on `lo` in namespace `ns` (`ip -j addr`), if the address is there.
fn lo_metric(ns: &str, ip: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "addr", "show", "dev", "lo"])
        .output()
        .expect("running ip addr");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    links[0]["addr_info"]
        .as_array()?
        .iter()
        .find(|info| info["local"] == ip)
        .map(|info| info["metric"].as_u64().unwrap_or(0))
}

/// Scales node A to `pods` ready pods (node B keeps 1) and waits for the router's weights to
/// follow, IPv4 and IPv6; returns how long after the manifest write node A's IPv4 address had
/// its new metric, and the router its new weights.
fn reweigh(fabric: &Fabric, pods: usize) -> (Option<Duration>, Duration) {
    let router = fabric.router.name();
    let node_a = fabric.nodes[0].ns.name();
    let (v4, v6): (IpAddr, IpAddr) = (V4.parse().unwrap(), V6.parse().unwrap());
    let want = pods as f64;
    let written = fabric.scale([pods, 1]);
    let mut at_node = None;
    let deadline = written + Duration::from_secs(30);
    while Instant::now() < deadline {
        if at_node.is_none() && lo_metric(node_a, V4) == Some(pods as u64) {
            at_node = Some(written.elapsed());
        }
        if near(ratio(router, v4), want) && near(ratio(router, v6), want) {
            return (at_node, written.elapsed());
        }
        // The polling period, not a synchronisation.
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "the router's routes never reached {pods}:1: {:?} / {:?}\nl3lb:\n{}",
        nexthop_weights(router, v4),
        nexthop_weights(router, v6),
        fabric.logs()
    )
}

#[test]
fn router_weights_follow_ready_pods_and_reweighting_never_withdraws() {
    if !privileged("router_weights_follow_ready_pods_and_reweighting_never_withdraws") {
        return;
    }
    let fabric = Fabric::start(["endpoints", "endpoints"]);
    let router = fabric.router.name().to_owned();
    let node_a = fabric.nodes[0].ns.name().to_owned();
    let (v4, v6): (IpAddr, IpAddr) = (V4.parse().unwrap(), V6.parse().unwrap());

    fabric.scale([2, 1]);
    let weighted = wait_until(Duration::from_secs(30), || {
        near(ratio(&router, v4), 2.0) && near(ratio(&router, v6), 2.0)
    });
    assert!(
        weighted,
        "the router's routes never reached 2:1: {:?} / {:?}\nl3lb:\n{}",
        nexthop_weights(&router, v4),
        nexthop_weights(&router, v6),
        fabric.logs()
    );
    assert_eq!(
        lo_metric(&node_a, V4),
        Some(2),
        "node A's address carries its weight"
    );
    assert_eq!(lo_metric(&node_a, V6), Some(2));
    let before = [nexthop_weights(&router, v4), nexthop_weights(&router, v6)];

    let monitor = RouteMonitor::start(&router);
    let sampler = Sampler::start(&router, vec![v4, v6]);
    assert!(
        wait_until(Duration::from_secs(5), || sampler.len() >= 20),
        "the sampler takes no samples"
    );
    // Scale node A 3, 4, 3, 4, 3 (node B stays at 1): each change's time to node A's address
    // metric and to the router's weights.
    let mut timings = Vec::new();
    for pods in [3, 4, 3, 4, 3] {
        timings.push(reweigh(&fabric, pods));
    }
    // Watch a little longer for a late flap.
    let settled = sampler.len();
    assert!(wait_until(Duration::from_secs(10), || sampler.len() >= settled + 50));
    let samples = sampler.finish();
    let route_events = monitor.finish();

    let gaps: Vec<&Sample> = samples
        .iter()
        .filter(|(_, routes)| {
            routes
                .iter()
                .any(|route| route.as_ref().is_none_or(|hops| hops.len() != 2))
        })
        .collect();
    assert!(
        gaps.is_empty(),
        "{} of {} samples at the router lacked a next hop (the route was withdrawn or \
         shrank while re-weighting), first: {:?}",
        gaps.len(),
        samples.len(),
        gaps.first()
    );
    // Each re-weighting replaced the router's routes (so the monitor was listening), and none
    // was ever deleted.
    let events: Vec<(bool, IpAddr)> = route_events
        .iter()
        .filter_map(|line| parse_route_event(line))
        .filter(|(_, destination)| [v4, v6].contains(destination))
        .collect();
    for ip in [v4, v6] {
        let changes = events.iter().filter(|(_, d)| *d == ip).count();
        assert!(
            changes >= 5,
            "the router's route to {ip} changed only {changes} times in 5 re-weightings: \
             {route_events:#?}"
        );
    }
    assert!(
        events.iter().all(|(deleted, _)| !deleted),
        "the router deleted a service route while re-weighting: {route_events:#?}"
    );
    let longest_gap = samples
        .windows(2)
        .map(|pair| pair[1].0 - pair[0].0)
        .max()
        .unwrap_or_default();
    let after = [nexthop_weights(&router, v4), nexthop_weights(&router, v6)];
    eprintln!("weights at the router: {before:?} at 2:1, {after:?} at 3:1");
    for (pods, (at_node, at_router)) in [3, 4, 3, 4, 3].iter().zip(&timings) {
        eprintln!(
            "node A to {pods} pods: manifest written -> node A's metric {:?}, -> router's \
             weights (IPv4 and IPv6) {at_router:?}",
            at_node
        );
    }
    eprintln!(
        "{} samples at the router, longest gap between samples {longest_gap:?}, every one with \
         both next hops; {} route changes at the router, none a deletion",
        samples.len(),
        events.len()
    );

    let logs = fabric.logs();
    assert!(
        logs.contains(&format!("weighting address {V4} 4")) && !logs.contains("reconciling lo:"),
        "every re-weighting logged, none failed:\n{logs}"
    );

    // `l3lb status` on node A shows the weight.
    let status = fabric.nodes[0]
        .ns
        .command(&l3lb_binary().to_string_lossy())
        .args(["status", "--json"])
        .output()
        .expect("running l3lb status");
    let report: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("l3lb status --json is JSON");
    assert_eq!(report["weights"][V4], 3, "{report}");
    assert_eq!(
        report["weights"].as_object().map(|w| w.len()),
        Some(2),
        "{report}"
    );
    assert_eq!(report["weights"][V6], 3, "{report}");

    // Node maintenance: labelling node A takes its next hop away at the router, for both
    // families; removing the label brings it back with its weight.
    let devices =
        |ip| nexthop_weights(&router, ip).map(|hops| hops.into_keys().collect::<Vec<_>>());
    let only_b = Some(vec!["to-b".to_owned()]);
    let written = fabric.node_a(true);
    assert!(
        wait_until(Duration::from_secs(30), || devices(v4) == only_b
            && devices(v6) == only_b),
        "node A's next hop stayed: {:?}\nl3lb:\n{}",
        nexthop_weights(&router, v4),
        fabric.logs()
    );
    let excluded_after = written.elapsed();
    let written = fabric.node_a(false);
    assert!(
        wait_until(Duration::from_secs(30), || near(ratio(&router, v4), 3.0)
            && near(ratio(&router, v6), 3.0)),
        "node A's next hop did not come back at 3:1: {:?}\nl3lb:\n{}",
        nexthop_weights(&router, v4),
        fabric.logs()
    );
    eprintln!(
        "exclusion label on node A -> its next hop gone at the router: {excluded_after:?}; \
         label removed -> back at 3:1: {:?}",
        written.elapsed()
    );

    drop(fabric);
    assert!(!Path::new(&format!("/run/netns/{router}")).exists());
}

/// The documented fallback: node B runs without weights, so its path carries no link-bandwidth
/// community, and the router shares equally however many pods node A runs.
#[test]
fn a_node_without_weights_makes_the_router_share_equally() {
    if !privileged("a_node_without_weights_makes_the_router_share_equally") {
        return;
    }
    let fabric = Fabric::start(["endpoints", "none"]);
    let router = fabric.router.name().to_owned();
    let node_a = fabric.nodes[0].ns.name().to_owned();
    let node_b = fabric.nodes[1].ns.name().to_owned();
    let v4: IpAddr = V4.parse().unwrap();
    fabric.scale([2, 1]);
    let settled = wait_until(Duration::from_secs(30), || {
        lo_metric(&node_a, V4) == Some(2)
            && lo_metric(&node_b, V4) == Some(0)
            && nexthop_weights(&router, v4).is_some_and(|hops| hops.len() == 2)
    });
    assert!(
        settled,
        "node A weighted 2, node B unweighted, both next hops at the router: {:?} / {:?} / \
         {:?}\nl3lb:\n{}",
        lo_metric(&node_a, V4),
        lo_metric(&node_b, V4),
        nexthop_weights(&router, v4),
        fabric.logs()
    );
    // The router may see A's community before B's path: wait for what it settles on.
    assert!(
        wait_until(Duration::from_secs(10), || near(ratio(&router, v4), 1.0)),
        "equal shares without B's community: {:?}",
        nexthop_weights(&router, v4)
    );
}
