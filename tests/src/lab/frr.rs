//! FRR in the lab: `deploy/frr/{router,node}.conf` with their placeholders filled in, zebra and
//! bgpd started per box, `vtysh` against them, the router's BGP sessions, and the router's kernel
//! routes as seen from any thread ([`RouterView`]).
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
    topology::{NODE_LINKS_V4, NODE_LINKS_V6, node_name, node_uplink, router_id},
};
use crate::netns::{NetNs, sh};

const NODE_CONF: &str = include_str!("../../../deploy/frr/node.conf");
const ROUTER_CONF: &str = include_str!("../../../deploy/frr/router.conf");
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

/// bgpd's config for `role`.
pub(super) fn bgpd_conf(role: Role) -> String {
    match role {
        Role::Router => fill(
            ROUTER_CONF,
            &[
                ("HOSTNAME", role.hostname()),
                ("ROUTER_ID", router_id().to_owned()),
                ("ROUTER_ASN", ROUTER_ASN.to_string()),
                ("NODES_IPV4", NODE_LINKS_V4.to_owned()),
                ("NODES_IPV6", NODE_LINKS_V6.to_owned()),
            ],
        ),
        Role::Node(index) => {
            let (node_v4, router_v4, _, router_v6) = node_uplink(index);
            fill(
                NODE_CONF,
                &[
                    ("HOSTNAME", role.hostname()),
                    ("ROUTER_ID", node_v4),
                    ("NODE_ASN", (FIRST_NODE_ASN + index as u32).to_string()),
                    ("ROUTER_ASN", ROUTER_ASN.to_string()),
                    ("ROUTER_IPV4", router_v4),
                    ("ROUTER_IPV6", router_v6),
                ],
            )
        }
    }
}

/// zebra, then bgpd (once zebra's API socket exists), in `ns` with their files in `dir`; waits
/// until bgpd has read its config (its vty socket appears). Each daemon goes into `daemons` as
/// soon as it runs, so that the lab stops it even when this fails.
pub(super) fn start(
    ns: &NetNs,
    dir: &Path,
    role: Role,
    cancel: Option<&'static AtomicBool>,
    daemons: &mut Vec<Child>,
) -> Result<(), LabError> {
    fs::create_dir_all(dir).expect("creating the FRR directory");
    fs::write(
        dir.join("zebra.conf"),
        format!("hostname {}\n", role.hostname()),
    )
    .expect("writing zebra.conf");
    fs::write(dir.join("bgpd.conf"), bgpd_conf(role)).expect("writing bgpd.conf");

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
        let wanted: Vec<(IpAddr, BTreeSet<usize>)> = wanted
            .iter()
            .map(|(ip, nodes)| (*ip, nodes.iter().copied().collect()))
            .collect();
        let mut seen: Vec<Option<Duration>> = vec![None; wanted.len()];
        let give_up = Instant::now() + deadline;
        loop {
            let mut last = Vec::new();
            for ((ip, want), seen) in wanted.iter().zip(seen.iter_mut()) {
                let have = self.route(*ip).unwrap_or_default();
                if &have == want {
                    seen.get_or_insert_with(|| since.elapsed());
                } else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_configs_fill_completely() {
        let router = bgpd_conf(Role::Router);
        assert!(router.contains(NODE_LINKS_V4), "{router}");
        let node = bgpd_conf(Role::Node(1));
        assert!(node.contains("172.16.2.1"), "{node}");
        assert!(node.contains(&(FIRST_NODE_ASN + 1).to_string()), "{node}");
    }

    #[test]
    fn router_routes_map_interfaces_to_nodes() {
        let view = RouterView {
            ns: "unused".to_owned(),
            devices: vec!["to-node-a".to_owned(), "to-node-b".to_owned()],
        };
        let routes = view.parse(
            r#"[{"dst":"10.0.100.7","nexthops":[{"dev":"to-node-a"},{"dev":"to-node-b"}]},
                {"dst":"10.0.100.8/32","dev":"to-client"},
                {"dst":"not an ip","dev":"to-node-a"}]"#,
        );
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[&v4("10.0.100.7")], BTreeSet::from([0, 1]));
        assert_eq!(routes[&v4("10.0.100.8")], BTreeSet::from([NOT_A_NODE]));
        assert_eq!(nodes_label(&routes[&v4("10.0.100.7")]), "node-a, node-b");
        assert_eq!(nodes_label(&BTreeSet::new()), "none");
    }
}
