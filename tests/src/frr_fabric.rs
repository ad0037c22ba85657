//! Real FRR for tests that need a BGP router but not the whole lab: zebra and bgpd in a network
//! namespace with the shipped `deploy/frr` configs (placeholders filled in), `vtysh` against
//! them, and the router's kernel routes with their next-hop weights. Dropping an [`Frr`] stops
//! its daemons and removes what they left behind, so a failing test leaves nothing running.
use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{netns::NetNs, wait_until};

pub const NODE_CONF: &str = include_str!("../../deploy/frr/node.conf");
pub const ROUTER_CONF: &str = include_str!("../../deploy/frr/router.conf");
/// `l3lb frr-config`, as shipped: appended to [`NODE_CONF`] for `--weights endpoints`.
pub const WEIGHTS_CONF: &str = include_str!("../../deploy/frr/weights.conf");

const FRR_DAEMONS: &str = "/usr/lib/frr";
/// FRR daemons keep a crash-log directory `<daemon>.<pid>` here.
const FRR_TMP: &str = "/var/tmp/frr";

/// `{{KEY}}` → value for every key; panics when a placeholder outside a comment is left.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    let unfilled: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('!') && line.contains("{{"))
        .collect();
    assert!(unfilled.is_empty(), "unfilled placeholders: {unfilled:?}");
    text
}

/// zebra and bgpd running in one namespace, with their files in one directory.
pub struct Frr {
    dir: PathBuf,
    daemons: Vec<Child>,
}

impl Frr {
    /// Starts zebra (with `zebra_args` besides the usual), then bgpd with `bgpd_conf`, in `ns`,
    /// with their sockets, pid files and logs in `dir` (created); returns once bgpd has read its
    /// config (its vty socket exists).
    pub fn start(
        ns: &NetNs,
        dir: &Path,
        hostname: &str,
        bgpd_conf: &str,
        zebra_args: &[&str],
    ) -> Frr {
        fs::create_dir_all(dir).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
        fs::write(dir.join("zebra.conf"), format!("hostname {hostname}\n"))
            .expect("writing zebra.conf");
        fs::write(dir.join("bgpd.conf"), bgpd_conf).expect("writing bgpd.conf");
        let mut frr = Frr {
            dir: dir.to_owned(),
            daemons: Vec::new(),
        };
        for daemon in ["zebra", "bgpd"] {
            let out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{daemon}.out")))
                .expect("opening the FRR output file");
            let extra: &[&str] = if daemon == "zebra" { zebra_args } else { &[] };
            let child = ns
                .command(&format!("{FRR_DAEMONS}/{daemon}"))
                .args(extra)
                .arg("-f")
                .arg(dir.join(format!("{daemon}.conf")))
                .arg("-i")
                .arg(dir.join(format!("{daemon}.pid")))
                .arg("-z")
                .arg(dir.join("zserv.api"))
                .arg("--vty_socket")
                .arg(dir)
                .args(["-u", "root", "-g", vty_group(), "-P", "0"])
                .arg("--log")
                .arg(format!(
                    "file:{}",
                    dir.join(format!("{daemon}.log")).display()
                ))
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup the FRR output file"))
                .stderr(out)
                // Its own process group: a Ctrl-C meant for the test runner does not reach it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|err| panic!("starting {daemon} in {}: {err}", ns.name()));
            frr.daemons.push(child);
            let socket = dir.join(if daemon == "zebra" {
                "zserv.api".to_owned()
            } else {
                format!("{daemon}.vty")
            });
            let up = wait_until(Duration::from_secs(10), || socket.exists());
            assert!(
                up,
                "{daemon} in {} did not create {} within 10 s:\n{}",
                ns.name(),
                socket.display(),
                fs::read_to_string(dir.join(format!("{daemon}.out"))).unwrap_or_default()
            );
        }
        frr
    }

    /// `vtysh -c command` against these daemons.
    pub fn vtysh(&self, command: &str) -> String {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", command])
            .process_group(0)
            .output()
            .unwrap_or_else(|err| panic!("starting vtysh: {err}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `want` BGP sessions are established and each has brought an UPDATE (until
    /// then a peer holds back what it announces for the update-group coalesce time).
    pub fn wait_sessions(&self, want: usize, deadline: Duration) {
        let established = wait_until(deadline, || {
            let json = self.vtysh("show bgp neighbors json");
            let peers: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let ready = peers
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
            ready >= want
        });
        assert!(
            established,
            "{want} BGP sessions not established within {deadline:?}:\n{}",
            self.vtysh("show bgp summary")
        );
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        for child in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
            for daemon in ["zebra", "bgpd"] {
                let _ =
                    fs::remove_dir_all(Path::new(FRR_TMP).join(format!("{daemon}.{}", child.id())));
            }
        }
        let _ = fs::remove_dir(FRR_TMP); // fails, as it should, when something else uses it
    }
}

/// FRR requires its vty group among the groups it runs with.
fn vty_group() -> &'static str {
    let has_frrvty = fs::read_to_string("/etc/group")
        .is_ok_and(|groups| groups.lines().any(|line| line.starts_with("frrvty:")));
    if has_frrvty { "frrvty" } else { "root" }
}

/// The kernel route to `ip` (a host route) in namespace `ns`: the weight of each next hop by its
/// device; `None` when there is no route.
pub fn nexthop_weights(ns: &str, ip: IpAddr) -> Option<BTreeMap<String, u32>> {
    let family = if ip.is_ipv4() { "-4" } else { "-6" };
    let out = Command::new("ip")
        .args([
            "-n",
            ns,
            "-j",
            family,
            "route",
            "show",
            "exact",
            &ip.to_string(),
        ])
        .output()
        .unwrap_or_else(|err| panic!("running ip route in {ns}: {err}"));
    assert!(
        out.status.success(),
        "ip route in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_weights(&String::from_utf8_lossy(&out.stdout))
}

/// `ip -j route show` output → the weight of each next hop by device (a single-path route is one
/// next hop of weight 1).
fn parse_weights(json: &str) -> Option<BTreeMap<String, u32>> {
    let routes: serde_json::Value = serde_json::from_str(json).ok()?;
    let route = routes.as_array()?.first()?;
    let weight = |hop: &serde_json::Value| {
        let dev = hop["dev"].as_str()?.to_owned();
        let weight = hop["weight"].as_u64().unwrap_or(1);
        Some((dev, u32::try_from(weight).ok()?))
    };
    match route["nexthops"].as_array() {
        Some(hops) => hops.iter().map(weight).collect(),
        None => weight(route).map(|hop| BTreeMap::from([hop])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_come_from_each_nexthop_or_the_single_path() {
        let multipath = r#"[{"dst":"10.0.100.7","nhid":27,"protocol":"bgp","metric":20,"flags":[],
            "nexthops":[{"gateway":"172.31.1.2","dev":"w8-to-a","weight":67,"flags":[]},
                        {"gateway":"172.31.2.2","dev":"w8-to-b","weight":34,"flags":[]}]}]"#;
        assert_eq!(
            parse_weights(multipath),
            Some(BTreeMap::from([
                ("w8-to-a".into(), 67),
                ("w8-to-b".into(), 34)
            ]))
        );
        let single = r#"[{"dst":"10.0.100.7","gateway":"172.31.1.2","dev":"w8-to-a","flags":[]}]"#;
        assert_eq!(
            parse_weights(single),
            Some(BTreeMap::from([("w8-to-a".into(), 1)]))
        );
        assert_eq!(parse_weights("[]"), None);
    }
}
