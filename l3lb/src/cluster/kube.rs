//! `--source kube`: Services and EndpointSlices watched on the API server, and this node's own
//! Node (for maintenance, see [`crate::maintenance`]).
//!
//! Each watch turns into [`ClusterChange`]s as objects arrive, converted to their slim form on
//! the spot so nothing else of the API objects stays in memory. Services and EndpointSlices are
//! not even decoded in full: [`super::objects`] reads only the fields the model uses from the
//! watch event's JSON and skips the rest (managed fields, labels, `targetRef`s, …) unallocated. A (re)list is buffered until it
//! is complete and only then sent as one relist: an error half way through a list never looks
//! like "everything was deleted". While the API server is unreachable the watches retry with
//! backoff and send nothing, so what is announced stays announced (fail static). How the watches
//! list: see [`list_config`].
use std::{fmt::Debug, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{WatchEvent, WatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    model::{
        ClusterChange, NodeSpec, SERVICE_NAME_LABEL, ServiceKey, ServiceSpec, SliceKey, SliceSpec,
        has_unplaced_endpoints, slice_over_limits,
    },
    objects::{EndpointSlice, Service},
};
use crate::metrics::{Metrics, WatchLabels};

/// How long the probe for streaming lists waits for the server's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the watches (re)list: a streaming list (one watch that first sends every object, then an
/// initial-events-end bookmark; Kubernetes' WatchList) where the server supports it, else
/// consistent lists in pages of 500. Both read at least as new as anything seen before, so a
/// relist never moves the picture backwards, and neither holds a whole list in one response.
/// (`resourceVersion=0` lists, served from the watch cache, may be older than what l3lb saw
/// and ignore `limit` on many server versions.)
pub(crate) fn list_config(streaming: bool) -> watcher::Config {
    if streaming {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default().page_size(500)
    }
}

/// Asks the server for a streaming list of Services that matches nothing: a server that supports
/// them answers with the initial-events-end bookmark at once; one that does not refuses the
/// request or sends no such bookmark.
pub async fn streaming_lists_supported(client: &Client) -> bool {
    let api = Api::<Service>::all(client.clone());
    let params = WatchParams::streaming_lists()
        .labels("l3lb.io/streaming-list-probe")
        .timeout(u32::try_from(PROBE_TIMEOUT.as_secs()).unwrap_or(10));
    let probe = async {
        let mut stream = api.watch(&params, "").await?.boxed();
        while let Some(event) = stream.try_next().await? {
            if let WatchEvent::Bookmark(bookmark) = event {
                return Ok::<bool, kube::Error>(
                    bookmark
                        .metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .is_some_and(|v| v == "true"),
                );
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(true)) => {
            info!("the API server supports streaming lists: using them");
            true
        }
        Ok(Ok(false)) | Err(_) => {
            info!("the API server sent no initial-events-end bookmark: using paginated lists");
            false
        }
        Ok(Err(err)) => {
            info!("the API server refused a streaming list ({err}): using paginated lists");
            false
        }
    }
}

/// The client the watches use. kube-rs starts a streaming list with `resourceVersion=0`, which
/// asks for "any" data: served from the watch cache, it may be older than what l3lb already
/// saw. Dropping the resourceVersion of such a request makes it a consistent read (the server
/// sends the initial-events-end bookmark only once its state is at least as new as the moment
/// the request arrived), which is how client-go starts a streaming list.
pub fn client(config: kube::Config) -> Result<Client, kube::Error> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(builder
        .with_layer(&tower::util::MapRequestLayer::new(
            consistent_streaming_list,
        ))
        .build())
}

fn consistent_streaming_list<B>(mut request: hyper::Request<B>) -> hyper::Request<B> {
    if let Some(rewritten) = request.uri().query().and_then(without_stale_version) {
        let path = request.uri().path();
        let path_and_query = if rewritten.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{rewritten}")
        };
        let mut parts = request.uri().clone().into_parts();
        if let Ok(path_and_query) = path_and_query.parse() {
            parts.path_and_query = Some(path_and_query);
            if let Ok(uri) = hyper::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    request
}

/// The query of a streaming list without its `resourceVersion=0`; `None` for any other query.
fn without_stale_version(query: &str) -> Option<String> {
    let pairs: Vec<&str> = query.split('&').collect();
    if !pairs.contains(&"sendInitialEvents=true") || !pairs.contains(&"resourceVersion=0") {
        return None;
    }
    Some(
        pairs
            .into_iter()
            .filter(|pair| *pair != "resourceVersion=0" && !pair.is_empty())
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Watches Services, EndpointSlices and this node's Node until the receiver goes away.
pub async fn run(
    client: Client,
    node: String,
    changes: mpsc::Sender<ClusterChange>,
    metrics: Metrics,
) {
    let streaming = streaming_lists_supported(&client).await;
    let services = watch(
        Api::<Service>::all(client.clone()),
        list_config(streaming),
        "services",
        |service: &Service| ServiceSpec::from_object(service),
        |service: &Service| {
            Some(ClusterChange::ServiceDeleted(ServiceKey::new(
                service.metadata.namespace.as_deref()?,
                service.metadata.name.as_deref()?,
            )))
        },
        ClusterChange::ServiceApplied,
        ClusterChange::ServicesListed,
        changes.clone(),
        metrics.clone(),
    );
    let own = node.clone();
    let node_name = node.clone();
    let nodes = watch(
        Api::<Node>::all(client.clone()),
        // Only this node's own object: a field selector, so no other Node is ever sent.
        list_config(streaming).fields(&format!("metadata.name={node}")),
        "nodes",
        move |object: &Node| NodeSpec::from_node(object).filter(|spec| spec.name == own),
        move |object: &Node| {
            (object.metadata.name.as_deref() == Some(node_name.as_str()))
                .then_some(ClusterChange::NodeApplied(None))
        },
        |spec| ClusterChange::NodeApplied(Some(spec)),
        |specs: Vec<NodeSpec>| ClusterChange::NodeListed(specs.into_iter().next()),
        changes.clone(),
        metrics.clone(),
    );
    let slice_node = node.clone();
    // Services already reported for endpoints without nodeName: once each is enough.
    let unplaced = std::sync::Mutex::new(std::collections::HashSet::<ServiceKey>::new());
    // Slices over the limits, warned about once each until they are within them again.
    let over_limits = std::sync::Mutex::new(std::collections::HashSet::<SliceKey>::new());
    let slices = watch(
        Api::<EndpointSlice>::all(client),
        // Slices without the label belong to no Service (mirrored or hand-made ones); the API
        // server filters them out for us.
        list_config(streaming).labels(SERVICE_NAME_LABEL),
        "endpointslices",
        move |slice: &EndpointSlice| {
            let spec = SliceSpec::from_object(slice, &slice_node)?;
            let mut over = over_limits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match slice_over_limits(slice, &slice_node) {
                Some(excess) if over.insert(spec.key.clone()) => {
                    warn!(slice = %spec.key, "EndpointSlice over the limits: {excess}");
                }
                Some(_) => {}
                None => {
                    over.remove(&spec.key);
                }
            }
            drop(over);
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
                namespace: slice.metadata.namespace.as_deref()?.into(),
                name: slice.metadata.name.as_deref()?.into(),
            }))
        },
        ClusterChange::SliceApplied,
        ClusterChange::SlicesListed,
        changes,
        metrics,
    );
    futures::join!(services, slices, nodes);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_lists_start_as_consistent_reads() {
        assert_eq!(
            without_stale_version(
                "&watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
            )
            .as_deref(),
            Some("watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan")
        );
        assert_eq!(
            without_stale_version("watch=true&resourceVersion=0"),
            None,
            "a plain watch keeps its resourceVersion"
        );
        assert_eq!(
            without_stale_version("watch=true&sendInitialEvents=true&resourceVersion=42"),
            None,
            "a resumed watch keeps its resourceVersion"
        );
        let request = hyper::Request::get(
            "https://api:6443/api/v1/services?watch=true&sendInitialEvents=true&resourceVersion=0",
        )
        .body(())
        .unwrap();
        assert_eq!(
            consistent_streaming_list(request).uri().to_string(),
            "https://api:6443/api/v1/services?watch=true&sendInitialEvents=true"
        );
    }
}
