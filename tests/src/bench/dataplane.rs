//! Part 2: the data path end to end, in network namespaces:
//!
//! ```text
//! client 10.1.0.2 ── eth0 │ uplink 10.1.0.1 [node] vp0 ── pod 10.244.1.2
//!                                                  vp1 ── pod 10.244.1.3
//! ```
//!
//! The same topology three times, one per mode: kube-proxy's iptables rules, kube-proxy's
//! nftables rules (both from [`super::kubeproxy`]), and `l3lb run --xdp` with a file source
//! (no netfilter rule at all in its node). Each mode gets N Services (one measured, in the middle
//! of kube-proxy's list), and the rounds alternate between the modes so that a busy moment of
//! the machine hits all three alike.
//!
//! - UDP: one sender thread in the client pushes 64-byte datagrams (16 flows, `sendmmsg` in
//!   batches of 64) to the measured service for a bounded time and count; delivered = packets
//!   received on the pods' `eth0` (kernel counters), per second of sending.
//! - TCP: two client threads connect to the service and reset the connection at once (no
//!   TIME_WAIT), for a bounded time and count: completed handshakes per second. Every
//!   connection is a new flow, so this is where kube-proxy's per-connection rule walk shows.
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
    L3lbXdp,
}

impl Mode {
    /// The reference first: no service at all, the client talks to a pod's own address.
    pub const ALL: [Mode; 5] = [
        Mode::Direct,
        Mode::DirectXdp,
        Mode::Iptables,
        Mode::Nftables,
        Mode::L3lbXdp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "no service (direct to a pod)",
            Mode::DirectXdp => "no service, empty XDP program",
            Mode::Iptables => "kube-proxy iptables",
            Mode::Nftables => "kube-proxy nftables",
            Mode::L3lbXdp => "l3lb --xdp",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Mode::Direct => "dir",
            Mode::DirectXdp => "dxp",
            Mode::Iptables => "ipt",
            Mode::Nftables => "nft",
            Mode::L3lbXdp => "xdp",
        }
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
    /// New TCP connections per second.
    pub tcp_cps: Summary,
    /// Connection attempts that failed (1 s timeout), all rounds.
    pub tcp_failed: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Part2 {
    pub rounds: usize,
    pub udp_seconds: f64,
    pub tcp_seconds: f64,
    pub udp_flows: u16,
    pub tcp_in_flight: usize,
    pub rows: Vec<Row>,
}

const CLIENT: &str = "10.1.0.2";
const NODE_UPLINK: &str = "10.1.0.1";
const UDP_FLOWS: u16 = 16;
const BATCH: usize = 64;
/// Connections a client keeps in flight.
const IN_FLIGHT: usize = 64;
const PAYLOAD: [u8; 18] = [0x5a; 18];

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

/// Accepts every pending connection on all pods' listeners and closes it at once.
fn accept_tcp(listeners: &[TcpListener], stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: an array of pollfd of the length given.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        for listener in listeners {
            while let Ok((stream, _)) = listener.accept() {
                drop(stream);
            }
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

fn install(mode: Mode, topo: &Topology, services: &[BenchService]) -> Result<(Installed, f64)> {
    let n = services.len();
    let scratch = tempfile::Builder::new()
        .prefix(&format!("l3lb-bench-{}-{n}-", mode.tag()))
        .tempdir()?;
    let run = |command: &mut Command| -> Result<f64> {
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
    };
    match mode {
        Mode::Direct => Ok((
            Installed {
                daemon: None,
                _pins: None,
                _scratch: scratch,
            },
            0.0,
        )),
        Mode::DirectXdp => {
            let pins = PinDir::new(&format!("floor-{n}"));
            std::fs::create_dir_all(&pins.0)?;
            let program = sys::load_floor(sys::BPF_PROG_TYPE_XDP, 2)
                .context("loading the empty XDP program")?;
            let pinned = pins.0.join("floor_xdp");
            sys::pin(std::os::fd::AsFd::as_fd(&program), &pinned)
                .context("pinning the empty XDP program")?;
            let seconds = run(topo
                .node
                .command("ip")
                .args(["link", "set", "dev", "uplink", "xdpdrv", "pinned"])
                .arg(&pinned))?;
            Ok((
                Installed {
                    daemon: None,
                    _pins: Some(pins),
                    _scratch: scratch,
                },
                seconds,
            ))
        }
        Mode::Iptables => {
            let file = scratch.path().join("iptables.rules");
            std::fs::write(&file, kubeproxy::iptables_restore(services))?;
            let seconds = run(topo.node.command("iptables-restore").arg(&file))?;
            Ok((
                Installed {
                    daemon: None,
                    _pins: None,
                    _scratch: scratch,
                },
                seconds,
            ))
        }
        Mode::Nftables => {
            let file = scratch.path().join("kube-proxy.nft");
            std::fs::write(&file, kubeproxy::nft_script(services))?;
            let seconds = run(topo.node.command("nft").arg("-f").arg(&file))?;
            Ok((
                Installed {
                    daemon: None,
                    _pins: None,
                    _scratch: scratch,
                },
                seconds,
            ))
        }
        Mode::L3lbXdp => {
            let manifests = scratch.path().join("manifests");
            std::fs::create_dir_all(&manifests)?;
            write_manifests(&manifests, services)?;
            let pins = PinDir::new(&format!("dp-{n}"));
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
            command.args([
                "--xdp",
                "--xdp-iface",
                "uplink",
                "--xdp-mode",
                "native",
                "--pin-root",
            ]);
            command.arg(&pins.0);
            command.args(["--xdp-max-services", &(vips + 64).max(2048).to_string()]);
            let started = Instant::now();
            let daemon = L3lb::spawn(command, scratch.path().join("l3lb.log"));
            let mut installed = Installed {
                daemon: Some(daemon),
                _pins: None,
                _scratch: scratch,
            };
            let map = pins.0.join(map_names::SERVICES);
            loop {
                check_interrupted()?;
                if steered(&map).unwrap_or(0) >= vips {
                    break;
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
            let seconds = started.elapsed().as_secs_f64();
            installed._pins = Some(pins);
            Ok((installed, seconds))
        }
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

/// A set-up mode: its topology, what it installed, and the rounds measured so far.
struct Lane {
    mode: Mode,
    installed: Option<Installed>,
    topo: Topology,
    setup_seconds: f64,
    udp: Vec<f64>,
    udp_sent: Vec<f64>,
    udp_read: Vec<f64>,
    tcp: Vec<f64>,
    tcp_failed: u64,
    error: Option<String>,
}

pub fn run_part(options: &Options) -> Result<Part2> {
    let (counts, rounds, udp_time, tcp_time): (&[u32], usize, f64, f64) = if options.quick {
        (&[10, 1_000], 3, 0.8, 0.8)
    } else {
        (&[10, 1_000, 10_000], 6, 1.5, 1.5)
    };
    let mut part = Part2 {
        rounds,
        udp_seconds: udp_time,
        tcp_seconds: tcp_time,
        udp_flows: UDP_FLOWS,
        tcp_in_flight: IN_FLIGHT,
        rows: Vec::new(),
    };
    for &n in counts {
        check_interrupted()?;
        let (services, measured) = kubeproxy::services(n);
        let service = SocketAddrV4::new(services[measured].lb_ip, SERVICE_PORT);
        let direct = SocketAddrV4::new(PODS[0], TARGET_PORT);
        let target_of = |mode: Mode| {
            if matches!(mode, Mode::Direct | Mode::DirectXdp) {
                direct
            } else {
                service
            }
        };
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
                tcp: Vec::new(),
                tcp_failed: 0,
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
        for round in 0..rounds {
            // A rotating order, so no mode always runs right after another.
            let lanes_len = lanes.len();
            lanes.rotate_left(round % lanes_len.max(1));
            for lane in lanes.iter_mut().filter(|l| l.error.is_none()) {
                check_interrupted()?;
                let servers = &lane.topo.servers;
                servers.spin.store(true, Ordering::Relaxed);
                super::sleep(Duration::from_millis(100))?;
                let before = pods_rx(&lane.topo)?;
                let read_before = servers.received.load(Ordering::Relaxed);
                let udp = udp_blast(
                    &lane.topo,
                    target_of(lane.mode),
                    Duration::from_secs_f64(udp_time),
                    50_000_000,
                );
                super::sleep(Duration::from_millis(200))?;
                servers.spin.store(false, Ordering::Relaxed);
                let udp = udp?;
                let delivered = pods_rx(&lane.topo)? - before;
                let read = servers.received.load(Ordering::Relaxed) - read_before;
                let seconds = udp.elapsed.as_secs_f64();
                lane.udp.push(delivered as f64 / seconds);
                lane.udp_sent.push(udp.sent as f64 / seconds);
                lane.udp_read.push(read as f64 / seconds);
            }
            for lane in lanes.iter_mut().filter(|l| l.error.is_none()) {
                check_interrupted()?;
                let (ok, failed, elapsed) = tcp_connects(
                    &lane.topo.client,
                    target_of(lane.mode),
                    Duration::from_secs_f64(tcp_time),
                    500_000,
                )?;
                lane.tcp.push(ok as f64 / elapsed.as_secs_f64());
                lane.tcp_failed += failed;
                super::sleep(Duration::from_millis(200))?;
            }
            lanes.rotate_right(round % lanes_len.max(1));
            let line: Vec<String> = lanes
                .iter()
                .filter(|l| l.error.is_none())
                .map(|l| {
                    format!(
                        "{} {:.0} pps / {:.0} conn/s ({} failed so far)",
                        l.mode.label(),
                        l.udp.last().copied().unwrap_or(f64::NAN),
                        l.tcp.last().copied().unwrap_or(f64::NAN),
                        l.tcp_failed
                    )
                })
                .collect();
            progress!(
                "part 2: {n} services, round {}/{rounds}: {}",
                round + 1,
                line.join(", ")
            );
        }
        for mut lane in lanes {
            part.rows.push(Row {
                mode: lane.mode,
                services: n,
                setup_seconds: lane.setup_seconds,
                udp_pps: Summary::of(std::mem::take(&mut lane.udp)),
                udp_sent_pps: Summary::of(std::mem::take(&mut lane.udp_sent)),
                udp_read_pps: Summary::of(std::mem::take(&mut lane.udp_read)),
                tcp_cps: Summary::of(std::mem::take(&mut lane.tcp)),
                tcp_failed: lane.tcp_failed,
                error: lane.error.take(),
            });
            // Daemon stopped (pins removed), then the pods' threads, then the namespaces.
            drop(lane.installed.take());
            drop(lane);
        }
    }
    Ok(part)
}

/// One TCP connection and a burst of UDP reach the pods through the measured service.
fn verify(topo: &Topology, target: SocketAddrV4) -> Result<()> {
    let (ok, failed, _) = tcp_connects(&topo.client, target, Duration::from_millis(300), 10)?;
    if ok == 0 {
        bail!("no TCP connection to {target} got through ({failed} failed)");
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
