//! Kubernetes Events on Services, so `kubectl describe svc` tells an operator where a Service is
//! announced from and what is wrong with it. The controller only produces [`ServiceEvent`]s; a
//! separate task publishes them, so a slow API server never stalls the control loop.
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    cluster::model::ServiceKey,
    desired::{IpProblem, Outcome},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEvent {
    pub service: ServiceKey,
    pub warning: bool,
    /// UpperCamelCase, as Kubernetes reasons are.
    pub reason: &'static str,
    pub note: String,
}

/// The Events a recompute deserves, seen from `node`.
pub fn from_outcome(outcome: &Outcome, node: &str) -> Vec<ServiceEvent> {
    let mut events = Vec::new();
    for (service, ips) in &outcome.announced {
        events.push(ServiceEvent {
            service: service.clone(),
            warning: false,
            reason: "Announced",
            note: format!("announced {} from node {node}", join(ips)),
        });
    }
    for (service, ips) in &outcome.withdrawn {
        events.push(ServiceEvent {
            service: service.clone(),
            warning: false,
            reason: "Withdrawn",
            note: format!("withdrew {} from node {node}", join(ips)),
        });
    }
    for (service, problem) in &outcome.problems {
        let reason = match problem {
            IpProblem::Malformed(_) => "InvalidIP",
            IpProblem::OutsidePrefixes(_) => "IPOutsidePrefixes",
        };
        events.push(ServiceEvent {
            service: service.clone(),
            warning: true,
            reason,
            note: format!("{problem}; not announced (node {node})"),
        });
    }
    for (ip, services) in &outcome.shared {
        for service in services {
            events.push(ServiceEvent {
                service: service.clone(),
                warning: true,
                reason: "IPShared",
                note: format!("{ip} is claimed by {}; announced once", join(services)),
            });
        }
    }
    events
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Publishes events until the sender goes away. Failures are logged at debug: an Event is a
/// courtesy, and the same facts are in the logs and metrics.
pub async fn publish(client: Client, node: String, mut events: mpsc::Receiver<ServiceEvent>) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "l3lb".into(),
            instance: Some(node),
        },
    );
    while let Some(event) = events.recv().await {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(event.service.namespace.clone()),
            name: Some(event.service.name.clone()),
            ..Default::default()
        };
        let published = recorder
            .publish(
                &Event {
                    type_: if event.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: event.reason.into(),
                    note: Some(event.note.clone()),
                    action: "Announce".into(),
                    secondary: None,
                },
                &reference,
            )
            .await;
        if let Err(err) = published {
            debug!(service = %event.service, "publishing event {}: {err}", event.reason);
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
        let events = from_outcome(&outcome, "node-a");
        let summary: Vec<(&str, &str, bool)> = events
            .iter()
            .map(|e| (e.service.name.as_str(), e.reason, e.warning))
            .collect();
        assert_eq!(
            summary,
            [
                ("web", "Announced", false),
                ("web", "IPOutsidePrefixes", true),
                ("api", "IPShared", true),
                ("web", "IPShared", true),
            ]
        );
        assert_eq!(events[0].note, "announced 10.0.100.7 from node node-a");
    }
}
