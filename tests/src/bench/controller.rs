//! Part 3: the controller at scale. `l3lb run --source kube` (the real kube-rs client) against
//! the fake API server, in a network namespace of its own, managing its `lo`:
//!
//! - 1 000, 10 000 and 50 000 LoadBalancer Services ([`SCALES`]), one EndpointSlice each with 5
//!   endpoints spread over 50, 500 and 2 000 nodes; this node (`node-000`) hosts its share
//!   (100, 100 and 125 endpoints of as many Services).
//! - Convergence: from the process start until the addresses on `lo` are exactly the 100
//!   expected ones (watched with [`super::netlink`], not polled).
//! - Latency: an endpoint on this node turns unready (the address must go) or ready again (it
//!   must come back); from the API write to the netlink event.
//! - Changes on other nodes: endpoints elsewhere flip readiness, which must change nothing here
//!   and cost little; the daemon's CPU time over the batch (all threads, from
//!   `/proc/PID/task/*/schedstat`), minus its idle rate measured just before, per change.
//! - Memory: the peak (`VmHWM`) until converged, which is the initial list's, and `VmRSS` after
//!   the sync and after all changes.
//!
//! The fake API server runs in this process; its serving cost is not the daemon's CPU but is
//! part of the convergence time and the latency.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::{Options, check_interrupted, kubeproxy::lb_ip, netlink, stats::Percentiles, sys};
use crate::{
    daemon::{L3lb, l3lb_binary},
    fake_api::FakeApiServer,
    fixtures,
    netns::NetNs,
    progress,
};

const THIS_NODE: &str = "node-000";
const ENDPOINTS_PER_SERVICE: usize = 5;

/// The cluster sizes: (Services, nodes). This node's share stays about the same (100, 100 and 125
/// endpoints), so what grows is what the cluster's size costs every node. The goals are judged
/// at [`GOAL_SERVICES`].
pub const SCALES: [(usize, usize); 3] = [(1_000, 50), (10_000, 500), (50_000, 2_000)];

/// The cluster size most goals are judged on.
pub const GOAL_SERVICES: usize = 10_000;

/// One cluster size per entry of [`SCALES`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Part3 {
    pub scales: Vec<Scale>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Scale {
    pub services: usize,
    pub endpoints: usize,
    pub nodes: usize,
    /// Services with an endpoint on this node: the addresses `lo` must carry.
    pub local_services: usize,
    /// Seconds to load the objects into the fake API server (not l3lb's time).
    pub populate_seconds: f64,
    /// From `l3lb run` starting to `lo` holding exactly the expected addresses.
    pub converge_seconds: f64,
    /// The peak resident set (`VmHWM`) from the start until converged: the initial list's.
    pub peak_rss_until_sync_mib: f64,
    pub rss_after_sync_mib: f64,
    /// Of which anonymous (`RssAnon`): without the binary's own clean file pages.
    pub anon_rss_after_sync_mib: f64,
    pub rss_after_changes_mib: f64,
    /// The daemon's CPU use while nothing changes (watch bookmarks, timers), ms per second.
    pub idle_cpu_ms_per_s: f64,
    pub local_changes: usize,
    pub remote_changes: usize,
    /// API write → address event on `lo`, milliseconds: all local changes, then each kind.
    pub latency_ms: Percentiles,
    pub announce_ms: Percentiles,
    pub withdraw_ms: Percentiles,
    /// Local changes whose address event never came (within 5 s).
    pub missed: usize,
    /// Address events during the changes on other nodes (should be none).
    pub unexpected_events: usize,
    /// CPU time of the daemon per change, microseconds, idle use subtracted.
    pub cpu_per_local_change_us: f64,
    pub cpu_per_remote_change_us: f64,
    /// The same from `utime + stime` (10 ms ticks): a coarse cross-check.
    pub cpu_per_remote_change_ticks_us: f64,
    /// Milliseconds between two changes on other nodes.
    pub remote_pacing_ms: f64,
    /// The same number of changes on other nodes written back to back (a burst, which the
    /// daemon may fold into fewer recomputes): CPU per change.
    pub cpu_per_remote_change_burst_us: f64,
}

struct Cluster {
    services: usize,
    nodes: usize,
    /// Readiness of each service's endpoints.
    ready: Vec<[bool; ENDPOINTS_PER_SERVICE]>,
}

impl Cluster {
    fn node_of(&self, service: usize, endpoint: usize) -> usize {
        (service * ENDPOINTS_PER_SERVICE + endpoint) % self.nodes
    }

    fn pod_ip(service: usize, endpoint: usize) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 244, 0, 1))
                + (service * ENDPOINTS_PER_SERVICE + endpoint) as u32,
        )
    }

    fn service(&self, i: usize) -> Value {
        fixtures::service(&format!("svc-{i:05}"))
            .namespace("default")
            .annotated_ips(&lb_ip(i as u32).to_string())
            .load_balancer()
            .external_traffic_policy("Local")
            .port(fixtures::port("TCP", 80).named("http").target(8080))
            .json()
    }

    fn slice(&self, i: usize) -> Value {
        let service = format!("svc-{i:05}");
        let mut slice = fixtures::slice(&format!("{service}-x7k2p"), &service, "IPv4")
            .namespace("default")
            .label(
                "endpointslice.kubernetes.io/managed-by",
                "endpointslice-controller.k8s.io",
            )
            .port(fixtures::port("TCP", 8080).named("http"));
        for j in 0..ENDPOINTS_PER_SERVICE {
            let ready = self.ready[i][j];
            slice = slice.endpoint(
                fixtures::endpoint([Self::pod_ip(i, j)])
                    .node(&format!("node-{:03}", self.node_of(i, j)))
                    .conditions(ready, ready, false),
            );
        }
        slice.json()
    }

    /// (service, endpoint) pairs on this node.
    fn local(&self) -> Vec<(usize, usize)> {
        (0..self.services)
            .flat_map(|i| (0..ENDPOINTS_PER_SERVICE).map(move |j| (i, j)))
            .filter(|&(i, j)| self.node_of(i, j) == 0)
            .collect()
    }
}

pub fn run_part(options: &Options) -> Result<Part3> {
    let (local_changes, remote_changes) = if options.quick {
        (200, 500)
    } else {
        (1_000, 2_000)
    };
    let mut part = Part3::default();
    for (services, nodes) in SCALES {
        check_interrupted()?;
        let ns = NetNs::new("bctl");
        let name = ns.name().to_owned();
        let scale = sys::in_netns(&name.clone(), move || {
            scenario(&name, services, nodes, local_changes, remote_changes)
        })??;
        drop(ns);
        part.scales.push(scale);
    }
    Ok(part)
}

fn scenario(
    netns: &str,
    services: usize,
    nodes: usize,
    local_changes: usize,
    remote_changes: usize,
) -> Result<Scale> {
    let remote_pacing = Duration::from_millis(1);
    let runtime = tokio::runtime::Runtime::new()?;
    let _context = runtime.enter();
    let scratch = tempfile::Builder::new()
        .prefix("l3lb-bench-ctl-")
        .tempdir()?;
    let server = runtime.block_on(FakeApiServer::start());
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;

    let mut cluster = Cluster {
        services,
        nodes,
        ready: vec![[true; ENDPOINTS_PER_SERVICE]; services],
    };
    let started = Instant::now();
    for i in 0..services {
        if i.is_multiple_of(1000) {
            check_interrupted()?;
        }
        server.apply(cluster.service(i));
        server.apply(cluster.slice(i));
    }
    let populate_seconds = started.elapsed().as_secs_f64();
    let local = cluster.local();
    let expected: BTreeSet<Ipv4Addr> = local.iter().map(|&(i, _)| lb_ip(i as u32)).collect();
    progress!(
        "part 3: {services} Services, {} endpoints on {nodes} nodes in the fake API ({populate_seconds:.1} s); {} on this node",
        services * ENDPOINTS_PER_SERVICE,
        local.len()
    );

    let monitor = netlink::monitor(netns)?;
    let mut command = Command::new(l3lb_binary());
    command.args([
        "run",
        "--node-name",
        THIS_NODE,
        "--prefix",
        "10.100.0.0/16",
        "--interface",
        "lo",
    ]);
    command
        .args(["--source", "kube", "--kubeconfig"])
        .arg(&kubeconfig);
    command.args([
        "--write-status",
        "false",
        "--lease-namespace",
        "l3lb-system",
    ]);
    command.args(["--metrics-addr", "127.0.0.1:9474"]);
    for proxy in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(proxy);
    }
    command.env("RUST_LOG", "warn");
    let started = Instant::now();
    let mut daemon = L3lb::spawn(command, scratch.path().join("l3lb.log"));
    let pid = daemon.pid();

    // Convergence: the set on lo, event by event.
    let mut on_lo = BTreeSet::new();
    while on_lo != expected {
        check_interrupted()?;
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "not converged after 300 s ({} of {} addresses); log:\n{}",
                on_lo.len(),
                expected.len(),
                daemon.log()
            );
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!("l3lb exited; log:\n{}", daemon.log());
        }
        if let Ok(event) = monitor.events.recv_timeout(Duration::from_millis(100)) {
            if event.added {
                on_lo.insert(event.addr);
            } else {
                on_lo.remove(&event.addr);
            }
        }
    }
    let converge_seconds = started.elapsed().as_secs_f64();
    let peak_rss_until_sync_mib = sys::peak_rss_kib(pid)? as f64 / 1024.0;
    progress!(
        "part 3: converged in {converge_seconds:.2} s ({} addresses on lo)",
        on_lo.len()
    );
    super::sleep(Duration::from_secs(1))?;
    let rss_after_sync_mib = sys::rss_kib(pid)? as f64 / 1024.0;
    let anon_rss_after_sync_mib = sys::anon_rss_kib(pid)? as f64 / 1024.0;

    // Idle rate.
    let idle_window = Duration::from_secs(2);
    let cpu0 = sys::cpu_ns(pid)?;
    super::sleep(idle_window)?;
    let idle_ns_per_s = (sys::cpu_ns(pid)? - cpu0) as f64 / idle_window.as_secs_f64();

    // Local changes: withdraw, then announce again, service after service.
    let (mut announce, mut withdraw) = (Vec::new(), Vec::new());
    let mut missed = 0;
    let cpu0 = sys::cpu_ns(pid)?;
    let phase = Instant::now();
    for k in 0..local_changes {
        if k.is_multiple_of(100) {
            check_interrupted()?;
        }
        let (service, endpoint) = local[(k / 2) % local.len()];
        let ready = !k.is_multiple_of(2);
        let addr = lb_ip(service as u32);
        while monitor.events.try_recv().is_ok() {}
        cluster.ready[service][endpoint] = ready;
        let slice = cluster.slice(service);
        let t0 = Instant::now();
        server.apply(slice);
        let deadline = t0 + Duration::from_secs(5);
        let mut seen = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match monitor.events.recv_timeout(left) {
                Ok(event) if event.addr == addr && event.added == ready => {
                    seen = Some(event.at);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match seen {
            Some(at) => {
                let ms = at.saturating_duration_since(t0).as_secs_f64() * 1e3;
                if ready {
                    announce.push(ms)
                } else {
                    withdraw.push(ms)
                }
            }
            None => missed += 1,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let local_cpu =
        (sys::cpu_ns(pid)? - cpu0) as f64 - idle_ns_per_s * phase.elapsed().as_secs_f64();
    let all: Vec<f64> = announce.iter().chain(&withdraw).copied().collect();
    let latency_ms = Percentiles::of(&all);
    progress!(
        "part 3: {local_changes} local changes: p50 {:.2} ms, p99 {:.2} ms ({missed} missed)",
        latency_ms.p50,
        latency_ms.p99
    );

    // Changes on other nodes: endpoints 1..5 are never on this node. First paced, one every
    // `remote_pacing`, then the same number back to back.
    while monitor.events.try_recv().is_ok() {}
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut remote_change = |cluster: &mut Cluster| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let service = (seed % services as u64) as usize;
        let endpoint = 1 + ((seed >> 32) % (ENDPOINTS_PER_SERVICE as u64 - 1)) as usize;
        debug_assert_ne!(cluster.node_of(service, endpoint), 0);
        cluster.ready[service][endpoint] ^= true;
        server.apply(cluster.slice(service));
    };
    let (cpu0, ticks0) = (sys::cpu_ns(pid)?, sys::cpu_ticks_ns(pid)?);
    let phase = Instant::now();
    for k in 0..remote_changes {
        if k.is_multiple_of(100) {
            check_interrupted()?;
        }
        remote_change(&mut cluster);
        std::thread::sleep(remote_pacing);
    }
    std::thread::sleep(Duration::from_millis(500));
    let elapsed = phase.elapsed().as_secs_f64();
    let remote_cpu = (sys::cpu_ns(pid)? - cpu0) as f64 - idle_ns_per_s * elapsed;
    let remote_ticks = (sys::cpu_ticks_ns(pid)? - ticks0) as f64 - idle_ns_per_s * elapsed;

    let cpu0 = sys::cpu_ns(pid)?;
    let phase = Instant::now();
    for _ in 0..remote_changes {
        remote_change(&mut cluster);
    }
    std::thread::sleep(Duration::from_millis(1000));
    let burst_cpu =
        (sys::cpu_ns(pid)? - cpu0) as f64 - idle_ns_per_s * phase.elapsed().as_secs_f64();
    let unexpected_events = monitor.events.try_iter().count();
    let rss_after_changes_mib = sys::rss_kib(pid)? as f64 / 1024.0;
    let part = Scale {
        services,
        endpoints: services * ENDPOINTS_PER_SERVICE,
        nodes,
        local_services: expected.len(),
        populate_seconds,
        converge_seconds,
        peak_rss_until_sync_mib,
        rss_after_sync_mib,
        anon_rss_after_sync_mib,
        rss_after_changes_mib,
        idle_cpu_ms_per_s: idle_ns_per_s / 1e6,
        local_changes,
        remote_changes,
        announce_ms: Percentiles::of(&announce),
        withdraw_ms: Percentiles::of(&withdraw),
        latency_ms,
        missed,
        unexpected_events,
        cpu_per_local_change_us: local_cpu / local_changes as f64 / 1e3,
        cpu_per_remote_change_us: remote_cpu / remote_changes as f64 / 1e3,
        cpu_per_remote_change_ticks_us: remote_ticks / remote_changes as f64 / 1e3,
        remote_pacing_ms: remote_pacing.as_secs_f64() * 1e3,
        cpu_per_remote_change_burst_us: burst_cpu / remote_changes as f64 / 1e3,
    };
    progress!(
        "part 3: {remote_changes} changes on other nodes: {:.1} µs CPU each; RSS {:.1} MiB (peak {:.1} MiB)",
        part.cpu_per_remote_change_us,
        part.rss_after_sync_mib,
        part.peak_rss_until_sync_mib
    );
    if !daemon.terminate() {
        progress!("part 3: l3lb did not exit cleanly; log:\n{}", daemon.log());
    }
    drop(monitor);
    drop(server);
    Ok(part)
}
