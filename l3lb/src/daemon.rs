//! `l3lb run`: wires a cluster source, the desired state, the address reconciler and (with the
//! API server) the status writer and event publisher together, serves the HTTP endpoint, and
//! shuts down cleanly on SIGTERM/SIGINT.
use anyhow::{Context as _, Result};
use prometheus_client::collector::Collector;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::{
    allocator,
    cluster::{self, file::FileSource, model::ClusterChange},
    config::{RunConfig, Source},
    controller::{Controller, Outputs},
    desired::DesiredState,
    events,
    fastpath::{self, FastPath},
    http,
    ingress::{self, IngressQueue},
    leader,
    metrics::Metrics,
    reconcile::{AddressReconciler, L3LB_ADDR_PROTO},
};

/// Room for a relist's worth of changes between the sources and the controller.
const CHANGE_QUEUE: usize = 4096;

pub async fn run(config: RunConfig) -> Result<()> {
    // First, so a SIGTERM during start-up still ends in a clean exit.
    let shutdown = shutdown_signal()?;
    log_start(&config);
    let addresses =
        AddressReconciler::new(&config.interface, config.policy().prefixes, L3LB_ADDR_PROTO)
            .await
            .with_context(|| format!("opening interface {}", config.interface))?;
    let fastpath = start_fastpath(&config)?;
    let metrics = Metrics::new(fastpath_collector(&config));
    let (ready_tx, ready_rx) = watch::channel(false);
    let (reports_tx, reports_rx) = mpsc::channel(8);
    serve_http(
        &config,
        http::Endpoints {
            metrics: metrics.clone(),
            ready: ready_rx,
            reports: reports_tx,
        },
    )
    .await?;

    let (changes_tx, changes_rx) = mpsc::channel(CHANGE_QUEUE);
    let mut outputs = Outputs {
        metrics,
        ready: ready_tx,
        ingress: None,
        events: None,
        leader: None,
        fastpath,
        pools: None,
    };
    start_sources(&config, changes_tx, &mut outputs).await?;

    // Runs until the shutdown signal, then withdraws (or retains) what this node announces.
    Controller::new(DesiredState::new(config.policy()), addresses, outputs)
        .run(
            changes_rx,
            reports_rx,
            config.resync_interval,
            config.retain_on_exit,
            shutdown,
        )
        .await
        .context("controller")?;
    Ok(())
}

fn log_start(config: &RunConfig) {
    info!(
        node = %config.node_name,
        interface = %config.interface,
        prefixes = ?config.prefixes,
        mode = ?config.mode,
        "starting l3lb"
    );
    for prefix in &config.prefixes {
        info!("using network {prefix}");
    }
    info!("using interface {}", config.interface);
}

/// The `--xdp` fast path, attached to the uplinks; without `--xdp`, removes whatever an earlier
/// run left pinned.
fn start_fastpath(config: &RunConfig) -> Result<Option<FastPath>> {
    if !config.xdp {
        if fastpath::loader::remove(&config.pin_root) {
            info!(
                "removed the XDP fast path an earlier run left in {}",
                config.pin_root.display()
            );
        }
        return Ok(None);
    }
    let interfaces = if config.xdp_interfaces.is_empty() {
        fastpath::loader::default_route_interfaces()
    } else {
        config.xdp_interfaces.clone()
    };
    anyhow::ensure!(
        !interfaces.is_empty(),
        "--xdp: no uplink given (--xdp-iface) and no interface carries a default route"
    );
    let load = fastpath::loader::LoadConfig {
        pin_root: config.pin_root.clone(),
        interfaces,
        mode: config.xdp_mode,
        table_size: config.maglev_table_size,
        max_services: config.xdp_max_services,
    };
    Ok(Some(
        FastPath::start(&load).context("starting the XDP fast path")?,
    ))
}

/// The fast path's counters, read from its pinned maps at scrape time.
fn fastpath_collector(config: &RunConfig) -> Option<Box<dyn Collector>> {
    config.xdp.then(|| {
        Box::new(fastpath::inspect::FastPathCollector {
            pin_root: config.pin_root.clone(),
        }) as Box<dyn Collector>
    })
}

async fn serve_http(config: &RunConfig, endpoints: http::Endpoints) -> Result<()> {
    let bound = http::serve(config.metrics_addr, endpoints)
        .await
        .with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
    info!("serving /metrics, /healthz, /readyz and /status on http://{bound}");
    Ok(())
}

/// Spawns the cluster source feeding `changes` and, with the API server, the Event publisher
/// and (with `--write-status`) the status writer, wiring them into `outputs`.
async fn start_sources(
    config: &RunConfig,
    changes: mpsc::Sender<ClusterChange>,
    outputs: &mut Outputs,
) -> Result<()> {
    match &config.source {
        Source::Files(dir) => {
            let (pools_tx, pools_rx) = watch::channel(Vec::new());
            outputs.pools = Some(pools_rx);
            let source = FileSource::new(
                dir.clone(),
                config.node_name.clone(),
                cluster::file::DEFAULT_POLL_INTERVAL,
            )
            .allocating(config.load_balancer_class.clone(), pools_tx);
            source
                .spawn(changes)
                .context("starting the thread that reads the manifests")?;
        }
        Source::Kube => {
            let client = kube_client(config).await?;
            tokio::spawn(cluster::kube::run(
                client.clone(),
                config.node_name.clone(),
                changes,
                outputs.metrics.clone(),
            ));

            let (events_tx, events_rx) = mpsc::channel(CHANGE_QUEUE);
            outputs.events = Some(events_tx);
            let leader = if config.write_status {
                let (pools_tx, pools_rx) = watch::channel(Vec::new());
                outputs.pools = Some(pools_rx);
                let (queue, leader) = start_status_writer(
                    config,
                    client.clone(),
                    &outputs.metrics,
                    outputs.events.clone(),
                    pools_tx,
                );
                outputs.ingress = Some(queue);
                outputs.leader = Some(leader.clone());
                Some(leader)
            } else {
                None
            };
            tokio::spawn(events::publish(
                client,
                config.node_name.clone(),
                events_rx,
                leader,
            ));
        }
    }
    Ok(())
}

/// The Lease election, and the ingress status writer and the IP allocator that only work while
/// this node leads; returns the writer's queue and the leadership flag (cluster-wide Events
/// follow it too).
fn start_status_writer(
    config: &RunConfig,
    client: kube::Client,
    metrics: &Metrics,
    events: Option<mpsc::Sender<events::ServiceEvent>>,
    pools: watch::Sender<Vec<crate::status::PoolReport>>,
) -> (IngressQueue, watch::Receiver<bool>) {
    let (leader_tx, mut leader_rx) = watch::channel(false);
    let lease = leader::LeaseConfig {
        namespace: config.lease_namespace.clone(),
        name: config.lease_name.clone(),
        identity: config.node_name.clone(),
        duration: config.lease_duration,
    };
    tokio::spawn(leader::elect(
        client.clone(),
        lease,
        leader_tx,
        metrics.clone(),
    ));
    tokio::spawn(allocator::run(
        client.clone(),
        config.load_balancer_class.clone(),
        leader_rx.clone(),
        events,
        metrics.clone(),
        pools,
    ));
    let queue = IngressQueue::default();
    leader_rx.mark_unchanged();
    tokio::spawn(ingress::write_ingress(
        client,
        queue.clone(),
        leader_rx.clone(),
        metrics.clone(),
    ));
    (queue, leader_rx)
}

async fn kube_client(config: &RunConfig) -> Result<kube::Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the API server (in-cluster, KUBECONFIG or ~/.kube/config)")?,
    };
    cluster::kube::client(kube_config).context("building the Kubernetes client")
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM during start-up must still end in a clean exit.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    })
}
