//! Part 2: the data path end to end, in network namespaces:
//!
//! ```text
//! client 10.1.0.2 ── eth0 │ uplink 10.1.0.1 [node] vp0 ── pod 10.244.1.2
//!                                                  vp1 ── pod 10.244.1.3
//! ```
//!
//! The same topology once per [`Mode`]: two references without any service (the node only
//! routes), kube-proxy's iptables rules, kube-proxy's nftables rules (both from
//! [`super::kubeproxy`]), `l3lb run --xdp` with a file source (the fast path, no netfilter rule
//! at all in its node), and l3lb next to kube-proxy's iptables rules. Each mode gets N Services
//! (one measured, in the middle of kube-proxy's list), and every round measures each mode once,
//! in a rotating order, so that a busy moment of the machine hits all of them alike.
//!
//! - UDP: one sender thread in the client pushes 60-byte frames (16 flows, `sendmmsg` in
//!   batches of 64) to the measured service for a bounded time and count; delivered = packets
//!   received on the pods' `eth0` (kernel counters), per second of sending. After the UDP lane
//!   of each mode, the node's conntrack entries for the client's UDP flows are counted.
//! - Node cost: the same sender with a drop program at TC ingress of each pod's `eth0`, so the
//!   pods' IP/UDP stack is out of the figure, against the same drop program at TC ingress of the
//!   node's uplink: the difference of the per-packet times is what the node does.
//! - TCP: one client thread connects to the service and resets the connection at once (no
//!   TIME_WAIT), for a bounded time and count: completed handshakes per second. Every
//!   connection is a new flow, so this is where kube-proxy's per-connection rule walk shows.
//! - Request/response: one established TCP connection, 1-byte request, 1-byte answer echoed by
//!   the pod, as many round trips as fit (netperf's `TCP_RR`): transactions per second.
//!
//! The whole path of a packet (sender's syscall, node, pod) runs in softirq on the sending CPU,
//! so packets per second is the inverse of the per-packet cost of the path, sender included.
use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use l3lb_common::{ServiceEntry, ServiceKey, map_names};
use serde::Serialize;

use super::{
    Options, PinDir, check_interrupted,
    kubeproxy::{self, BenchService, PODS, SERVICE_PORT, TARGET_PORT},
    stats::Summary,
    sys,
};
use crate::{
    daemon::{L3lb, l3lb_binary},
    fixtures,
    netns::{NetNs, sh},
    progress,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No load balancing: packets go to a pod's address and the node only routes them. The
    /// floor of the data path, for the overhead each mode adds.
    Direct,
    /// The same with an empty XDP program (`XDP_PASS`) on the node's uplink: what any XDP
    /// program costs on a veth before doing anything.
    DirectXdp,
    Iptables,
    Nftables,
    /// `l3lb run --xdp` with the default `--xdp-mode auto`: the fast path as the daemon picks it
    /// for the uplink, no netfilter rule in the node.
    L3lb,
    /// l3lb on a node that still has kube-proxy's iptables rules loaded (a migration, or
    /// kube-proxy left running): whether the fast path steers clear of netfilter.
    L3lbIptables,
}

impl Mode {
    /// The reference first: no service at all, the client talks to a pod's own address.
    pub const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::DirectXdp,
        Mode::Iptables,
        Mode::Nftables,
        Mode::L3lb,
        Mode::L3lbIptables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "no service (direct to a pod)",
            Mode::DirectXdp => "no service, empty XDP program",
            Mode::Iptables => "kube-proxy iptables",
            Mode::Nftables => "kube-proxy nftables",
            Mode::L3lb => "l3lb",
            Mode::L3lbIptables => "l3lb, kube-proxy's iptables rules still loaded",
        }
    }

    /// The label in the plot's legend, where the long one does not fit.
    pub fn short_label(self) -> &'static str {
        match self {
            Mode::Direct => "direct to a pod",
            Mode::DirectXdp => "direct, empty XDP",
            Mode::L3lbIptables => "l3lb + iptables rules",
            other => other.label(),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Mode::Direct => "dir",
            Mode::DirectXdp => "dxp",
            Mode::Iptables => "ipt",
            Mode::Nftables => "nft",
            Mode::L3lb => "l3l",
            Mode::L3lbIptables => "l3i",
        }
    }

    /// The references: the client sends to a pod's own address, no service involved.
    pub fn is_direct(self) -> bool {
        matches!(self, Mode::Direct | Mode::DirectXdp)
    }

    pub fn runs_l3lb(self) -> bool {
        matches!(self, Mode::L3lb | Mode::L3lbIptables)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mode: Mode,
    pub services: u32,
    /// Seconds from an empty node to forwarding: `iptables-restore`, `nft -f`, or l3lb's start
    /// until every service is in the fast path's maps.
    pub setup_seconds: f64,
    /// Packets per second received by the pods.
    pub udp_pps: Summary,
    /// Packets per second the client sent.
    pub udp_sent_pps: Summary,
    /// Packets per second the pods' server read from its sockets.
    pub udp_read_pps: Summary,
    /// Entries in the node's conntrack table for the client's UDP flows after the UDP lane, the
    /// most seen over the rounds (`None`: `conntrack` could not be run).
    pub conntrack_udp_entries: Option<u64>,
    /// New TCP connections per second.
    pub tcp_cps: Summary,
    /// Connection attempts that failed (1 s timeout), all rounds.
    pub tcp_failed: u64,
    /// The node-cost lane (only at the service counts in [`Part2::extended_services`]).
    pub node: Option<NodeCost>,
    /// Request/response transactions per second on one TCP connection (same service counts).
    pub rr_tps: Option<Summary>,
    pub error: Option<String>,
}

/// The UDP sender with a drop program at TC ingress of the pods' `eth0`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeCost {
    /// Packets per second the sender wrote (the drop program keeps the pods' stack out).
    pub sent_pps: Summary,
    /// Per round: `1/sent_pps − 1/uplink drop pps` in nanoseconds, the node's own work.
    pub ns: Summary,
    /// The smallest share, over the rounds, of the sent packets the pods' `eth0` counted (that
    /// is, that reached the drop program).
    pub reached: f64,
}

/// The reference of the node-cost lane: the drop program at TC ingress of the node's uplink.
#[derive(Clone, Debug, Serialize)]
pub struct UplinkDrop {
    pub services: u32,
    pub sent_pps: Summary,
    /// The smallest share, over the rounds, of the sent packets the uplink counted.
    pub reached: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Part2 {
    pub rounds: usize,
    pub udp_seconds: f64,
    pub tcp_seconds: f64,
    pub rr_seconds: f64,
    pub udp_flows: u16,
    pub tcp_in_flight: usize,
    /// The service counts at which the node-cost and request/response lanes ran.
    pub extended_services: Vec<u32>,
    pub uplink_drop: Vec<UplinkDrop>,
    pub rows: Vec<Row>,
}

const CLIENT: &str = "10.1.0.2";
const NODE_UPLINK: &str = "10.1.0.1";
const UDP_FLOWS: u16 = 16;
const BATCH: usize = 64;
/// Connections a client keeps in flight.
const IN_FLIGHT: usize = 64;
const PAYLOAD: [u8; 18] = [0x5a; 18];
/// Client ports of the request/response lane: above the client's ephemeral range
/// (`ip_local_port_range` ends at 65000), so the pods' servers can tell its connection from the
/// new-connections lane's by the client port alone.
const RR_PORTS: std::ops::Range<u16> = 65001..65535;
/// The CPU both ends of the request/response lane run on (the first this process may use): on
/// one CPU a transaction is the path's cost and two context switches, where across CPUs it
/// would hang on wake-up latencies (idle states, inter-processor interrupts, other tenants' time
/// slices).
fn rr_cpu() -> usize {
    static CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| sys::first_allowed_cpu().unwrap_or(0))
}
/// `TC_ACT_SHOT`: the node-cost lane's drop program's verdict.
const TC_ACT_SHOT: i32 = 2;

/// The pods' servers: one thread reads both pods' UDP sockets, one accepts on both pods'
/// TCP listeners (each socket was opened inside its pod's namespace). Two threads per
/// topology, whatever the number of pods, so that the servers do not crowd out the sender on
/// a small machine.
struct Servers {
    stop: Arc<AtomicBool>,
    /// While set, the UDP reader spins on non-blocking reads instead of sleeping in the
    /// kernel: no wakeup per datagram, so the path is measured rather than the scheduler.
    spin: Arc<AtomicBool>,
    /// Datagrams the reader received.
    received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Topology {
    // Dropped in this order: the servers stop before the namespaces go.
    servers: Servers,
    pods: Vec<NetNs>,
    client: NetNs,
    node: NetNs,
}

fn set_int(fd: i32, level: libc::c_int, option: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid socket and an int option.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        );
    }
}

fn start_servers(pods: &[NetNs]) -> Result<Servers> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for pod in pods {
        let (u, t) = sys::in_netns(pod.name(), || -> Result<(UdpSocket, TcpListener)> {
            let udp = UdpSocket::bind(("0.0.0.0", TARGET_PORT))?;
            set_int(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                8 << 20,
            );
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            let tcp = TcpListener::bind(("0.0.0.0", TARGET_PORT))?;
            // A deep accept queue: std listens with a short one, and a full queue drops SYNs.
            // SAFETY: listen(2) again on a listening socket only changes its backlog.
            unsafe { libc::listen(tcp.as_raw_fd(), 4096) };
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })??;
        udp.push(u);
        tcp.push(t);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let spin = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    {
        let (stop, spin, received) = (stop.clone(), spin.clone(), received.clone());
        threads.push(std::thread::spawn(move || {
            read_udp(&udp, &stop, &spin, &received)
        }));
    }
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || accept_tcp(&tcp, &stop)));
    }
    Ok(Servers {
        stop,
        spin,
        received,
        threads,
    })
}

/// Reads and counts the datagrams of all pods' sockets, in batches.
fn read_udp(sockets: &[UdpSocket], stop: &AtomicBool, spin: &AtomicBool, received: &AtomicU64) {
    let mut buffers = vec![[0u8; 64]; BATCH];
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is valid (null name, no control).
    let mut messages: Vec<libc::mmsghdr> =
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (message, iov) in messages.iter_mut().zip(iovecs.iter_mut()) {
        message.msg_hdr.msg_iov = iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    while !stop.load(Ordering::Relaxed) {
        let spinning = spin.load(Ordering::Relaxed);
        for socket in sockets {
            let flags = if spinning {
                libc::MSG_DONTWAIT
            } else {
                libc::MSG_WAITFORONE
            };
            // SAFETY: BATCH message headers, each pointing at its own buffer.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    messages.as_mut_ptr(),
                    BATCH as u32,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if n > 0 {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Accepts every pending connection on all pods' listeners. A connection from a client port
/// above the clients' ephemeral range ([`RR_PORTS`]) is the request/response lane's: a thread of
/// its own echoes it. Every other one is the new-connections lane's and is closed at once.
fn accept_tcp(listeners: &[TcpListener], stop: &Arc<AtomicBool>) {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut echoes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: an array of pollfd of the length given.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        for listener in listeners {
            while let Ok((stream, peer)) = listener.accept() {
                if peer.port() >= RR_PORTS.start {
                    let stop = stop.clone();
                    echoes.push(std::thread::spawn(move || echo(stream, &stop)));
                } else {
                    drop(stream);
                }
            }
        }
        echoes.retain(|echo: &JoinHandle<()>| !echo.is_finished());
    }
    for echo in echoes {
        let _ = echo.join();
    }
}

/// Sends back whatever arrives on `stream` until the client closes it or the servers stop.
fn echo(mut stream: std::net::TcpStream, stop: &AtomicBool) {
    use std::io::{Read as _, Write as _};
    // Accepted sockets do not inherit the listener's O_NONBLOCK; blocking reads with a timeout
    // let the thread notice `stop`.
    let _ = sys::pin_to_cpu(rr_cpu());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buffer = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

fn topology(tag: &str) -> Result<Topology> {
    let client = NetNs::new(&format!("b{tag}c"));
    let node = NetNs::new(&format!("b{tag}n"));
    crate::netns::veth_pair(
        &client,
        "eth0",
        &format!("{CLIENT}/24"),
        &node,
        "uplink",
        &format!("{NODE_UPLINK}/24"),
    );
    client.ip(&["route", "add", "default", "via", NODE_UPLINK]);
    sh(node
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"]));
    // The client reuses ports quickly: connections end with a reset, and every port is fair game.
    sh(client
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_local_port_range=1024 65000"]));
    let mut pods = Vec::new();
    for (i, pod_ip) in PODS.iter().enumerate() {
        let pod = NetNs::new(&format!("b{tag}p"));
        crate::netns::attach_pod(&node, &pod, &format!("vp{i}"), &pod_ip.to_string());
        pods.push(pod);
    }
    let servers = start_servers(&pods)?;
    Ok(Topology {
        servers,
        pods,
        client,
        node,
    })
}

/// A mode installed in a topology: what must live as long as the measurement.
struct Installed {
    daemon: Option<L3lb>,
    _pins: Option<PinDir>,
    _scratch: tempfile::TempDir,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.terminate();
        }
    }
}

/// Runs `command` to completion, failing with the start of its stderr; returns its run time.
fn timed(command: &mut Command) -> Result<f64> {
    let started = Instant::now();
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

fn install(mode: Mode, topo: &Topology, services: &[BenchService]) -> Result<(Installed, f64)> {
    let n = services.len();
    let mut installed = Installed {
        daemon: None,
        _pins: None,
        _scratch: tempfile::Builder::new()
            .prefix(&format!("l3lb-bench-{}-{n}-", mode.tag()))
            .tempdir()?,
    };
    let scratch = installed._scratch.path().to_owned();
    let mut seconds = 0.0;
    if mode == Mode::DirectXdp {
        let pins = PinDir::new(&format!("floor-{n}"));
        std::fs::create_dir_all(&pins.0)?;
        let program =
            sys::load_floor(sys::BPF_PROG_TYPE_XDP, 2).context("loading the empty XDP program")?;
        let pinned = pins.0.join("floor_xdp");
        sys::pin(std::os::fd::AsFd::as_fd(&program), &pinned)
            .context("pinning the empty XDP program")?;
        installed._pins = Some(pins);
        seconds = timed(
            topo.node
                .command("ip")
                .args(["link", "set", "dev", "uplink", "xdpdrv", "pinned"])
                .arg(&pinned),
        )?;
    }
    if matches!(mode, Mode::Iptables | Mode::L3lbIptables) {
        let file = scratch.join("iptables.rules");
        std::fs::write(&file, kubeproxy::iptables_restore(services))?;
        seconds = timed(topo.node.command("iptables-restore").arg(&file))?;
    }
    if mode == Mode::Nftables {
        let file = scratch.join("kube-proxy.nft");
        std::fs::write(&file, kubeproxy::nft_script(services))?;
        seconds = timed(topo.node.command("nft").arg("-f").arg(&file))?;
    }
    if mode.runs_l3lb() {
        // Setup is l3lb's own start, also where kube-proxy's rules were loaded before it.
        seconds = start_l3lb(mode, topo, services, &mut installed)?;
    }
    Ok((installed, seconds))
}

/// Starts `l3lb run --xdp` on the node's uplink with the default attach mode, and waits until
/// every service is in the fast path's maps: the seconds that took.
fn start_l3lb(
    mode: Mode,
    topo: &Topology,
    services: &[BenchService],
    installed: &mut Installed,
) -> Result<f64> {
    let n = services.len();
    let scratch = installed._scratch.path().to_owned();
    let manifests = scratch.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    write_manifests(&manifests, services)?;
    // One pin root per daemon: two on the same maps would steer each other's services.
    let pins = PinDir::new(&format!("dp-{}-{n}", mode.tag()));
    let vips: usize = services.iter().map(|s| s.protocols.len()).sum();
    let mut command = topo
        .node
        .command(l3lb_binary().to_str().context("binary path")?);
    command.args([
        "run",
        "--node-name",
        "node-a",
        "--prefix",
        "10.100.0.0/16",
        "--source",
    ]);
    command.arg(format!("file:{}", manifests.display()));
    command.args(["--xdp", "--xdp-iface", "uplink", "--pin-root"]);
    command.arg(&pins.0);
    command.args(["--xdp-max-services", &(vips + 64).max(2048).to_string()]);
    let started = Instant::now();
    installed.daemon = Some(L3lb::spawn(command, scratch.join("l3lb.log")));
    // From here the pins go with `installed`, after the daemon stopped.
    installed._pins = Some(pins);
    let map = installed
        ._pins
        .as_ref()
        .expect("set above")
        .0
        .join(map_names::SERVICES);
    loop {
        check_interrupted()?;
        if steered(&map).unwrap_or(0) >= vips {
            return Ok(started.elapsed().as_secs_f64());
        }
        let daemon = installed.daemon.as_ref().expect("started above");
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "l3lb did not steer {vips} services within 300 s; log:\n{}",
                tail(&daemon.log())
            );
        }
        if !Path::new(&format!("/proc/{}", daemon.pid())).exists() {
            bail!("l3lb exited; log:\n{}", tail(&daemon.log()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Service entries in the pinned `L3LB_SERVICES` map that have a table.
fn steered(map: &Path) -> Result<usize> {
    let data = aya::maps::MapData::from_pin(map)?;
    let services =
        aya::maps::HashMap::<_, ServiceKey, ServiceEntry>::try_from(aya::maps::Map::HashMap(data))?;
    Ok(services
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, entry)| entry.table_size > 0)
        .count())
}

/// The Services and their EndpointSlices as `--source file:` manifests (one file).
fn write_manifests(dir: &Path, services: &[BenchService]) -> Result<()> {
    let mut documents = Vec::new();
    for svc in services {
        let mut service = fixtures::service(&svc.name)
            .namespace("default")
            .annotated_ips(&svc.lb_ip.to_string())
            .load_balancer()
            .external_traffic_policy("Local");
        let mut slice =
            fixtures::slice(&format!("{}-1", svc.name), &svc.name, "IPv4").namespace("default");
        for pod in PODS {
            slice = slice.endpoint(fixtures::endpoint([pod]).node("node-a").ready(true));
        }
        for p in &svc.protocols {
            let protocol = p.to_uppercase();
            service = service.port(fixtures::port(&protocol, SERVICE_PORT).named(p));
            slice = slice.port(fixtures::port(&protocol, TARGET_PORT).named(p));
        }
        documents.push(service.yaml());
        documents.push(slice.yaml());
    }
    let yaml = fixtures::documents(documents);
    let tmp = dir.join(".services.yaml.tmp");
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, dir.join("services.yaml"))?;
    Ok(())
}

/// Sum of `rx_packets` on the pods' `eth0`.
fn pods_rx(topo: &Topology) -> Result<u64> {
    let mut total = 0;
    for pod in &topo.pods {
        total += sys::in_netns(pod.name(), || sys::rx_packets("eth0"))??;
    }
    Ok(total)
}

struct UdpResult {
    sent: u64,
    elapsed: Duration,
}

/// The MAC address of `interface` in namespace `ns`.
fn mac_of(ns: &NetNs, interface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-o", "link", "show", "dev", interface]);
    let text = out
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC address for {interface}: {out}"))?;
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16)?;
    }
    Ok(mac)
}

/// Sends UDP datagrams to `service:80` from `UDP_FLOWS` source ports until `duration` or
/// `max_packets`: complete Ethernet frames written to the client's `eth0` through an
/// `AF_PACKET` socket (qdisc bypassed, `sendmmsg` in batches), so the client spends as little
/// as it can per packet and the node's share of the cost shows.
fn udp_blast(
    topo: &Topology,
    target: SocketAddrV4,
    duration: Duration,
    max_packets: u64,
) -> Result<UdpResult> {
    let (node_mac, client_mac) = (mac_of(&topo.node, "uplink")?, mac_of(&topo.client, "eth0")?);
    let client_ip: Ipv4Addr = CLIENT.parse()?;
    let mut frames: Vec<Vec<u8>> = (0..UDP_FLOWS)
        .map(|i| {
            let mut frame = crate::frames::ipv4(
                17,
                client_ip,
                *target.ip(),
                41000 + i,
                target.port(),
                &PAYLOAD,
            );
            frame[..6].copy_from_slice(&node_mac);
            frame[6..12].copy_from_slice(&client_mac);
            frame
        })
        .collect();
    sys::in_netns(topo.client.name(), move || -> Result<UdpResult> {
        // SAFETY: plain socket(2); protocol 0: the socket receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: our descriptor, owned from here on.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated interface name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        // SAFETY: zeroed sockaddr_ll is valid; family and interface set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: a valid socket and address of the size given.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!("binding to eth0: {}", std::io::Error::last_os_error());
        }
        set_int(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            1,
        );
        let mut iovecs: Vec<libc::iovec> = (0..BATCH)
            .map(|i| {
                let count = frames.len();
                let frame = &mut frames[i % count];
                libc::iovec {
                    iov_base: frame.as_mut_ptr() as *mut libc::c_void,
                    iov_len: frame.len(),
                }
            })
            .collect();
        // SAFETY: zeroed mmsghdr is valid (bound socket: no name; no control).
        let mut messages: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (message, iov) in messages.iter_mut().zip(iovecs.iter_mut()) {
            message.msg_hdr.msg_iov = iov;
            message.msg_hdr.msg_iovlen = 1;
        }
        let started = Instant::now();
        let mut sent = 0u64;
        let mut errors = 0u64;
        while sent < max_packets && started.elapsed() < duration {
            // SAFETY: BATCH headers, each pointing at a live frame.
            let n = unsafe {
                libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0)
            };
            if n > 0 {
                sent += n as u64;
            } else {
                errors += 1;
                if errors > 1000 && sent == 0 {
                    bail!("sending on eth0: {}", std::io::Error::last_os_error());
                }
            }
        }
        Ok(UdpResult {
            sent,
            elapsed: started.elapsed(),
        })
    })?
}

/// Opens TCP connections to `service:80` from one client thread keeping `IN_FLIGHT`
/// non-blocking connects outstanding, and resets each one as soon as its handshake completes
/// (`SO_LINGER` 0: no TIME_WAIT), until `duration` or `max`. Returns (completed, failed,
/// elapsed); a connect not done within a second counts as failed.
fn tcp_connects(
    client: &NetNs,
    target: SocketAddrV4,
    duration: Duration,
    max: u64,
) -> Result<(u64, u64, Duration)> {
    sys::in_netns(client.name(), move || -> Result<(u64, u64, Duration)> {
        // SAFETY: plain epoll_create1(2); the descriptor is owned below.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        // SAFETY: our descriptor, closed when this drops.
        let _epoll_guard =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(epoll) };
        // SAFETY: zeroed sockaddr_in is valid; fields set below.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_port = target.port().to_be();
        addr.sin_addr.s_addr = u32::from(*target.ip()).to_be();
        let mut pending: std::collections::HashMap<i32, Instant> = std::collections::HashMap::new();
        let (mut ok, mut failed, mut opened) = (0u64, 0u64, 0u64);
        let finish = |fd: i32| {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: our socket; a linger struct of the size given; closed once.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    size_of::<libc::linger>() as u32,
                );
                libc::close(fd);
            }
        };
        let started = Instant::now();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; IN_FLIGHT];
        loop {
            let running = started.elapsed() < duration && opened < max;
            if !running && pending.is_empty() {
                break;
            }
            while running && pending.len() < IN_FLIGHT && opened < max {
                // SAFETY: plain socket(2).
                let fd = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                if fd < 0 {
                    bail!("socket: {}", std::io::Error::last_os_error());
                }
                // SAFETY: a valid socket and address of the size given.
                let rc = unsafe {
                    libc::connect(
                        fd,
                        &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                let errno = std::io::Error::last_os_error().raw_os_error();
                if rc != 0 && errno != Some(libc::EINPROGRESS) {
                    failed += 1;
                    finish(fd);
                    continue;
                }
                let mut event = libc::epoll_event {
                    events: libc::EPOLLOUT as u32,
                    u64: fd as u64,
                };
                // SAFETY: valid descriptors and event.
                unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
                pending.insert(fd, Instant::now());
                opened += 1;
            }
            // SAFETY: an event array of the length given.
            let n =
                unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 10) };
            for event in &events[..n.max(0) as usize] {
                let fd = event.u64 as i32;
                let mut error: libc::c_int = 0;
                let mut len = size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: our socket; an int of the size given.
                unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        &mut error as *mut libc::c_int as *mut libc::c_void,
                        &mut len,
                    )
                };
                if error == 0 {
                    ok += 1
                } else {
                    failed += 1
                }
                pending.remove(&fd);
                finish(fd);
            }
            let now = Instant::now();
            let stale: Vec<i32> = pending
                .iter()
                .filter(|(_, at)| now.duration_since(**at) > Duration::from_secs(1))
                .map(|(fd, _)| *fd)
                .collect();
            for fd in stale {
                pending.remove(&fd);
                failed += 1;
                finish(fd);
            }
        }
        Ok((ok, failed, started.elapsed()))
    })?
}

/// `sockaddr_in` of `addr`.
fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: zeroed sockaddr_in is valid; fields set below.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

static NEXT_RR_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// netperf's `TCP_RR`: one TCP connection to `target` from a client port in [`RR_PORTS`] (so the
/// pod echoes it), a 1-byte request and the 1-byte answer, again and again for `duration`.
/// Returns (transactions, elapsed). The connection ends with a reset (no TIME_WAIT on the port).
fn tcp_rr(client: &NetNs, target: SocketAddrV4, duration: Duration) -> Result<(u64, Duration)> {
    use std::io::{Read as _, Write as _};
    let span = RR_PORTS.end - RR_PORTS.start;
    let port = RR_PORTS.start + NEXT_RR_PORT.fetch_add(1, Ordering::Relaxed) % span;
    sys::in_netns(client.name(), move || -> Result<(u64, Duration)> {
        let cpu = rr_cpu();
        sys::pin_to_cpu(cpu).with_context(|| format!("moving the client to CPU {cpu}"))?;
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: our descriptor, owned from here on.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        // A blocking connect gives up after SO_SNDTIMEO.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        let local = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        let remote = sockaddr(target);
        // SAFETY: a valid socket; a timeval and addresses of the sizes given.
        let (bound, connected) = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            );
            let bound = libc::bind(
                fd,
                &local as *const libc::sockaddr_in as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as u32,
            );
            let connected = (bound == 0).then(|| {
                libc::connect(
                    fd,
                    &remote as *const libc::sockaddr_in as *const libc::sockaddr,
                    size_of::<libc::sockaddr_in>() as u32,
                )
            });
            (bound, connected)
        };
        if bound != 0 {
            bail!("binding port {port}: {}", std::io::Error::last_os_error());
        }
        if connected != Some(0) {
            bail!(
                "connecting to {target} from port {port}: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut stream = std::net::TcpStream::from(socket);
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut answer = [0u8; 1];
        let mut transactions = 0u64;
        let started = Instant::now();
        while started.elapsed() < duration {
            stream
                .write_all(b"q")
                .and_then(|()| stream.read_exact(&mut answer))
                .with_context(|| {
                    format!(
                        "transaction {} with {target} from port {port}",
                        transactions + 1
                    )
                })?;
            transactions += 1;
        }
        let elapsed = started.elapsed();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: our socket; a linger struct of the size given.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                size_of::<libc::linger>() as u32,
            )
        };
        Ok((transactions, elapsed))
    })?
}

/// Entries in `node`'s conntrack table for UDP flows from the client; `None` when `conntrack`
/// cannot be run.
fn conntrack_udp_entries(node: &NetNs) -> Option<u64> {
    let out = node
        .command("conntrack")
        .args(["-L", "-p", "udp", "--orig-src", CLIENT])
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .count() as u64,
    )
}

/// The drop program at TC ingress of `interface` in `ns` (a clsact qdisc and a `cls_bpf`
/// filter in direct-action mode), removed with the qdisc when dropped.
struct TcDrop<'a> {
    ns: &'a NetNs,
    interface: &'static str,
}

impl<'a> TcDrop<'a> {
    fn attach(ns: &'a NetNs, interface: &'static str, pinned: &Path) -> Result<TcDrop<'a>> {
        timed(
            ns.command("tc")
                .args(["qdisc", "add", "dev", interface, "clsact"]),
        )?;
        let guard = TcDrop { ns, interface };
        timed(
            ns.command("tc")
                .args([
                    "filter",
                    "add",
                    "dev",
                    interface,
                    "ingress",
                    "bpf",
                    "object-pinned",
                ])
                .arg(pinned)
                .arg("direct-action"),
        )?;
        Ok(guard)
    }
}

impl Drop for TcDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .command("tc")
            .args(["qdisc", "del", "dev", self.interface, "clsact"])
            .output();
    }
}

/// `rx_packets` of the node's uplink.
fn uplink_rx(topo: &Topology) -> Result<u64> {
    Ok(sys::in_netns(topo.node.name(), || {
        sys::rx_packets("uplink")
    })??)
}

/// One UDP measurement with the drop program where `drop_at` says (the pods' `eth0`, or the
/// node's uplink): (sender's packets per second, share of the sent packets counted on the
/// interfaces in front of the drop program). Fails when a datagram still reached a socket.
fn udp_into_drop(
    topo: &Topology,
    target: SocketAddrV4,
    duration: Duration,
    pinned: &Path,
    at_uplink: bool,
) -> Result<(f64, f64)> {
    let _drops: Vec<TcDrop<'_>> = if at_uplink {
        vec![TcDrop::attach(&topo.node, "uplink", pinned)?]
    } else {
        topo.pods
            .iter()
            .map(|pod| TcDrop::attach(pod, "eth0", pinned))
            .collect::<Result<_>>()?
    };
    let counted = |topo: &Topology| {
        if at_uplink {
            uplink_rx(topo)
        } else {
            pods_rx(topo)
        }
    };
    let before = counted(topo)?;
    let read_before = topo.servers.received.load(Ordering::Relaxed);
    let udp = udp_blast(topo, target, duration, 50_000_000)?;
    super::sleep(Duration::from_millis(100))?;
    let reached = counted(topo)? - before;
    let read = topo.servers.received.load(Ordering::Relaxed) - read_before;
    if read > 0 {
        bail!("{read} datagrams got past the drop program to the pods' sockets");
    }
    let seconds = udp.elapsed.as_secs_f64();
    Ok((
        udp.sent as f64 / seconds,
        reached as f64 / (udp.sent as f64).max(1.0),
    ))
}

/// A set-up mode: its topology, what it installed, and the rounds measured so far.
struct Lane {
    mode: Mode,
    installed: Option<Installed>,
    topo: Topology,
    setup_seconds: f64,
    udp: Vec<f64>,
    udp_sent: Vec<f64>,
    udp_read: Vec<f64>,
    conntrack: Option<u64>,
    tcp: Vec<f64>,
    tcp_failed: u64,
    node_sent: Vec<f64>,
    node_reached: f64,
    /// The Direct lane also measures the node-cost lane's reference, the drop at the uplink.
    uplink_sent: Vec<f64>,
    uplink_reached: f64,
    rr: Vec<f64>,
    error: Option<String>,
}

/// How long each lane measures, per round.
struct Times {
    udp: Duration,
    tcp: Duration,
    rr: Duration,
}

pub fn run_part(options: &Options) -> Result<Part2> {
    let (counts, rounds, seconds): (&[u32], usize, f64) = if options.quick {
        (&[10, 1_000], 3, 0.6)
    } else {
        (&[10, 1_000, 10_000], 6, 1.5)
    };
    // The node-cost and request/response lanes run where the targets are judged, at 1 000
    // services: at every count they would take the full run past twenty minutes.
    let extended: &[u32] = &[1_000];
    let times = Times {
        udp: Duration::from_secs_f64(seconds),
        tcp: Duration::from_secs_f64(seconds),
        rr: Duration::from_secs_f64(seconds),
    };
    let mut part = Part2 {
        rounds,
        udp_seconds: seconds,
        tcp_seconds: seconds,
        rr_seconds: seconds,
        udp_flows: UDP_FLOWS,
        tcp_in_flight: IN_FLIGHT,
        extended_services: extended.to_vec(),
        uplink_drop: Vec::new(),
        rows: Vec::new(),
    };
    // The node-cost lane's drop program, pinned for `tc filter … bpf pinned`.
    let drop_pins = PinDir::new("drop");
    std::fs::create_dir_all(&drop_pins.0)?;
    let drop_program = sys::load_floor(sys::BPF_PROG_TYPE_SCHED_CLS, TC_ACT_SHOT)
        .context("loading the TC drop program")?;
    let drop_pinned = drop_pins.0.join("drop_tc");
    sys::pin(std::os::fd::AsFd::as_fd(&drop_program), &drop_pinned)
        .context("pinning the TC drop program")?;
    for &n in counts {
        check_interrupted()?;
        let (services, measured) = kubeproxy::services(n);
        let service = SocketAddrV4::new(services[measured].lb_ip, SERVICE_PORT);
        let direct = SocketAddrV4::new(PODS[0], TARGET_PORT);
        let target_of = |mode: Mode| if mode.is_direct() { direct } else { service };
        let mut lanes = Vec::new();
        for mode in Mode::ALL {
            check_interrupted()?;
            progress!("part 2: {n} services, setting up {}", mode.label());
            let topo = topology(mode.tag())?;
            let mut lane = Lane {
                mode,
                installed: None,
                topo,
                setup_seconds: f64::NAN,
                udp: Vec::new(),
                udp_sent: Vec::new(),
                udp_read: Vec::new(),
                conntrack: None,
                tcp: Vec::new(),
                tcp_failed: 0,
                node_sent: Vec::new(),
                node_reached: 1.0,
                uplink_sent: Vec::new(),
                uplink_reached: 1.0,
                rr: Vec::new(),
                error: None,
            };
            match install(mode, &lane.topo, &services).and_then(|(installed, seconds)| {
                lane.installed = Some(installed);
                lane.setup_seconds = seconds;
                verify(&lane.topo, target_of(mode))
            }) {
                Ok(()) => progress!(
                    "part 2: {} ready in {:.1} s",
                    mode.label(),
                    lane.setup_seconds
                ),
                Err(err) => {
                    check_interrupted()?;
                    progress!("part 2: {} failed: {err:#}", mode.label());
                    lane.error = Some(format!("{err:#}"));
                }
            }
            lanes.push(lane);
        }
        let extended = extended.contains(&n);
        for round in 0..rounds {
            // A rotating order, so no mode always runs right after another.
            let lanes_len = lanes.len();
            lanes.rotate_left(round % lanes_len.max(1));
            for lane in lanes.iter_mut().filter(|l| l.error.is_none()) {
                let target = target_of(lane.mode);
                if let Err(err) = measure_round(lane, target, &times, extended, &drop_pinned) {
                    check_interrupted()?;
                    progress!("part 2: {} failed: {err:#}", lane.mode.label());
                    lane.error = Some(format!("round {}: {err:#}", round + 1));
                }
            }
            lanes.rotate_right(round % lanes_len.max(1));
            let line: Vec<String> = lanes
                .iter()
                .filter(|l| l.error.is_none())
                .map(|l| {
                    let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
                    let mut text = format!(
                        "{} {:.0} pps / {:.0} conn/s",
                        l.mode.label(),
                        last(&l.udp),
                        last(&l.tcp),
                    );
                    if extended {
                        text += &format!(
                            " / {:.0} pps into the drop / {:.0} RR/s",
                            last(&l.node_sent),
                            last(&l.rr)
                        );
                    }
                    if let Some(entries) = l.conntrack.filter(|_| !l.mode.is_direct()) {
                        text += &format!(" / {entries} conntrack entries");
                    }
                    text
                })
                .collect();
            progress!(
                "part 2: {n} services, round {}/{rounds}: {}",
                round + 1,
                line.join(", ")
            );
        }
        let uplink = lanes
            .iter()
            .find(|l| l.mode == Mode::Direct && l.error.is_none() && !l.uplink_sent.is_empty())
            .map(|l| (l.uplink_sent.clone(), l.uplink_reached));
        if let Some((sent, reached)) = &uplink {
            part.uplink_drop.push(UplinkDrop {
                services: n,
                sent_pps: Summary::of(sent.clone()),
                reached: *reached,
            });
        }
        for mut lane in lanes {
            let node = (extended && !lane.node_sent.is_empty()).then(|| NodeCost {
                ns: Summary::of(match &uplink {
                    Some((reference, _)) => lane
                        .node_sent
                        .iter()
                        .zip(reference)
                        .map(|(mode, reference)| 1e9 / mode - 1e9 / reference)
                        .collect(),
                    None => Vec::new(),
                }),
                sent_pps: Summary::of(std::mem::take(&mut lane.node_sent)),
                reached: lane.node_reached,
            });
            part.rows.push(Row {
                mode: lane.mode,
                services: n,
                setup_seconds: lane.setup_seconds,
                udp_pps: Summary::of(std::mem::take(&mut lane.udp)),
                udp_sent_pps: Summary::of(std::mem::take(&mut lane.udp_sent)),
                udp_read_pps: Summary::of(std::mem::take(&mut lane.udp_read)),
                conntrack_udp_entries: lane.conntrack,
                tcp_cps: Summary::of(std::mem::take(&mut lane.tcp)),
                tcp_failed: lane.tcp_failed,
                node,
                rr_tps: (extended && !lane.rr.is_empty())
                    .then(|| Summary::of(std::mem::take(&mut lane.rr))),
                error: lane.error.take(),
            });
            // Daemon stopped (pins removed), then the pods' threads, then the namespaces.
            drop(lane.installed.take());
            drop(lane);
        }
    }
    drop(drop_program);
    drop(drop_pins);
    Ok(part)
}

/// One round of one mode: every lane once, each followed by a pause for the queues to drain.
fn measure_round(
    lane: &mut Lane,
    target: SocketAddrV4,
    times: &Times,
    extended: bool,
    drop_pinned: &Path,
) -> Result<()> {
    check_interrupted()?;
    let topo = &lane.topo;
    let servers = &topo.servers;
    servers.spin.store(true, Ordering::Relaxed);
    super::sleep(Duration::from_millis(100))?;
    let before = pods_rx(topo)?;
    let read_before = servers.received.load(Ordering::Relaxed);
    let udp = udp_blast(topo, target, times.udp, 50_000_000);
    super::sleep(Duration::from_millis(200))?;
    servers.spin.store(false, Ordering::Relaxed);
    let udp = udp?;
    let delivered = pods_rx(topo)? - before;
    let read = servers.received.load(Ordering::Relaxed) - read_before;
    let seconds = udp.elapsed.as_secs_f64();
    lane.udp.push(delivered as f64 / seconds);
    lane.udp_sent.push(udp.sent as f64 / seconds);
    lane.udp_read.push(read as f64 / seconds);
    if let Some(entries) = conntrack_udp_entries(&topo.node) {
        lane.conntrack = Some(lane.conntrack.unwrap_or(0).max(entries));
    }

    if extended {
        check_interrupted()?;
        if lane.mode == Mode::Direct {
            let (sent, reached) = udp_into_drop(topo, target, times.udp, drop_pinned, true)
                .context("UDP into the drop program at the uplink")?;
            lane.uplink_sent.push(sent);
            lane.uplink_reached = lane.uplink_reached.min(reached);
            super::sleep(Duration::from_millis(100))?;
        }
        let (sent, reached) = udp_into_drop(topo, target, times.udp, drop_pinned, false)
            .context("UDP into the drop program at the pods' eth0")?;
        if reached < 0.99 {
            progress!(
                "part 2: {}: only {:.1} % of the packets into the drop program were counted on the pods' eth0",
                lane.mode.label(),
                reached * 100.0
            );
        }
        lane.node_sent.push(sent);
        lane.node_reached = lane.node_reached.min(reached);
        super::sleep(Duration::from_millis(100))?;
    }

    check_interrupted()?;
    let (ok, failed, elapsed) = tcp_connects(&topo.client, target, times.tcp, 500_000)?;
    lane.tcp.push(ok as f64 / elapsed.as_secs_f64());
    lane.tcp_failed += failed;
    super::sleep(Duration::from_millis(200))?;

    if extended {
        check_interrupted()?;
        let (transactions, elapsed) =
            tcp_rr(&topo.client, target, times.rr).context("request/response")?;
        lane.rr.push(transactions as f64 / elapsed.as_secs_f64());
        super::sleep(Duration::from_millis(100))?;
    }
    Ok(())
}

/// One TCP connection, one request/response exchange and a burst of UDP reach the pods through
/// the measured service.
fn verify(topo: &Topology, target: SocketAddrV4) -> Result<()> {
    let (ok, failed, _) = tcp_connects(&topo.client, target, Duration::from_millis(300), 10)?;
    if ok == 0 {
        bail!("no TCP connection to {target} got through ({failed} failed)");
    }
    let (transactions, _) = tcp_rr(&topo.client, target, Duration::from_millis(50))
        .context("request/response through the service")?;
    if transactions == 0 {
        bail!("no request/response transaction with {target} completed");
    }
    let before = pods_rx(topo)?;
    let sent = udp_blast(topo, target, Duration::from_millis(100), 1_000)?.sent;
    std::thread::sleep(Duration::from_millis(100));
    let delivered = pods_rx(topo)? - before;
    if delivered * 2 < sent {
        bail!("only {delivered} of {sent} UDP datagrams to {target} reached the pods");
    }
    Ok(())
}
