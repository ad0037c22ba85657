//! Publishing `status.loadBalancer.ingress`, so `kubectl get svc` shows the EXTERNAL-IP and
//! kube-proxy programs its rules for it.
//!
//! Every node runs l3lb, but exactly one may write: the holder of the Lease (see [`crate::leader`]).
//! Non-leaders keep the latest wanted state of every Service, so a new leader writes what is
//! missing at once.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, instrument, warn};

use crate::{
    cluster::model::ServiceKey,
    metrics::{Component, Metrics},
};

/// What the controller tells the writer about one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressUpdate {
    pub service: ServiceKey,
    /// The IPs to publish; `None` when l3lb has nothing to say about this Service (it then
    /// leaves the status alone: another controller may own it).
    pub wanted: Option<BTreeSet<IpAddr>>,
    /// What `status.loadBalancer.ingress` holds now.
    pub current: Vec<String>,
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
}

/// Writes ingress status while `leader` says so. Updates arrive from the controller for every
/// Service whose spec changed; the writer keeps the latest of each.
pub async fn write_ingress(
    client: Client,
    mut updates: mpsc::Receiver<IngressUpdate>,
    mut leader: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let mut pending: BTreeMap<ServiceKey, IngressUpdate> = BTreeMap::new();
    loop {
        if *leader.borrow() {
            pending.retain(|_, update| needs_write(update).is_some());
            let keys: Vec<ServiceKey> = pending.keys().cloned().collect();
            for key in keys {
                let Some(update) = pending.get(&key) else {
                    continue;
                };
                let Some(ips) = needs_write(update) else {
                    continue;
                };
                match patch_ingress(&client, &key, &ips).await {
                    Ok(()) => {
                        info!(service = %key, "published ingress {ips:?}");
                        pending.remove(&key);
                    }
                    // Kept pending: the next update or leadership change retries it.
                    Err(err) => {
                        metrics.count_error(Component::Ingress, err.metric_label());
                        warn!("{err}");
                    }
                }
            }
        }
        tokio::select! {
            update = updates.recv() => {
                let Some(update) = update else { return };
                pending.insert(update.service.clone(), update);
                // Take the rest of a burst before talking to the API server.
                while let Ok(update) = updates.try_recv() {
                    pending.insert(update.service.clone(), update);
                }
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The IPs to write when the status differs from what is wanted.
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
    let ingress: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| serde_json::json!({ "ip": ip.to_string(), "ipMode": "VIP" }))
        .collect();
    let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": ingress } } });
    debug!(service = %service, "patching status");
    api.patch_status(
        &service.name,
        &PatchParams::default(),
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
    }
}
