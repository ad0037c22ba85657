//! The desired state's weights (`--weights endpoints`) and node maintenance: which weight each
//! announced address gets as Services and EndpointSlices change (shared IPs, terminating
//! endpoints, clamping), and how the node's own Node object withdraws everything and announces
//! it again. The fixtures are `desired`'s own unit tests'.
use std::collections::BTreeMap;

use super::{
    tests::{NODE, endpoint, ip, ips, lb, policy, ready_here, slice},
    *,
};
use crate::{
    cluster::model::{ClusterChange, LocalEndpoint, NodeSpec},
    maintenance::Maintenance,
    weights::{self, Weights},
};

fn weighted() -> Policy {
    Policy {
        weights: Weights::Endpoints,
        ..policy(Mode::Pods)
    }
}

fn ready_at(service: &str, name: &str, pods: &[&str]) -> SliceSpec {
    let local = pods
        .iter()
        .map(|pod| LocalEndpoint {
            addresses: vec![(*pod).into()],
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    slice(service, name, true, local)
}

#[test]
fn weights_follow_local_ready_endpoints_and_report_changes() {
    let mut state = DesiredState::new(weighted());
    let out = state.apply_all([
        ClusterChange::ServiceApplied(lb("web", &["10.0.100.7", "2001:db8:100::7"])),
        ClusterChange::SliceApplied(ready_at("web", "web-v4", &["10.244.1.2", "10.244.1.3"])),
        ClusterChange::SliceApplied(ready_at("web", "web-v6", &["fd00:244::2", "fd00:244::3"])),
    ]);
    assert!(
        out.reweighted.is_empty(),
        "new addresses are assumed, not re-weighted"
    );
    // One slice per family with the same two pods: two, not four.
    assert_eq!(
        state.weights(),
        &BTreeMap::from([(ip("10.0.100.7"), 2), (ip("2001:db8:100::7"), 2)])
    );

    // A third pod, IPv4 only so far.
    let out = state.apply(ClusterChange::SliceApplied(ready_at(
        "web",
        "web-v4",
        &["10.244.1.2", "10.244.1.3", "10.244.1.4"],
    )));
    assert_eq!(out.reweighted, BTreeMap::from([(ip("10.0.100.7"), 3)]));
    assert!(
        out.addresses_changed(),
        "a weight change needs the interface reconciled"
    );

    // One pod starts terminating: not ready, no longer counted.
    let mut draining = ready_at("web", "web-v4", &["10.244.1.2", "10.244.1.3", "10.244.1.4"]);
    draining.local[2] = endpoint(false, true, true);
    let out = state.apply(ClusterChange::SliceApplied(draining));
    assert_eq!(out.reweighted, BTreeMap::from([(ip("10.0.100.7"), 2)]));

    // Withdrawn: no weight left behind.
    state.apply_all([
        ClusterChange::SliceDeleted(ready_at("web", "web-v4", &[]).key),
        ClusterChange::SliceDeleted(ready_at("web", "web-v6", &[]).key),
    ]);
    assert!(state.addresses().is_empty());
    assert!(state.weights().is_empty());
}

#[test]
fn a_shared_ip_weighs_the_distinct_pods_of_all_its_services() {
    let mut state = DesiredState::new(weighted());
    state.apply_all([
        ClusterChange::ServiceApplied(lb("dns-tcp", &["10.0.100.53"])),
        ClusterChange::ServiceApplied(lb("dns-udp", &["10.0.100.53"])),
        ClusterChange::SliceApplied(ready_at("dns-tcp", "tcp-1", &["10.244.1.2", "10.244.1.3"])),
        ClusterChange::SliceApplied(ready_at("dns-udp", "udp-1", &["10.244.1.2", "10.244.1.3"])),
    ]);
    assert_eq!(
        state.weights()[&ip("10.0.100.53")],
        2,
        "the same pods count once"
    );

    // A Service with its own pod joins the IP: it adds up.
    let out = state.apply_all([
        ClusterChange::ServiceApplied(lb("metrics", &["10.0.100.53"])),
        ClusterChange::SliceApplied(ready_at("metrics", "m-1", &["10.244.1.9"])),
    ]);
    assert_eq!(out.reweighted, BTreeMap::from([(ip("10.0.100.53"), 3)]));

    // It goes again: the other Services' pods still count, and the IP stays.
    let out = state.apply(ClusterChange::ServiceDeleted(ServiceKey::new(
        "default", "metrics",
    )));
    assert_eq!(out.reweighted, BTreeMap::from([(ip("10.0.100.53"), 2)]));
    assert!(out.forfeited.is_empty());
}

#[test]
fn weights_are_clamped_and_absent_without_the_flag() {
    let pods: Vec<String> = (0..70).map(|i| format!("10.244.2.{}", i + 2)).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let changes = || {
        [
            ClusterChange::ServiceApplied(lb("big", &["10.0.100.8"])),
            ClusterChange::SliceApplied(ready_at("big", "big-1", &pods)),
        ]
    };
    let mut state = DesiredState::new(weighted());
    state.apply_all(changes());
    assert_eq!(state.weights()[&ip("10.0.100.8")], weights::MAX_WEIGHT);

    // Announced with nothing ready anywhere (the serving fallback): the minimum.
    let mut state = DesiredState::new(weighted());
    state.apply_all([
        ClusterChange::ServiceApplied(lb("last", &["10.0.100.9"])),
        ClusterChange::SliceApplied(slice(
            "last",
            "last-1",
            false,
            vec![endpoint(false, true, true)],
        )),
    ]);
    assert_eq!(state.weights()[&ip("10.0.100.9")], weights::MIN_WEIGHT);

    let mut state = DesiredState::new(policy(Mode::Pods));
    let out = state.apply_all(changes());
    assert_eq!(state.addresses(), ips(&["10.0.100.8"]));
    assert!(state.weights().is_empty() && out.reweighted.is_empty());
}

#[test]
fn maintenance_withdraws_everything_and_ending_it_announces_again() {
    let node = |excluded, cordoned| NodeSpec {
        name: NODE.into(),
        uid: None,
        excluded,
        cordoned,
    };
    let mut state = DesiredState::new(Policy {
        withdraw_on_cordon: true,
        ..weighted()
    });
    state.apply_all([
        ClusterChange::NodeListed(Some(node(false, false))),
        ClusterChange::ServiceApplied(lb("web", &["10.0.100.7"])),
        ClusterChange::SliceApplied(ready_here("web")),
    ]);
    assert_eq!(state.addresses(), ips(&["10.0.100.7"]));

    let out = state.apply(ClusterChange::NodeApplied(Some(node(true, false))));
    assert!(out.maintenance_changed && out.addresses_changed());
    assert_eq!(state.maintenance(), Some(Maintenance::Excluded));
    assert!(state.addresses().is_empty() && state.weights().is_empty());
    // Changes while in maintenance are tracked, and still nothing is announced.
    state.apply(ClusterChange::ServiceApplied(lb("api", &["10.0.100.8"])));
    state.apply(ClusterChange::SliceApplied(ready_here("api")));
    assert!(state.addresses().is_empty());

    // Label gone but cordoned, with --withdraw-on-cordon: still withdrawn, no change.
    let out = state.apply(ClusterChange::NodeApplied(Some(node(false, true))));
    assert_eq!(state.maintenance(), Some(Maintenance::Cordoned));
    assert!(out.maintenance_changed, "the reason changed");
    assert!(state.addresses().is_empty());

    let out = state.apply(ClusterChange::NodeApplied(Some(node(false, false))));
    assert!(out.maintenance_changed && out.addresses_changed());
    assert_eq!(state.addresses(), ips(&["10.0.100.7", "10.0.100.8"]));
    assert_eq!(state.weights().len(), 2);

    // A Node deleted from under a running l3lb is no reason to withdraw.
    state.apply(ClusterChange::NodeApplied(None));
    assert_eq!(state.maintenance(), None);
}

#[test]
fn a_cordon_alone_withdraws_nothing_by_default() {
    let mut state = DesiredState::new(policy(Mode::Pods));
    let out = state.apply_all([
        ClusterChange::NodeListed(Some(NodeSpec {
            name: NODE.into(),
            uid: None,
            excluded: false,
            cordoned: true,
        })),
        ClusterChange::ServiceApplied(lb("web", &["10.0.100.7"])),
        ClusterChange::SliceApplied(ready_here("web")),
    ]);
    assert!(!out.maintenance_changed);
    assert_eq!(state.addresses(), ips(&["10.0.100.7"]));
}
