//! Leader election on a coordination.k8s.io Lease: every node runs l3lb, but only one instance
//! may write Service status. The Lease's resourceVersion makes each acquire or renew a
//! compare-and-swap, so two instances can never both believe they won the same round.
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::Lease,
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::{Component, Metrics};

#[derive(Debug, thiserror::Error)]
#[error("{verb} lease {namespace}/{name}: {source}")]
pub struct Error {
    /// The API verb that failed: `get`, `create` or `update`.
    verb: &'static str,
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl Error {
    /// The failed verb, for the error counter.
    pub fn metric_label(&self) -> &'static str {
        self.verb
    }
}

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who we are in the Lease (the node name: unique, and tells an operator where the leader is).
    pub identity: String,
    /// How long a Lease lasts without renewal before another instance may take it.
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often the holder renews (and others look): a third of the duration, so two renewals
    /// can fail before the Lease lapses.
    pub fn retry_period(&self) -> Duration {
        self.duration / 3
    }
}

/// Keeps trying to hold the Lease and reports leadership on `leader` and the `leader` gauge. A
/// holder that cannot renew within the Lease duration steps down before anybody else can take
/// over.
pub async fn elect(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: Metrics,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        let held = match try_hold(&api, &config).await {
            Ok(held) => held,
            Err(err) => {
                metrics.count_error(Component::Leader, err.metric_label());
                warn!("{err}");
                // Unsure whether we still hold it: keep leading only while the Lease would still
                // be ours on the server, never longer.
                last_renewal.is_some_and(|at| at.elapsed() < config.duration)
            }
        };
        if held {
            last_renewal = Some(tokio::time::Instant::now());
        } else {
            last_renewal = None;
        }
        leader.send_if_modified(|was| {
            if *was != held {
                info!(lease = %config.name, "{} the status writer", if held { "became" } else { "is no longer" });
                metrics.leader.set(i64::from(held));
                *was = held;
                true
            } else {
                false
            }
        });
        tokio::time::sleep(config.retry_period()).await;
    }
}

/// One acquire-or-renew round; `Ok(true)` when we hold the Lease afterwards.
async fn try_hold(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, Error> {
    let lease_error = |verb| {
        move |source| Error {
            verb,
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            source,
        }
    };
    let now = Timestamp::now();
    let duration_seconds = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api
        .get_opt(&config.name)
        .await
        .map_err(lease_error("get"))?
    else {
        let mut lease = Lease::default();
        lease.metadata.name = Some(config.name.clone());
        lease.metadata.namespace = Some(config.namespace.clone());
        lease.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..Default::default()
        });
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(lease_error("create")(err)),
        };
    };

    let spec = lease.spec.get_or_insert_with(Default::default);
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let held_for = spec.lease_duration_seconds.map_or(config.duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    let expired = spec.renew_time.as_ref().is_none_or(|MicroTime(renewed)| {
        let held_for = SignedDuration::try_from(held_for).unwrap_or(SignedDuration::MAX);
        renewed.checked_add(held_for).is_ok_and(|until| until < now)
    });
    if !ours && !expired {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration_seconds);
    // `replace` carries the resourceVersion we read: if someone else renewed or took the Lease
    // in between, the server answers 409 and we simply do not hold it this round.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(err) => Err(lease_error("update")(err)),
    }
}
