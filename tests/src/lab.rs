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
//! `<lab>-pod-<pod>`. The FRR configs are `deploy/frr/node.conf` and `deploy/frr/router.conf`
//! with their placeholders filled in. All l3lbs read the same manifest directory (`--source
//! file:`); each announces what runs on its node, FRR redistributes `lo`, and the router ends up
//! with one ECMP route per service IP across the nodes that host a ready pod.
//!
//! Pods are namespaces behind their node (a veth, a /30 and a /64 each) running `lab-pod`, which
//! answers HTTP with its own name. For a request to a service IP to reach a pod, each node DNATs
//! `service IP:80` to its local pods with one nftables rule per service IP: what kube-proxy does
//! with `externalTrafficPolicy: Local`. (Routing the service IP on to a pod that also holds it
//! does not work: the node has the IP on its own `lo`, so the local table delivers it first.)
//!
//! Dropping the [`Lab`] stops every process gracefully (SIGTERM, then SIGKILL after a deadline),
//! deletes the namespaces, FRR's crash-log directories and the temp dir, also when a test fails
//! halfway. [`Lab::keep`] leaves it all running; [`Lab::down`] finds a kept lab again by its
//! name (a state file under `/run/l3lb-lab/` and the namespace names) and tears it down.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fmt,
    fs::{self, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::{
    daemon::{l3lb_binary, pod_binary},
    netns::{self, NetNs, sh},
};

/// The service prefixes every l3lb runs with, and that the FRR configs in `deploy/frr` permit.
pub const SERVICE_PREFIXES: [&str; 2] = ["10.0.100.0/24", "2001:db8:100::/64"];
/// The router's ASN; node `i` (0-based) has `FIRST_NODE_ASN + i`.
pub const ROUTER_ASN: u32 = 65000;
pub const FIRST_NODE_ASN: u32 = 65001;
/// The client's addresses (behind the router), as the pods see them: the nodes DNAT, not SNAT.
pub const CLIENT_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
pub const CLIENT_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 2);
/// The port every service and pod listens on.
pub const SERVICE_PORT: u16 = 80;
/// Name of the lab `cargo xtask lab` runs (its namespaces are `l3lb-lab-…`).
pub const DEFAULT_NAME: &str = "l3lb-lab";
/// Where a lab's state file lives (`<name>.state`), so that `down` finds a kept lab.
pub const STATE_DIR: &str = "/run/l3lb-lab";

const NODE_CONF: &str = include_str!("../../deploy/frr/node.conf");
const ROUTER_CONF: &str = include_str!("../../deploy/frr/router.conf");
const FRR_DAEMONS: &str = "/usr/lib/frr";
/// FRR daemons keep a crash-log directory `<daemon>.<pid>` here; removed after they stop.
const FRR_TMP: &str = "/var/tmp/frr";
/// The ranges the nodes peer from (the router's `bgp listen range`).
const NODE_LINKS_V4: &str = "172.16.0.0/16";
const NODE_LINKS_V6: &str = "fd00:16::/32";
/// nftables table holding each node's DNAT rules (the lab's kube-proxy).
const PROXY_TABLE: &str = "l3lb_lab_proxy";

/// Name of node `index`: `node-a`, `node-b`, …
pub fn node_name(index: usize) -> String {
    assert!(index < 26, "the lab names nodes node-a to node-z");
    format!("node-{}", char::from(b'a' + index as u8))
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Namespace name prefix; unique per lab running at the same time.
    pub name: String,
    /// Number of nodes (1 to 26).
    pub nodes: usize,
    /// Extra arguments for every `l3lb run` (e.g. `--retain-on-exit`).
    pub l3lb_args: Vec<String>,
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

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Interrupted => write!(f, "interrupted"),
            LabError::Timeout(what) => write!(f, "timed out: {what}"),
            LabError::Failed(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for LabError {}

/// A Service and its endpoints, as the lab writes them: a `type: LoadBalancer` Service with the
/// `l3lb.io/loadBalancerIPs` annotation, and one EndpointSlice per address family.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    pub fn new(name: &str, ips: &[&str]) -> Self {
        Service {
            name: name.to_owned(),
            ips: ips
                .iter()
                .map(|ip| ip.parse().unwrap_or_else(|_| panic!("{ip:?} is not an IP")))
                .collect(),
            endpoints: Vec::new(),
        }
    }

    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }
}

/// One endpoint: a pod (created on first use) on node `node`, with its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: String,
    pub node: usize,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    pub fn ready(pod: &str, node: usize) -> Self {
        Endpoint {
            pod: pod.to_owned(),
            node,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Draining: still serving its connections, no longer ready.
    pub fn terminating(pod: &str, node: usize) -> Self {
        Endpoint {
            ready: false,
            serving: true,
            terminating: true,
            ..Endpoint::ready(pod, node)
        }
    }

    pub fn not_ready(pod: &str, node: usize) -> Self {
        Endpoint {
            ready: false,
            serving: false,
            terminating: false,
            ..Endpoint::ready(pod, node)
        }
    }
}

/// What a pod answered to one client connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub pod: String,
    pub node: String,
    /// The client address and port the pod saw.
    pub peer: String,
    /// The client's source port.
    pub local_port: u16,
}

/// The router's kernel routing table, seen from any thread (for sampling it continuously while
/// the lab changes).
#[derive(Clone, Debug)]
pub struct RouterView {
    ns: String,
    /// The router's interface towards node `i`.
    devices: Vec<String>,
}

/// Nexthop index of a route through an interface that leads to no node.
pub const NOT_A_NODE: usize = usize::MAX;

impl RouterView {
    /// The nodes the router sends `ip` to (ECMP: several), or `None` without a route.
    pub fn route(&self, ip: IpAddr) -> Option<BTreeSet<usize>> {
        let (family, host) = match ip {
            IpAddr::V4(_) => ("-4", format!("{ip}/32")),
            IpAddr::V6(_) => ("-6", format!("{ip}/128")),
        };
        let json = self.ip_json(&[family, "route", "show", "exact", &host]);
        self.parse(&json).remove(&ip)
    }

    /// Every host route inside the service prefixes, with its nodes.
    pub fn routes(&self) -> BTreeMap<IpAddr, BTreeSet<usize>> {
        let mut routes = BTreeMap::new();
        for (family, prefix) in [("-4", SERVICE_PREFIXES[0]), ("-6", SERVICE_PREFIXES[1])] {
            let json = self.ip_json(&[family, "route", "show", "root", prefix]);
            routes.extend(self.parse(&json));
        }
        routes
    }

    fn ip_json(&self, args: &[&str]) -> String {
        // Own process group, like everything the lab runs: the terminal's Ctrl-C is for the
        // lab to act on, not for killing its probes halfway.
        let out = sh(Command::new("ip")
            .args(["-n", &self.ns, "-j"])
            .args(args)
            .process_group(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn parse(&self, json: &str) -> BTreeMap<IpAddr, BTreeSet<usize>> {
        let mut routes = BTreeMap::new();
        let Ok(serde_json::Value::Array(entries)) = serde_json::from_str(json) else {
            return routes;
        };
        for entry in entries {
            let Some(dst) = entry["dst"].as_str() else {
                continue;
            };
            let Ok(ip) = dst.split('/').next().unwrap_or(dst).parse::<IpAddr>() else {
                continue;
            };
            let devices: Vec<&str> = match entry["nexthops"].as_array() {
                Some(hops) => hops.iter().filter_map(|hop| hop["dev"].as_str()).collect(),
                None => entry["dev"].as_str().into_iter().collect(),
            };
            let nodes = devices
                .into_iter()
                .map(|dev| {
                    self.devices
                        .iter()
                        .position(|known| known == dev)
                        .unwrap_or(NOT_A_NODE)
                })
                .collect();
            routes.insert(ip, nodes);
        }
        routes
    }
}

/// Node names for a set of node indexes, for messages: `node-a, node-c` or `none`.
pub fn nodes_label(nodes: &BTreeSet<usize>) -> String {
    if nodes.is_empty() {
        return "none".to_owned();
    }
    nodes
        .iter()
        .map(|&node| {
            if node == NOT_A_NODE {
                "a non-node interface".to_owned()
            } else {
                node_name(node)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Node {
    name: String,
    ns: NetNs,
    /// FRR files and the l3lb log.
    dir: PathBuf,
    l3lb: Option<Child>,
    l3lb_log: PathBuf,
    /// How far `new_log_lines` has read.
    log_offset: u64,
    /// Pods created on this node so far (their index picks their subnets).
    pods: u8,
}

struct Pod {
    node: usize,
    ns: NetNs,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    server: Child,
}

/// A directory removed with everything in it on drop, unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let template = CString::new(format!("/tmp/{prefix}-XXXXXX")).expect("no NUL in the name");
        let mut bytes = template.into_bytes_with_nul();
        // SAFETY: a writable NUL-terminated template ending in XXXXXX, as mkdtemp requires.
        let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        assert!(
            !made.is_null(),
            "mkdtemp /tmp/{prefix}-XXXXXX: {}",
            std::io::Error::last_os_error()
        );
        bytes.pop();
        TempDir {
            path: PathBuf::from(String::from_utf8(bytes).expect("an ASCII path")),
            keep: false,
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A running lab. Dropping it tears everything down.
pub struct Lab {
    options: LabOptions,
    manifests: PathBuf,
    state_file: PathBuf,
    started: Instant,
    router: NetNs,
    client: NetNs,
    nodes: Vec<Node>,
    pods: BTreeMap<String, Pod>,
    /// zebra and bgpd of the router and every node.
    frr: Vec<Child>,
    services: BTreeMap<String, Service>,
    next_port: u16,
    kept: bool,
    /// Last, so that it goes after the namespaces and processes that use it.
    dir: TempDir,
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
        if !Path::new(FRR_DAEMONS).join("bgpd").is_file() {
            return Err(LabError::Failed(format!(
                "{FRR_DAEMONS}/bgpd is missing: install FRR (`apt-get install frr`)"
            )));
        }
        let name = options.name.clone();
        let taken: Vec<String> = namespaces_of(&name);
        if !taken.is_empty() {
            return Err(LabError::Failed(format!(
                "a lab named {name} is up already ({}): tear it down with `cargo xtask lab down` \
                 (or `l3lb-lab down --name {name}`)",
                taken.join(", ")
            )));
        }

        let dir = TempDir::new(&name);
        let manifests = dir.path.join("manifests");
        fs::create_dir(&manifests).expect("creating the manifest directory");
        let progress = options.progress;
        let say = |what: &str| {
            if progress {
                println!("  {what}");
            }
        };

        say("namespaces, links and addresses");
        let router = NetNs::named(&format!("{name}-router"));
        let client = NetNs::named(&format!("{name}-client"));
        let mut lab = Lab {
            manifests,
            state_file: Path::new(STATE_DIR).join(format!("{name}.state")),
            started: Instant::now(),
            router,
            client,
            nodes: Vec::new(),
            pods: BTreeMap::new(),
            frr: Vec::new(),
            services: BTreeMap::new(),
            next_port: 30000,
            kept: false,
            dir,
            options,
        };
        lab.save_state();
        lab.wire_router_and_client();
        for index in 0..lab.options.nodes {
            lab.add_node(index);
        }
        lab.save_state();

        say("FRR (zebra + bgpd) on the router, then on every node");
        lab.start_frr(None)?;
        for index in 0..lab.nodes.len() {
            lab.start_frr(Some(index))?;
        }
        lab.save_state();

        say("one l3lb per node, all reading the lab's manifest directory");
        lab.update_proxy();
        for index in 0..lab.nodes.len() {
            lab.start_l3lb(index)?;
        }

        say("waiting for the BGP sessions (IPv4 and IPv6 per node) and their initial updates");
        lab.wait_sessions(Duration::from_secs(30))?;
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.options.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    pub fn manifest_dir(&self) -> &Path {
        &self.manifests
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
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
        let name = self.name();
        let mut out = String::new();
        let head = format!("  client ─── router (AS {ROUTER_ASN}, ECMP) ─");
        let indent = " ".repeat(head.chars().count());
        for index in 0..self.nodes.len() {
            let branch = match (index, self.nodes.len()) {
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
        out += &format!(
            "  {:<8} {:<22} AS {ROUTER_ASN}, to-client 192.168.100.1/24 fd00:c::1/64, \
             listens for BGP from {NODE_LINKS_V4} and {NODE_LINKS_V6}\n",
            "router",
            format!("{name}-router")
        );
        for (index, node) in self.nodes.iter().enumerate() {
            let n = index + 1;
            out += &format!(
                "  {:<8} {:<22} AS {}, uplink 172.16.{n}.2/30 fd00:16:{n:x}::2/64 (router .1), \
                 pods in 10.244.{n}.0/24 fd00:244:{n:x}::/48\n",
                node.name,
                node.ns.name(),
                FIRST_NODE_ASN + index as u32
            );
        }
        out
    }

    /// The router's routes, for sampling from another thread.
    pub fn router_view(&self) -> RouterView {
        RouterView {
            ns: self.router.name().to_owned(),
            devices: self
                .nodes
                .iter()
                .map(|node| router_device(&node.name))
                .collect(),
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

    /// [`Lab::wait_route`] for several IPs at once, each timed on its own: polls every couple of
    /// milliseconds until all match.
    pub fn wait_routes(
        &self,
        wanted: &[(IpAddr, &[usize])],
        since: Instant,
        deadline: Duration,
    ) -> Result<Vec<Duration>, LabError> {
        let view = self.router_view();
        let wanted: Vec<(IpAddr, BTreeSet<usize>)> = wanted
            .iter()
            .map(|(ip, nodes)| (*ip, nodes.iter().copied().collect()))
            .collect();
        let mut seen: Vec<Option<Duration>> = vec![None; wanted.len()];
        let give_up = Instant::now() + deadline;
        loop {
            let mut last = Vec::new();
            for ((ip, want), seen) in wanted.iter().zip(seen.iter_mut()) {
                let have = view.route(*ip).unwrap_or_default();
                if &have == want {
                    seen.get_or_insert_with(|| since.elapsed());
                } else {
                    // A match that came undone again does not count.
                    *seen = None;
                    last.push(format!(
                        "route to {ip} at the router goes via {} instead of {}",
                        nodes_label(&have),
                        nodes_label(want)
                    ));
                }
            }
            if last.is_empty() {
                return Ok(seen.into_iter().map(Option::unwrap_or_default).collect());
            }
            self.check_cancel()?;
            if Instant::now() >= give_up {
                return Err(LabError::Timeout(format!(
                    "{} after {deadline:?}",
                    last.join("; ")
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
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
        let dir = self.frr_dir(node);
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&dir)
            .args(["-c", command])
            .process_group(0)
            .output()
            .unwrap_or_else(|err| panic!("starting vtysh: {err}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The addresses on a node's `lo` besides loopback ones: the service IPs l3lb holds there.
    pub fn node_addresses(&self, node: usize) -> Vec<IpAddr> {
        let json = self.nodes[node].ns.ip(&["-j", "addr", "show", "dev", "lo"]);
        let mut addresses = Vec::new();
        if let Ok(serde_json::Value::Array(links)) = serde_json::from_str(&json) {
            for link in links {
                for info in link["addr_info"].as_array().into_iter().flatten() {
                    if let Some(Ok(ip)) = info["local"].as_str().map(str::parse::<IpAddr>)
                        && !ip.is_loopback()
                    {
                        addresses.push(ip);
                    }
                }
            }
        }
        addresses
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
        let file = self.manifests.join(format!("{}.yaml", service.name));
        let temporary = self.manifests.join(format!(".{}.yaml.tmp", service.name));
        fs::write(&temporary, &text).expect("writing the manifest");
        fs::rename(&temporary, &file).expect("moving the manifest into place");
        (Instant::now(), text)
    }

    /// Deletes the Service's manifest; returns when.
    pub fn delete_service(&mut self, name: &str) -> Instant {
        let file = self.manifests.join(format!("{name}.yaml"));
        fs::remove_file(&file).unwrap_or_else(|err| panic!("removing {}: {err}", file.display()));
        let at = Instant::now();
        self.services.remove(name);
        self.update_proxy();
        at
    }

    /// The YAML the lab writes for `service`: real Kubernetes object shapes.
    pub fn manifest(&self, service: &Service) -> String {
        let ips: Vec<String> = service.ips.iter().map(IpAddr::to_string).collect();
        let mut out = format!(
            "apiVersion: v1\n\
             kind: Service\n\
             metadata:\n  \
               name: {name}\n  \
               namespace: default\n  \
               annotations:\n    \
                 l3lb.io/loadBalancerIPs: \"{ips}\"\n\
             spec:\n  \
               type: LoadBalancer\n  \
               selector: {{app: {name}}}\n  \
               ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {SERVICE_PORT}, protocol: TCP}}]\n",
            name = service.name,
            ips = ips.join(","),
        );
        for (family, suffix) in [("IPv4", "v4"), ("IPv6", "v6")] {
            let wanted = service
                .ips
                .iter()
                .any(|ip| ip.is_ipv4() == (family == "IPv4"));
            if !wanted {
                continue;
            }
            out += &format!(
                "---\n\
                 apiVersion: discovery.k8s.io/v1\n\
                 kind: EndpointSlice\n\
                 metadata:\n  \
                   name: {name}-{suffix}\n  \
                   namespace: default\n  \
                   labels: {{kubernetes.io/service-name: {name}}}\n\
                 addressType: {family}\n\
                 ports: [{{name: http, port: {SERVICE_PORT}, protocol: TCP}}]\n\
                 endpoints:",
                name = service.name
            );
            if service.endpoints.is_empty() {
                out += " []\n";
                continue;
            }
            out += "\n";
            for endpoint in &service.endpoints {
                let pod = &self.pods[&endpoint.pod];
                let address = if family == "IPv4" {
                    pod.ipv4.to_string()
                } else {
                    pod.ipv6.to_string()
                };
                out += &format!(
                    "- {{addresses: [\"{address}\"], nodeName: {node}, \
                     targetRef: {{kind: Pod, namespace: default, name: {pod}}}, \
                     conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}}}\n",
                    node = node_name(endpoint.node),
                    pod = endpoint.pod,
                    ready = endpoint.ready,
                    serving = endpoint.serving,
                    terminating = endpoint.terminating,
                );
            }
        }
        out
    }

    /// One HTTP request from the client to `ip`, from a fresh source port each time (so that
    /// successive requests hash onto different ECMP nexthops).
    pub fn client_get(&mut self, ip: IpAddr) -> Result<Reply, String> {
        let port = self.next_port;
        self.next_port = if port >= 60000 { 30000 } else { port + 1 };
        let url = match ip {
            IpAddr::V4(_) => format!("http://{ip}:{SERVICE_PORT}/"),
            IpAddr::V6(_) => format!("http://[{ip}]:{SERVICE_PORT}/"),
        };
        let out = self
            .client
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "3",
                "--local-port",
                &port.to_string(),
                &url,
            ])
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .map_err(|err| format!("starting curl: {err}"))?;
        if !out.status.success() {
            return Err(format!(
                "curl {url} from port {port}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let body = String::from_utf8_lossy(&out.stdout);
        let field = |key: &str| {
            body.split_whitespace()
                .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        match (field("pod"), field("node"), field("peer")) {
            (Some(pod), Some(node), Some(peer)) => Ok(Reply {
                pod,
                node,
                peer,
                local_port: port,
            }),
            _ => Err(format!("curl {url}: unexpected answer {body:?}")),
        }
    }

    /// Stops a node's l3lb with SIGTERM and waits for it to exit.
    pub fn stop_l3lb(&mut self, node: usize) -> Result<ExitStatus, LabError> {
        let name = self.nodes[node].name.clone();
        let Some(mut child) = self.nodes[node].l3lb.take() else {
            return Err(LabError::Failed(format!("l3lb on {name} is not running")));
        };
        signal(child.id() as i32, libc::SIGTERM);
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for l3lb") {
                return Ok(status);
            }
            if Instant::now() >= give_up {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Timeout(format!(
                    "l3lb on {name} did not exit within 10 s of SIGTERM (killed)"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts a node's l3lb (again), logging to its log file, and waits until it has started.
    pub fn start_l3lb(&mut self, node: usize) -> Result<(), LabError> {
        let prefixes = SERVICE_PREFIXES.join(",");
        let source = format!("file:{}", self.manifests.display());
        let options = &self.options;
        let entry = &mut self.nodes[node];
        assert!(entry.l3lb.is_none(), "l3lb already runs on {}", entry.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&entry.l3lb_log)
            .expect("opening the l3lb log");
        let mut command = entry.ns.command(&options.l3lb.to_string_lossy());
        command
            .args(["run", "--node-name", &entry.name, "--prefix", &prefixes])
            .args(["--interface", "lo", "--source", &source])
            .args(&options.l3lb_args)
            .env("NO_COLOR", "1");
        writeln!(log, "==> lab: {}", describe(&command)).expect("writing the l3lb log");
        let started_at = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        let child = spawn_logged(&mut command, &log);
        entry.l3lb = Some(child);
        let log_path = entry.l3lb_log.clone();
        let name = entry.name.clone();
        poll(self.options.cancel, Duration::from_secs(10), || {
            let entry = &mut self.nodes[node];
            let child = entry.l3lb.as_mut().expect("just started");
            if let Some(status) = child.try_wait().expect("waiting for l3lb") {
                entry.l3lb = None;
                return Some(Err(LabError::Failed(format!(
                    "l3lb on {name} exited at once ({status}):\n{}",
                    tail(&log_path, 30)
                ))));
            }
            let written = fs::metadata(&log_path).map(|meta| meta.len()).unwrap_or(0);
            (written > started_at).then_some(Ok(()))
        })
        .map_err(|err| match err {
            LabError::Timeout(_) => {
                LabError::Timeout(format!("l3lb on {name} logged nothing within 10 s"))
            }
            other => other,
        })?
    }

    pub fn l3lb_running(&mut self, node: usize) -> bool {
        self.nodes[node]
            .l3lb
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    /// A node's whole l3lb log.
    pub fn l3lb_log(&self, node: usize) -> String {
        fs::read_to_string(&self.nodes[node].l3lb_log).unwrap_or_default()
    }

    /// The lines a node's l3lb logged since the last call.
    pub fn new_log_lines(&mut self, node: usize) -> Vec<String> {
        let entry = &mut self.nodes[node];
        let Ok(mut file) = fs::File::open(&entry.l3lb_log) else {
            return Vec::new();
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(entry.log_offset)).is_err()
            || file.read_to_string(&mut text).is_err()
        {
            return Vec::new();
        }
        // Only whole lines; a line being written is read next time.
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        entry.log_offset += complete as u64;
        text[..complete].lines().map(str::to_owned).collect()
    }

    /// Everything useful when a test fails: sessions, routes, addresses, log tails.
    pub fn diagnostics(&self) -> String {
        let mut out = String::from("--- lab diagnostics ---\n");
        out += &self.vtysh(None, "show bgp summary");
        out += &self.router_kernel_routes();
        for (index, node) in self.nodes.iter().enumerate() {
            out += &format!(
                "{} lo: {:?}\n{} l3lb log (tail):\n{}\n",
                node.name,
                self.node_addresses(index),
                node.name,
                tail(&node.l3lb_log, 15)
            );
        }
        out
    }

    /// Leaves the lab running after this process exits, and says how to get into it.
    pub fn keep(mut self) -> String {
        self.kept = true;
        self.dir.keep = true;
        self.router.set_keep(true);
        self.client.set_keep(true);
        for node in &mut self.nodes {
            node.ns.set_keep(true);
        }
        for pod in self.pods.values_mut() {
            pod.ns.set_keep(true);
        }
        self.save_state();
        let router = self.router.name();
        let router_dir = self.frr_dir(None);
        let node_dir = self.frr_dir(Some(0));
        let node = self.nodes[0].ns.name();
        format!(
            "The lab {name} stays up. Look around:\n\
             \x20 nsenter --net=/run/netns/{router} vtysh --vty_socket {router_dir}   # the router's FRR\n\
             \x20 nsenter --net=/run/netns/{node} vtysh --vty_socket {node_dir}   # {node_a}'s FRR\n\
             \x20 ip -n {router} route show root {v4}\n\
             \x20 ip -n {node} addr show dev lo\n\
             \x20 nsenter --net=/run/netns/{name}-client curl http://10.0.100.7/\n\
             \x20 manifests (every l3lb reads them; edit or add files): {manifests}\n\
             \x20 logs: {dir}/<router|node-x>/{{zebra,bgpd}}.log, {dir}/node-x/l3lb.log\n\
             Tear it down with `cargo xtask lab down`.",
            name = self.name(),
            router_dir = router_dir.display(),
            node_dir = node_dir.display(),
            node_a = self.nodes[0].name,
            v4 = SERVICE_PREFIXES[0],
            manifests = self.manifests.display(),
            dir = self.dir.path.display(),
        )
    }

    /// Tears down a lab left running (by [`Lab::keep`], or by a process that died): every
    /// process in its namespaces, the namespaces, FRR's crash-log directories, its temp dir and
    /// state file. Returns what it removed.
    pub fn down(name: &str) -> Vec<String> {
        let state_file = Path::new(STATE_DIR).join(format!("{name}.state"));
        let state = fs::read_to_string(&state_file).unwrap_or_default();
        let values = |key: &str| -> Vec<String> {
            state
                .lines()
                .filter_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
                .map(str::to_owned)
                .collect()
        };
        let mut namespaces: BTreeSet<String> = values("netns").into_iter().collect();
        namespaces.extend(namespaces_of(name));
        let namespaces: Vec<String> = namespaces.into_iter().collect();
        let frr_pids: Vec<i32> = values("frr")
            .iter()
            .filter_map(|pid| pid.parse().ok())
            .collect();

        let mut removed = Vec::new();
        let stopped = stop_namespaces(&namespaces);
        if !stopped.is_empty() {
            removed.push(format!("{} processes", stopped.len()));
        }
        // They are not our children: init reaps them. Give it a moment, so that right after
        // `down` no zombie of the lab shows in `ps` (nothing depends on it).
        crate::wait_until(Duration::from_secs(3), || {
            stopped
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        });
        remove_frr_tmp(&frr_pids);
        for namespace in &namespaces {
            drop(NetNs::existing(namespace));
            removed.push(format!("namespace {namespace}"));
        }
        for dir in values("dir") {
            // Only ever a directory the lab made itself.
            if dir.starts_with(&format!("/tmp/{name}-")) && fs::remove_dir_all(&dir).is_ok() {
                removed.push(dir);
            }
        }
        if fs::remove_file(&state_file).is_ok() {
            removed.push(state_file.display().to_string());
        }
        let _ = fs::remove_dir(STATE_DIR); // only when no other lab's state is in it
        removed
    }

    /// Tears down labs whose names start with `prefix` and whose process died without cleaning
    /// up (killed with SIGKILL, say), judged by their state files; kept labs stay. Returns the
    /// names of the labs removed.
    pub fn down_abandoned(prefix: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(STATE_DIR) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".state") else {
                continue;
            };
            if !name.starts_with(prefix) {
                continue;
            }
            let state = fs::read_to_string(entry.path()).unwrap_or_default();
            let owner_alive = state
                .lines()
                .find_map(|line| line.strip_prefix("owner "))
                .and_then(|pid| pid.trim().parse().ok())
                .is_some_and(alive);
            let kept = state.lines().any(|line| line == "kept true");
            if !owner_alive && !kept {
                Lab::down(name);
                removed.push(name.to_owned());
            }
        }
        removed
    }

    /// What a lab named `name` left behind: namespaces and its state file.
    pub fn leftovers(name: &str) -> Vec<String> {
        let mut left = namespaces_of(name);
        let state_file = Path::new(STATE_DIR).join(format!("{name}.state"));
        if state_file.exists() {
            left.push(state_file.display().to_string());
        }
        left
    }

    fn check_cancel(&self) -> Result<(), LabError> {
        match self.options.cancel {
            Some(flag) if flag.load(Ordering::SeqCst) => Err(LabError::Interrupted),
            _ => Ok(()),
        }
    }

    fn namespace_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods
            .values()
            .map(|pod| pod.ns.name().to_owned())
            .collect();
        names.extend(self.nodes.iter().map(|node| node.ns.name().to_owned()));
        names.push(self.client.name().to_owned());
        names.push(self.router.name().to_owned());
        names
    }

    fn save_state(&self) {
        let mut text = format!(
            "# l3lb lab {}: `cargo xtask lab down` (or `l3lb-lab down --name {}`) removes it\n",
            self.name(),
            self.name()
        );
        text += &format!("owner {}\n", std::process::id());
        text += &format!("kept {}\n", self.kept);
        text += &format!("dir {}\n", self.dir.path.display());
        for namespace in self.namespace_names() {
            text += &format!("netns {namespace}\n");
        }
        for child in &self.frr {
            text += &format!("frr {}\n", child.id());
        }
        fs::create_dir_all(STATE_DIR).expect("creating the lab state directory");
        fs::write(&self.state_file, text).expect("writing the lab state file");
    }

    fn wire_router_and_client(&mut self) {
        sysctl(
            &self.router,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                // Spread flows over the ECMP nexthops by ports too, not only by addresses: the lab
                // has one client address.
                ("net.ipv4.fib_multipath_hash_policy", "1"),
                ("net.ipv6.fib_multipath_hash_policy", "1"),
                // Replies come back from whichever node the flow hashed to.
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        );
        sysctl(
            &self.client,
            &[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        );
        netns::veth_pair(
            &self.router,
            "to-client",
            "192.168.100.1/24",
            &self.client,
            "uplink",
            &format!("{CLIENT_IPV4}/24"),
        );
        self.router
            .ip(&["addr", "add", "fd00:c::1/64", "dev", "to-client"]);
        self.client
            .ip(&["addr", "add", &format!("{CLIENT_IPV6}/64"), "dev", "uplink"]);
        self.client
            .ip(&["route", "add", "default", "via", "192.168.100.1"]);
        self.client
            .ip(&["-6", "route", "add", "default", "via", "fd00:c::1"]);
    }

    fn add_node(&mut self, index: usize) {
        let name = node_name(index);
        let n = index + 1;
        let ns = NetNs::named(&format!("{}-{name}", self.name()));
        let dir = self.dir.path.join(&name);
        fs::create_dir(&dir).expect("creating the node's directory");
        let l3lb_log = dir.join("l3lb.log");
        // In the lab's list at once, so that a failure below still removes the namespace.
        self.nodes.push(Node {
            name: name.clone(),
            ns,
            dir,
            l3lb: None,
            l3lb_log,
            log_offset: 0,
            pods: 0,
        });
        let ns = &self.nodes[index].ns;
        sysctl(
            ns,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        );
        netns::veth_pair(
            &self.router,
            &router_device(&name),
            &format!("172.16.{n}.1/30"),
            ns,
            "uplink",
            &format!("172.16.{n}.2/30"),
        );
        self.router.ip(&[
            "addr",
            "add",
            &format!("fd00:16:{n:x}::1/64"),
            "dev",
            &router_device(&name),
        ]);
        ns.ip(&[
            "addr",
            "add",
            &format!("fd00:16:{n:x}::2/64"),
            "dev",
            "uplink",
        ]);
        ns.ip(&["route", "add", "default", "via", &format!("172.16.{n}.1")]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd00:16:{n:x}::1"),
        ]);
    }

    fn frr_dir(&self, node: Option<usize>) -> PathBuf {
        match node {
            None => self.dir.path.join("router"),
            Some(index) => self.nodes[index].dir.clone(),
        }
    }

    /// zebra, then bgpd (once zebra's API socket exists), in the router (`None`) or a node;
    /// waits until bgpd has read its config (its vty socket appears).
    fn start_frr(&mut self, node: Option<usize>) -> Result<(), LabError> {
        let dir = self.frr_dir(node);
        fs::create_dir_all(&dir).expect("creating the FRR directory");
        let (hostname, bgpd_conf) = match node {
            None => (
                "router".to_owned(),
                fill(
                    ROUTER_CONF,
                    &[
                        ("HOSTNAME", "router".to_owned()),
                        ("ROUTER_ID", "192.168.100.1".to_owned()),
                        ("ROUTER_ASN", ROUTER_ASN.to_string()),
                        ("NODES_IPV4", NODE_LINKS_V4.to_owned()),
                        ("NODES_IPV6", NODE_LINKS_V6.to_owned()),
                    ],
                ),
            ),
            Some(index) => {
                let n = index + 1;
                let name = self.nodes[index].name.clone();
                let conf = fill(
                    NODE_CONF,
                    &[
                        ("HOSTNAME", name.clone()),
                        ("ROUTER_ID", format!("172.16.{n}.2")),
                        ("NODE_ASN", (FIRST_NODE_ASN + index as u32).to_string()),
                        ("ROUTER_ASN", ROUTER_ASN.to_string()),
                        ("ROUTER_IPV4", format!("172.16.{n}.1")),
                        ("ROUTER_IPV6", format!("fd00:16:{n:x}::1")),
                    ],
                );
                (name, conf)
            }
        };
        fs::write(dir.join("zebra.conf"), format!("hostname {hostname}\n"))
            .expect("writing zebra.conf");
        fs::write(dir.join("bgpd.conf"), bgpd_conf).expect("writing bgpd.conf");

        let where_ = if node.is_some() {
            hostname.clone()
        } else {
            "the router".to_owned()
        };
        for daemon in ["zebra", "bgpd"] {
            let ns = match node {
                None => &self.router,
                Some(index) => &self.nodes[index].ns,
            };
            let mut command = ns.command(&format!("{FRR_DAEMONS}/{daemon}"));
            command
                .arg("-f")
                .arg(dir.join(format!("{daemon}.conf")))
                .arg("-i")
                .arg(dir.join(format!("{daemon}.pid")))
                .arg("-z")
                .arg(dir.join("zserv.api"))
                .arg("--vty_socket")
                .arg(&dir)
                // Root, with the vty group FRR insists on (root is not a member of frrvty, but
                // the group given here counts).
                .args(["-u", "root", "-g", vty_group()])
                // No vty on TCP: vtysh uses the socket in `dir`.
                .args(["-P", "0"])
                .arg("--log")
                .arg(format!(
                    "file:{}",
                    dir.join(format!("{daemon}.log")).display()
                ));
            let out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{daemon}.out")))
                .expect("opening the FRR output file");
            let child = spawn_logged(&mut command, &out);
            self.frr.push(child);
            let socket = dir.join(if daemon == "zebra" {
                "zserv.api".to_owned()
            } else {
                format!("{daemon}.vty")
            });
            let out_file = dir.join(format!("{daemon}.out"));
            let result = poll(self.options.cancel, Duration::from_secs(10), || {
                let child = self.frr.last_mut().expect("just started");
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(LabError::Failed(format!(
                        "{daemon} on {where_} exited ({status}):\n{}",
                        tail(&out_file, 20)
                    ))));
                }
                socket.exists().then_some(Ok(()))
            });
            match result {
                Ok(inner) => inner?,
                Err(LabError::Timeout(_)) => {
                    return Err(LabError::Timeout(format!(
                        "{daemon} on {where_} did not create {} within 10 s",
                        socket.display()
                    )));
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Waits until the router has an established IPv4 and IPv6 session with every node, and has
    /// received each node's initial updates (its End-of-RIB, an UPDATE). Until then a node holds
    /// back what it announces for the update-group coalesce time (about a second), which would
    /// count against the first change's convergence.
    fn wait_sessions(&mut self, deadline: Duration) -> Result<(), LabError> {
        let want = 2 * self.nodes.len();
        let mut ready = 0;
        let result = poll(self.options.cancel, deadline, || {
            let json = self.vtysh(None, "show bgp neighbors json");
            let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            ready = value
                .as_object()
                .into_iter()
                .flat_map(|peers| peers.values())
                .filter(|peer| {
                    peer["bgpState"] == "Established"
                        && peer["messageStats"]["updatesRecv"]
                            .as_u64()
                            .is_some_and(|updates| updates >= 1)
                })
                .count();
            (ready >= want).then_some(())
        });
        match result {
            Err(LabError::Timeout(_)) => Err(LabError::Timeout(format!(
                "{ready} of {want} BGP sessions at the router established and past their \
                 initial updates after {deadline:?}:\n{}",
                self.vtysh(None, "show bgp summary")
            ))),
            other => other,
        }
    }

    /// Creates pod `name` on `node` unless it exists: a namespace behind the node, its /30 and
    /// /64, and `lab-pod` answering on port 80.
    fn ensure_pod(&mut self, name: &str, node: usize) -> Result<(), LabError> {
        if let Some(pod) = self.pods.get(name) {
            assert_eq!(
                pod.node,
                node,
                "pod {name} runs on {}, not {}",
                node_name(pod.node),
                node_name(node)
            );
            return Ok(());
        }
        assert!(
            !name.is_empty()
                && name.len() <= 40
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "pod names are short DNS labels, not {name:?}"
        );
        assert!(
            node < self.nodes.len(),
            "the lab has no {}",
            node_name(node)
        );
        let k = self.nodes[node].pods;
        assert!(k < 64, "at most 64 pods per node");
        self.nodes[node].pods += 1;
        let n = node + 1;
        let ipv4 = Ipv4Addr::new(10, 244, n as u8, 4 * k + 2);
        let gateway4 = Ipv4Addr::new(10, 244, n as u8, 4 * k + 1);
        let ipv6 = Ipv6Addr::new(0xfd00, 0x244, n as u16, k as u16, 0, 0, 0, 2);
        let gateway6 = Ipv6Addr::new(0xfd00, 0x244, n as u16, k as u16, 0, 0, 0, 1);

        let ns = NetNs::named(&format!("{}-pod-{name}", self.name()));
        sysctl(
            &ns,
            &[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        );
        let node_ns = &self.nodes[node].ns;
        let device = format!("pod{k}");
        netns::veth_pair(
            node_ns,
            &device,
            &format!("{gateway4}/30"),
            &ns,
            "eth0",
            &format!("{ipv4}/30"),
        );
        node_ns.ip(&["addr", "add", &format!("{gateway6}/64"), "dev", &device]);
        ns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", "eth0"]);
        ns.ip(&["route", "add", "default", "via", &gateway4.to_string()]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gateway6.to_string(),
        ]);

        let pods_dir = self.dir.path.join("pods");
        fs::create_dir_all(&pods_dir).expect("creating the pods directory");
        let ready = pods_dir.join(format!("{name}.ready"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(pods_dir.join(format!("{name}.log")))
            .expect("opening the pod log");
        let mut command = ns.command(&self.options.pod_server.to_string_lossy());
        command
            .args(["--name", name, "--node", &node_name(node)])
            .arg("--port")
            .arg(SERVICE_PORT.to_string())
            .arg("--ready")
            .arg(&ready);
        let server = spawn_logged(&mut command, &log);
        self.pods.insert(
            name.to_owned(),
            Pod {
                node,
                ns,
                ipv4,
                ipv6,
                server,
            },
        );
        self.save_state();
        let pod_name = name.to_owned();
        let result = poll(self.options.cancel, Duration::from_secs(10), || {
            let pod = self.pods.get_mut(&pod_name).expect("just added");
            if let Ok(Some(status)) = pod.server.try_wait() {
                return Some(Err(LabError::Failed(format!(
                    "pod {pod_name}'s server exited ({status})"
                ))));
            }
            ready.exists().then_some(Ok(()))
        });
        match result {
            Ok(inner) => inner,
            Err(LabError::Timeout(_)) => Err(LabError::Timeout(format!(
                "pod {name}'s server did not start listening within 10 s"
            ))),
            Err(other) => Err(other),
        }
    }

    /// Rewrites every node's DNAT table from the Services: each service IP on port 80 goes to
    /// the node's own endpoints that are ready (or, when none is ready anywhere, that still
    /// serve): kube-proxy with `externalTrafficPolicy: Local`, the policy l3lb's announcements
    /// follow. One rule per service IP, spreading over several local pods with `numgen`.
    fn update_proxy(&self) {
        for (index, node) in self.nodes.iter().enumerate() {
            let mut rules = String::new();
            for service in self.services.values() {
                let ready_anywhere = service.endpoints.iter().any(|e| e.ready);
                let local: Vec<&Pod> = service
                    .endpoints
                    .iter()
                    .filter(|e| e.node == index && if ready_anywhere { e.ready } else { e.serving })
                    .filter_map(|e| self.pods.get(&e.pod))
                    .collect();
                if local.is_empty() {
                    continue;
                }
                for ip in &service.ips {
                    let (family, targets): (&str, Vec<String>) = match ip {
                        IpAddr::V4(_) => ("ip", local.iter().map(|p| p.ipv4.to_string()).collect()),
                        IpAddr::V6(_) => {
                            ("ip6", local.iter().map(|p| p.ipv6.to_string()).collect())
                        }
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
            let script = format!(
                "add table inet {PROXY_TABLE}\n\
                 flush table inet {PROXY_TABLE}\n\
                 table inet {PROXY_TABLE} {{\n\
                 \x20 chain prerouting {{\n\
                 \x20   type nat hook prerouting priority dstnat; policy accept;\n\
                 {rules}\
                 \x20 }}\n\
                 }}\n"
            );
            let mut child = node
                .ns
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
                "nft in {} failed: {}\n{script}",
                node.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        stop_namespaces(&self.namespace_names());
        // Reap our children (all dead or zombies by now; kill any that somehow are not).
        let children = self
            .frr
            .iter_mut()
            .chain(self.nodes.iter_mut().filter_map(|node| node.l3lb.as_mut()))
            .chain(self.pods.values_mut().map(|pod| &mut pod.server));
        for child in children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let frr_pids: Vec<i32> = self.frr.iter().map(|child| child.id() as i32).collect();
        remove_frr_tmp(&frr_pids);
        let _ = fs::remove_file(&self.state_file);
        let _ = fs::remove_dir(STATE_DIR); // only when no other lab's state is in it
        // The namespaces (fields) are deleted next, then the temp dir.
    }
}

/// Polls `probe` every 10 ms until it returns something, the deadline passes, or `cancel` is
/// raised.
fn poll<T>(
    cancel: Option<&'static AtomicBool>,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if cancel.is_some_and(|flag| flag.load(Ordering::SeqCst)) {
            return Err(LabError::Interrupted);
        }
        if Instant::now() >= give_up {
            return Err(LabError::Timeout(format!("nothing after {deadline:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The router's interface towards `node`.
fn router_device(node: &str) -> String {
    format!("to-{node}")
}

/// Namespaces that belong to the lab `name` by their names.
fn namespaces_of(name: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| {
                    matches!(rest, "router" | "client")
                        || rest.starts_with("node-")
                        || rest.starts_with("pod-")
                })
        })
        .map(str::to_owned)
        .collect()
}

/// SIGTERM to everything running in the namespaces, SIGKILL to what is left after 5 s; returns
/// the processes there were.
fn stop_namespaces(namespaces: &[String]) -> Vec<i32> {
    let pids: Vec<i32> = namespaces
        .iter()
        .flat_map(|ns| {
            Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    for &pid in &pids {
        signal(pid, libc::SIGTERM);
    }
    let all_gone = || pids.iter().all(|&pid| !alive(pid));
    if !crate::wait_until(Duration::from_secs(5), all_gone) {
        for &pid in &pids {
            if alive(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
        crate::wait_until(Duration::from_secs(2), all_gone);
    }
    pids
}

/// Running (not gone, not a zombie waiting to be reaped).
fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid > 0 names one process.
    if pid > 0 {
        unsafe { libc::kill(pid, signal) };
    }
}

/// FRR daemons leave `/var/tmp/frr/<daemon>.<pid>` behind when killed; remove ours, and the
/// parent when nothing else uses it.
fn remove_frr_tmp(pids: &[i32]) {
    for pid in pids {
        for daemon in ["zebra", "bgpd"] {
            let _ = fs::remove_dir_all(Path::new(FRR_TMP).join(format!("{daemon}.{pid}")));
        }
    }
    let _ = fs::remove_dir(FRR_TMP); // fails, as it should, when not empty
}

/// FRR requires its vty group among the groups it runs with.
fn vty_group() -> &'static str {
    let has_frrvty = fs::read_to_string("/etc/group")
        .is_ok_and(|groups| groups.lines().any(|line| line.starts_with("frrvty:")));
    if has_frrvty { "frrvty" } else { "root" }
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

/// `{{KEY}}` → value, for every key; panics when a placeholder is left.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    // Placeholders in comments are documentation; the config lines must be complete.
    let unfilled: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('!') && line.contains("{{"))
        .collect();
    assert!(unfilled.is_empty(), "unfilled placeholders: {unfilled:?}");
    text
}

/// Starts a long-running process with stdout and stderr into `log`, in its own process group so
/// that the terminal's Ctrl-C reaches only the lab, which then stops everything in order.
fn spawn_logged(command: &mut Command, log: &fs::File) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("duplicating the log fd"))
        .stderr(log.try_clone().expect("duplicating the log fd"))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", describe(command)))
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
