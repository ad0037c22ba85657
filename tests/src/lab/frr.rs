//! FRR in the lab: `deploy/frr/{router,node}-unnumbered.conf` (or, numbered,
//! `deploy/frr/{router,node}.conf`) with their placeholders filled in and, on the nodes,
//! `deploy/frr/weights.conf` appended; zebra and bgpd started per box, `vtysh` against them, the
//! router's BGP sessions, and the router's kernel routes with their next-hop weights as seen
//! from any thread ([`RouterView`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, OpenOptions},
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use super::{
    FIRST_NODE_ASN, LabError, ROUTER_ASN, SERVICE_PREFIXES,
    process::{check_cancel, poll, spawn_logged, tail},
    topology::{NODE_LINKS_V4, NODE_LINKS_V6, node_name, node_uplink, router_device, router_id},
};
use crate::{
    frr_fabric::fill,
    netns::{NetNs, sh},
};

const NODE_CONF: &str = include_str!("../../../deploy/frr/node.conf");
const ROUTER_CONF: &str = include_str!("../../../deploy/frr/router.conf");
const NODE_UNNUMBERED_CONF: &str = include_str!("../../../deploy/frr/node-unnumbered.conf");
const ROUTER_UNNUMBERED_CONF: &str = include_str!("../../../deploy/frr/router-unnumbered.conf");
/// `l3lb frr-config`: every lab node runs `l3lb --weights endpoints`.
const WEIGHTS_CONF: &str = include_str!("../../../deploy/frr/weights.conf");
pub(super) const FRR_DAEMONS: &str = "/usr/lib/frr";
/// FRR daemons keep a crash-log directory `<daemon>.<pid>` here; removed after they stop.
const FRR_TMP: &str = "/var/tmp/frr";

/// Which box an FRR instance runs in.
#[derive(Clone, Copy, Debug)]
pub(super) enum Role {
    Router,
    Node(usize),
}

impl Role {
    fn hostname(self) -> String {
        match self {
            Role::Router => "router".to_owned(),
            Role::Node(index) => node_name(index),
        }
    }

    fn describe(self) -> String {
        match self {
            Role::Router => "the router".to_owned(),
            Role::Node(index) => node_name(index),
        }
    }
}

/// What every FRR config of a lab depends on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fabric {
    /// Numbered sessions (`node.conf`, `router.conf`) instead of BGP unnumbered.
    pub numbered: bool,
    /// The nodes' config gets weights.conf (their l3lbs run `--weights endpoints`).
    pub weights: bool,
    pub nodes: usize,
}

/// bgpd's config for `role`: the shipped configs, and with weights on the nodes `weights.conf`
/// after them.
pub(super) fn bgpd_conf(role: Role, fabric: Fabric) -> String {
    match role {
        Role::Router if fabric.numbered => fill(
            ROUTER_CONF,
            &[
                ("HOSTNAME", role.hostname()),
                ("ROUTER_ID", router_id().to_owned()),
                ("ROUTER_ASN", ROUTER_ASN.to_string()),
                ("NODES_IPV4", NODE_LINKS_V4.to_owned()),
                ("NODES_IPV6", NODE_LINKS_V6.to_owned()),
            ],
        ),
        Role::Router => {
            let interfaces: Vec<String> = (0..fabric.nodes).map(router_device).collect();
            fill(
                &repeat_lines(ROUTER_UNNUMBERED_CONF, "NODE_INTERFACE", &interfaces),
                &[
                    ("HOSTNAME", role.hostname()),
                    ("ROUTER_ID", router_id().to_owned()),
                    ("ROUTER_ASN", ROUTER_ASN.to_string()),
                ],
            )
        }
        Role::Node(index) => {
            // Unnumbered, the node's IPv4 address only names it (the router id).
            let (node_v4, router_v4, _, router_v6) = node_uplink(index);
            let common = [
                ("HOSTNAME", role.hostname()),
                ("ROUTER_ID", node_v4),
                ("NODE_ASN", (FIRST_NODE_ASN + index as u32).to_string()),
            ];
            let conf = if fabric.numbered {
                let mut values = common.to_vec();
                values.push(("ROUTER_ASN", ROUTER_ASN.to_string()));
                values.push(("ROUTER_IPV4", router_v4));
                values.push(("ROUTER_IPV6", router_v6));
                fill(NODE_CONF, &values)
            } else {
                let mut values = common.to_vec();
                values.push(("UPLINK", "uplink".to_owned()));
                fill(NODE_UNNUMBERED_CONF, &values)
            };
            if fabric.weights {
                conf + WEIGHTS_CONF
            } else {
                conf
            }
        }
    }
}

/// Every config line (not comment) holding `{{key}}`, once per value with the value in place.
fn repeat_lines(template: &str, key: &str, values: &[String]) -> String {
    let placeholder = format!("{{{{{key}}}}}");
    let mut out = String::new();
    for line in template.lines() {
        if line.contains(&placeholder) && !line.trim_start().starts_with('!') {
            for value in values {
                out += &line.replace(&placeholder, value);
                out.push('\n');
            }
        } else {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// zebra, then bgpd (once zebra's API socket exists), in `ns` with their files in `dir`; waits
/// until bgpd has read its config (its vty socket appears). Each daemon goes into `daemons` as
/// soon as it runs, so that the lab stops it even when this fails.
pub(super) fn start(
    ns: &NetNs,
    dir: &Path,
    role: Role,
    fabric: Fabric,
    cancel: Option<&'static AtomicBool>,
    daemons: &mut Vec<Child>,
) -> Result<(), LabError> {
    fs::create_dir_all(dir).expect("creating the FRR directory");
    fs::write(
        dir.join("zebra.conf"),
        format!("hostname {}\n", role.hostname()),
    )
    .expect("writing zebra.conf");
    fs::write(dir.join("bgpd.conf"), bgpd_conf(role, fabric)).expect("writing bgpd.conf");

    for daemon in ["zebra", "bgpd"] {
        daemons.push(start_daemon(ns, dir, role, daemon, cancel)?);
    }
    Ok(())
}

/// Starts one FRR daemon (`zebra` or `bgpd`) of `role` in `ns` with the configs in `dir`, and
/// waits for its socket.
pub(super) fn start_daemon(
    ns: &NetNs,
    dir: &Path,
    role: Role,
    daemon: &str,
    cancel: Option<&'static AtomicBool>,
) -> Result<Child, LabError> {
    let where_ = role.describe();
    let mut command = ns.command(&format!("{FRR_DAEMONS}/{daemon}"));
    if daemon == "zebra" && matches!(role, Role::Router) {
        // Without it zebra 8.4 changes an IPv6 route (a new weight, a node more or less) by
        // deleting it from the kernel and adding it again: a moment without a route (see
        // deploy/frr/README.md).
        command.arg("--v6-rr-semantics");
    }
    command
        .arg("-f")
        .arg(dir.join(format!("{daemon}.conf")))
        .arg("-i")
        .arg(dir.join(format!("{daemon}.pid")))
        .arg("-z")
        .arg(dir.join("zserv.api"))
        .arg("--vty_socket")
        .arg(dir)
        // Root, with the vty group FRR insists on (root is not a member of frrvty, but the
        // group given here counts).
        .args(["-u", "root", "-g", vty_group()])
        // No vty on TCP: vtysh uses the socket in `dir`.
        .args(["-P", "0"])
        .arg("--log")
        .arg(format!(
            "file:{}",
            dir.join(format!("{daemon}.log")).display()
        ));
    let out_file = dir.join(format!("{daemon}.out"));
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_file)
        .expect("opening the FRR output file");
    let mut child = spawn_logged(&mut command, &out);
    let socket = dir.join(if daemon == "zebra" {
        "zserv.api".to_owned()
    } else {
        format!("{daemon}.vty")
    });
    let result = poll(cancel, Duration::from_secs(10), || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(LabError::Failed(format!(
                "{daemon} on {where_} exited ({status}):\n{}",
                tail(&out_file, 20)
            ))));
        }
        socket.exists().then_some(Ok(()))
    });
    let started = match result {
        Ok(inner) => inner,
        Err(LabError::Timeout(_)) => Err(LabError::Timeout(format!(
            "{daemon} on {where_} did not create {} within 10 s",
            socket.display()
        ))),
        Err(other) => Err(other),
    };
    match started {
        Ok(()) => Ok(child),
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(err)
        }
    }
}

/// `vtysh -c command` against the FRR whose vty sockets are in `dir`.
pub(super) fn vtysh(dir: &Path, command: &str) -> String {
    let out = Command::new("vtysh")
        .arg("--vty_socket")
        .arg(dir)
        .args(["-c", command])
        .process_group(0)
        .output()
        .unwrap_or_else(|err| panic!("starting vtysh: {err}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the router (FRR in `router_dir`) has `want` established sessions that each
/// brought their initial updates (End-of-RIB, an UPDATE). Until then a node holds back what it
/// announces for the update-group coalesce time (about a second), which would count against the
/// first change's convergence.
pub(super) fn wait_sessions(
    router_dir: &Path,
    want: usize,
    cancel: Option<&'static AtomicBool>,
    deadline: Duration,
) -> Result<(), LabError> {
    let mut ready = 0;
    let result = poll(cancel, deadline, || {
        let json = vtysh(router_dir, "show bgp neighbors json");
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
            "{ready} of {want} BGP sessions at the router established and past their initial \
             updates after {deadline:?}:\n{}",
            vtysh(router_dir, "show bgp summary")
        ))),
        other => other,
    }
}

/// Waits until the node in `ns` has its IPv4 and IPv6 default routes from BGP (unnumbered: the
/// router's `default-originate`, via its link-local address).
pub(super) fn wait_default_routes(
    ns: &NetNs,
    cancel: Option<&'static AtomicBool>,
    deadline: Duration,
) -> Result<(), LabError> {
    let from_bgp = |family: &str| {
        let out = ns.ip(&["-j", family, "route", "show", "default", "proto", "bgp"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|routes| routes.as_array().map(|routes| !routes.is_empty()))
            .unwrap_or(false)
    };
    let result = poll(cancel, deadline, || {
        (from_bgp("-4") && from_bgp("-6")).then_some(())
    });
    match result {
        Err(LabError::Timeout(_)) => Err(LabError::Timeout(format!(
            "{} has no default routes from the router over BGP after {deadline:?}:\n{}{}",
            ns.name(),
            ns.ip(&["-4", "route"]),
            ns.ip(&["-6", "route"])
        ))),
        other => other,
    }
}

/// FRR daemons leave `/var/tmp/frr/<daemon>.<pid>` behind when killed; remove ours, and the
/// parent when nothing else uses it.
pub(super) fn remove_tmp(pids: &[i32]) {
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

/// Nexthop index of a route through an interface that leads to no node.
pub const NOT_A_NODE: usize = usize::MAX;

/// The router's kernel routing table, seen from any thread (for sampling it continuously while
/// the lab changes).
#[derive(Clone, Debug)]
pub struct RouterView {
    pub(super) ns: String,
    /// The router's interface towards node `i`.
    pub(super) devices: Vec<String>,
}

/// One next hop of a route at the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The node behind the hop's interface ([`NOT_A_NODE`] for any other interface).
    pub node: usize,
    /// The gateway as `ip route` shows it: `inet6 fe80::…` for an IPv4 route over BGP
    /// unnumbered, `fe80::…` for an IPv6 one, `172.16.1.2` numbered; empty without a gateway.
    pub via: String,
    /// The next hop's weight (1 when the kernel shows none).
    pub weight: u32,
}

impl RouterView {
    /// The nodes the router sends `ip` to (ECMP: several), or `None` without a route.
    pub fn route(&self, ip: IpAddr) -> Option<BTreeSet<usize>> {
        self.hops(ip)
            .map(|hops| hops.iter().map(|hop| hop.node).collect())
    }

    /// The next hops of the router's route to `ip`, or `None` without a route.
    pub fn hops(&self, ip: IpAddr) -> Option<Vec<Hop>> {
        let (family, host) = match ip {
            IpAddr::V4(_) => ("-4", format!("{ip}/32")),
            IpAddr::V6(_) => ("-6", format!("{ip}/128")),
        };
        let json = self.ip_json(&[family, "route", "show", "exact", &host]);
        self.parse(&json).remove(&ip)
    }

    /// Polls until the route to each IP goes through exactly its nodes (empty: no route), every
    /// couple of milliseconds; returns per IP the time from `since` (the change) to the first
    /// poll that saw it (a match that came undone again does not count).
    pub(super) fn wait(
        &self,
        wanted: &[(IpAddr, &[usize])],
        since: Instant,
        deadline: Duration,
        cancel: Option<&'static AtomicBool>,
    ) -> Result<Vec<Duration>, LabError> {
        self.wait_for(wanted.len(), since, deadline, cancel, |i| {
            let (ip, nodes) = wanted[i];
            let want: BTreeSet<usize> = nodes.iter().copied().collect();
            let have = self.route(ip).unwrap_or_default();
            (have != want).then(|| {
                format!(
                    "route to {ip} at the router goes via {} instead of {}",
                    nodes_label(&have),
                    nodes_label(&want)
                )
            })
        })
    }

    /// Polls until the route to each IP goes through exactly the nodes named, with next-hop
    /// weights in the ratio of their counts (ready pods: `--weights endpoints`); an empty list
    /// wants no route. Times each IP as [`RouterView::wait`] does.
    pub(super) fn wait_weights(
        &self,
        wanted: &[(IpAddr, &[(usize, u32)])],
        since: Instant,
        deadline: Duration,
        cancel: Option<&'static AtomicBool>,
    ) -> Result<Vec<Duration>, LabError> {
        self.wait_for(wanted.len(), since, deadline, cancel, |i| {
            let (ip, counts) = wanted[i];
            let hops = self.hops(ip).unwrap_or_default();
            (!proportional(&hops, counts)).then(|| {
                format!(
                    "route to {ip} at the router is {} instead of {}",
                    hops_label(&hops),
                    counts_label(counts)
                )
            })
        })
    }

    /// Polls `mismatch(i)` for the `n` wanted things (`None`: as wanted) every couple of
    /// milliseconds until all match; per thing, the time from `since` to the first poll of an
    /// unbroken run of matches.
    fn wait_for(
        &self,
        n: usize,
        since: Instant,
        deadline: Duration,
        cancel: Option<&'static AtomicBool>,
        mismatch: impl Fn(usize) -> Option<String>,
    ) -> Result<Vec<Duration>, LabError> {
        let mut seen: Vec<Option<Duration>> = vec![None; n];
        let give_up = Instant::now() + deadline;
        loop {
            let mut last = Vec::new();
            for (i, seen) in seen.iter_mut().enumerate() {
                match mismatch(i) {
                    None => {
                        seen.get_or_insert_with(|| since.elapsed());
                    }
                    Some(what) => {
                        *seen = None;
                        last.push(what);
                    }
                }
            }
            if last.is_empty() {
                return Ok(seen.into_iter().map(Option::unwrap_or_default).collect());
            }
            check_cancel(cancel)?;
            if Instant::now() >= give_up {
                return Err(LabError::Timeout(format!(
                    "{} after {deadline:?}",
                    last.join("; ")
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every host route inside the service prefixes, with its nodes.
    pub fn routes(&self) -> BTreeMap<IpAddr, BTreeSet<usize>> {
        let mut routes = BTreeMap::new();
        for (family, prefix) in [("-4", SERVICE_PREFIXES[0]), ("-6", SERVICE_PREFIXES[1])] {
            let json = self.ip_json(&[family, "route", "show", "root", prefix]);
            routes.extend(
                self.parse(&json)
                    .into_iter()
                    .map(|(ip, hops)| (ip, hops.iter().map(|hop| hop.node).collect())),
            );
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

    fn parse(&self, json: &str) -> BTreeMap<IpAddr, Vec<Hop>> {
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
            let hop = |hop: &serde_json::Value| -> Option<Hop> {
                let dev = hop["dev"].as_str()?;
                // An IPv4 route via an IPv6 gateway (RFC 5549) says `via`, any other `gateway`.
                let via = match (hop["via"]["family"].as_str(), hop["via"]["host"].as_str()) {
                    (Some(family), Some(host)) => format!("{family} {host}"),
                    _ => hop["gateway"].as_str().unwrap_or_default().to_owned(),
                };
                Some(Hop {
                    node: self
                        .devices
                        .iter()
                        .position(|known| known == dev)
                        .unwrap_or(NOT_A_NODE),
                    via,
                    weight: hop["weight"]
                        .as_u64()
                        .and_then(|weight| u32::try_from(weight).ok())
                        .unwrap_or(1),
                })
            };
            let hops = match entry["nexthops"].as_array() {
                Some(hops) => hops.iter().filter_map(hop).collect(),
                None => hop(&entry).into_iter().collect(),
            };
            routes.insert(ip, hops);
        }
        routes
    }
}

/// Whether `hops` go through exactly the nodes of `counts` with weights in the ratio of the
/// counts: each node's share of the total weight within 3 percentage points of its share of the
/// total count (FRR rounds the kernel's weights to whole numbers: 2:1 is 66:33). Empty counts:
/// no route.
pub fn proportional(hops: &[Hop], counts: &[(usize, u32)]) -> bool {
    let nodes: BTreeSet<usize> = hops.iter().map(|hop| hop.node).collect();
    let wanted: BTreeSet<usize> = counts.iter().map(|&(node, _)| node).collect();
    if nodes != wanted || nodes.len() != hops.len() {
        return false;
    }
    let total_weight: u32 = hops.iter().map(|hop| hop.weight).sum();
    let total_count: u32 = counts.iter().map(|&(_, count)| count).sum();
    counts.iter().all(|&(node, count)| {
        let weight = hops
            .iter()
            .find(|hop| hop.node == node)
            .map_or(0, |hop| hop.weight);
        let have = f64::from(weight) / f64::from(total_weight.max(1));
        let want = f64::from(count) / f64::from(total_count.max(1));
        (have - want).abs() <= 0.03
    })
}

/// `node-a weight 66, node-b weight 33` (`no route` when empty).
pub fn hops_label(hops: &[Hop]) -> String {
    if hops.is_empty() {
        return "no route".to_owned();
    }
    hops.iter()
        .map(|hop| {
            let node = nodes_label(&BTreeSet::from([hop.node]));
            format!("{node} weight {}", hop.weight)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `node-a : node-b = 2 : 1` (`no route` when empty).
pub fn counts_label(counts: &[(usize, u32)]) -> String {
    if counts.is_empty() {
        return "no route".to_owned();
    }
    let names: Vec<String> = counts.iter().map(|&(node, _)| node_name(node)).collect();
    let values: Vec<String> = counts.iter().map(|(_, count)| count.to_string()).collect();
    format!("{} = {}", names.join(" : "), values.join(" : "))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_configs_fill_completely() {
        let numbered = Fabric {
            numbered: true,
            weights: true,
            nodes: 3,
        };
        let router = bgpd_conf(Role::Router, numbered);
        assert!(router.contains(NODE_LINKS_V4), "{router}");
        let node = bgpd_conf(Role::Node(1), numbered);
        assert!(node.contains("172.16.2.1"), "{node}");
        assert!(node.contains(&(FIRST_NODE_ASN + 1).to_string()), "{node}");
        assert!(node.contains("call L3LB-WEIGHT"), "{node}");
    }

    #[test]
    fn unnumbered_configs_peer_over_interfaces() {
        let unnumbered = Fabric {
            numbered: false,
            weights: false,
            nodes: 3,
        };
        let router = bgpd_conf(Role::Router, unnumbered);
        for device in ["to-node-a", "to-node-b", "to-node-c"] {
            let line = format!(" neighbor {device} interface peer-group NODES\n");
            assert_eq!(router.matches(&line).count(), 1, "{router}");
        }
        assert!(!router.contains("to-node-d"), "{router}");
        assert!(router.contains("bgp bestpath as-path multipath-relax"));
        assert!(router.contains("neighbor NODES default-originate"));
        let node = bgpd_conf(Role::Node(1), unnumbered);
        assert!(
            node.contains(" neighbor uplink interface remote-as external\n"),
            "{node}"
        );
        assert!(node.contains("bgp router-id 172.16.2.2"), "{node}");
        assert!(!node.contains("L3LB-WEIGHT"), "{node}");
        // The placeholder's own documentation line stays a comment.
        assert!(router.contains("!   {{NODE_INTERFACE}}"), "{router}");
    }

    #[test]
    fn weights_are_proportional_to_the_counts() {
        let hop = |node, weight| Hop {
            node,
            via: "inet6 fe80::1".to_owned(),
            weight,
        };
        assert!(proportional(&[hop(0, 66), hop(1, 33)], &[(0, 2), (1, 1)]));
        assert!(proportional(
            &[hop(0, 50), hop(1, 25), hop(2, 25)],
            &[(0, 2), (1, 1), (2, 1)]
        ));
        assert!(!proportional(&[hop(0, 50), hop(1, 50)], &[(0, 2), (1, 1)]));
        assert!(!proportional(&[hop(0, 66)], &[(0, 2), (1, 1)]));
        assert!(proportional(&[], &[]));
        assert!(!proportional(&[hop(0, 1)], &[]));
        assert_eq!(
            hops_label(&[hop(0, 66), hop(1, 33)]),
            "node-a weight 66, node-b weight 33"
        );
        assert_eq!(counts_label(&[(0, 2), (1, 1)]), "node-a : node-b = 2 : 1");
    }

    #[test]
    fn router_routes_map_interfaces_to_nodes() {
        let view = RouterView {
            ns: "unused".to_owned(),
            devices: vec!["to-node-a".to_owned(), "to-node-b".to_owned()],
        };
        let routes: BTreeMap<IpAddr, BTreeSet<usize>> = view
            .parse(
                r#"[{"dst":"10.0.100.7","nexthops":[{"dev":"to-node-a"},{"dev":"to-node-b"}]},
                    {"dst":"10.0.100.8/32","dev":"to-client"},
                    {"dst":"not an ip","dev":"to-node-a"}]"#,
            )
            .into_iter()
            .map(|(ip, hops)| (ip, hops.iter().map(|hop| hop.node).collect()))
            .collect();
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[&v4("10.0.100.7")], BTreeSet::from([0, 1]));
        assert_eq!(routes[&v4("10.0.100.8")], BTreeSet::from([NOT_A_NODE]));
        assert_eq!(nodes_label(&routes[&v4("10.0.100.7")]), "node-a, node-b");
        assert_eq!(nodes_label(&BTreeSet::new()), "none");
    }

    #[test]
    fn link_local_next_hops_and_weights_are_read() {
        let view = RouterView {
            ns: "unused".to_owned(),
            devices: vec!["to-node-a".to_owned(), "to-node-b".to_owned()],
        };
        // `ip -j route` of an IPv4 route over BGP unnumbered, and of an IPv6 one.
        let routes = view.parse(
            r#"[{"dst":"10.0.100.7","nhid":8,"protocol":"bgp","metric":20,"flags":[],
                 "nexthops":[{"via":{"family":"inet6","host":"fe80::dc56:75ff:fed9:f40a"},
                              "dev":"to-node-b","weight":33,"flags":[]},
                             {"via":{"family":"inet6","host":"fe80::2457:6fff:fe33:73a5"},
                              "dev":"to-node-a","weight":66,"flags":[]}]},
                {"dst":"2001:db8:100::7","gateway":"fe80::1","dev":"to-node-a","flags":[]}]"#,
        );
        let v4: IpAddr = "10.0.100.7".parse().unwrap();
        assert_eq!(
            routes[&v4],
            [
                Hop {
                    node: 1,
                    via: "inet6 fe80::dc56:75ff:fed9:f40a".to_owned(),
                    weight: 33
                },
                Hop {
                    node: 0,
                    via: "inet6 fe80::2457:6fff:fe33:73a5".to_owned(),
                    weight: 66
                }
            ]
        );
        let v6: IpAddr = "2001:db8:100::7".parse().unwrap();
        assert_eq!(
            routes[&v6],
            [Hop {
                node: 0,
                via: "fe80::1".to_owned(),
                weight: 1
            }]
        );
    }
}
