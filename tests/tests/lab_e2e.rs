//! End to end on the lab (`l3lb_tests::lab`): a router and three nodes running FRR in network
//! namespaces over BGP unnumbered (one test runs `--numbered` sessions), a real `l3lb` per node
//! with its fast path and `--weights endpoints` (one test runs the nodes the `--no-xdp` way, with
//! nftables DNAT), pods, and a client. Each test drives manifests and checks what the router ends
//! up with: the multipath route to a service IP goes through exactly the nodes that host a ready
//! pod, weighted by their ready pods, and the client's connections land only on those pods.
//!
//! Needs root, FRR, nftables, bpftool and curl, and `target/debug/l3lb` (`cargo build -p l3lb`; `cargo
//! xtask test` builds it). Labs are heavy (eight FRR daemons each), so the tests take turns.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use l3lb_tests::lab::{self, Endpoint, Lab, LabOptions, Service};

/// BGP converges in a few hundred ms here; this only bounds a failure.
const DEADLINE: Duration = Duration::from_secs(20);

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

/// A lab of its own for one test (unique namespace names), with the fast path, after the
/// previous test's lab is gone. The guard must outlive the lab: declare it first.
fn lab_for(tag: &str, l3lb_args: &[&str]) -> (MutexGuard<'static, ()>, Lab) {
    lab_with(tag, l3lb_args, true, false)
}

/// [`lab_for`], with the fast path or with the nodes' nftables DNAT instead, BGP unnumbered or
/// numbered.
fn lab_with(
    tag: &str,
    l3lb_args: &[&str],
    fast_path: bool,
    numbered: bool,
) -> (MutexGuard<'static, ()>, Lab) {
    let turn = ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Labs of an earlier run that was killed before it could tear them down.
    for name in Lab::down_abandoned("l3lb-e2e-") {
        eprintln!("removed the abandoned lab {name}");
    }
    let mut options = LabOptions::new(&format!("l3lb-e2e-{}-{tag}", std::process::id()));
    options.l3lb_args = l3lb_args.iter().map(|arg| arg.to_string()).collect();
    options.fast_path = fast_path;
    options.numbered = numbered;
    options.weights = true;
    let lab = Lab::up(options).unwrap_or_else(|err| panic!("bringing the lab up: {err}"));
    (turn, lab)
}

/// Waits until the router routes `ip` through exactly `nodes` (none: no route); returns how long
/// it took from `since`. Fails with everything the lab knows.
fn converge(lab: &Lab, ip: IpAddr, nodes: &[usize], since: Instant) -> Duration {
    match lab.wait_route(ip, nodes, since, DEADLINE) {
        Ok(took) => {
            eprintln!(
                "{ip} via {} after {} ms",
                lab::nodes_label(&nodes.iter().copied().collect()),
                took.as_millis()
            );
            took
        }
        Err(err) => panic!("{err}\n{}", lab.diagnostics()),
    }
}

fn web(ips: &[&str], endpoints: Vec<Endpoint>) -> Service {
    Service {
        endpoints,
        ..Service::new("web", ips)
    }
}

/// Opens connections from the client to `ip` (each from a new source port) until every node in
/// `hosts` answered at least once; every connection must land on one of them, and the pods must
/// see the client's own address (the fast path or the nodes' DNAT translate the destination only).
fn landings(lab: &mut Lab, ip: IpAddr, hosts: &[usize]) -> BTreeMap<String, usize> {
    let hosts: BTreeSet<String> = hosts.iter().map(|&node| lab::node_name(node)).collect();
    let client = match ip {
        IpAddr::V4(_) => lab::CLIENT_IPV4.to_string(),
        IpAddr::V6(_) => format!("[{}]", lab::CLIENT_IPV6),
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..90 {
        let reply = lab
            .client_get(ip)
            .unwrap_or_else(|err| panic!("{err}\n{}", lab.diagnostics()));
        assert!(
            hosts.contains(&reply.node),
            "a connection to {ip} landed on pod {} on {}, which is not among the hosts {hosts:?}",
            reply.pod,
            reply.node
        );
        assert!(
            reply.peer.starts_with(&format!("{client}:")),
            "pod {} saw {} instead of the client {client}",
            reply.pod,
            reply.peer
        );
        *seen.entry(reply.node).or_default() += 1;
        if seen.len() == hosts.len() && seen.values().sum::<usize>() >= 2 * hosts.len() {
            break;
        }
    }
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        hosts,
        "90 connections to {ip} from different source ports did not reach every host: {seen:?}"
    );
    eprintln!("connections to {ip}: {seen:?}");
    seen
}

/// The life of one service: one replica, three (ECMP), an l3lb stopped without
/// `--retain-on-exit` and started again, a node drained, the service deleted. At every step the
/// router's route and the client's connections follow the ready pods.
#[test]
fn anycast_route_follows_the_ready_pods() {
    if !l3lb_tests::privileged("lab_e2e::anycast_route_follows_the_ready_pods") {
        return;
    }
    let (_turn, mut lab) = lab_for("life", &[]);
    let (v4, v6) = (ip("10.0.100.7"), ip("2001:db8:100::7"));
    let ips = ["10.0.100.7", "2001:db8:100::7"];

    // One replica on node-b: one route, through node-b only.
    let (at, _) = lab.apply(&web(&ips, vec![Endpoint::ready("web-b", 1)]));
    converge(&lab, v4, &[1], at);
    converge(&lab, v6, &[1], at);
    assert!(lab.node_addresses(1).contains(&v4));
    for node in [0, 2] {
        assert!(
            !lab.node_addresses(node).contains(&v4),
            "{} holds {v4} without a pod",
            lab::node_name(node)
        );
    }
    landings(&mut lab, v4, &[1]);

    // Three replicas on three nodes: one ECMP route with three nexthops, in both families.
    let three = web(
        &ips,
        vec![
            Endpoint::ready("web-a", 0),
            Endpoint::ready("web-b", 1),
            Endpoint::ready("web-c", 2),
        ],
    );
    let (at, _) = lab.apply(&three);
    converge(&lab, v4, &[0, 1, 2], at);
    converge(&lab, v6, &[0, 1, 2], at);
    let routes = lab.router_view().routes();
    assert_eq!(
        routes.keys().copied().collect::<Vec<_>>(),
        [v4, v6],
        "exactly the service's two host routes inside the prefixes: {routes:?}"
    );
    landings(&mut lab, v4, &[0, 1, 2]);
    landings(&mut lab, v6, &[0, 1, 2]);

    // SIGTERM without --retain-on-exit: node-c's l3lb takes its addresses with it, the router
    // drops that nexthop; started again, it announces again.
    let stopped = Instant::now();
    let status = lab.stop_l3lb(2).expect("l3lb exits on SIGTERM");
    assert!(status.success(), "l3lb exited with {status}");
    converge(&lab, v4, &[0, 1], stopped);
    assert!(!lab.node_addresses(2).contains(&v4));
    let started = Instant::now();
    lab.start_l3lb(2).expect("l3lb starts again");
    converge(&lab, v4, &[0, 1, 2], started);
    converge(&lab, v6, &[0, 1, 2], started);

    // Drain node-c: its endpoint terminates while the others stay ready. Its nexthop goes, the
    // others stay, and no new connection reaches node-c.
    let (at, _) = lab.apply(&web(
        &ips,
        vec![
            Endpoint::ready("web-a", 0),
            Endpoint::ready("web-b", 1),
            Endpoint::terminating("web-c", 2),
        ],
    ));
    converge(&lab, v4, &[0, 1], at);
    converge(&lab, v6, &[0, 1], at);
    assert!(!lab.node_addresses(2).contains(&v4));
    landings(&mut lab, v4, &[0, 1]);

    // Delete the Service: the route disappears, the client cannot connect any more.
    let at = lab.delete_service("web");
    converge(&lab, v4, &[], at);
    converge(&lab, v6, &[], at);
    assert!(lab.router_view().routes().is_empty());
    for node in 0..lab.nodes() {
        assert!(
            lab.node_addresses(node).is_empty(),
            "{node} still holds addresses"
        );
    }
    assert!(lab.client_get(v4).is_err(), "{v4} answers without a route");
}

/// A Service that names no IP gets one from the `L3lbIPPool` in the manifest directory: every
/// node computes the same address on its own (no leader with `--source file:`), and the router
/// routes it through exactly the nodes with a ready pod. On numbered sessions (`cargo xtask lab
/// --numbered`, `deploy/frr/{node,router}.conf`), so that they keep working.
#[test]
fn a_service_without_an_ip_gets_one_from_a_pool() {
    if !l3lb_tests::privileged("lab_e2e::a_service_without_an_ip_gets_one_from_a_pool") {
        return;
    }
    let (_turn, mut lab) = lab_with("pool", &[], true, true);
    assert!(lab.numbered());
    lab.write_manifest("pool", &lab::pool_manifest("lab", &["10.0.100.200/30"]));
    // web asks for the pool's first address by hand, so auto (no IP) gets the next one.
    let pinned_web = web(&["10.0.100.200"], vec![Endpoint::ready("web-b", 1)]);
    let (at, _) = lab.apply(&pinned_web);
    converge(&lab, ip("10.0.100.200"), &[1], at);
    let auto = Service {
        endpoints: vec![Endpoint::ready("auto-a", 0), Endpoint::ready("auto-c", 2)],
        ..Service::pooled("auto", &["10.0.100.201"])
    };
    let (at, _) = lab.apply(&auto);
    let allocated = ip("10.0.100.201");
    converge(&lab, allocated, &[0, 2], at);
    assert!(
        !lab.node_addresses(1).contains(&allocated),
        "node-b has no auto pod"
    );
    landings(&mut lab, allocated, &[0, 2]);
    converge(&lab, ip("10.0.100.200"), &[1], at);
    // Numbered: the router's next hops are the nodes' addresses on their /30s.
    let hops = lab.router_hops(allocated).expect("a route");
    let vias: BTreeSet<&str> = hops.iter().map(|hop| hop.via.as_str()).collect();
    assert_eq!(
        vias,
        BTreeSet::from(["172.16.1.2", "172.16.3.2"]),
        "{hops:?}"
    );
}

/// Only service host routes reach the router: l3lb ignores a service IP outside its prefixes,
/// and FRR's prefix-list keeps any other `/32` on a node's `lo` to itself.
#[test]
fn only_service_host_routes_reach_the_router() {
    if !l3lb_tests::privileged("lab_e2e::only_service_host_routes_reach_the_router") {
        return;
    }
    let (_turn, mut lab) = lab_for("prefix", &[]);
    let (inside, outside, stray) = (ip("10.0.100.8"), ip("192.0.2.50"), ip("192.0.2.51"));
    // Something other than l3lb puts a /32 on node-a's lo: the node must not announce it.
    lab.node_ns(0)
        .ip(&["addr", "add", "192.0.2.51/32", "dev", "lo"]);

    let (at, _) = lab.apply(&Service {
        endpoints: vec![
            Endpoint::ready("mixed-a", 0),
            Endpoint::ready("mixed-a2", 0),
            Endpoint::ready("mixed-b", 1),
        ],
        ..Service::new("mixed", &["192.0.2.50", "10.0.100.8"])
    });
    // Once the service IP inside the prefix arrived, node-a's announcements are all through.
    converge(&lab, inside, &[0, 1], at);
    for node in [0, 1] {
        let held = lab.node_addresses(node);
        assert!(held.contains(&inside));
        assert!(
            !held.contains(&outside),
            "l3lb put {outside}, outside its prefixes, on {}'s lo",
            lab::node_name(node)
        );
    }
    for ip in [outside, stray] {
        assert_eq!(lab.router_route(ip), None, "{ip} reached the router");
    }
    let table = lab.router_bgp_table();
    assert!(
        !table.contains("192.0.2."),
        "the router's BGP table has a non-service route:\n{table}"
    );
    assert_eq!(
        lab.router_view()
            .routes()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [inside]
    );

    // The service works, and node-a spreads its share over both of its pods (as kube-proxy).
    let mut pods = BTreeSet::new();
    for _ in 0..40 {
        let reply = lab
            .client_get(inside)
            .unwrap_or_else(|err| panic!("{err}\n{}", lab.diagnostics()));
        pods.insert(reply.pod);
        if pods.len() == 3 {
            break;
        }
    }
    assert_eq!(
        pods,
        ["mixed-a", "mixed-a2", "mixed-b"].map(String::from).into()
    );
}

/// The fast path does the nodes' work: no node has a DNAT rule, each node's per-service counters
/// grow with the connections it takes, and a client behind a link narrower than it says downloads
/// 1 MiB from every node's pod in both families, the pods learning the path MTU from the
/// router's ICMP errors, which the fast path hands to them.
#[test]
fn the_fast_path_carries_the_service_and_path_mtu_discovery() {
    if !l3lb_tests::privileged("lab_e2e::the_fast_path_carries_the_service_and_path_mtu_discovery")
    {
        return;
    }
    let (_turn, mut lab) = lab_for("fastpath", &[]);
    let (v4, v6) = (ip("10.0.100.7"), ip("2001:db8:100::7"));
    let (at, _) = lab.apply(&web(
        &["10.0.100.7", "2001:db8:100::7"],
        vec![
            Endpoint::ready("web-a", 0),
            Endpoint::ready("web-b", 1),
            Endpoint::ready("web-c", 2),
        ],
    ));
    converge(&lab, v4, &[0, 1, 2], at);
    converge(&lab, v6, &[0, 1, 2], at);
    for node in 0..lab.nodes() {
        assert_eq!(lab.dnat_rules(node), Vec::<String>::new(), "node {node}");
    }
    let steered = |lab: &Lab| -> Vec<u64> {
        (0..lab.nodes())
            .map(|node| {
                let count = |ip| {
                    lab.steered_packets(node, ip)
                        .unwrap_or_else(|err| panic!("{err}"))
                };
                count(v4) + count(v6)
            })
            .collect()
    };
    // The pods' replies leave through the uplink straight from TC (`bpf_fib_lookup`, then
    // `bpf_redirect`/`bpf_redirect_neigh`): on BGP unnumbered the node's default route is via
    // the router's IPv6 link-local address, for IPv4 too, and the lookup must resolve it.
    let counted = |lab: &Lab, reason: &str| -> Vec<u64> {
        (0..lab.nodes())
            .map(|node| {
                lab.reason_packets(node, reason)
                    .unwrap_or_else(|err| panic!("{err}"))
            })
            .collect()
    };
    let redirected = |lab: &Lab| counted(lab, "reply_redirected");
    let (before, replies_before) = (steered(&lab), redirected(&lab));
    let to_stack_before = counted(&lab, "reply_to_stack");
    let mut landed = landings(&mut lab, v4, &[0, 1, 2]);
    for (node, count) in landings(&mut lab, v6, &[0, 1, 2]) {
        *landed.entry(node).or_default() += count;
    }
    let (after, replies_after) = (steered(&lab), redirected(&lab));
    // None of them needed the kernel's routing: the lookup found the gateway (or had
    // `bpf_redirect_neigh` resolve it).
    assert_eq!(
        counted(&lab, "reply_to_stack"),
        to_stack_before,
        "replies went to the nodes' stacks"
    );
    for node in 0..lab.nodes() {
        // A connection is at least its SYN, the ACK of the reply, the request and a FIN.
        let connections = landed[&lab::node_name(node)] as u64;
        assert!(
            after[node] - before[node] >= 4 * connections,
            "{}'s fast path steered {} packets for {connections} connections",
            lab::node_name(node),
            after[node] - before[node]
        );
        // And the way back: at least the SYN-ACK, the response and a FIN.
        let replies = replies_after[node] - replies_before[node];
        assert!(
            replies >= 3 * connections,
            "{}'s fast path redirected {replies} replies for {connections} connections\n{}",
            lab::node_name(node),
            lab.inspect(node).unwrap_or_default()
        );
    }
    eprintln!(
        "replies redirected from TC per node: {:?}",
        (0..lab.nodes())
            .map(|node| replies_after[node] - replies_before[node])
            .collect::<Vec<_>>()
    );

    // Each download hashes onto some node by its source port; until every pod learned the
    // client's path MTU in both families, keep downloading (each one must complete).
    let (mtu_v4, mtu_v6) = lab::CLIENT_LINK_MTU;
    let wanted = [
        (v4, IpAddr::V4(lab::CLIENT_IPV4), mtu_v4),
        (v6, IpAddr::V6(lab::CLIENT_IPV6), mtu_v6),
    ];
    let pods = ["web-a", "web-b", "web-c"];
    let learned = |lab: &Lab, client: IpAddr, mtu: u32| {
        pods.iter()
            .filter(|pod| lab.pod_path_mtu(pod, client) == Some(mtu))
            .count()
    };
    for (service, client, mtu) in wanted {
        let mut downloads = 0;
        while learned(&lab, client, mtu) < pods.len() {
            assert!(
                downloads < 60,
                "after {downloads} downloads from {service}, only {} of the pods learned MTU \
                 {mtu} towards {client}\n{}",
                learned(&lab, client, mtu),
                lab.diagnostics()
            );
            let download = lab
                .client_download(service, 1 << 20)
                .unwrap_or_else(|err| panic!("{err}\n{}", lab.diagnostics()));
            assert_eq!(download.bytes, 1 << 20);
            downloads += 1;
        }
        eprintln!("{downloads} downloads from {service} taught every pod MTU {mtu}");
    }
}

/// `cargo xtask lab --no-xdp`: without the fast path, the nodes DNAT with nftables (kube-proxy's
/// way) and the service still works, path MTU discovery included (conntrack relates the ICMP
/// errors).
#[test]
fn without_the_fast_path_the_nodes_dnat() {
    if !l3lb_tests::privileged("lab_e2e::without_the_fast_path_the_nodes_dnat") {
        return;
    }
    let (_turn, mut lab) = lab_with("nft", &[], false, false);
    let v4 = ip("10.0.100.7");
    let (at, _) = lab.apply(&web(
        &["10.0.100.7"],
        vec![Endpoint::ready("web-a", 0), Endpoint::ready("web-c", 2)],
    ));
    converge(&lab, v4, &[0, 2], at);
    assert!(!lab.dnat_rules(0).is_empty(), "node-a has no DNAT rule");
    assert!(!lab.pin_root(0).exists(), "l3lb pinned maps without --xdp");
    landings(&mut lab, v4, &[0, 2]);
    let download = lab
        .client_download(v4, 1 << 20)
        .unwrap_or_else(|err| panic!("{err}\n{}", lab.diagnostics()));
    assert_eq!(download.bytes, 1 << 20);
}

/// A restart with `--retain-on-exit` is hitless: SIGTERM leaves the addresses on `lo`, the new
/// l3lb adopts them, and the router's route through that node never disappears meanwhile
/// (sampled continuously from another thread).
#[test]
fn restart_with_retain_on_exit_keeps_the_route() {
    if !l3lb_tests::privileged("lab_e2e::restart_with_retain_on_exit_keeps_the_route") {
        return;
    }
    let (_turn, mut lab) = lab_for("retain", &["--retain-on-exit"]);
    let v4 = ip("10.0.100.7");
    let three = |ips: &[&str]| {
        web(
            ips,
            vec![
                Endpoint::ready("web-a", 0),
                Endpoint::ready("web-b", 1),
                Endpoint::ready("web-c", 2),
            ],
        )
    };
    let (at, _) = lab.apply(&three(&["10.0.100.7"]));
    converge(&lab, v4, &[0, 1, 2], at);

    let view = lab.router_view();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                samples.push(view.route(v4));
            }
            samples
        })
    };

    let restarted = (|| {
        let status = lab.stop_l3lb(1).map_err(|err| err.to_string())?;
        if !status.success() {
            return Err(format!("l3lb exited with {status}"));
        }
        if !lab.node_addresses(1).contains(&v4) {
            return Err(format!(
                "{v4} left node-b's lo although l3lb ran with --retain-on-exit"
            ));
        }
        lab.start_l3lb(1).map_err(|err| err.to_string())?;
        // Proof that the new l3lb has read the manifests and reconciled `lo` (the moment it could
        // have flapped the adopted address): it announces a new IP of the same service.
        let (at, _) = lab.apply(&three(&["10.0.100.7", "10.0.100.9"]));
        lab.wait_route(ip("10.0.100.9"), &[0, 1, 2], at, DEADLINE)
            .map_err(|err| err.to_string())?;
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().expect("the sampler thread");
    if let Err(err) = restarted {
        panic!("{err}\n{}", lab.diagnostics());
    }

    let all: BTreeSet<usize> = [0, 1, 2].into();
    let bad: Vec<&Option<BTreeSet<usize>>> = samples
        .iter()
        .filter(|sample| sample.as_ref() != Some(&all))
        .collect();
    eprintln!(
        "{} samples of the router's route during the restart, {} without all three nodes",
        samples.len(),
        bad.len()
    );
    assert!(samples.len() >= 10, "too few samples: {}", samples.len());
    assert!(
        bad.is_empty(),
        "the route to {v4} changed during the restart: {:?}",
        &bad[..bad.len().min(5)]
    );
    let log = lab.l3lb_log(1);
    assert!(
        !log.contains("forfeiting address 10.0.100.7"),
        "node-b's l3lb forfeited the address around its restart:\n{log}"
    );
}

/// Weighted anycast on BGP unnumbered, both families: two ready pods on node-a and one on
/// node-b make the router's route `nexthop via inet6 fe80::… dev to-node-a weight 66` /
/// `… dev to-node-b weight 33` (IPv4 over IPv6 link-local next hops, RFC 5549), the client's
/// connections split about 2:1 so that every pod gets about a third, and a third pod on node-a
/// turns the weights to 3:1.
#[test]
fn the_router_weights_nodes_by_their_ready_pods() {
    if !l3lb_tests::privileged("lab_e2e::the_router_weights_nodes_by_their_ready_pods") {
        return;
    }
    let (_turn, mut lab) = lab_for("weights", &[]);
    assert!(!lab.numbered());
    let (v4, v6) = (ip("10.0.100.7"), ip("2001:db8:100::7"));
    let ips = ["10.0.100.7", "2001:db8:100::7"];
    let two_to_one = web(
        &ips,
        vec![
            Endpoint::ready("web-a", 0),
            Endpoint::ready("web-a2", 0),
            Endpoint::ready("web-b", 1),
        ],
    );
    let (at, _) = lab.apply(&two_to_one);
    let want: &[(usize, u32)] = &[(0, 2), (1, 1)];
    let took = lab
        .wait_weights(&[(v4, want), (v6, want)], at, DEADLINE)
        .unwrap_or_else(|err| panic!("{err}\n{}", lab.diagnostics()));
    eprintln!("2:1 at the router after {took:?} (IPv4, IPv6)");
    for (service, family) in [(v4, "inet6 fe80:"), (v6, "fe80:")] {
        let hops = lab.router_hops(service).expect("a route");
        eprintln!("{service}: {}", lab::hops_label(&hops));
        assert!(
            hops.iter().all(|hop| hop.via.starts_with(family)),
            "{service} is not routed via IPv6 link-local next hops: {hops:?}\n{}",
            lab.router_kernel_routes()
        );
    }

    // The client's connections, each from a new source port, spread by the router's 5-tuple
    // hash in proportion to the weights: node-a should take 2/3 of them. 150 connections per
    // family; the share's standard deviation is then about 0.04, and a share within 0.12 of
    // 2/3 (3 standard deviations) passes. Each pod should get about a third (node-a's fast
    // path spreads its share over its two pods): within 0.12 of 1/3.
    const CONNECTIONS: usize = 150;
    const TOLERANCE: f64 = 0.12;
    for service in [v4, v6] {
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..CONNECTIONS {
            let reply = lab
                .client_get(service)
                .unwrap_or_else(|err| panic!("{err}\n{}", lab.diagnostics()));
            *per_node.entry(reply.node).or_default() += 1;
            *per_pod.entry(reply.pod).or_default() += 1;
        }
        eprintln!("{CONNECTIONS} connections to {service}: {per_node:?}, {per_pod:?}");
        let share = |count: Option<&usize>| *count.unwrap_or(&0) as f64 / CONNECTIONS as f64;
        let node_a = share(per_node.get("node-a"));
        assert!(
            (node_a - 2.0 / 3.0).abs() <= TOLERANCE,
            "node-a took {node_a:.2} of the connections to {service}, not about 2/3: {per_node:?}"
        );
        assert_eq!(
            per_node.keys().cloned().collect::<BTreeSet<_>>(),
            BTreeSet::from(["node-a".to_owned(), "node-b".to_owned()]),
            "{per_node:?}"
        );
        for pod in ["web-a", "web-a2", "web-b"] {
            let pod_share = share(per_pod.get(pod));
            assert!(
                (pod_share - 1.0 / 3.0).abs() <= TOLERANCE,
                "{pod} took {pod_share:.2} of the connections to {service}, not about 1/3: \
                 {per_pod:?}"
            );
        }
    }

    // A third pod on node-a: 3:1, in both families.
    let mut three_to_one = two_to_one.clone();
    three_to_one
        .endpoints
        .insert(2, Endpoint::ready("web-a3", 0));
    let (at, _) = lab.apply(&three_to_one);
    let want: &[(usize, u32)] = &[(0, 3), (1, 1)];
    let took = lab
        .wait_weights(&[(v4, want), (v6, want)], at, DEADLINE)
        .unwrap_or_else(|err| panic!("{err}\n{}", lab.diagnostics()));
    eprintln!("3:1 at the router after {took:?} (IPv4, IPv6)");
}
