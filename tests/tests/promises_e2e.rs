//! kube-proxy's promises kept by the fast path, end to end on the real kernel:
//!
//! ```text
//! client 10.1.0.2 ── [MTU 1400, IPv6 1280] router ── uplink [node: l3lb --xdp] ── veth ── pod
//!        fd01::2                                                                 10.244.1.2
//! ```
//!
//! - Path MTU discovery: the client advertises a 1500-byte path (its own link's MTU), the pod
//!   sends full-size segments, and the router cannot forward them onto the client's narrower
//!   link: it answers "fragmentation needed" / "packet too big" to the service address, which
//!   only the fast path's translation gets to the pod. A 1 MB download completes in both
//!   families, and the pod's route cache holds the learned MTU.
//! - The other way: a pod's "port unreachable" about a UDP datagram to the service leaves as the
//!   service's, so the client's connected socket sees the refusal.
//! - `sessionAffinity: ClientIP`: a client's connections all go to one of two local pods while
//!   the affinity lasts, and may go elsewhere once it has timed out.
//! - Fragments: 3000-byte UDP datagrams over 1500-byte links reach the pod whole, and the pod's
//!   3000-byte replies the client, IPv4 and IPv6.
//! - Jumbo frames: on 9000-byte links the XDP program (frags-aware) attaches natively, and an
//!   8000-byte UDP datagram reaches the pod whole through the service.
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use l3lb_tests::{
    fastpath::{
        Scratch, client_behind, namespace, packets, reasons, start, sysctl, write_manifest,
    },
    fixtures::{self, endpoint, port, service, slice},
    netns::{self, NetNs},
    privileged,
    traffic::{Connection, serve_pod},
    wait_until,
};

const SERVICE_V4: &str = "10.0.100.9";
const SERVICE_V6: &str = "2001:db8:100::9";
/// Pod 0's addresses (see `Net::add_pod`).
const POD_V4: &str = "10.244.1.2";
const POD_V6: &str = "fd00:244::2";
/// The service's ports: a bulk download (TCP), and a UDP port nothing listens on in the pod.
const DOWNLOAD: u16 = 81;
const DOWNLOAD_TARGET: u16 = 8081;
const CLOSED: u16 = 82;
const CLOSED_TARGET: u16 = 8082;
const DOWNLOAD_BYTES: usize = 1 << 20;
const CLIENT_MTU_V4: u32 = 1400;
const CLIENT_MTU_V6: u32 = 1280;
const DEADLINE: Duration = Duration::from_secs(15);

struct Net {
    client: NetNs,
    _router: NetNs,
    node: NetNs,
    pods: Vec<NetNs>,
    /// Every link's MTU, pods' included, when not the default.
    mtu: Option<u32>,
}

/// The links of [`topology`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Links {
    /// 1500 everywhere but the router's link to the client (1400, IPv6 1280).
    NarrowToClient,
    /// [`JUMBO_MTU`] everywhere.
    Jumbo,
    /// 1500 everywhere.
    Standard,
}

const JUMBO_MTU: u32 = 9000;

/// Client — router — node (pods come with `Net::add_pod`), the router's link to the client
/// narrower than the rest.
fn topology(links: Links) -> Net {
    let client = namespace("mc");
    let router = namespace("mr");
    let node = namespace("mn");
    client_behind(&router, &client);
    if links == Links::NarrowToClient {
        // Only the router's side is narrow: the client keeps advertising a 1500-byte path (its
        // MSS), so the pod's full-size segments meet the narrow link at the router, which must
        // answer.
        router.ip(&[
            "link",
            "set",
            "to-client",
            "mtu",
            &CLIENT_MTU_V4.to_string(),
        ]);
        sysctl(
            &router,
            &[&format!("net.ipv6.conf.to-client.mtu={CLIENT_MTU_V6}")],
        );
    }
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
    node.ip(&["-6", "route", "add", "default", "via", "fd02::1"]);
    // What BGP would install on the router: the service prefixes via the node.
    router.ip(&["route", "add", "10.0.100.0/24", "via", "10.2.0.2"]);
    router.ip(&["-6", "route", "add", "2001:db8:100::/64", "via", "fd02::2"]);
    for ns in [&router, &node] {
        sysctl(
            ns,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        );
    }
    let mtu = (links == Links::Jumbo).then_some(JUMBO_MTU);
    if let Some(mtu) = mtu {
        for (ns, iface) in [
            (&client, "eth0"),
            (&router, "to-client"),
            (&router, "to-node"),
            (&node, "uplink"),
        ] {
            ns.ip(&["link", "set", iface, "mtu", &mtu.to_string()]);
        }
    }
    Net {
        client,
        _router: router,
        node,
        pods: Vec::new(),
        mtu,
    }
}

impl Net {
    /// Plugs in pod number `i`: `vp{i}` on the node, 10.244.1.{i+2} and fd00:244::{i+2}.
    fn add_pod(&mut self, i: usize) -> &NetNs {
        let pod = namespace("mp");
        let host_side = format!("vp{i}");
        netns::attach_pod(&self.node, &pod, &host_side, &format!("10.244.1.{}", i + 2));
        netns::attach_pod_v6(
            &self.node,
            &pod,
            &host_side,
            &format!("fd00:244::{}", i + 2),
        );
        if let Some(mtu) = self.mtu {
            self.node
                .ip(&["link", "set", &host_side, "mtu", &mtu.to_string()]);
            pod.ip(&["link", "set", "eth0", "mtu", &mtu.to_string()]);
        }
        self.pods.push(pod);
        self.pods.last().unwrap()
    }
}

/// Serves `DOWNLOAD_BYTES` on every connection to `DOWNLOAD_TARGET` (both families) inside
/// `pod`, until `stop`.
fn serve_download(pod: &NetNs, stop: Arc<AtomicBool>) {
    let pod = pod.name().to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&pod);
        let listener =
            TcpListener::bind(("::", DOWNLOAD_TARGET)).expect("pod download listener (dual-stack)");
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let data = vec![0x5au8; DOWNLOAD_BYTES];
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let data = data.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(&data);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("pod download server started");
}

/// Downloads from `service` inside `client`: the bytes received, until the pod closes or
/// `DEADLINE` passes without progress.
fn download(client: &NetNs, service: SocketAddr) -> usize {
    client.run_inside(move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&service, DEADLINE) else {
            return 0;
        };
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut received = 0;
        let mut buffer = vec![0u8; 65536];
        while let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            received += n;
        }
        received
    })
}

/// A datagram to the service's closed UDP port on a connected socket: whether the client's
/// kernel matched an ICMP port unreachable to the socket (the next receive is refused).
fn refused(client: &NetNs, service: SocketAddr) -> bool {
    client.run_inside(move || {
        let local: SocketAddr = if service.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).unwrap();
        socket.connect(service).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = socket.send(b"anyone?");
        let mut buffer = [0u8; 64];
        matches!(socket.recv(&mut buffer), Err(err) if err.kind() == ErrorKind::ConnectionRefused)
    })
}

/// The download Service, on pod 0.
fn manifests(dir: &std::path::Path) {
    let web = service("big")
        .load_balancer()
        .annotated_ips(&format!("{SERVICE_V4},{SERVICE_V6}"))
        .port(
            port("TCP", DOWNLOAD)
                .named("download")
                .target(DOWNLOAD_TARGET),
        )
        .port(port("UDP", CLOSED).named("closed").target(CLOSED_TARGET));
    let slice = |name: &str, family: &str, address: &str| {
        slice(name, "big", family)
            .endpoint(endpoint([address]).node("node-a").ready(true))
            .port(port("TCP", DOWNLOAD_TARGET).named("download"))
            .port(port("UDP", CLOSED_TARGET).named("closed"))
            .yaml()
    };
    let yaml = fixtures::documents([
        web.yaml(),
        slice("big-4", "IPv4", POD_V4),
        slice("big-6", "IPv6", POD_V6),
    ]);
    write_manifest(dir, "big", yaml);
}

#[test]
fn path_mtu_discovery_and_pod_errors_go_through_the_fast_path() {
    if !privileged("path_mtu_discovery_and_pod_errors_go_through_the_fast_path") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut net = topology(Links::NarrowToClient);
    serve_download(net.add_pod(0), stop.clone());
    let pod = &net.pods[0];
    let scratch = Scratch::new("pmtu");
    manifests(scratch.dir.path());
    let daemon = start(&net.node, &scratch, &[], "l3lb.log");
    for (ip, client, mtu) in [
        (SERVICE_V4, "10.1.0.2", CLIENT_MTU_V4),
        (SERVICE_V6, "fd01::2", CLIENT_MTU_V6),
    ] {
        assert_eq!(
            pod.learned_mtu(client.parse().expect("an address")),
            None,
            "no MTU learned for {client} before the download"
        );
        let before = reasons(&scratch);
        let service = SocketAddr::new(ip.parse().unwrap(), DOWNLOAD);
        // The daemon may still be attaching the pod's reply program: retry until it carries.
        let mut received = 0;
        let done = wait_until(DEADLINE * 2, || {
            received = download(&net.client, service);
            received == DOWNLOAD_BYTES
        });
        let after = reasons(&scratch);
        assert!(
            done,
            "the 1 MB download through {service} completed (last try: {received} bytes); \
             counters {after}\nlog:\n{}",
            daemon.log()
        );
        assert!(
            packets(&after, "icmp_translated") > packets(&before, "icmp_translated"),
            "the router's error reached the pod through the fast path: {after}"
        );
        assert_eq!(
            pod.learned_mtu(client.parse().expect("an address")),
            Some(mtu),
            "the pod's route cache holds the client's path MTU"
        );
    }

    for ip in [SERVICE_V4, SERVICE_V6] {
        let before = reasons(&scratch);
        let service = SocketAddr::new(ip.parse().unwrap(), CLOSED);
        assert!(
            wait_until(DEADLINE, || refused(&net.client, service)),
            "the pod's port unreachable reached the client as the service's ({service}): {}",
            reasons(&scratch)
        );
        let after = reasons(&scratch);
        assert!(
            packets(&after, "icmp_reply_translated") > packets(&before, "icmp_reply_translated"),
            "translated by the fast path: {after}"
        );
    }
    stop.store(true, Ordering::Relaxed);
}

const STICKY_V4: &str = "10.0.100.10";
/// Short, so the test can see it pass.
const AFFINITY_SECS: u64 = 2;

/// The pod (its name) that answers one new connection from `client` to `service`.
fn pod_for_new_connection(client: &NetNs, service: SocketAddr) -> Option<String> {
    let answer = Connection::open_from(client, service)?.request()?;
    Some(answer.split_whitespace().next()?.to_owned())
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_pod() {
    if !privileged("client_ip_affinity_keeps_a_client_on_one_pod") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut net = topology(Links::NarrowToClient);
    for i in 0..2 {
        let pod = net.add_pod(i);
        serve_pod(pod, format!("pod-{i}"), 8080, stop.clone());
    }
    let scratch = Scratch::new("affinity");
    let sticky = service("sticky")
        .load_balancer()
        .annotated_ips(STICKY_V4)
        .client_ip_affinity(AFFINITY_SECS as i32)
        .port(port("TCP", 80).named("http").target(8080));
    let endpoints = slice("sticky-4", "sticky", "IPv4")
        .endpoint(endpoint(["10.244.1.2"]).node("node-a").ready(true))
        .endpoint(endpoint(["10.244.1.3"]).node("node-a").ready(true))
        .port(port("TCP", 8080).named("http"));
    write_manifest(
        scratch.dir.path(),
        "sticky",
        fixtures::documents([sticky.yaml(), endpoints.yaml()]),
    );
    let daemon = start(&net.node, &scratch, &[], "l3lb.log");
    let service = SocketAddr::new(STICKY_V4.parse().unwrap(), 80);
    assert!(
        wait_until(DEADLINE, || pod_for_new_connection(&net.client, service)
            .is_some()),
        "the service answers; log:\n{}",
        daemon.log()
    );

    // 50 connections, each from a new source port (which Maglev alone would spread): one pod.
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..50 {
        let pod = pod_for_new_connection(&net.client, service).expect("an answer");
        *answered.entry(pod).or_default() += 1;
    }
    assert_eq!(
        answered.len(),
        1,
        "every connection of the client went to one pod: {answered:?}"
    );
    let bound = answered.keys().next().unwrap().clone();

    // Once the affinity has timed out (no new connection for longer than its timeout), a new
    // connection goes where Maglev sends it: the other pod, for some source port. Each try
    // waits out the timeout first, as its own connection binds the client again.
    let mut elsewhere = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(AFFINITY_SECS) + Duration::from_millis(300));
        let pod = pod_for_new_connection(&net.client, service).expect("an answer");
        if pod != bound {
            elsewhere = Some(pod);
            break;
        }
    }
    assert!(
        elsewhere.is_some(),
        "after the timeout the client's connections may go to the other pod too (stayed on {bound})"
    );
    stop.store(true, Ordering::Relaxed);
}

const JUMBO_V4: &str = "10.0.100.11";
const JUMBO_DATAGRAM: usize = 8000;

/// What asks [`serve_sizes`] for a [`BIG_REPLY`]-byte answer.
const BIG_REPLY_ASK: &[u8] = b"big reply, please";
const BIG_REPLY: usize = 3000;

/// A UDP server on 8080 inside `pod` that answers each datagram with its size (or, asked with
/// [`BIG_REPLY_ASK`], with [`BIG_REPLY`] bytes).
fn serve_sizes(pod: &NetNs, stop: Arc<AtomicBool>) {
    let pod = pod.name().to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&pod);
        // [::] takes IPv4 too (IPV6_V6ONLY is off by default).
        let udp = UdpSocket::bind("[::]:8080").expect("pod UDP socket");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buffer = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = udp.recv_from(&mut buffer) {
                let answer = match buffer[..n].strip_prefix(BIG_REPLY_ASK) {
                    // A reply larger than the pod's link: it leaves the pod as fragments.
                    Some(_) => vec![0x42u8; BIG_REPLY],
                    None => format!("{n} bytes").into_bytes(),
                };
                let _ = udp.send_to(&answer, peer);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("pod UDP server started");
}

/// One `size`-byte datagram to `service` from inside `client`: the answer, if it came from the
/// service address.
fn send_datagram(client: &NetNs, service: SocketAddr, size: usize) -> Option<String> {
    client.run_inside(move || {
        let any = if service.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(any).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        socket.send_to(&vec![0x42u8; size], service).ok()?;
        let mut buffer = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buffer).ok()?;
        (from == service).then(|| String::from_utf8_lossy(&buffer[..n]).into_owned())
    })
}

/// Asks the pod behind `service` for a [`BIG_REPLY`] from inside `client`: the answer's size,
/// if it came from the service address.
fn big_reply(client: &NetNs, service: SocketAddr) -> Option<usize> {
    client.run_inside(move || {
        let any = if service.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(any).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        socket.send_to(BIG_REPLY_ASK, service).ok()?;
        let mut buffer = vec![0u8; 65536];
        let (n, from) = socket.recv_from(&mut buffer).ok()?;
        (from == service).then_some(n)
    })
}

#[test]
fn jumbo_frames_through_native_xdp() {
    if !privileged("jumbo_frames_through_native_xdp") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut net = topology(Links::Jumbo);
    serve_sizes(net.add_pod(0), stop.clone());
    let scratch = Scratch::new("jumbo");
    let jumbo = service("jumbo")
        .load_balancer()
        .annotated_ips(JUMBO_V4)
        .port(port("UDP", 80).named("data").target(8080));
    let endpoints = slice("jumbo-4", "jumbo", "IPv4")
        .endpoint(endpoint([POD_V4]).node("node-a").ready(true))
        .port(port("UDP", 8080).named("data"));
    write_manifest(
        scratch.dir.path(),
        "jumbo",
        fixtures::documents([jumbo.yaml(), endpoints.yaml()]),
    );
    let daemon = start(&net.node, &scratch, &["--xdp-mode", "native"], "l3lb.log");
    let link = net.node.ip(&["link", "show", "uplink"]);
    assert!(
        link.contains(&format!("mtu {JUMBO_MTU}"))
            && link.contains("xdp")
            && !link.contains("xdpgeneric"),
        "native XDP on the 9000-byte uplink: {link}\nlog:\n{}",
        daemon.log()
    );

    let service = SocketAddr::new(JUMBO_V4.parse().unwrap(), 80);
    let before = reasons(&scratch);
    let mut answer = None;
    assert!(
        wait_until(DEADLINE, || {
            answer = send_datagram(&net.client, service, JUMBO_DATAGRAM);
            answer.is_some()
        }),
        "an answer from the service; counters {}\nlog:\n{}",
        reasons(&scratch),
        daemon.log()
    );
    assert_eq!(
        answer.as_deref(),
        Some(format!("{JUMBO_DATAGRAM} bytes").as_str()),
        "the pod got the datagram whole"
    );
    let after = reasons(&scratch);
    assert!(
        packets(&after, "forwarded") > packets(&before, "forwarded"),
        "the XDP program steered it: {after}"
    );
    stop.store(true, Ordering::Relaxed);
}

const FRAGMENTED_V4: &str = "10.0.100.12";
const FRAGMENTED_V6: &str = "2001:db8:100::12";

#[test]
fn fragmented_datagrams_reach_the_pod_whole() {
    if !privileged("fragmented_datagrams_reach_the_pod_whole") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut net = topology(Links::Standard);
    serve_sizes(net.add_pod(0), stop.clone());
    let scratch = Scratch::new("frag");
    let big = service("frag")
        .load_balancer()
        .annotated_ips(&format!("{FRAGMENTED_V4},{FRAGMENTED_V6}"))
        .port(port("UDP", 80).named("data").target(8080));
    let endpoints = |name: &str, family: &str, address: &str| {
        slice(name, "frag", family)
            .endpoint(endpoint([address]).node("node-a").ready(true))
            .port(port("UDP", 8080).named("data"))
            .yaml()
    };
    write_manifest(
        scratch.dir.path(),
        "frag",
        fixtures::documents([
            big.yaml(),
            endpoints("frag-4", "IPv4", POD_V4),
            endpoints("frag-6", "IPv6", POD_V6),
        ]),
    );
    let daemon = start(&net.node, &scratch, &[], "l3lb.log");
    let before = reasons(&scratch);
    for (ip, size) in [
        (FRAGMENTED_V4, 3000),
        (FRAGMENTED_V4, 2000),
        (FRAGMENTED_V6, 3000),
        (FRAGMENTED_V6, 2000),
    ] {
        let service = SocketAddr::new(ip.parse().unwrap(), 80);
        let mut answer = None;
        assert!(
            wait_until(DEADLINE, || {
                answer = send_datagram(&net.client, service, size);
                answer.is_some()
            }),
            "an answer to a {size}-byte datagram to {service}; counters {}\nlog:\n{}",
            reasons(&scratch),
            daemon.log()
        );
        assert_eq!(
            answer.as_deref(),
            Some(format!("{size} bytes").as_str()),
            "the pod got the datagram whole"
        );
    }
    let after = reasons(&scratch);
    let steered = |reasons: &serde_json::Value| {
        packets(reasons, "redirect_peer") + packets(reasons, "forwarded")
    };
    assert!(
        steered(&after) - steered(&before) >= 8,
        "every fragment took the fast path: {after}"
    );

    // The other way: a reply too big for the pod's link leaves it as fragments, and every one
    // must leave the node with the service's address for the client to reassemble it.
    for ip in [FRAGMENTED_V4, FRAGMENTED_V6] {
        let service = SocketAddr::new(ip.parse().unwrap(), 80);
        let before = reasons(&scratch);
        let mut size = None;
        assert!(
            wait_until(DEADLINE, || {
                size = big_reply(&net.client, service);
                size.is_some()
            }),
            "a {BIG_REPLY}-byte reply from {service}; counters {}",
            reasons(&scratch)
        );
        assert_eq!(size, Some(BIG_REPLY), "the client got the reply whole");
        let after = reasons(&scratch);
        assert!(
            packets(&after, "reply_redirected") - packets(&before, "reply_redirected") >= 3,
            "the reply's fragments (and the request's reply path) took the fast path: {after}"
        );
    }
    stop.store(true, Ordering::Relaxed);
}
