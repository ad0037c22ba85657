//! The control loop: cluster changes in, desired state recomputed for what they touch, the
//! interface reconciled when the desired addresses change, when someone changes the interface
//! behind l3lb's back, and on a periodic resync.
//!
//! Nothing is reconciled until both Services and EndpointSlices have been listed once: before
//! that the desired set is incomplete, and applying it would withdraw addresses a previous l3lb
//! left for us to adopt.
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, instrument, warn};

use crate::{
    cluster::model::ClusterChange,
    desired::{DesiredState, Outcome, ingress_to_publish},
    events::{self, ServiceEvent},
    fastpath::FastPath,
    ingress::{IngressQueue, IngressUpdate},
    metrics::{AddressLabels, Component, Metrics},
    reconcile::{AddressEvents, AddressReconciler, ApplyError, Changes},
    status::{NodeReport, PoolReport, ReportRequest, ServiceReport},
    weights::Weights,
};

/// Upper bound on changes folded into one recompute, so a relist storm still yields to the loop.
const MAX_BURST: usize = 1024;

/// A fast-path sync slower than this is logged: it delays whatever waits behind it.
const SLOW_FASTPATH_SYNC: Duration = Duration::from_millis(50);

/// A reconcile of the interface slower than this is logged.
const SLOW_RECONCILE: Duration = Duration::from_millis(50);

/// How soon a failed reconcile is retried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the cluster source stopped")]
    SourceClosed,
    #[error("withdrawing addresses on exit: {0}")]
    Withdraw(#[source] ApplyError),
}

/// Where the controller's results go besides the interface.
pub struct Outputs {
    pub metrics: Metrics,
    /// Becomes true once the first complete picture has been applied (`/readyz`).
    pub ready: watch::Sender<bool>,
    pub ingress: Option<IngressQueue>,
    pub events: Option<mpsc::Sender<ServiceEvent>>,
    /// Whether this node leads (with an election): a new leader reports the cluster-wide
    /// Warnings, which only the leader publishes, for the state as it finds it.
    pub leader: Option<watch::Receiver<bool>>,
    /// The `--xdp` fast path, kept in step with the desired state once it is synced.
    pub fastpath: Option<FastPath>,
    /// The IP pools as the allocator (the leader's, or the file source's) last computed them.
    pub pools: Option<watch::Receiver<Vec<PoolReport>>>,
}

pub struct Controller {
    state: DesiredState,
    addresses: AddressReconciler,
    listed_services: bool,
    listed_slices: bool,
    /// This node's Node object was listed (found or not): until then an excluded node would
    /// announce for a moment after a restart.
    listed_node: bool,
    outputs: Outputs,
}

impl Controller {
    pub fn new(state: DesiredState, addresses: AddressReconciler, outputs: Outputs) -> Self {
        Controller {
            state,
            addresses,
            listed_services: false,
            listed_slices: false,
            listed_node: false,
            outputs,
        }
    }

    fn synced(&self) -> bool {
        self.listed_services && self.listed_slices && self.listed_node
    }

    /// Runs until `shutdown` resolves, then withdraws what l3lb owns unless `retain_on_exit`.
    pub async fn run(
        mut self,
        mut changes: mpsc::Receiver<ClusterChange>,
        mut reports: mpsc::Receiver<ReportRequest>,
        resync_interval: Duration,
        retain_on_exit: bool,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        // Without the subscription a hand-deleted address only returns at the next resync.
        let mut interface_events = match self.addresses.address_events() {
            Ok(events) => Some(events),
            Err(err) => {
                warn!(
                    "not watching {} for address changes: {err}",
                    self.addresses.interface()
                );
                None
            }
        };
        let mut resync = tokio::time::interval(resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_at: Option<Instant> = None;
        let mut leader = self.outputs.leader.take();
        tokio::pin!(shutdown);

        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                () = &mut shutdown => break,
                change = changes.recv() => {
                    let Some(change) = change else { return Err(Error::SourceClosed) };
                    let mut burst = vec![change];
                    while burst.len() < MAX_BURST {
                        match changes.try_recv() {
                            Ok(change) => burst.push(change),
                            Err(_) => break,
                        }
                    }
                    let was_synced = self.synced();
                    let outcome = self.absorb(burst).await;
                    Step::Absorbed { outcome: Box::new(outcome), was_synced }
                }
                Some(()) = next_event(&mut interface_events) => {
                    debug!("interface addresses changed");
                    Step::Reconcile
                }
                _ = resync.tick() => {
                    // Read the interface whole: whatever the event-fed view missed shows here.
                    self.addresses.forget_view();
                    Step::Reconcile
                }
                () = retry => Step::Reconcile,
                Some(()) = leadership_gained(&mut leader) => {
                    self.report_cluster_warnings();
                    Step::Nothing
                }
                Some(reply) = reports.recv() => {
                    let _ = reply.send(self.report());
                    Step::Nothing
                }
            };
            match step {
                Step::Nothing => {}
                Step::Reconcile => self.reconcile_and_schedule(&mut retry_at).await,
                Step::Absorbed {
                    outcome,
                    was_synced,
                } => {
                    // The first moment the picture is complete is when adoption ends.
                    let first_sync = self.synced() && !was_synced;
                    let reconcile_now = first_sync || outcome.addresses_changed();
                    // An address is announced only once the fast path can steer its packets,
                    // and withdrawn before anything else: the routers stop sending to a node
                    // without a ready pod as soon as l3lb can tell them, whatever the fast
                    // path's own work (route look-ups, attaching to pods' interfaces) costs.
                    let fastpath_first = first_sync || self.gains_addresses(&outcome);
                    if fastpath_first {
                        self.sync_fastpath(&outcome, was_synced);
                    }
                    if reconcile_now {
                        self.reconcile_and_schedule(&mut retry_at).await;
                    }
                    if !fastpath_first {
                        self.sync_fastpath(&outcome, was_synced);
                    }
                    // Waits for the kernel (an RCU grace period per interface): last.
                    if let (true, Some(fastpath)) = (self.synced(), self.outputs.fastpath.as_mut())
                    {
                        fastpath.detach_unused();
                    }
                }
            }
        }

        if retain_on_exit {
            info!("exiting and retaining the announced addresses (--retain-on-exit)");
            return Ok(());
        }
        info!("exiting: withdrawing the announced addresses");
        if let Some(fastpath) = self.outputs.fastpath.take() {
            fastpath.remove();
            info!("fast path detached");
        }
        match self.addresses.withdraw_all().await {
            Ok(changes) => {
                for ip in &changes.removed {
                    info!("forfeiting address {ip}");
                }
                Ok(())
            }
            Err(err) => Err(Error::Withdraw(err)),
        }
    }

    #[instrument(skip_all, fields(changes = burst.len()))]
    async fn absorb(&mut self, burst: Vec<ClusterChange>) -> Outcome {
        for change in &burst {
            match change {
                ClusterChange::ServicesListed(_) => self.listed_services = true,
                ClusterChange::SlicesListed(_) => self.listed_slices = true,
                ClusterChange::NodeListed(_) => self.listed_node = true,
                _ => {}
            }
        }
        let mut outcome = self.state.apply_all(burst);
        if self.state.maintenance().is_some() {
            // Nothing is announced from a node in maintenance, whatever its Services decide:
            // the Node's Event says so, per-Service "announced" Events would be wrong.
            outcome.announced.clear();
            outcome.withdrawn.clear();
        }
        self.log_outcome(&outcome);
        self.outputs
            .metrics
            .services_seen
            .set(self.state.services().count() as i64);
        if let Some(events) = &self.outputs.events {
            let uid = |key: &_| self.state.service(key).and_then(|spec| spec.uid.clone());
            for event in events::from_outcome(&outcome, &self.state.policy().node, uid) {
                // Events are a courtesy; when the publisher lags, dropping one is fine.
                let _ = events.try_send(event);
            }
        }
        if outcome.maintenance_changed {
            self.report_maintenance();
        }
        self.publish_ingress(&outcome);
        outcome
    }

    /// Says loudly that this node went into maintenance or came out of it: a log line, and an
    /// Event on the Node.
    fn report_maintenance(&self) {
        let node = &self.state.policy().node;
        match self.state.maintenance() {
            Some(why) => warn!("withdrawing every address from node {node}: {why}"),
            None => info!("node {node} is out of maintenance: announcing its addresses again"),
        }
        if let (Some(events), Some(spec)) = (&self.outputs.events, self.state.node()) {
            let _ = events.try_send(events::maintenance(spec, self.state.maintenance()));
        }
    }

    /// Fast-path entries follow the Services a change touched; the first complete picture syncs
    /// everything (and clears what an earlier run left that nobody wants).
    fn sync_fastpath(&mut self, outcome: &Outcome, was_synced: bool) {
        if !self.synced() {
            return;
        }
        let Some(fastpath) = self.outputs.fastpath.as_mut() else {
            return;
        };
        let started = Instant::now();
        let errors = if was_synced {
            fastpath.sync_services(&self.state, &outcome.touched)
        } else {
            fastpath.sync_all(&self.state)
        };
        let took = started.elapsed();
        if took > SLOW_FASTPATH_SYNC {
            info!(
                services = outcome.touched.len(),
                "fast path sync took {} ms",
                took.as_millis()
            );
        }
        for err in errors {
            self.outputs
                .metrics
                .count_error(Component::Fastpath, err.metric_label());
            warn!("fast path: {err}");
        }
    }

    fn log_outcome(&self, outcome: &Outcome) {
        for (service, problem) in &outcome.problems {
            warn!(service = %service, "not announcing {problem}");
        }
        for (ip, services) in &outcome.shared {
            let names: Vec<String> = services.iter().map(ToString::to_string).collect();
            warn!(
                "address {ip} is requested by {}; announced once where needed",
                names.join(", ")
            );
        }
        for (service, ips) in &outcome.announced {
            let reason = self
                .state
                .decision(service)
                .map(|d| d.reason.to_string())
                .unwrap_or_default();
            info!(service = %service, ips = ?ips, "announcing from this node: {reason}");
        }
        for (service, ips) in &outcome.withdrawn {
            let reason = self
                .state
                .decision(service)
                .map(|d| d.reason.to_string())
                .unwrap_or_else(|| "service deleted".into());
            info!(service = %service, ips = ?ips, "withdrawing from this node: {reason}");
        }
    }

    /// Every current problem and shared IP as Events, for a node that just became the leader
    /// (Events already published merge into a series). Before the first sync there is nothing
    /// to report yet: the sync's own outcome carries it.
    fn report_cluster_warnings(&self) {
        let (Some(events), true) = (&self.outputs.events, self.synced()) else {
            return;
        };
        let outcome = Outcome {
            problems: self
                .state
                .services()
                .filter_map(|spec| Some((spec, self.state.decision(&spec.key)?)))
                .flat_map(|(spec, decision)| {
                    decision
                        .problems
                        .iter()
                        .map(|problem| (spec.key.clone(), problem.clone()))
                })
                .collect(),
            shared: self
                .state
                .shared()
                .map(|(ip, services)| (*ip, services.iter().cloned().collect()))
                .collect(),
            ..Outcome::default()
        };
        let uid = |key: &_| self.state.service(key).and_then(|spec| spec.uid.clone());
        for event in events::from_outcome(&outcome, &self.state.policy().node, uid) {
            let _ = events.try_send(event);
        }
    }

    fn publish_ingress(&self, outcome: &Outcome) {
        let Some(ingress) = &self.outputs.ingress else {
            return;
        };
        for key in &outcome.touched {
            let update = match self.state.service(key) {
                Some(spec) => IngressUpdate {
                    service: key.clone(),
                    wanted: ingress_to_publish(self.state.policy(), spec),
                    current: spec.ingress_ips.clone(),
                },
                None => IngressUpdate {
                    service: key.clone(),
                    wanted: None,
                    current: Vec::new(),
                },
            };
            ingress.push(update);
        }
    }

    /// Whether this outcome puts an address on the interface that was not there.
    fn gains_addresses(&self, outcome: &Outcome) -> bool {
        !outcome.assumed.is_empty()
            || (outcome.maintenance_changed && self.state.maintenance().is_none())
    }

    /// Reconciles once the picture is complete; a failure is retried soon.
    async fn reconcile_and_schedule(&mut self, retry_at: &mut Option<Instant>) {
        if self.synced() {
            *retry_at = match self.reconcile().await {
                Ok(()) => None,
                Err(()) => Some(Instant::now() + RETRY_AFTER),
            };
        }
    }

    /// Makes the interface match the desired addresses; `Err` means retry soon.
    async fn reconcile(&mut self) -> Result<(), ()> {
        let desired = self.state.addresses();
        let started = Instant::now();
        let result = match self.state.policy().weights {
            Weights::Endpoints => self.addresses.apply_weighted(self.state.weights()).await,
            Weights::None => self.addresses.apply(&desired).await,
        };
        let took = started.elapsed();
        self.outputs
            .metrics
            .reconcile_duration
            .observe(took.as_secs_f64());
        if took > SLOW_RECONCILE {
            info!(
                "reconciling {} took {} ms",
                self.addresses.interface(),
                took.as_millis()
            );
        }
        let (changes, failure) = match result {
            Ok(changes) => (changes, None),
            Err(err) => (err.changes.clone(), Some(err)),
        };
        self.log_changes(&changes);
        match failure {
            None => {
                self.outputs
                    .metrics
                    .announced_addresses
                    .set(desired.len() as i64);
                let first = self
                    .outputs
                    .ready
                    .send_if_modified(|ready| !std::mem::replace(ready, true));
                if first {
                    release_startup_memory();
                }
                Ok(())
            }
            Some(err) => {
                for failure in &err.failures {
                    self.outputs
                        .metrics
                        .count_error(Component::Netlink, failure.metric_label());
                }
                warn!(
                    "reconciling {}: {err}; retrying in {RETRY_AFTER:?}",
                    self.addresses.interface()
                );
                Err(())
            }
        }
    }

    fn log_changes(&self, changes: &Changes) {
        for ip in &changes.added {
            let owners = self
                .state
                .claimants(ip)
                .map(|services| {
                    services
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            info!("assuming address {ip} ({owners})");
        }
        for ip in &changes.removed {
            info!("forfeiting address {ip}");
        }
        for (ip, weight) in &changes.reweighted {
            info!("weighting address {ip} {weight}");
        }
        for ip in &changes.unowned_removed {
            self.outputs
                .metrics
                .unowned_removed
                .get_or_create(&AddressLabels {
                    address: ip.to_string(),
                })
                .inc();
        }
    }

    fn report(&self) -> NodeReport {
        let mut services: Vec<ServiceReport> = self
            .state
            .services()
            .filter_map(|spec| {
                let decision = self.state.decision(&spec.key)?;
                if decision.ips.is_empty() && decision.problems.is_empty() {
                    return None;
                }
                Some(ServiceReport {
                    service: spec.key.to_string(),
                    ips: decision.ips.iter().copied().collect(),
                    announced: decision.reason.announces() && self.state.maintenance().is_none(),
                    reason: decision.reason.to_string(),
                    local_ready: self
                        .state
                        .slices_of(&spec.key)
                        .flat_map(|slice| slice.local.iter())
                        .filter(|endpoint| endpoint.ready)
                        .flat_map(|endpoint| endpoint.addresses.iter().cloned())
                        .collect(),
                    problems: decision.problems.iter().map(ToString::to_string).collect(),
                })
            })
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        let policy = self.state.policy();
        NodeReport {
            node: policy.node.clone(),
            interface: self.addresses.interface().to_owned(),
            prefixes: policy.prefixes.iter().map(ToString::to_string).collect(),
            synced: self.synced(),
            services_seen: self.state.services().count(),
            announced: self.state.addresses().into_iter().collect(),
            maintenance: self.state.maintenance().map(|why| why.to_string()),
            weights: self.state.weights().clone(),
            services,
            pools: self
                .outputs
                .pools
                .as_ref()
                .map(|pools| pools.borrow().clone())
                .unwrap_or_default(),
        }
    }
}

/// What one turn of the loop asks for.
enum Step {
    Nothing,
    Reconcile,
    /// A burst of cluster changes was folded into the desired state.
    Absorbed {
        outcome: Box<Outcome>,
        was_synced: bool,
    },
}

/// Resolves when `leader` turns true; never without an election.
async fn leadership_gained(leader: &mut Option<watch::Receiver<bool>>) -> Option<()> {
    let Some(receiver) = leader else {
        return std::future::pending().await;
    };
    loop {
        if receiver.changed().await.is_err() {
            *leader = None;
            return None;
        }
        if *receiver.borrow_and_update() {
            return Some(());
        }
    }
}

async fn next_event(events: &mut Option<AddressEvents>) -> Option<()> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// The initial lists pass through memory once (whole pages of API objects, decoded and then
/// reduced to the slim model); glibc keeps those pages after they are freed. Giving them back once
/// the first sync is applied is what keeps a large cluster's resident size small.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
