//! The `--xdp` fast path end to end on the real kernel:
//!
//! ```text
//! client 10.1.0.2 ── router ── uplink 10.2.0.2 [node: XDP + TC, l3lb] ── veth ── pod 10.244.1.2
//! ```
//!
//! The node has no kube-proxy and no netfilter rule, and the pods listen on 8080 while the
//! service is on 80: a request to the service IP only reaches a pod if XDP rewrote it, and the
//! client only accepts the answer if TC rewrote the reply back. The pods report the peer address
//! they saw, which must be the client's own.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use l3lb_tests::{
    daemon::{L3lb, l3lb_binary},
    fixtures::{self, endpoint, port, service, slice},
    netns::{self, NetNs, sh},
    privileged, wait_until,
};

const SERVICE: &str = "10.0.100.7";
const DEADLINE: Duration = Duration::from_secs(15);

struct Topology {
    client: NetNs,
    _router: NetNs,
    node: NetNs,
    pods: Vec<(NetNs, String)>,
}

fn topology(pods: &[&str]) -> Topology {
    let client = NetNs::new("xc");
    let router = NetNs::new("xr");
    let node = NetNs::new("xn");
    netns::veth_pair(
        &client,
        "eth0",
        "10.1.0.2/24",
        &router,
        "to-client",
        "10.1.0.1/24",
    );
    netns::veth_pair(
        &router,
        "to-node",
        "10.2.0.1/24",
        &node,
        "uplink",
        "10.2.0.2/24",
    );
    client.ip(&["route", "add", "default", "via", "10.1.0.1"]);
    node.ip(&["route", "add", "default", "via", "10.2.0.1"]);
    // What BGP would install: the service prefix via the node.
    router.ip(&["route", "add", "10.0.100.0/24", "via", "10.2.0.2"]);
    for ns in [&router, &node] {
        sh(ns.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    }
    let mut pod_namespaces = Vec::new();
    for (i, name) in pods.iter().enumerate() {
        let pod = NetNs::new("xp");
        let pod_ip = format!("10.244.1.{}", i + 2);
        netns::attach_pod(&node, &pod, &format!("vp{i}"), &pod_ip);
        pod_namespaces.push((pod, name.to_string()));
    }
    Topology {
        client,
        _router: router,
        node,
        pods: pod_namespaces,
    }
}

/// Runs TCP and UDP echo-with-identity servers on port 8080 inside the pod until `stop`.
fn serve_pod(pod: &NetNs, name: String, stop: Arc<AtomicBool>) {
    let pod = pod.name().to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&pod);
        let tcp = TcpListener::bind("0.0.0.0:8080").expect("pod TCP listener");
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind("0.0.0.0:8080").expect("pod UDP socket");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buffer = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((mut stream, peer)) = tcp.accept() {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.read(&mut buffer);
                let _ = stream.write_all(format!("{name} saw {}", peer.ip()).as_bytes());
            }
            if let Ok((_, peer)) = udp.recv_from(&mut buffer) {
                let _ = udp.send_to(format!("{name} saw {}", peer.ip()).as_bytes(), peer);
            }
        }
    });
    ready_rx.recv_timeout(DEADLINE).expect("pod server started");
}

/// A TCP request and a UDP datagram from the client to the service; the pod's answers.
fn ask(client: &NetNs, source_port: u16) -> (Option<String>, Option<String>) {
    let client = client.name().to_owned();
    std::thread::spawn(move || {
        netns::enter(&client);
        let service: SocketAddr = format!("{SERVICE}:80").parse().unwrap();
        let tcp = (|| {
            let mut stream = TcpStream::connect_timeout(&service, Duration::from_secs(2)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            stream.write_all(b"who?").ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            Some(answer)
        })();
        let udp = (|| {
            let socket = UdpSocket::bind(("0.0.0.0", source_port)).ok()?;
            socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            socket.send_to(b"who?", service).ok()?;
            let mut buffer = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buffer).ok()?;
            // The reply must come from the service address: TC translated it back.
            (from == service).then(|| String::from_utf8_lossy(&buffer[..n]).into_owned())
        })();
        (tcp, udp)
    })
    .join()
    .expect("client thread")
}

fn manifests(dir: &std::path::Path, pods: &[(&str, &str)]) {
    let web = service("web")
        .annotated_ips(SERVICE)
        .load_balancer()
        .port(port("TCP", 80).named("http"))
        .port(port("UDP", 80).named("echo"));
    let endpoints = pods.iter().fold(
        slice("web-1", "web", "IPv4")
            .port(port("TCP", 8080).named("http"))
            .port(port("UDP", 8080).named("echo")),
        |endpoints, (ip, node)| endpoints.endpoint(endpoint([ip]).node(node).ready(true)),
    );
    let yaml = fixtures::documents([web.yaml(), endpoints.yaml()]);
    let tmp = dir.join(".web.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join("web.yaml")).unwrap();
}

/// The daemon's manifests and logs (a temp dir) and its pins, both removed when dropped.
struct Scratch {
    dir: tempfile::TempDir,
    pin_root: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Links first (they hold the programs), then maps; a failed test must not leave pins.
        let _ = Command::new("rm").arg("-rf").arg(&self.pin_root).status();
    }
}

fn start(node: &NetNs, scratch: &Scratch, extra: &[&str], log: &str) -> L3lb {
    let mut command = node.command(l3lb_binary().to_str().unwrap());
    command.args([
        "run",
        "--node-name",
        "node-a",
        "--prefix",
        "10.0.100.0/24",
        "--source",
    ]);
    command.arg(format!("file:{}", scratch.dir.path().display()));
    // The XDP mode: rewrite in XDP, then the kernel's routing (tests/tests/fastpath_e2e.rs
    // covers the default TC mode, which redirects into the pods).
    command
        .args([
            "--xdp-iface",
            "uplink",
            "--xdp-mode",
            "native",
            "--pin-root",
        ])
        .arg(&scratch.pin_root);
    command.args(extra);
    L3lb::spawn(command, scratch.dir.path().join(log))
}

fn inspect(scratch: &Scratch) -> serde_json::Value {
    let out = Command::new(l3lb_binary())
        .args(["inspect", "--json", "--pin-root"])
        .arg(&scratch.pin_root)
        .output()
        .expect("l3lb inspect runs");
    assert!(
        out.status.success(),
        "l3lb inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json is JSON")
}

#[test]
fn xdp_steers_to_local_pods_keeping_the_client_address() {
    if !privileged("xdp_steers_to_local_pods_keeping_the_client_address") {
        return;
    }
    let net = topology(&["pod-a", "pod-b"]);
    let scratch = Scratch {
        dir: tempfile::Builder::new()
            .prefix("l3lb-xdp-e2e-")
            .tempdir()
            .unwrap(),
        pin_root: PathBuf::from(format!("/sys/fs/bpf/l3lb-test-{}", std::process::id())),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for (pod, name) in &net.pods {
        serve_pod(pod, name.clone(), stop.clone());
    }
    manifests(
        scratch.dir.path(),
        &[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")],
    );

    let mut daemon = start(
        &net.node,
        &scratch,
        &["--xdp", "--retain-on-exit"],
        "l3lb-1.log",
    );
    daemon.wait_for_log("fast path ready", DEADLINE);
    assert!(
        wait_until(DEADLINE, || net
            .node
            .ip(&["-o", "addr", "show", "lo"])
            .contains(SERVICE)),
        "announced; log:\n{}",
        daemon.log()
    );
    assert!(
        net.node.ip(&["link", "show", "uplink"]).contains("xdp"),
        "XDP on the uplink"
    );

    // Many flows: each reaches a pod, which saw the client's own address.
    let mut pods_seen = std::collections::BTreeSet::new();
    for port in 40000..40016 {
        let (tcp, udp) = ask(&net.client, port);
        let tcp =
            tcp.unwrap_or_else(|| panic!("TCP through the service failed; log:\n{}", daemon.log()));
        let udp =
            udp.unwrap_or_else(|| panic!("UDP through the service failed; log:\n{}", daemon.log()));
        for answer in [&tcp, &udp] {
            assert!(
                answer.ends_with("saw 10.1.0.2"),
                "the pod saw the client's address: {answer}"
            );
            pods_seen.insert(answer.split_whitespace().next().unwrap().to_owned());
        }
    }
    assert_eq!(
        pods_seen.len(),
        2,
        "Maglev spreads flows over both pods: {pods_seen:?}"
    );

    let report = inspect(&scratch);
    let forwarded = report["reasons"]["forwarded"]["packets"].as_u64().unwrap();
    let replies = report["reasons"]["reply_translated"]["packets"]
        .as_u64()
        .unwrap();
    assert!(
        forwarded >= 32 && replies >= 32,
        "the XDP/TC path handled it: {report}"
    );
    let services = report["services"].as_array().unwrap();
    assert!(
        services
            .iter()
            .any(|s| s["service"] == "10.0.100.7:80/tcp" && s["table_backends"] == 2),
        "{report}"
    );

    // The counters are on /metrics too (the daemon listens on the node's loopback).
    let node_name = net.node.name().to_owned();
    let metrics = std::thread::spawn(move || {
        netns::enter(&node_name);
        L3lb::get("127.0.0.1:9474", "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    })
    .join()
    .unwrap();
    let sample = |prefix: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        sample("l3lb_xdp_packets_total{reason=\"forwarded\"}") >= 32.0,
        "{metrics}"
    );
    assert!(
        sample("l3lb_xdp_service_packets_total{service=\"10.0.100.7:80/tcp\"}") >= 16.0,
        "{metrics}"
    );

    // No netfilter rule does the work: the node namespace has none.
    let nft = Command::new("nsenter")
        .arg(format!("--net={}", net.node.path()))
        .args(["nft", "list", "ruleset"])
        .output();
    if let Ok(nft) = nft {
        assert!(
            String::from_utf8_lossy(&nft.stdout).trim().is_empty(),
            "no nftables rules in the node"
        );
    }

    // Restart with --retain-on-exit: forwarding goes on while l3lb is down and after it returns.
    assert!(daemon.terminate(), "clean exit");
    assert!(
        net.node.ip(&["-o", "addr", "show", "lo"]).contains(SERVICE),
        "address retained"
    );
    let (tcp, udp) = ask(&net.client, 41000);
    assert!(
        tcp.is_some() && udp.is_some(),
        "forwarding survives the daemon's exit"
    );
    let mut daemon = start(&net.node, &scratch, &["--xdp"], "l3lb-2.log");
    daemon.wait_for_log("updated in place", DEADLINE);
    let (tcp, udp) = ask(&net.client, 41001);
    assert!(
        tcp.is_some() && udp.is_some(),
        "forwarding after the restart; log:\n{}",
        daemon.log()
    );

    // Scale to one pod: new flows all go to it.
    manifests(scratch.dir.path(), &[("10.244.1.3", "node-a")]);
    assert!(
        wait_until(DEADLINE, || inspect(&scratch)["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["service"]
                == "10.0.100.7:80/tcp"
                && s["table_backends"] == 1))),
        "table rebuilt for one backend"
    );
    for port in 42000..42006 {
        let (tcp, _) = ask(&net.client, port);
        assert!(
            tcp.is_some_and(|a| a.starts_with("pod-b")),
            "only pod-b serves new flows"
        );
    }

    // A clean exit without --retain-on-exit detaches and unpins everything.
    assert!(daemon.terminate());
    assert!(
        !net.node
            .ip(&["link", "show", "uplink"])
            .contains("prog/xdp"),
        "XDP detached"
    );
    assert!(!scratch.pin_root.exists(), "pins removed");

    // A fast path left by a --retain-on-exit run is removed by a run without --xdp.
    let mut daemon = start(
        &net.node,
        &scratch,
        &["--xdp", "--retain-on-exit"],
        "l3lb-3.log",
    );
    daemon.wait_for_log("fast path (XDP) attached", DEADLINE);
    assert!(daemon.terminate());
    assert!(
        net.node
            .ip(&["link", "show", "uplink"])
            .contains("prog/xdp"),
        "left attached"
    );
    let mut daemon = start(&net.node, &scratch, &[], "l3lb-4.log");
    daemon.wait_for_log("removed the XDP fast path", DEADLINE);
    assert!(
        !net.node
            .ip(&["link", "show", "uplink"])
            .contains("prog/xdp"),
        "XDP detached"
    );
    assert!(!scratch.pin_root.exists(), "pins removed");
    assert!(daemon.terminate());
    stop.store(true, Ordering::Relaxed);
}
