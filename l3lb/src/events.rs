//! Kubernetes Events on Services, so `kubectl describe svc` tells an operator where a Service is
//! announced from and what is wrong with it. The controller only produces [`ServiceEvent`]s; a
//! separate task publishes them, so a slow API server never stalls the control loop.
//!
//! Events name their Service by uid as well as by name, because `kubectl describe` finds them by
//! uid. Facts about the Service itself (a malformed or foreign IP, an IP two Services share) are
//! the same on every node, so only the leader reports them; what happens on one node (announced,
//! withdrawn) comes from that node, at a bounded rate, so a relist of a large cluster cannot flood
//! the API server with Events. A node going into maintenance and out of it says so on its Node.
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, warn};

use crate::{
    cluster::model::{NodeSpec, ServiceKey},
    desired::{IpProblem, Outcome},
    maintenance::Maintenance,
};

/// The API's limit on `note`, in bytes.
pub const NOTE_LIMIT: usize = 1024;
/// The API's limit on `reportingInstance`, in characters.
pub const REPORTING_INSTANCE_LIMIT: usize = 128;

/// Per-node Events: a burst of this many, then [`NODE_EVENT_INTERVAL`] apart.
const NODE_EVENT_BURST: u32 = 25;
const NODE_EVENT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The object an Event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Regarding {
    Service(ServiceKey),
    /// A Node, by name: this node going into maintenance and out of it.
    Node(String),
}

impl std::fmt::Display for Regarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Regarding::Service(key) => write!(f, "service {key}"),
            Regarding::Node(name) => write!(f, "node {name}"),
        }
    }
}

impl Regarding {
    fn reference(&self, uid: String) -> ObjectReference {
        let (kind, namespace, name) = match self {
            Regarding::Service(key) => (
                "Service",
                Some(key.namespace.to_string()),
                key.name.to_string(),
            ),
            Regarding::Node(name) => ("Node", None, name.clone()),
        };
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(kind.into()),
            namespace,
            name: Some(name),
            uid: Some(uid),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEvent {
    pub regarding: Regarding,
    /// The object's `metadata.uid`; an Event without it would be invisible to
    /// `kubectl describe`, so none is published.
    pub uid: Option<String>,
    pub warning: bool,
    /// UpperCamelCase, as Kubernetes reasons are.
    pub reason: &'static str,
    pub note: String,
    /// The same on every node (a fact about the Service): only the leader publishes it.
    pub cluster_wide: bool,
}

/// The Events a recompute deserves, seen from `node`; `uid` finds a Service's uid.
pub fn from_outcome(
    outcome: &Outcome,
    node: &str,
    uid: impl Fn(&ServiceKey) -> Option<String>,
) -> Vec<ServiceEvent> {
    let event = |service: &ServiceKey, warning, reason, note, cluster_wide| ServiceEvent {
        regarding: Regarding::Service(service.clone()),
        uid: uid(service),
        warning,
        reason,
        note,
        cluster_wide,
    };
    let mut events = Vec::new();
    for (service, ips) in &outcome.announced {
        let note = format!("announced {} from node {node}", join(ips));
        events.push(event(service, false, "Announced", note, false));
    }
    for (service, ips) in &outcome.withdrawn {
        let note = format!("withdrew {} from node {node}", join(ips));
        events.push(event(service, false, "Withdrawn", note, false));
    }
    for (service, problem) in &outcome.problems {
        let reason = match problem {
            IpProblem::Malformed(_) => "InvalidIP",
            IpProblem::OutsidePrefixes(_) => "IPOutsidePrefixes",
            IpProblem::TooMany => "TooManyIPs",
        };
        events.push(event(
            service,
            true,
            reason,
            format!("{problem}; not announced"),
            true,
        ));
    }
    for (ip, services) in &outcome.shared {
        for service in services {
            let note = format!("{ip} is claimed by {}; announced once", join(services));
            events.push(event(service, true, "IPShared", note, true));
        }
    }
    events
}

/// The Event on `node` when it goes into maintenance (`now` is why) or comes out of it.
pub fn maintenance(node: &NodeSpec, now: Option<Maintenance>) -> ServiceEvent {
    let (reason, note) = match now {
        Some(why) => (
            "LoadBalancingWithdrawn",
            format!("l3lb withdrew every service IP from this node: {why}"),
        ),
        None => (
            "LoadBalancingRestored",
            "l3lb announces this node's service IPs again".to_owned(),
        ),
    };
    ServiceEvent {
        regarding: Regarding::Node(node.name.clone()),
        uid: node.uid.clone(),
        warning: false,
        reason,
        note,
        cluster_wide: false,
    }
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Cuts `text` to at most `limit` bytes, on a character boundary.
fn truncate_bytes(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A token bucket: `burst` at once, then one per `interval`.
struct RateLimit {
    tokens: u32,
    burst: u32,
    interval: std::time::Duration,
    last_refill: Instant,
}

impl RateLimit {
    fn new(burst: u32, interval: std::time::Duration, now: Instant) -> Self {
        RateLimit {
            tokens: burst,
            burst,
            interval,
            last_refill: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.last_refill).as_nanos()
            / self.interval.as_nanos().max(1);
        if earned > 0 {
            self.tokens = self.burst.min(
                self.tokens
                    .saturating_add(u32::try_from(earned).unwrap_or(u32::MAX)),
            );
            self.last_refill += self.interval * u32::try_from(earned).unwrap_or(u32::MAX);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Publishes events until the sender goes away. `leader` says whether this node publishes the
/// cluster-wide ones (`None`: no election runs, so every node does). A rejected Event is logged
/// at warn: it means l3lb and the API server disagree about what an Event is.
pub async fn publish(
    client: Client,
    node: String,
    mut events: mpsc::Receiver<ServiceEvent>,
    leader: Option<watch::Receiver<bool>>,
) {
    let mut instance = node;
    instance.truncate(
        instance
            .char_indices()
            .nth(REPORTING_INSTANCE_LIMIT)
            .map_or(instance.len(), |(at, _)| at),
    );
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "l3lb".into(),
            instance: Some(instance),
        },
    );
    let mut node_rate = RateLimit::new(NODE_EVENT_BURST, NODE_EVENT_INTERVAL, Instant::now());
    while let Some(event) = events.recv().await {
        let Some(uid) = event.uid.clone() else {
            debug!(
                "{}: no uid (deleted?): not publishing {}",
                event.regarding, event.reason
            );
            continue;
        };
        if event.cluster_wide {
            if leader.as_ref().is_some_and(|leader| !*leader.borrow()) {
                continue;
            }
        } else if !node_rate.allow(Instant::now()) {
            debug!(
                "{}: event rate limit: not publishing {}",
                event.regarding, event.reason
            );
            continue;
        }
        let reference = event.regarding.reference(uid);
        let published = recorder
            .publish(
                &Event {
                    type_: if event.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: event.reason.into(),
                    note: Some(truncate_bytes(&event.note, NOTE_LIMIT).to_owned()),
                    action: "Announce".into(),
                    secondary: None,
                },
                &reference,
            )
            .await;
        if let Err(err) = published {
            warn!(
                "{}: publishing event {}: {err}",
                event.regarding, event.reason
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn outcome_becomes_events() {
        let web = ServiceKey::new("default", "web");
        let api = ServiceKey::new("default", "api");
        let ip = "10.0.100.7".parse().unwrap();
        let outcome = Outcome {
            announced: vec![(web.clone(), BTreeSet::from([ip]))],
            problems: vec![(
                web.clone(),
                IpProblem::OutsidePrefixes("192.0.2.1".parse().unwrap()),
            )],
            shared: vec![(ip, vec![api.clone(), web.clone()])],
            ..Outcome::default()
        };
        let events = from_outcome(&outcome, "node-a", |key| Some(format!("uid-{}", key.name)));
        let summary: Vec<(&str, &str, bool, bool)> = events
            .iter()
            .map(|e| {
                let Regarding::Service(service) = &e.regarding else {
                    panic!("a Service event: {e:?}")
                };
                (&*service.name, e.reason, e.warning, e.cluster_wide)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("web", "Announced", false, false),
                ("web", "IPOutsidePrefixes", true, true),
                ("api", "IPShared", true, true),
                ("web", "IPShared", true, true),
            ]
        );
        assert_eq!(events[0].note, "announced 10.0.100.7 from node node-a");
        assert_eq!(events[0].uid.as_deref(), Some("uid-web"));
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_char_boundary() {
        let long = "é".repeat(600);
        let cut = truncate_bytes(&long, NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT && cut.len() >= NOTE_LIMIT - 1);
        assert!(long.starts_with(cut));
        assert_eq!(truncate_bytes("short", NOTE_LIMIT), "short");
    }

    #[test]
    fn node_events_are_rate_limited() {
        let start = Instant::now();
        let mut rate = RateLimit::new(3, std::time::Duration::from_secs(1), start);
        assert!((0..3).all(|_| rate.allow(start)), "the burst passes");
        assert!(!rate.allow(start), "then the bucket is empty");
        let later = start + std::time::Duration::from_millis(2500);
        assert!(rate.allow(later) && rate.allow(later), "two earned");
        assert!(!rate.allow(later));
        assert!(rate.allow(start + std::time::Duration::from_secs(60)));
    }
}
