//! Real FRR for tests that need a BGP router but not the whole lab: zebra and bgpd in a network
//! namespace with the shipped `deploy/frr` configs (placeholders filled in), `vtysh` against
//! them, and the router's kernel routes with their next-hop weights, sampled ([`Sampler`]) and
//! followed change by change ([`RouteMonitor`]). Dropping an [`Frr`] stops its daemons and
//! removes what they left behind, so a failing test leaves nothing running.
use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{netns::NetNs, wait_until};

pub const NODE_CONF: &str = include_str!("../../deploy/frr/node.conf");
pub const ROUTER_CONF: &str = include_str!("../../deploy/frr/router.conf");
/// `l3lb frr-config`, as shipped: appended to [`NODE_CONF`] for `--weights endpoints`.
pub const WEIGHTS_CONF: &str = include_str!("../../deploy/frr/weights.conf");

const FRR_DAEMONS: &str = "/usr/lib/frr";
/// FRR daemons keep a crash-log directory `<daemon>.<pid>` here.
const FRR_TMP: &str = "/var/tmp/frr";

/// `{{KEY}}` → value for every key; panics when a placeholder outside a comment is left
/// (placeholders in comments are documentation; the config lines must be complete).
pub fn fill(template: &str, values: &[(&str, impl AsRef<str>)]) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value.as_ref());
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

/// Next-hop weights by device.
pub type Hops = BTreeMap<String, u32>;

/// The kernel route to `ip` (a host route) in namespace `ns`: the weight of each next hop by its
/// device; `None` when there is no route.
pub fn nexthop_weights(ns: &str, ip: IpAddr) -> Option<Hops> {
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
fn parse_weights(json: &str) -> Option<Hops> {
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

/// When, and the routes to each sampled IP.
pub type Sample = (Duration, Vec<Option<Hops>>);

/// A namespace's routes to some IPs, every ~10 ms on a thread of its own, until finished.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(ns: &str, ips: Vec<IpAddr>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let ns = ns.to_owned();
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let sample = ips.iter().map(|&ip| nexthop_weights(&ns, ip)).collect();
                    samples.lock().unwrap().push((started.elapsed(), sample));
                    // The sampling period, not a synchronisation.
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// How many samples so far.
    pub fn len(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops sampling; every sample taken.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the sampler panicked");
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `ip -ts monitor route` in a namespace: every kernel route change, so a withdrawal shorter
/// than a sampling period is seen too.
pub struct RouteMonitor {
    child: Child,
    reader: Option<JoinHandle<Vec<String>>>,
}

impl RouteMonitor {
    pub fn start(ns: &str) -> RouteMonitor {
        let mut child = Command::new("ip")
            .args(["-n", ns, "-ts", "monitor", "route"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting ip monitor in {ns}: {err}"));
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        RouteMonitor {
            child,
            reader: Some(reader),
        }
    }

    /// Stops it; every line it printed.
    pub fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader
            .take()
            .map(|reader| reader.join().expect("the monitor's reader panicked"))
            .unwrap_or_default()
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `ip -ts monitor route` line, `[timestamp] [Deleted ]DESTINATION …`: whether the route
/// was deleted, and its destination; `None` for next-hop lines and anything else.
pub fn parse_route_event(line: &str) -> Option<(bool, IpAddr)> {
    let text = line.split_once("] ").map_or(line, |(_, rest)| rest);
    let (deleted, text) = match text.strip_prefix("Deleted ") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let destination = text.split_whitespace().next()?.parse().ok()?;
    Some((deleted, destination))
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

    #[test]
    fn route_events_say_deleted_or_not_and_for_which_destination() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_route_event(
                "[2026-12-07T00:36:29.107871] Deleted 2001:db8:100::7 nhid 32 proto bgp"
            ),
            Some((true, ip("2001:db8:100::7")))
        );
        assert_eq!(
            parse_route_event(
                "[2026-12-07T00:36:29.307955] 10.0.100.7 nhid 29 proto bgp metric 20 "
            ),
            Some((false, ip("10.0.100.7")))
        );
        assert_eq!(
            parse_route_event("\tnexthop via 172.31.2.2 dev to-b weight 25 "),
            None
        );
    }
}
