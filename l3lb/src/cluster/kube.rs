//! `--source kube`: Services and EndpointSlices watched on the API server.
//!
//! Each watch turns into [`ClusterChange`]s as objects arrive, converted to their slim form on
//! the spot so nothing else of the API objects stays in memory. A (re)list is buffered until it
//! is complete and only then sent as one relist: an error half way through a list never looks
//! like "everything was deleted". While the API server is unreachable the watches retry with
//! backoff and send nothing, so what is announced stays announced (fail static).
use std::fmt::Debug;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::model::{
    ClusterChange, SERVICE_NAME_LABEL, ServiceKey, ServiceSpec, SliceKey, SliceSpec,
    has_unplaced_endpoints,
};
use crate::metrics::{Metrics, WatchLabels};

/// Watches Services and EndpointSlices until the receiver goes away.
pub async fn run(
    client: Client,
    node: String,
    changes: mpsc::Sender<ClusterChange>,
    metrics: Metrics,
) {
    let services = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().any_semantic(),
        "services",
        |service: &Service| ServiceSpec::from_service(service),
        |service: &Service| {
            Some(ClusterChange::ServiceDeleted(
                ServiceSpec::from_service(service)?.key,
            ))
        },
        ClusterChange::ServiceApplied,
        ClusterChange::ServicesListed,
        changes.clone(),
        metrics.clone(),
    );
    let slice_node = node.clone();
    // Services already reported for endpoints without nodeName: once each is enough.
    let unplaced = std::sync::Mutex::new(std::collections::HashSet::<ServiceKey>::new());
    let slices = watch(
        Api::<EndpointSlice>::all(client),
        // Slices without the label belong to no Service (mirrored or hand-made ones); the API
        // server filters them out for us.
        watcher::Config::default()
            .any_semantic()
            .labels(SERVICE_NAME_LABEL),
        "endpointslices",
        move |slice: &EndpointSlice| {
            let spec = SliceSpec::from_endpoint_slice(slice, &slice_node)?;
            if has_unplaced_endpoints(slice)
                && let Some(service) = &spec.service
                && unplaced
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(service.clone())
            {
                info!(
                    service = %service,
                    "endpoints without nodeName cannot be placed on a node: they never make a node announce"
                );
            }
            Some(spec)
        },
        |slice: &EndpointSlice| {
            Some(ClusterChange::SliceDeleted(SliceKey {
                namespace: slice.metadata.namespace.clone()?,
                name: slice.metadata.name.clone()?,
            }))
        },
        ClusterChange::SliceApplied,
        ClusterChange::SlicesListed,
        changes,
        metrics,
    );
    futures::join!(services, slices);
}

#[expect(
    clippy::too_many_arguments,
    reason = "one generic loop for both kinds; the arguments are the kind's conversions"
)]
async fn watch<K, S>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    convert: impl Fn(&K) -> Option<S>,
    deleted: impl Fn(&K) -> Option<ClusterChange>,
    applied: impl Fn(S) -> ClusterChange,
    listed: impl Fn(Vec<S>) -> ClusterChange,
    changes: mpsc::Sender<ClusterChange>,
    metrics: Metrics,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut listing: Option<Vec<S>> = None;
    let mut lists = 0u64;
    let labels = WatchLabels {
        resource: what.to_owned(),
    };
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(err) => {
                metrics.watch_errors.get_or_create(&labels).inc();
                warn!("watching {what} failed, keeping the last known state and retrying: {err}");
                continue;
            }
        };
        let change = match event {
            watcher::Event::Init => {
                listing = Some(Vec::new());
                None
            }
            watcher::Event::InitApply(object) => {
                if let (Some(buffer), Some(spec)) = (listing.as_mut(), convert(&object)) {
                    buffer.push(spec);
                }
                None
            }
            watcher::Event::InitDone => {
                let relist = listing.take().unwrap_or_default();
                metrics.watch_relists.get_or_create(&labels).inc();
                lists += 1;
                let verb = if lists == 1 { "listed" } else { "relisted" };
                info!(objects = relist.len(), "{what} {verb}");
                Some(listed(relist))
            }
            watcher::Event::Apply(object) => convert(&object).map(&applied),
            watcher::Event::Delete(object) => deleted(&object),
        };
        if let Some(change) = change
            && changes.send(change).await.is_err()
        {
            return;
        }
    }
}
