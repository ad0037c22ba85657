//! Setting a mode up on the node: the empty XDP program, kube-proxy's rules through
//! `iptables-restore` or `nft -f`, or `l3lb run` until every service is in its maps.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use l3lb_common::{ServiceEntry, ServiceKey, map_names};

use super::{Mode, topology::Topology};
use crate::{
    bench::{
        PinDir, check_interrupted,
        kubeproxy::{self, BenchService, PODS, SERVICE_PORT, TARGET_PORT},
        sys,
    },
    daemon::{L3lb, l3lb_binary},
    fixtures,
};

/// A mode installed in a topology: what must live as long as the measurement.
pub(super) struct Installed {
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
pub(super) fn timed(command: &mut Command) -> Result<f64> {
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

pub(super) fn install(
    mode: Mode,
    topo: &Topology,
    services: &[BenchService],
) -> Result<(Installed, f64)> {
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
