//! `l3lb run` configuration: flags with environment fallbacks. The variable names of the original
//! l3lb (`L3LB_PREFIX`, `L3LB_INTERFACE`) and the downward-API `NODE_NAME` are kept, so l3lb
//! drops in where the original ran.
use std::{path::PathBuf, str::FromStr, time::Duration};

use clap::{ArgAction, Args, ValueEnum};
use ipnet::IpNet;

use crate::{
    desired::{DEFAULT_LOAD_BALANCER_CLASS, Mode, Policy, StatusIps},
    fastpath::{self, loader::AttachMode, maglev},
    weights::Weights,
};

/// Loopback by default: the endpoint tells what the node announces, which is for its operator.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9474";

#[derive(Args, Debug, Clone)]
pub struct RunConfig {
    /// This node's name, as in the EndpointSlices' `nodeName` (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Service prefixes l3lb manages, comma-separated, IPv4 and IPv6. Only addresses inside them
    /// are ever added or removed.
    #[arg(
        long = "prefix",
        env = "L3LB_PREFIX",
        value_delimiter = ',',
        required = true
    )]
    pub prefixes: Vec<IpNet>,

    /// Interface that carries the announced addresses (the routing daemon redistributes it).
    #[arg(long, env = "L3LB_INTERFACE", default_value = "lo")]
    pub interface: String,

    /// `pods`: announce where a ready endpoint runs; `gateway`: announce every managed IP here.
    #[arg(long, env = "L3LB_MODE", value_enum, default_value_t = Mode::Pods)]
    pub mode: Mode,

    /// The `spec.loadBalancerClass` l3lb answers to (Services without a class are l3lb's too).
    #[arg(long, env = "L3LB_LOAD_BALANCER_CLASS", default_value = DEFAULT_LOAD_BALANCER_CLASS)]
    pub load_balancer_class: String,

    /// Also announce `spec.externalIPs` of any Service (the kube-gw style).
    #[arg(long, env = "L3LB_EXTERNAL_IPS", default_value_t = true, action = ArgAction::Set)]
    pub external_ips: bool,

    /// Where Services and EndpointSlices come from: `kube` (the API server) or `file:DIR`
    /// (manifests in a directory, reloaded on change; `*.yaml`, `*.yml` and `*.json` files of
    /// at most 1 MiB each, YAML anchors expanded to at most 200 000 nodes; a file over a limit
    /// or unreadable is skipped with a warning and keeps its last good contents).
    #[arg(long, env = "L3LB_SOURCE", default_value = "kube")]
    pub source: Source,

    /// Kubeconfig to use; without it: in-cluster config, then `KUBECONFIG`, then ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Full resync of the interface against the desired state, as a safety net behind the
    /// event-driven updates (e.g. `30s`, `5m`): the interface's addresses are read from the
    /// kernel again; between resyncs l3lb follows them through netlink address events.
    #[arg(long, env = "L3LB_RESYNC_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Keep the announced addresses on exit (for hitless upgrades: the next l3lb adopts them).
    #[arg(long, env = "L3LB_RETAIN_ON_EXIT")]
    pub retain_on_exit: bool,

    /// Write `status.loadBalancer.ingress` of LoadBalancer Services (one writer cluster-wide,
    /// chosen by a Lease). Only with `--source kube`.
    #[arg(long, env = "L3LB_WRITE_STATUS", default_value_t = true, action = ArgAction::Set)]
    pub write_status: bool,

    /// IPs in `status.loadBalancer.ingress`: `external` honours those another controller wrote
    /// (by the field manager in `managedFields`), never l3lb's own; `ignore` never reads status.
    #[arg(long, env = "L3LB_STATUS_IPS", value_enum, default_value_t = StatusIps::External)]
    pub status_ips: StatusIps,

    /// Weighted anycast: `endpoints` gives each announced address an interface metric (shown by
    /// `ip addr` as `metric N`) equal to this node's ready endpoints behind it, clamped to 1-64,
    /// which the `L3LB-WEIGHT` route-map (`l3lb frr-config`) turns into BGP link-bandwidth, so
    /// routers send each node a share proportional to its pods. `none`: no metric, equal shares.
    #[arg(long, env = "L3LB_WEIGHTS", value_enum, default_value_t = Weights::None)]
    pub weights: Weights,

    /// Also withdraw every address while this node is cordoned (`kubectl cordon`/`drain`: the
    /// taint node.kubernetes.io/unschedulable), not only while it carries the label
    /// node.kubernetes.io/exclude-from-external-load-balancers.
    #[arg(long, env = "L3LB_WITHDRAW_ON_CORDON")]
    pub withdraw_on_cordon: bool,

    /// Namespace of the leader-election Lease (l3lb's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "l3lb-system")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "L3LB_LEASE_NAME", default_value = "l3lb-status-writer")]
    pub lease_name: String,

    /// How long the status writer's Lease lasts without renewal: a crashed leader is replaced
    /// after at most this long.
    #[arg(long, env = "L3LB_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// Where to serve /metrics, /healthz, /readyz and /status (`l3lb status` reads it).
    #[arg(long, env = "L3LB_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: std::net::SocketAddr,

    /// Turn on the fast path: service traffic goes from the uplink straight into the local pods'
    /// namespaces and their replies straight back out (eBPF at TC, or XDP with --xdp-mode),
    /// skipping the host's routing, netfilter and conntrack, keeping the client's address.
    #[arg(long, env = "L3LB_XDP")]
    pub xdp: bool,

    /// Uplink interface for the fast path (repeatable); default: those carrying default routes.
    #[arg(long = "xdp-iface", env = "L3LB_XDP_IFACE", value_delimiter = ',')]
    pub xdp_interfaces: Vec<String>,

    /// Where the forward path runs: `auto` is TC ingress with a redirect into the pod;
    /// `native`/`generic` rewrite in XDP and leave the rest to the kernel's routing.
    #[arg(long, env = "L3LB_XDP_MODE", value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,

    /// Entries of each service's Maglev table: a prime, ~100× the local backends per service.
    /// Each service address/port costs 2 × this × 4 bytes of kernel memory.
    #[arg(long, env = "L3LB_MAGLEV_TABLE_SIZE", default_value_t = maglev::DEFAULT_TABLE_SIZE,
          value_parser = parse_table_size)]
    pub maglev_table_size: u32,

    /// Service address/port/protocol triples the fast path can hold.
    #[arg(long, env = "L3LB_XDP_MAX_SERVICES", default_value_t = fastpath::DEFAULT_MAX_SERVICES)]
    pub xdp_max_services: u32,

    /// bpffs directory for the fast path's pinned maps and links.
    #[arg(long, env = "L3LB_PIN_ROOT", default_value = fastpath::DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,

    /// Log format.
    #[arg(long, env = "L3LB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl RunConfig {
    pub fn policy(&self) -> Policy {
        Policy {
            node: self.node_name.clone(),
            mode: self.mode,
            prefixes: self.prefixes.iter().map(IpNet::trunc).collect(),
            load_balancer_class: self.load_balancer_class.clone(),
            external_ips: self.external_ips,
            status_ips: self.status_ips,
            weights: self.weights,
            withdraw_on_cordon: self.withdraw_on_cordon,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Kube,
    Files(PathBuf),
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "kube" => Ok(Source::Kube),
            Some(("file", dir)) if !dir.is_empty() => Ok(Source::Files(dir.into())),
            _ => Err(format!("{s:?}: expected `kube` or `file:DIR`")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_table_size(s: &str) -> Result<u32, String> {
    let size: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    maglev::validate_table_size(size).map_err(|err| err.to_string())
}

/// `150ms`, `30s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 30s or 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sources_parse() {
        assert_eq!(parse_duration("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!("kube".parse(), Ok(Source::Kube));
        assert_eq!(
            "file:/srv/l3lb".parse(),
            Ok(Source::Files("/srv/l3lb".into()))
        );
        assert!("file:".parse::<Source>().is_err());
        assert!("etcd".parse::<Source>().is_err());
    }
}
