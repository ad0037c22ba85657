//! The lab: a BGP anycast fabric in network namespaces on one machine, driven by real l3lb
//! daemons. `cargo xtask lab` shows it off (the `l3lb-lab` binary) and `tests/lab_e2e.rs` tests
//! on it.
//!
//! ```text
//!   client ── router (zebra + bgpd, AS 65000, ECMP) ──┬── node-a (zebra + bgpd AS 65001, l3lb) ── pods
//!                                                      ├── node-b (zebra + bgpd AS 65002, l3lb) ── pods
//!                                                      └── node-c (zebra + bgpd AS 65003, l3lb) ── pods
//! ```
//!
//! Every box is a network namespace named `<lab>-router`, `<lab>-client`, `<lab>-node-a`, …,
//! `<lab>-pod-<pod>`. The fabric is BGP unnumbered, like the seeds' own: the links between the
//! router and the nodes carry only IPv6 link-local addresses, each node peers over its uplink
//! interface and the router over each interface facing a node, IPv4 and IPv6 routes travel
//! with IPv6 link-local next hops (RFC 5549), and the nodes' default routes come from the router
//! over BGP. The FRR configs are `deploy/frr/node-unnumbered.conf` and
//! `deploy/frr/router-unnumbered.conf`; with [`LabOptions::numbered`], the links get a /30 and a
//! /64 each and the configs are `deploy/frr/node.conf` and `deploy/frr/router.conf` (one session
//! per family and node). Either way their placeholders are filled in and nothing else; with
//! [`LabOptions::weights`] (the walk-through and the e2e tests) the nodes' config gets
//! `deploy/frr/weights.conf` (`l3lb frr-config`) appended and every l3lb runs with `--weights
//! endpoints`. All l3lbs read the same manifest directory (`--source file:`);
//! each announces what runs on its node, FRR redistributes `lo`, and the router ends up with one
//! multipath route per service IP across the nodes that host a ready pod (with weights, each
//! next hop weighted by that node's ready pods).
//!
//! Pods are namespaces behind their node (a veth, a /30 and a /64 each) running `lab-pod`, which
//! answers HTTP with its own name (or with N bytes for `GET /bytes/N`). A request to a service IP
//! reaches a pod through l3lb's fast path by default (`l3lb run --xdp` on the node's uplink, maps
//! pinned under `/sys/fs/bpf/<lab>/<node>`): no DNAT rule exists on any node, and the pod sees
//! the client's address. With [`LabOptions::fast_path`] off, each node instead DNATs
//! `service IP:80` to its local pods with one nftables rule per service IP, as kube-proxy does
//! with `externalTrafficPolicy: Local`. (Routing the service IP on to a pod that also holds it
//! does not work: the node has the IP on its own `lo`, so the local table delivers it first.)
//!
//! The router's link to the client is narrower than the rest (MTU 1400, IPv6 1280) while the
//! client's own end says 1500: large replies need path MTU discovery, whose ICMP errors the
//! router sends to the service address, and the node must hand them to the pod.
//!
//! Dropping the [`Lab`] stops every process gracefully (SIGTERM, then SIGKILL after a deadline),
//! deletes the namespaces, FRR's crash-log directories and the temp dir, also when a test fails
//! halfway. [`Lab::keep`] leaves it all running; [`Lab::down`] finds a kept lab again by its
//! name (a state file under `/run/l3lb-lab/` and the namespace names) and tears it down.
//!
//! The parts, one file each: `topology` (namespaces, links, addresses), `frr` (configs, daemons,
//! sessions, the router's routes), `node` (a node and its l3lb), `pods`, `proxy` (the nodes'
//! DNAT without the fast path), `fastpath` (what the fast path shows), `faults` (what the soak
//! breaks), `manifests` (what the l3lbs read), `client` (requests from the client) and `teardown`
//! (state file, keep, down, drop); [`Lab`] composes them.
mod client;
mod fastpath;
mod faults;
mod frr;
mod manifests;
mod node;
mod pods;
mod process;
mod proxy;
mod teardown;
mod topology;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

pub use self::{
    client::{Download, Reply},
    frr::{Hop, NOT_A_NODE, RouterView, counts_label, hops_label, nodes_label, proportional},
    manifests::{Endpoint, Service, pool as pool_manifest},
    teardown::STATE_DIR,
    topology::node_name,
};
use self::{
    frr::{Fabric, Role},
    manifests::Manifests,
    node::{L3lbCommand, Node},
    pods::Pods,
    teardown::namespaces_of,
};
use crate::{
    daemon::{l3lb_binary, pod_binary},
    netns::NetNs,
};

/// The service prefixes every l3lb runs with, and that the FRR configs in `deploy/frr` permit.
pub const SERVICE_PREFIXES: [&str; 2] = ["10.0.100.0/24", "2001:db8:100::/64"];
/// The router's ASN; node `i` (0-based) has `FIRST_NODE_ASN + i`.
pub const ROUTER_ASN: u32 = 65000;
pub const FIRST_NODE_ASN: u32 = 65001;
/// The client's addresses (behind the router), as the pods see them: the nodes DNAT, not SNAT.
pub const CLIENT_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
pub const CLIENT_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 2);
/// The MTU of the router's link to the client (IPv4, IPv6) while the client's own end and every
/// other link say 1500: a pod's full-size replies need path MTU discovery to reach the client.
pub const CLIENT_LINK_MTU: (u32, u32) = (1400, 1280);
/// The port every service and pod listens on.
pub const SERVICE_PORT: u16 = 80;
/// Name of the lab `cargo xtask lab` runs (its namespaces are `l3lb-lab-…`).
pub const DEFAULT_NAME: &str = "l3lb-lab";

#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Namespace name prefix; unique per lab running at the same time.
    pub name: String,
    /// Number of nodes (1 to 26).
    pub nodes: usize,
    /// Extra arguments for every `l3lb run` (e.g. `--retain-on-exit`).
    pub l3lb_args: Vec<String>,
    /// Every node runs `l3lb run --xdp` and the fast path takes service traffic to the pods
    /// (the default); off, the nodes DNAT with nftables instead (kube-proxy's way).
    pub fast_path: bool,
    /// Numbered BGP sessions (a /30 and a /64 per link, `deploy/frr/{node,router}.conf`)
    /// instead of BGP unnumbered (the default).
    pub numbered: bool,
    /// Every l3lb runs with `--weights endpoints` and the nodes' FRR has
    /// `deploy/frr/weights.conf`: the router weights each node's next hop by its ready pods
    /// (the walk-through and the e2e tests). Off (the default, and the soak's), plain ECMP, as
    /// l3lb's own default `--weights none`.
    pub weights: bool,
    pub l3lb: PathBuf,
    pub pod_server: PathBuf,
    /// When set (by a signal handler), every wait gives up with [`LabError::Interrupted`].
    pub cancel: Option<&'static AtomicBool>,
    /// Print what is being built, as it goes.
    pub progress: bool,
}

impl LabOptions {
    /// Three nodes, the built `l3lb` and `lab-pod`, quiet.
    pub fn new(name: &str) -> Self {
        LabOptions {
            name: name.to_owned(),
            nodes: 3,
            l3lb_args: Vec::new(),
            fast_path: true,
            numbered: false,
            weights: false,
            l3lb: l3lb_binary(),
            pod_server: pod_binary(),
            cancel: None,
            progress: false,
        }
    }
}

#[derive(Debug)]
pub enum LabError {
    /// The cancel flag was raised (Ctrl-C).
    Interrupted,
    /// Something did not happen before its deadline; says what was seen instead.
    Timeout(String),
    /// A process died or could not start.
    Failed(String),
}

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabError::Interrupted => write!(f, "interrupted"),
            LabError::Timeout(what) => write!(f, "timed out: {what}"),
            LabError::Failed(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for LabError {}

/// A running lab. Dropping it tears everything down.
pub struct Lab {
    options: LabOptions,
    manifests: Manifests,
    started: Instant,
    router: NetNs,
    client: NetNs,
    nodes: Vec<Node>,
    pods: Pods,
    /// zebra and bgpd of the router and every node.
    frr: Vec<Child>,
    services: BTreeMap<String, Service>,
    next_port: u16,
    kept: bool,
    /// Last, so that it goes after the namespaces and processes that use it.
    dir: tempfile::TempDir,
}

impl Lab {
    /// Builds the whole lab and waits until every BGP session is up and every l3lb runs.
    pub fn up(options: LabOptions) -> Result<Lab, LabError> {
        assert!((1..=26).contains(&options.nodes), "a lab has 1 to 26 nodes");
        for binary in [&options.l3lb, &options.pod_server] {
            if !binary.is_file() {
                return Err(LabError::Failed(format!(
                    "{} is missing: run `cargo build -p l3lb -p l3lb-tests --bins`",
                    binary.display()
                )));
            }
        }
        if !Path::new(frr::FRR_DAEMONS).join("bgpd").is_file() {
            return Err(LabError::Failed(format!(
                "{}/bgpd is missing: install FRR (`apt-get install frr`)",
                frr::FRR_DAEMONS
            )));
        }
        let name = options.name.clone();
        if fastpath::lab_pins(&name).is_none() {
            return Err(LabError::Failed(format!(
                "a lab's name is letters, digits, '-' and '_' (not {name:?})"
            )));
        }
        let taken: Vec<String> = namespaces_of(&name);
        if !taken.is_empty() {
            return Err(LabError::Failed(format!(
                "a lab named {name} is up already ({}): tear it down with `cargo xtask lab down` \
                 (or `l3lb-lab down --name {name}`)",
                taken.join(", ")
            )));
        }

        // `/tmp/<name>-XXXXXX`, which is what `down` looks for.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in("/tmp")
            .map_err(|err| LabError::Failed(format!("creating /tmp/{name}-…: {err}")))?;
        let progress = options.progress;
        let say = |what: &str| {
            if progress {
                println!("  {what}");
            }
        };

        say("namespaces, links and addresses");
        let mut lab = Lab {
            manifests: Manifests::create(dir.path().join("manifests")),
            pods: Pods::new(
                &name,
                dir.path().join("pods"),
                options.pod_server.clone(),
                options.cancel,
            ),
            started: Instant::now(),
            router: NetNs::named(&format!("{name}-router")),
            client: NetNs::named(&format!("{name}-client")),
            nodes: Vec::new(),
            frr: Vec::new(),
            services: BTreeMap::new(),
            next_port: 30000,
            kept: false,
            dir,
            options,
        };
        lab.save_state();
        topology::wire_router_and_client(&lab.router, &lab.client);
        for index in 0..lab.options.nodes {
            // In the lab's list before wiring, so that a failure still removes the namespace.
            lab.nodes.push(Node::new(&name, index, lab.dir.path()));
            topology::wire_node(
                &lab.router,
                &lab.nodes[index].ns,
                index,
                lab.options.numbered,
            );
        }
        lab.save_state();

        say(if lab.options.numbered {
            "FRR (zebra + bgpd) on the router, then on every node: numbered sessions"
        } else {
            "FRR (zebra + bgpd) on the router, then on every node: BGP unnumbered"
        });
        let router_dir = lab.frr_dir(None);
        let fabric = lab.fabric();
        frr::start(
            &lab.router,
            &router_dir,
            Role::Router,
            fabric,
            lab.options.cancel,
            &mut lab.frr,
        )?;
        for (index, node) in lab.nodes.iter().enumerate() {
            frr::start(
                &node.ns,
                &node.dir,
                Role::Node(index),
                fabric,
                lab.options.cancel,
                &mut lab.frr,
            )?;
        }
        lab.save_state();

        say(if lab.options.fast_path {
            "one l3lb per node with the fast path on its uplink, all reading the lab's manifest \
             directory"
        } else {
            "one l3lb per node, all reading the lab's manifest directory; nftables DNAT to the pods"
        });
        lab.update_proxy();
        for index in 0..lab.nodes.len() {
            lab.start_l3lb(index)?;
        }

        say(if lab.options.numbered {
            "waiting for the BGP sessions (IPv4 and IPv6 per node) and their initial updates"
        } else {
            "waiting for the BGP sessions (one per node, both families) and their initial \
             updates, and for the nodes' default routes over them"
        });
        lab.wait_fabric()?;
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.options.name
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn manifest_dir(&self) -> &Path {
        self.manifests.dir()
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Numbered sessions rather than BGP unnumbered.
    pub fn numbered(&self) -> bool {
        self.options.numbered
    }

    pub fn router_ns(&self) -> &NetNs {
        &self.router
    }

    pub fn client_ns(&self) -> &NetNs {
        &self.client
    }

    pub fn node_ns(&self, node: usize) -> &NetNs {
        &self.nodes[node].ns
    }

    /// Time since `up` began.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// A description of the fabric: namespaces, links, addresses, ASNs.
    pub fn topology(&self) -> String {
        let nodes: Vec<&str> = self.nodes.iter().map(|node| node.ns.name()).collect();
        topology::describe(
            self.name(),
            &nodes,
            self.options.numbered,
            self.options.weights,
        )
    }

    /// The router's routes, for sampling from another thread.
    pub fn router_view(&self) -> RouterView {
        RouterView {
            ns: self.router.name().to_owned(),
            devices: (0..self.nodes.len()).map(topology::router_device).collect(),
        }
    }

    /// The nodes the router sends `ip` to, or `None` without a route.
    pub fn router_route(&self, ip: IpAddr) -> Option<BTreeSet<usize>> {
        self.router_view().route(ip)
    }

    /// Polls the router until the route to `ip` goes through exactly `nodes` (empty: no route),
    /// and returns the time from `since` (the change) to the first poll that saw it.
    pub fn wait_route(
        &self,
        ip: IpAddr,
        nodes: &[usize],
        since: Instant,
        deadline: Duration,
    ) -> Result<Duration, LabError> {
        Ok(self.wait_routes(&[(ip, nodes)], since, deadline)?[0])
    }

    /// The next hops of the router's route to `ip` (node, gateway, weight), or `None` without
    /// a route.
    pub fn router_hops(&self, ip: IpAddr) -> Option<Vec<Hop>> {
        self.router_view().hops(ip)
    }

    /// Polls the router until the route to each IP goes through exactly the nodes named, with
    /// next-hop weights in the ratio of their counts (their ready pods); an empty list wants no
    /// route. Returns per IP the time from `since` to the first poll that saw it.
    pub fn wait_weights(
        &self,
        wanted: &[(IpAddr, &[(usize, u32)])],
        since: Instant,
        deadline: Duration,
    ) -> Result<Vec<Duration>, LabError> {
        self.router_view()
            .wait_weights(wanted, since, deadline, self.options.cancel)
    }

    /// [`Lab::wait_route`] for several IPs at once, each timed on its own: polls every couple of
    /// milliseconds until all match.
    pub fn wait_routes(
        &self,
        wanted: &[(IpAddr, &[usize])],
        since: Instant,
        deadline: Duration,
    ) -> Result<Vec<Duration>, LabError> {
        self.router_view()
            .wait(wanted, since, deadline, self.options.cancel)
    }

    /// The router's BGP table for both families (`show bgp … unicast`).
    pub fn router_bgp_table(&self) -> String {
        let v4 = self.vtysh(None, "show bgp ipv4 unicast");
        let v6 = self.vtysh(None, "show bgp ipv6 unicast");
        format!("{}\n{}", v4.trim_end(), v6.trim_end())
    }

    /// The router's kernel routes inside the service prefixes (`ip route show root …`).
    pub fn router_kernel_routes(&self) -> String {
        let mut out = String::new();
        for (family, prefix) in [("-4", SERVICE_PREFIXES[0]), ("-6", SERVICE_PREFIXES[1])] {
            let text = self.router.ip(&[family, "route", "show", "root", prefix]);
            out += &format!(
                "$ ip -n {} {family} route show root {prefix}\n",
                self.router.name()
            );
            out += if text.trim().is_empty() {
                "(no route)\n"
            } else {
                &text
            };
        }
        out
    }

    /// `vtysh -c command` against the router (`None`) or a node's FRR.
    pub fn vtysh(&self, node: Option<usize>, command: &str) -> String {
        frr::vtysh(&self.frr_dir(node), command)
    }

    /// The addresses on a node's `lo` besides loopback ones: the service IPs l3lb holds there.
    pub fn node_addresses(&self, node: usize) -> Vec<IpAddr> {
        self.nodes[node].addresses()
    }

    /// Writes the Service (and its EndpointSlices) as `<manifests>/<name>.yaml`, creating the
    /// pods it names first and pointing the nodes' DNAT at them. Returns when the file was
    /// written (the start of the convergence clock) and its contents.
    pub fn apply(&mut self, service: &Service) -> (Instant, String) {
        for endpoint in &service.endpoints {
            self.ensure_pod(&endpoint.pod, endpoint.node)
                .unwrap_or_else(|err| panic!("starting pod {}: {err}", endpoint.pod));
        }
        self.services.insert(service.name.clone(), service.clone());
        self.update_proxy();
        let text = self.manifest(service);
        (self.manifests.write(&service.name, &text), text)
    }

    /// Writes any other manifest (an `L3lbIPPool`, say) as `<manifests>/<name>.yaml`; returns
    /// when.
    pub fn write_manifest(&mut self, name: &str, text: &str) -> Instant {
        self.manifests.write(name, text)
    }

    /// Deletes the Service's manifest; returns when.
    pub fn delete_service(&mut self, name: &str) -> Instant {
        let at = self.manifests.remove(name);
        self.services.remove(name);
        self.update_proxy();
        at
    }

    /// The YAML the lab writes for `service`: real Kubernetes object shapes. Its pods must exist.
    pub fn manifest(&self, service: &Service) -> String {
        manifests::render(service, |pod| {
            self.pods
                .get(pod)
                .unwrap_or_else(|| panic!("the lab has no pod {pod}"))
                .addresses
        })
    }

    /// One HTTP request from the client to `ip`, from a fresh source port each time (so that
    /// successive requests hash onto different ECMP nexthops).
    pub fn client_get(&mut self, ip: IpAddr) -> Result<Reply, String> {
        let port = self.next_port;
        self.next_port = if port >= 60000 { 30000 } else { port + 1 };
        client::get(&self.client, ip, port)
    }

    /// A `bytes`-long download from the client to `ip`, through the router's narrow link to
    /// the client (see [`CLIENT_LINK_MTU`]).
    pub fn client_download(&self, ip: IpAddr, bytes: u64) -> Result<Download, String> {
        client::download(&self.client, ip, bytes)
    }

    /// Stops a node's l3lb with SIGTERM and waits for it to exit.
    pub fn stop_l3lb(&mut self, node: usize) -> Result<ExitStatus, LabError> {
        self.nodes[node].stop_l3lb()
    }

    /// Starts a node's l3lb (again), logging to its log file, and waits until it has started.
    pub fn start_l3lb(&mut self, node: usize) -> Result<(), LabError> {
        let pin_root = self.pin_root(node);
        let how = L3lbCommand {
            binary: &self.options.l3lb,
            extra_args: &self.options.l3lb_args,
            manifests: self.manifests.dir(),
            pin_root: self.options.fast_path.then_some(pin_root.as_path()),
            weights: self.options.weights,
            cancel: self.options.cancel,
        };
        self.nodes[node].start_l3lb(&how)
    }

    pub fn l3lb_running(&mut self, node: usize) -> bool {
        self.nodes[node].l3lb_running()
    }

    /// A node's whole l3lb log.
    pub fn l3lb_log(&self, node: usize) -> String {
        self.nodes[node].log()
    }

    /// The lines a node's l3lb logged since the last call.
    pub fn new_log_lines(&mut self, node: usize) -> Vec<String> {
        self.nodes[node].new_log_lines()
    }

    /// Everything useful when a test fails: sessions, routes, addresses, log tails.
    pub fn diagnostics(&self) -> String {
        let mut out = String::from("--- lab diagnostics ---\n");
        out += &self.vtysh(None, "show bgp summary");
        out += &self.router_kernel_routes();
        for node in &self.nodes {
            out += &format!(
                "{} lo: {:?}\n{} l3lb log (tail):\n{}\n",
                node.name,
                node.addresses(),
                node.name,
                node.log_tail(15)
            );
        }
        out
    }

    /// Waits until the router has every BGP session established and past its initial updates
    /// and, unnumbered, every node has its default routes from the router (the nodes' replies
    /// leave by them).
    fn wait_fabric(&self) -> Result<(), LabError> {
        let sessions = if self.options.numbered {
            2 * self.nodes.len()
        } else {
            self.nodes.len()
        };
        let deadline = Duration::from_secs(30);
        frr::wait_sessions(&self.frr_dir(None), sessions, self.options.cancel, deadline)?;
        if !self.options.numbered {
            for node in &self.nodes {
                frr::wait_default_routes(&node.ns, self.options.cancel, deadline)?;
            }
        }
        Ok(())
    }

    fn fabric(&self) -> Fabric {
        Fabric {
            numbered: self.options.numbered,
            weights: self.options.weights,
            nodes: self.options.nodes,
        }
    }

    /// Where the FRR of the router (`None`) or a node keeps its files and vty sockets.
    fn frr_dir(&self, node: Option<usize>) -> PathBuf {
        match node {
            None => self.dir.path().join("router"),
            Some(index) => self.nodes[index].dir.clone(),
        }
    }

    /// Creates pod `name` on `node` unless it exists, and waits until it answers.
    fn ensure_pod(&mut self, name: &str, node: usize) -> Result<(), LabError> {
        assert!(
            node < self.nodes.len(),
            "the lab has no {}",
            node_name(node)
        );
        if !self.pods.start(name, node, &self.nodes[node].ns) {
            return Ok(());
        }
        // Recorded before waiting, so that `down` finds the pod even if this process dies.
        self.save_state();
        self.pods.wait_ready(name)
    }

    /// Rewrites every node's DNAT table from the Services (without the fast path, which needs
    /// none).
    fn update_proxy(&self) {
        if self.options.fast_path {
            return;
        }
        for (index, node) in self.nodes.iter().enumerate() {
            let script = proxy::script(index, self.services.values(), |pod| {
                self.pods.get(pod).map(|pod| pod.addresses)
            });
            proxy::load(&node.ns, &node.name, &script);
        }
    }
}
