//! The leader's IP allocator: while this instance holds the Lease it watches Services and
//! `L3lbIPPool`s, runs the pure [`pools::allocate`] and writes what changed: the annotation
//! `l3lb.io/allocated-ips` (the allocator's memory, written first), `status.loadBalancer.ingress`
//! (what every node announces), the Service condition `l3lb.io/IPAllocated` with an Event when it
//! changes, each pool's status, and per-pool metrics.
//!
//! Nothing is kept across leadership terms: the annotations are the memory, so a new leader (or a
//! restarted one) recomputes exactly what the previous one wrote.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::{
    api::core::v1::Service,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource as _,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    cluster::{
        limits::MAX_IPS_PER_SERVICE,
        model::{LOAD_BALANCER_IPS_ANNOTATION, ServiceKey},
    },
    crd::{L3lbIPPool, PoolError, pool_status},
    events::{Regarding, ServiceEvent},
    metrics::{Component, Metrics, PoolLabels},
    pools::{self, Allocations, Family, Pool, ServiceRequest, StackPolicy, Verdict},
    status::PoolReport,
};

/// Names the pool a Service wants its address from.
pub const POOL_ANNOTATION: &str = "l3lb.io/ip-pool";
/// Services with the same key (and no common port) share one address.
pub const SHARING_KEY_ANNOTATION: &str = "l3lb.io/sharing-key";
/// What the allocator gave a Service, comma-separated: its memory across restarts.
pub const ALLOCATED_IPS_ANNOTATION: &str = "l3lb.io/allocated-ips";
/// The Service condition saying whether (and why not) the Service has its addresses.
pub const CONDITION: &str = "l3lb.io/IPAllocated";

/// Changes arriving within this window are folded into one allocation run.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
#[error("{what} {name}: {verb}: {source}")]
pub struct Error {
    what: &'static str,
    name: String,
    verb: &'static str,
    #[source]
    source: kube::Error,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        self.verb
    }
}

/// Does l3lb allocate for this Service at all: a LoadBalancer of l3lb's class?
fn managed(service: &Service, class: &str) -> bool {
    let spec = service.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none_or(|c| c == class)
}

/// The IPs in `raw`, a Service's first [`MAX_IPS_PER_SERVICE`] items as the nodes honour them.
fn parse_ips<'a>(raw: impl IntoIterator<Item = &'a str>) -> Vec<IpAddr> {
    raw.into_iter()
        .flat_map(|value| value.split(','))
        .filter(|item| !item.trim().is_empty())
        .take(MAX_IPS_PER_SERVICE)
        .filter_map(|ip| ip.trim().parse().ok())
        .collect()
}

fn ingress_ips(service: &Service) -> Vec<String> {
    service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| ingress.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

/// The allocator's view of a Service; `None` when it is not l3lb's to allocate for.
pub fn request_from_service(service: &Service, class: &str) -> Option<ServiceRequest> {
    if !managed(service, class) {
        return None;
    }
    let metadata = &service.metadata;
    let key = ServiceKey::new(metadata.namespace.clone()?, metadata.name.clone()?);
    let annotations = metadata.annotations.clone().unwrap_or_default();
    let annotation = |name: &str| {
        annotations
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let spec = service.spec.clone().unwrap_or_default();
    let requested = parse_ips(
        annotation(LOAD_BALANCER_IPS_ANNOTATION)
            .iter()
            .chain(spec.load_balancer_ip.iter())
            .map(String::as_str),
    );
    // Without the annotation (a Service from before pools, or from another implementation
    // handing over), the published ingress is the best memory there is.
    let previous = match annotation(ALLOCATED_IPS_ANNOTATION) {
        Some(value) => parse_ips([value.as_str()]),
        None => parse_ips(ingress_ips(service).iter().map(String::as_str)),
    };
    Some(ServiceRequest {
        key,
        labels: metadata.labels.clone().unwrap_or_default(),
        pool: annotation(POOL_ANNOTATION),
        sharing_key: annotation(SHARING_KEY_ANNOTATION),
        ports: spec
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                Some((
                    port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    u16::try_from(port.port).ok()?,
                ))
            })
            .collect(),
        stack: StackPolicy::from_kube(spec.ip_family_policy.as_deref()),
        families: spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| Family::from_kube(f))
            .collect(),
        requested,
        previous,
    })
}

/// Pools that parse, and the errors of those that do not (reported in their status).
pub fn parse_pools<'a>(
    objects: impl IntoIterator<Item = &'a L3lbIPPool>,
) -> (Vec<Pool>, BTreeMap<String, PoolError>) {
    let mut pools = Vec::new();
    let mut broken = BTreeMap::new();
    for object in objects {
        match object.to_pool() {
            Ok(pool) => pools.push(pool),
            Err(err) => {
                broken.insert(object.metadata.name.clone().unwrap_or_default(), err);
            }
        }
    }
    (pools, broken)
}

/// The pool (the first by priority) an address came from, for messages.
fn pool_of<'a>(pools: &'a [Pool], ip: &IpAddr) -> Option<&'a str> {
    let mut covering: Vec<&Pool> = pools.iter().filter(|p| p.contains(ip)).collect();
    covering.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    covering.first().map(|p| p.name.as_str())
}

/// The condition (status, reason, message) a verdict deserves; `None` for a hand-picked IP
/// without a problem (the allocator has nothing to say about it).
fn wanted_condition(pools: &[Pool], verdict: &Verdict) -> Option<(bool, &'static str, String)> {
    match (&verdict.failure, verdict.explicit) {
        (Some(failure), _) => Some((false, failure.reason(), failure.to_string())),
        (None, true) => None,
        (None, false) => {
            let parts: Vec<String> = verdict
                .ips
                .iter()
                .map(|ip| match pool_of(pools, ip) {
                    Some(pool) => format!("{ip} from pool {pool}"),
                    None => ip.to_string(),
                })
                .collect();
            Some((true, "Allocated", parts.join(", ")))
        }
    }
}

/// What the allocator wrote last on a Service, as read back from it.
#[derive(Clone, Debug, Default)]
struct SeenService {
    resource_version: Option<u64>,
    /// For the `regarding` reference of its Events (`kubectl describe` matches on it).
    uid: Option<String>,
    request: Option<ServiceRequest>,
    annotation: Option<String>,
    ingress: Vec<String>,
    conditions: Vec<Condition>,
}

impl SeenService {
    fn from_service(service: &Service, class: &str) -> SeenService {
        SeenService {
            resource_version: resource_version(service.meta().resource_version.as_deref()),
            uid: service.metadata.uid.clone(),
            request: request_from_service(service, class),
            annotation: service
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ALLOCATED_IPS_ANNOTATION).cloned()),
            ingress: ingress_ips(service),
            conditions: service
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default(),
        }
    }
}

/// resourceVersions are opaque to clients, but every API server (etcd's revision) makes them
/// increasing integers; used only to drop a watch event older than what a write returned.
fn resource_version(raw: Option<&str>) -> Option<u64> {
    raw.and_then(|rv| rv.parse().ok())
}

/// Keeps `new` unless what we hold is provably newer (a write's response that raced its own
/// watch event).
fn newer(held: Option<u64>, new: Option<u64>) -> bool {
    match (held, new) {
        (Some(held), Some(new)) => new >= held,
        _ => true,
    }
}

struct Lead {
    client: Client,
    class: String,
    events: Option<mpsc::Sender<ServiceEvent>>,
    metrics: Metrics,
    reports: watch::Sender<Vec<PoolReport>>,
    services: BTreeMap<ServiceKey, SeenService>,
    pools: BTreeMap<String, L3lbIPPool>,
    services_listed: bool,
    pools_listed: bool,
}

#[expect(
    clippy::large_enum_variant,
    reason = "events live only until absorbed; boxing would cost an allocation per event"
)]
enum Change {
    Services(watcher::Event<Service>),
    Pools(watcher::Event<L3lbIPPool>),
}

/// Runs the allocator whenever `leader` is true, until the sender goes away.
pub async fn run(
    client: Client,
    class: String,
    mut leader: watch::Receiver<bool>,
    events: Option<mpsc::Sender<ServiceEvent>>,
    metrics: Metrics,
    reports: watch::Sender<Vec<PoolReport>>,
) {
    loop {
        if leader.wait_for(|leading| *leading).await.is_err() {
            return;
        }
        info!("leading: running the IP allocator");
        let lead = Lead {
            client: client.clone(),
            class: class.clone(),
            events: events.clone(),
            metrics: metrics.clone(),
            reports: reports.clone(),
            services: BTreeMap::new(),
            pools: BTreeMap::new(),
            services_listed: false,
            pools_listed: false,
        };
        tokio::select! {
            () = lead.run() => {}
            stepped_down = leader.wait_for(|leading| !*leading) => {
                if stepped_down.is_err() {
                    return;
                }
                info!("no longer leading: the IP allocator stops");
                // Stale numbers would mislead: the new leader exports its own.
                metrics.pool_in_use.clear();
                metrics.pool_available.clear();
                reports.send_replace(Vec::new());
            }
        }
    }
}

impl Lead {
    async fn run(mut self) {
        // The same list semantics as the nodes' watches (cluster::kube): a fresh, consistent
        // picture, never a possibly stale watch-cache list that could move allocations back.
        let streaming = crate::cluster::kube::streaming_lists_supported(&self.client).await;
        let services = watch(
            Api::<Service>::all(self.client.clone()),
            streaming,
            "services",
            Change::Services,
        );
        let pools = watch(
            Api::<L3lbIPPool>::all(self.client.clone()),
            streaming,
            "l3lbippools",
            Change::Pools,
        );
        let mut changes = futures::stream::select(services, pools);
        let mut service_buffer: Option<BTreeMap<ServiceKey, SeenService>> = None;
        let mut pool_buffer: Option<BTreeMap<String, L3lbIPPool>> = None;
        loop {
            let Some(change) = changes.next().await else {
                return;
            };
            let mut burst = vec![change];
            // Fold what arrives together (a relist, a kubectl apply of many objects).
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    () = &mut settle => break,
                    next = changes.next() => match next {
                        Some(change) => burst.push(change),
                        None => return,
                    },
                }
            }
            for change in burst {
                self.absorb(change, &mut service_buffer, &mut pool_buffer);
            }
            if self.services_listed && self.pools_listed {
                self.allocate_and_write().await;
            }
        }
    }

    fn absorb(
        &mut self,
        change: Change,
        service_buffer: &mut Option<BTreeMap<ServiceKey, SeenService>>,
        pool_buffer: &mut Option<BTreeMap<String, L3lbIPPool>>,
    ) {
        let key_of = |service: &Service| {
            Some(ServiceKey::new(
                service.metadata.namespace.clone()?,
                service.metadata.name.clone()?,
            ))
        };
        match change {
            Change::Services(watcher::Event::Init) => *service_buffer = Some(BTreeMap::new()),
            Change::Services(watcher::Event::InitApply(service)) => {
                if let (Some(buffer), Some(key)) = (service_buffer.as_mut(), key_of(&service)) {
                    buffer.insert(key, SeenService::from_service(&service, &self.class));
                }
            }
            Change::Services(watcher::Event::InitDone) => {
                self.services = service_buffer.take().unwrap_or_default();
                self.services_listed = true;
            }
            Change::Services(watcher::Event::Apply(service)) => {
                if let Some(key) = key_of(&service) {
                    let seen = SeenService::from_service(&service, &self.class);
                    let held = self.services.get(&key).and_then(|s| s.resource_version);
                    if newer(held, seen.resource_version) {
                        self.services.insert(key, seen);
                    }
                }
            }
            Change::Services(watcher::Event::Delete(service)) => {
                if let Some(key) = key_of(&service) {
                    self.services.remove(&key);
                }
            }
            Change::Pools(watcher::Event::Init) => *pool_buffer = Some(BTreeMap::new()),
            Change::Pools(watcher::Event::InitApply(pool)) => {
                if let (Some(buffer), Some(name)) =
                    (pool_buffer.as_mut(), pool.metadata.name.clone())
                {
                    buffer.insert(name, pool);
                }
            }
            Change::Pools(watcher::Event::InitDone) => {
                self.pools = pool_buffer.take().unwrap_or_default();
                self.pools_listed = true;
            }
            Change::Pools(watcher::Event::Apply(pool)) => {
                if let Some(name) = pool.metadata.name.clone() {
                    let held = self
                        .pools
                        .get(&name)
                        .and_then(|p| resource_version(p.metadata.resource_version.as_deref()));
                    if newer(
                        held,
                        resource_version(pool.metadata.resource_version.as_deref()),
                    ) {
                        self.pools.insert(name, pool);
                    }
                }
            }
            Change::Pools(watcher::Event::Delete(pool)) => {
                if let Some(name) = &pool.metadata.name {
                    self.pools.remove(name);
                }
            }
        }
    }

    async fn allocate_and_write(&mut self) {
        let (pools, broken) = parse_pools(self.pools.values());
        for err in broken.values() {
            warn!("{err}");
        }
        let requests: Vec<ServiceRequest> = self
            .services
            .values()
            .filter_map(|seen| seen.request.clone())
            .collect();
        let allocations = pools::allocate(&pools, &requests);
        self.update_metrics(&allocations);
        self.reports
            .send_replace(pool_reports(&pools, &broken, &allocations));
        let keys: Vec<ServiceKey> = allocations.services.keys().cloned().collect();
        for key in keys {
            let verdict = &allocations.services[&key];
            if let Err(err) = self.write_service(&pools, &key, verdict).await {
                self.metrics
                    .count_error(Component::Allocator, err.metric_label());
                warn!("{err}");
            }
        }
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            let usage = match broken.get(&name) {
                Some(err) => Err(err),
                None => match allocations.pools.get(&name) {
                    Some(usage) => Ok(usage),
                    None => continue,
                },
            };
            if let Err(err) = self.write_pool_status(&name, usage).await {
                self.metrics
                    .count_error(Component::Allocator, err.metric_label());
                warn!("{err}");
            }
        }
    }

    fn update_metrics(&self, allocations: &Allocations) {
        self.metrics.pool_in_use.clear();
        self.metrics.pool_available.clear();
        for (pool, usage) in &allocations.pools {
            for (family, counts) in &usage.families {
                let labels = PoolLabels {
                    pool: pool.clone(),
                    family: family.as_kube(),
                };
                let gauge = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
                self.metrics
                    .pool_in_use
                    .get_or_create(&labels)
                    .set(gauge(counts.used));
                self.metrics
                    .pool_available
                    .get_or_create(&labels)
                    .set(gauge(counts.available()));
            }
        }
    }

    async fn write_service(
        &mut self,
        pools: &[Pool],
        key: &ServiceKey,
        verdict: &Verdict,
    ) -> Result<(), Error> {
        let Some(seen) = self.services.get(key).cloned() else {
            return Ok(());
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let error = |verb| {
            move |source| Error {
                what: "service",
                name: key.to_string(),
                verb,
                source,
            }
        };
        let joined = verdict
            .ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");

        // 1. The memory first: once it is written, no restart can re-IP the Service.
        let wanted_annotation =
            (!verdict.explicit && !verdict.ips.is_empty()).then(|| joined.clone());
        let drop_annotation = verdict.explicit || verdict.ips.is_empty();
        let annotation_change = match (&seen.annotation, &wanted_annotation) {
            (current, Some(wanted)) if current.as_ref() != Some(wanted) => {
                Some(serde_json::Value::String(wanted.clone()))
            }
            (Some(_), None) if drop_annotation => Some(serde_json::Value::Null),
            _ => None,
        };
        if let Some(value) = annotation_change {
            let patch = serde_json::json!({
                "metadata": { "annotations": { ALLOCATED_IPS_ANNOTATION: value } }
            });
            let updated = api
                .patch(&key.name, &patch_params(), &Patch::Merge(&patch))
                .await
                .map_err(error("patch"))?;
            self.remember(key, &updated);
        }

        // 2. Status: the ingress every node announces, and the condition.
        let mut status = serde_json::Map::new();
        if !verdict.explicit {
            let current: BTreeSet<IpAddr> =
                seen.ingress.iter().filter_map(|i| i.parse().ok()).collect();
            let had_ours = seen.annotation.is_some();
            if !verdict.ips.is_empty()
                && (current != verdict.ips || seen.ingress.len() != verdict.ips.len())
            {
                let ingress: Vec<serde_json::Value> = verdict
                    .ips
                    .iter()
                    .map(|ip| serde_json::json!({ "ip": ip.to_string(), "ipMode": "VIP" }))
                    .collect();
                status.insert(
                    "loadBalancer".into(),
                    serde_json::json!({ "ingress": ingress }),
                );
            } else if verdict.ips.is_empty() && had_ours && !seen.ingress.is_empty() {
                // Released (no pool covers it any more): stop every node announcing it.
                status.insert(
                    "loadBalancer".into(),
                    serde_json::json!({ "ingress": null }),
                );
            }
        }
        let ours = seen.conditions.iter().find(|c| c.type_ == CONDITION);
        let wanted = wanted_condition(pools, verdict).or_else(|| {
            // A hand-picked IP whose earlier conflict is gone: say so once.
            ours.filter(|c| c.status == "False").map(|_| {
                (
                    true,
                    "Requested",
                    "the requested IPs are reserved".to_owned(),
                )
            })
        });
        let mut event = None;
        if let Some((ok, reason, message)) = wanted {
            let status_word = if ok { "True" } else { "False" };
            let same = ours.is_some_and(|c| {
                c.status == status_word && c.reason == reason && c.message == message
            });
            if !same {
                let since = ours
                    .filter(|c| c.status == status_word)
                    .map_or(Time(Timestamp::now()), |c| c.last_transition_time.clone());
                let mut conditions: Vec<Condition> = seen
                    .conditions
                    .iter()
                    .filter(|c| c.type_ != CONDITION)
                    .cloned()
                    .collect();
                conditions.push(Condition {
                    type_: CONDITION.into(),
                    status: status_word.into(),
                    reason: reason.into(),
                    message: message.clone(),
                    observed_generation: None,
                    last_transition_time: since,
                });
                status.insert(
                    "conditions".into(),
                    serde_json::to_value(&conditions).unwrap_or_default(),
                );
                event = Some(ServiceEvent {
                    regarding: Regarding::Service(key.clone()),
                    uid: seen.uid.clone(),
                    // Only the leader allocates: one Event per change, from it.
                    cluster_wide: true,
                    warning: !ok,
                    reason: if ok {
                        "IPAllocated"
                    } else {
                        "AllocationFailed"
                    },
                    note: message,
                });
            }
        }
        if !status.is_empty() {
            let patch = serde_json::json!({ "status": status });
            let updated = api
                .patch_status(&key.name, &patch_params(), &Patch::Merge(&patch))
                .await
                .map_err(error("patch_status"))?;
            self.remember(key, &updated);
            info!(service = %key, ips = %joined, "allocation written");
        }
        if let (Some(event), Some(events)) = (event, &self.events) {
            // "Requested" after a resolved conflict is no allocation news.
            if !(event.reason == "IPAllocated" && verdict.explicit) {
                let _ = events.try_send(event);
            }
        }
        Ok(())
    }

    fn remember(&mut self, key: &ServiceKey, updated: &Service) {
        self.services
            .insert(key.clone(), SeenService::from_service(updated, &self.class));
    }

    async fn write_pool_status(
        &mut self,
        name: &str,
        usage: Result<&pools::PoolUsage, &PoolError>,
    ) -> Result<(), Error> {
        let Some(pool) = self.pools.get(name) else {
            return Ok(());
        };
        let wanted = pool_status(
            usage,
            pool.metadata.generation,
            pool.status.as_ref(),
            Timestamp::now(),
        );
        if pool.status.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let mut value = serde_json::to_value(&wanted).unwrap_or_default();
        // A merge patch only removes what it names as null.
        for family in ["ipv4", "ipv6"] {
            if let Some(map) = value.as_object_mut() {
                map.entry(family).or_insert(serde_json::Value::Null);
            }
        }
        let api: Api<L3lbIPPool> = Api::all(self.client.clone());
        let updated = api
            .patch_status(
                name,
                &patch_params(),
                &Patch::Merge(&serde_json::json!({ "status": value })),
            )
            .await
            .map_err(|source| Error {
                what: "l3lbippool",
                name: name.to_owned(),
                verb: "patch_status",
                source,
            })?;
        self.pools.insert(name.to_owned(), updated);
        Ok(())
    }
}

/// The pools as `l3lb status` shows them.
pub fn pool_reports(
    pools: &[Pool],
    broken: &BTreeMap<String, PoolError>,
    allocations: &Allocations,
) -> Vec<PoolReport> {
    let mut reports: BTreeMap<String, PoolReport> = BTreeMap::new();
    for (name, usage) in &allocations.pools {
        let counts: Vec<String> = usage
            .families
            .iter()
            .map(|(family, f)| {
                format!(
                    "{family} {} used, {} free of {}",
                    f.used,
                    f.available(),
                    f.total
                )
            })
            .collect();
        let problems = usage
            .overlaps
            .iter()
            .map(|other| format!("blocks overlap pool {other}"))
            .collect();
        reports.insert(
            name.clone(),
            PoolReport {
                pool: name.clone(),
                usage: counts.join("; "),
                problems,
                allocations: Vec::new(),
            },
        );
    }
    for (name, err) in broken {
        reports.insert(
            name.clone(),
            PoolReport {
                pool: name.clone(),
                usage: "-".into(),
                problems: vec![err.to_string()],
                allocations: Vec::new(),
            },
        );
    }
    for (service, verdict) in allocations.services.iter().filter(|(_, v)| !v.explicit) {
        let mut by_pool: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ip in &verdict.ips {
            if let Some(pool) = pool_of(pools, ip) {
                by_pool.entry(pool).or_default().push(ip.to_string());
            }
        }
        for (pool, ips) in by_pool {
            if let Some(report) = reports.get_mut(pool) {
                report
                    .allocations
                    .push(format!("{service} {}", ips.join(",")));
            }
        }
    }
    reports.into_values().collect()
}

/// A watch of `api`'s objects as [`Change`]s, retried with backoff (each failure logged).
fn watch<K>(
    api: Api<K>,
    streaming: bool,
    what: &'static str,
    change: fn(watcher::Event<K>) -> Change,
) -> BoxStream<'static, Change>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher(api, crate::cluster::kube::list_config(streaming))
        .default_backoff()
        .filter_map(move |event| async move {
            match event {
                Ok(event) => Some(change(event)),
                Err(err) => {
                    warn!("allocator: watching {what} failed, retrying: {err}");
                    None
                }
            }
        })
        .boxed()
}

/// Every write of the allocator is l3lb's, under the same field manager as the status writer
/// (`ingress.rs`): the nodes and the status writer then recognise the allocator's status as
/// l3lb's own output, never as another controller's request, and do not write it again.
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::cluster::model::STATUS_FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn requests_read_annotations_families_and_memory() {
        let svc = service(
            "metadata:\n  name: web\n  namespace: shop\n  labels: {team: blue}\n  annotations:\n    l3lb.io/ip-pool: gold\n    l3lb.io/sharing-key: k\n    l3lb.io/allocated-ips: '10.0.100.33, 2001:db8::1'\n\
             spec:\n  type: LoadBalancer\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv6, IPv4]\n  ports: [{port: 53, protocol: UDP}, {port: 80}]\n\
             status:\n  loadBalancer:\n    ingress: [{ip: 10.0.100.99}]\n",
        );
        let request = request_from_service(&svc, "l3lb.io/l3lb").unwrap();
        assert_eq!(request.key, ServiceKey::new("shop", "web"));
        assert_eq!(request.pool.as_deref(), Some("gold"));
        assert_eq!(request.sharing_key.as_deref(), Some("k"));
        assert_eq!(request.stack, StackPolicy::PreferDualStack);
        assert_eq!(request.families, [Family::V6, Family::V4]);
        assert!(request.ports.contains(&("UDP".to_owned(), 53)));
        assert!(request.ports.contains(&("TCP".to_owned(), 80)));
        assert!(request.requested.is_empty());
        assert_eq!(
            request.previous,
            [
                "10.0.100.33".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ],
            "the annotation, not the ingress, is the memory"
        );
        assert_eq!(request.labels["team"], "blue");
    }

    #[test]
    fn only_load_balancers_of_our_class_are_allocated_for() {
        let ours = "metadata: {name: a, namespace: d}\nspec: {type: LoadBalancer}\n";
        assert!(request_from_service(&service(ours), "l3lb.io/l3lb").is_some());
        let other = "metadata: {name: a, namespace: d}\nspec: {type: LoadBalancer, loadBalancerClass: x.io/y}\n";
        assert!(request_from_service(&service(other), "l3lb.io/l3lb").is_none());
        let cluster_ip = "metadata: {name: a, namespace: d}\nspec: {type: ClusterIP}\n";
        assert!(request_from_service(&service(cluster_ip), "l3lb.io/l3lb").is_none());
        // No memory annotation: the published ingress stands in; hand-picked IPs are requests.
        let handed_over = "metadata:\n  name: a\n  namespace: d\n  annotations: {l3lb.io/loadBalancerIPs: 10.0.100.7}\nspec: {type: LoadBalancer, loadBalancerIP: 10.0.100.8}\nstatus: {loadBalancer: {ingress: [{ip: 10.0.100.9}]}}\n";
        let request = request_from_service(&service(handed_over), "l3lb.io/l3lb").unwrap();
        assert_eq!(request.requested.len(), 2);
        assert_eq!(request.previous, ["10.0.100.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn conditions_name_the_pool_or_the_failure() {
        let pools = vec![Pool {
            name: "gold".into(),
            blocks: vec!["10.0.0.0/30".parse().unwrap()],
            auto_assign: true,
            ..Pool::default()
        }];
        let ok = Verdict {
            ips: BTreeSet::from(["10.0.0.1".parse().unwrap()]),
            ..Verdict::default()
        };
        assert_eq!(
            wanted_condition(&pools, &ok),
            Some((true, "Allocated", "10.0.0.1 from pool gold".into()))
        );
        let failed = Verdict {
            failure: Some(pools::Failure::PoolExhausted {
                family: Family::V4,
                pools: vec!["gold".into()],
            }),
            ..Verdict::default()
        };
        assert_eq!(
            wanted_condition(&pools, &failed),
            Some((false, "PoolExhausted", "pool gold exhausted (IPv4)".into()))
        );
        let explicit = Verdict {
            explicit: true,
            ..ok.clone()
        };
        assert_eq!(wanted_condition(&pools, &explicit), None);
    }

    #[test]
    fn stale_watch_events_never_undo_a_write() {
        assert!(newer(Some(5), Some(5)));
        assert!(newer(Some(5), Some(6)));
        assert!(!newer(Some(6), Some(5)));
        assert!(newer(None, Some(1)));
        assert!(newer(Some(1), None), "unparsable versions: take the event");
    }
}
