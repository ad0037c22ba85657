//! Leader election on a coordination.k8s.io Lease: every node runs l3lb, but only one instance
//! may write Service status. The Lease's resourceVersion makes each acquire or renew a
//! compare-and-swap, so two instances can never both believe they won the same round.
//!
//! Expiry is judged as client-go judges it: by how long ago *this* node saw the holder's
//! `renewTime` change, on its own monotonic clock, never by comparing the holder's clock with
//! ours (nodes' clocks drift). Every API call is bounded by a timeout, so a hung request cannot
//! keep a stale leader flag up.
use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
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
    source: CallError,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// What this node last saw of the Lease's holder, and when (on its own clock).
#[derive(Debug, Default)]
struct Observation {
    /// Holder and `renewTime` as last read; a change of either restarts the clock.
    record: Option<(Option<String>, Option<MicroTime>)>,
    since: Option<Instant>,
}

impl Observation {
    fn observe(&mut self, holder: Option<&str>, renewed: Option<&MicroTime>, now: Instant) {
        let record = (holder.map(str::to_owned), renewed.cloned());
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.since = Some(now);
        }
    }

    /// Whether the holder has not renewed for `duration` as far as this node has seen. A Lease
    /// seen for the first time counts as fresh: its holder gets a full duration to renew.
    fn expired(&self, duration: Duration, now: Instant) -> bool {
        self.since
            .is_some_and(|since| now.saturating_duration_since(since) >= duration)
    }
}

/// Runs one Lease call with a deadline.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(CallError::Api),
        Err(_) => Err(CallError::TimedOut(timeout)),
    }
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
    let mut observed = Observation::default();
    loop {
        let started = tokio::time::Instant::now();
        let held = match try_hold(&api, &config, &mut observed).await {
            Ok(true) => {
                // Counted from before the round: the server's renewTime is no older than this.
                last_renewal = Some(started);
                true
            }
            Ok(false) => {
                last_renewal = None;
                false
            }
            Err(err) => {
                metrics.count_error(Component::Leader, err.metric_label());
                warn!("{err}");
                // Unsure whether we still hold it: keep leading only while the last confirmed
                // renewal would still hold on the server, never longer.
                last_renewal.is_some_and(|at| at.elapsed() < config.duration)
            }
        };
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
async fn try_hold(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Observation,
) -> Result<bool, Error> {
    let lease_error = |verb| {
        move |source| Error {
            verb,
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            source,
        }
    };
    // Half the retry period each: a round (get and update) takes at most one period, so the
    // leader flag is never more than a round behind what the server holds.
    let timeout = config.retry_period() / 2;
    let now = Timestamp::now();
    let duration_seconds = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = bounded(timeout, api.get_opt(&config.name))
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
        return match bounded(timeout, api.create(&PostParams::default(), &lease)).await {
            Ok(_) => Ok(true),
            Err(CallError::Api(kube::Error::Api(status))) if status.code == 409 => Ok(false),
            Err(err) => Err(lease_error("create")(err)),
        };
    };

    let spec = lease.spec.get_or_insert_with(Default::default);
    observed.observe(
        spec.holder_identity.as_deref(),
        spec.renew_time.as_ref(),
        Instant::now(),
    );
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    let held_for = spec.lease_duration_seconds.map_or(config.duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    if !ours && !vacant && !observed.expired(held_for, Instant::now()) {
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
    match bounded(
        timeout,
        api.replace(&config.name, &PostParams::default(), &lease),
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(CallError::Api(kube::Error::Api(status))) if status.code == 409 => Ok(false),
        Err(err) => Err(lease_error("update")(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> MicroTime {
        MicroTime(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn expiry_follows_when_this_node_saw_a_renewal() {
        let duration = Duration::from_secs(15);
        let start = Instant::now();
        let mut seen = Observation::default();
        assert!(!seen.expired(duration, start), "never seen: not expired");

        // The holder's clock is far behind ours: its renewTime is years old, yet it renews.
        seen.observe(Some("node-b"), Some(&at(1_000)), start);
        assert!(!seen.expired(duration, start + Duration::from_secs(14)));
        seen.observe(
            Some("node-b"),
            Some(&at(1_005)),
            start + Duration::from_secs(14),
        );
        assert!(
            !seen.expired(duration, start + Duration::from_secs(28)),
            "a renewal seen at 14 s counts from then"
        );

        // The same renewTime read again does not restart the clock: the holder stopped.
        seen.observe(
            Some("node-b"),
            Some(&at(1_005)),
            start + Duration::from_secs(20),
        );
        assert!(seen.expired(duration, start + Duration::from_secs(29)));

        // A new holder (same renewTime) is a change.
        seen.observe(
            Some("node-c"),
            Some(&at(1_005)),
            start + Duration::from_secs(29),
        );
        assert!(!seen.expired(duration, start + Duration::from_secs(30)));
    }

    #[tokio::test]
    async fn a_hung_call_times_out() {
        let hung = std::future::pending::<Result<(), kube::Error>>();
        let result = bounded(Duration::from_millis(10), hung).await;
        assert!(matches!(result, Err(CallError::TimedOut(_))));
    }
}
