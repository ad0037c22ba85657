//! Publishing `status.loadBalancer.ingress`, so `kubectl get svc` shows the EXTERNAL-IP and
//! kube-proxy programs its rules for it.
//!
//! Every node runs l3lb, but exactly one may write: the holder of the Lease (see [`crate::leader`]).
//! Non-leaders keep the latest wanted state of every Service, so a new leader writes what is
//! missing at once. The writer signs its patches with [`STATUS_FIELD_MANAGER`], which is how every
//! node tells the status l3lb wrote (never a request) from one another controller wrote.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{utils::Backoff as _, watcher::DefaultBackoff},
};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, instrument, warn};

use crate::{
    cluster::model::{STATUS_FIELD_MANAGER, ServiceKey},
    metrics::{Component, Metrics},
};

/// What the controller tells the writer about one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressUpdate {
    pub service: ServiceKey,
    /// The IPs to publish (empty: clear what l3lb wrote); `None` when l3lb has nothing to say
    /// about this Service (it then leaves the status alone: another controller may own it).
    pub wanted: Option<BTreeSet<IpAddr>>,
    /// What `status.loadBalancer.ingress` holds now.
    pub current: Vec<String>,
}

/// The latest update of each Service, waiting for the writer. A map rather than a bounded
/// channel: the first sync of a large cluster touches every Service at once, and a full queue
/// must not drop the status of any of them; a newer update of a Service replaces the older one.
#[derive(Clone, Default)]
pub struct IngressQueue {
    inner: Arc<(Mutex<BTreeMap<ServiceKey, IngressUpdate>>, Notify)>,
}

impl IngressQueue {
    pub fn push(&self, update: IngressUpdate) {
        let (updates, notify) = &*self.inner;
        updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(update.service.clone(), update);
        notify.notify_one();
    }

    fn take(&self) -> BTreeMap<ServiceKey, IngressUpdate> {
        std::mem::take(&mut *self.inner.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    async fn changed(&self) {
        self.inner.1.notified().await;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("service {service}: writing status.loadBalancer.ingress: {source}")]
pub struct Error {
    service: ServiceKey,
    #[source]
    source: kube::Error,
}

impl Error {
    /// What failed, for the error counter: the status patch is the writer's only API call.
    pub fn metric_label(&self) -> &'static str {
        "patch_status"
    }

    /// Whether writing again can succeed: not when the Service is gone or the server refuses
    /// the content itself.
    fn retriable(&self) -> bool {
        !matches!(&self.source, kube::Error::Api(status) if matches!(status.code, 400 | 404 | 422))
    }
}

/// Writes ingress status while `leader` says so. Updates arrive from the controller for every
/// Service whose spec changed; the writer keeps the latest of each. Failed writes are retried
/// with backoff (a restarting API server, 429, 5xx), not left until the Service changes again.
pub async fn write_ingress(
    client: Client,
    queue: IngressQueue,
    mut leader: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let mut pending: BTreeMap<ServiceKey, IngressUpdate> = BTreeMap::new();
    let mut backoff = DefaultBackoff::default();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        pending.extend(queue.take());
        let due = retry_at.is_none_or(|at| tokio::time::Instant::now() >= at);
        if *leader.borrow() && due {
            pending.retain(|_, update| needs_write(update).is_some());
            let mut failed = false;
            let keys: Vec<ServiceKey> = pending.keys().cloned().collect();
            for key in keys {
                let Some(ips) = pending.get(&key).and_then(needs_write) else {
                    continue;
                };
                match patch_ingress(&client, &key, &ips).await {
                    Ok(()) => {
                        if ips.is_empty() {
                            info!(service = %key, "cleared the ingress l3lb published");
                        } else {
                            info!(service = %key, "published ingress {ips:?}");
                        }
                        pending.remove(&key);
                    }
                    Err(err) => {
                        metrics.count_error(Component::Ingress, err.metric_label());
                        warn!("{err}");
                        if err.retriable() {
                            failed = true;
                        } else {
                            pending.remove(&key);
                        }
                    }
                }
            }
            retry_at = if failed {
                let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(30));
                debug!("retrying the failed status writes in {delay:?}");
                Some(tokio::time::Instant::now() + delay)
            } else {
                backoff.reset();
                None
            };
        }
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = queue.changed() => {}
            () = retry => {}
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new leader writes at once.
                retry_at = None;
                backoff.reset();
            }
        }
    }
}

/// The IPs to write when the status differs from what is wanted (empty: clear it).
fn needs_write(update: &IngressUpdate) -> Option<BTreeSet<IpAddr>> {
    let wanted = update.wanted.as_ref()?;
    let current: BTreeSet<IpAddr> = update
        .current
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    (current != *wanted || update.current.len() != wanted.len()).then(|| wanted.clone())
}

#[instrument(skip(client))]
async fn patch_ingress(
    client: &Client,
    service: &ServiceKey,
    ips: &BTreeSet<IpAddr>,
) -> Result<(), Error> {
    let api: Api<Service> = Api::namespaced(client.clone(), &service.namespace);
    let ingress = if ips.is_empty() {
        // Removing the field, rather than writing an empty list, also ends l3lb's ownership.
        serde_json::Value::Null
    } else {
        ips.iter()
            .map(|ip| serde_json::json!({ "ip": ip.to_string(), "ipMode": "VIP" }))
            .collect()
    };
    let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": ingress } } });
    debug!(service = %service, "patching status");
    api.patch_status(
        &service.name,
        &PatchParams {
            field_manager: Some(STATUS_FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error {
        service: service.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(wanted: Option<&[&str]>, current: &[&str]) -> IngressUpdate {
        IngressUpdate {
            service: ServiceKey::new("default", "web"),
            wanted: wanted.map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect()),
            current: current.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn writes_only_what_differs() {
        assert!(needs_write(&update(Some(&["10.0.100.7"]), &["10.0.100.7"])).is_none());
        assert!(needs_write(&update(Some(&["10.0.100.7"]), &[])).is_some());
        assert!(needs_write(&update(Some(&["10.0.100.7"]), &["10.0.100.8"])).is_some());
        assert!(
            needs_write(&update(
                Some(&["10.0.100.7"]),
                &["10.0.100.7", "10.0.100.7"]
            ))
            .is_some(),
            "duplicates are cleaned up"
        );
        assert!(
            needs_write(&update(None, &["192.0.2.1"])).is_none(),
            "not ours: left alone"
        );
        assert_eq!(
            needs_write(&update(Some(&[]), &["10.0.100.7"])),
            Some(BTreeSet::new()),
            "ours and no longer requested: cleared"
        );
        assert!(needs_write(&update(Some(&[]), &[])).is_none());
    }
}
