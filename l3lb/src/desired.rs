//! Desired state: which service IPs this node should announce, and why.
//!
//! Everything here is pure: no I/O, no clock. [`decide`] judges one Service from its spec and
//! slices; [`DesiredState`] keeps the cluster view and recomputes only the Services a change
//! touches, tracking which Services claim each IP so that two Services sharing an IP keep it
//! announced while either still needs it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;

use crate::{
    cluster::{
        limits::MAX_IPS_PER_SERVICE,
        model::{
            ClusterChange, IngressOwner, NodeSpec, ServiceKey, ServiceSpec, SliceKey, SliceSpec,
        },
    },
    maintenance::{Maintenance, maintenance},
    weights::{self, Weights},
};

pub use crate::cluster::model::DEFAULT_LOAD_BALANCER_CLASS;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Announce a service IP only where a ready endpoint of the Service runs.
    Pods,
    /// Announce every managed service IP on this node (routers that run kube-proxy for all).
    Gateway,
}

/// Whether IPs found in `status.loadBalancer.ingress` count as requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusIps {
    /// Honour the IPs another controller published (its field manager owns the field in
    /// `managedFields`); never those l3lb published itself, nor any whose writer is unknown.
    #[default]
    External,
    /// Never read status: only annotations and `spec.loadBalancerIP` request IPs.
    Ignore,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub node: String,
    pub mode: Mode,
    pub prefixes: Vec<IpNet>,
    pub load_balancer_class: String,
    /// Also manage `spec.externalIPs` of any Service (the kube-gw style).
    pub external_ips: bool,
    pub status_ips: StatusIps,
    /// Whether announced addresses carry a weight (see [`crate::weights`]).
    pub weights: Weights,
    /// A cordoned node withdraws everything, like one labelled for exclusion (see
    /// [`crate::maintenance`]).
    pub withdraw_on_cordon: bool,
}

/// Something wrong with one IP a Service asks for; the IP is not announced.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IpProblem {
    Malformed(String),
    OutsidePrefixes(IpAddr),
    /// More IPs than [`MAX_IPS_PER_SERVICE`]: the ones after the first are ignored. The limit,
    /// not the count, is the problem, so a count that keeps changing reports once.
    TooMany,
}

impl fmt::Display for IpProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpProblem::Malformed(raw) => write!(f, "{raw:?} is not an IP address"),
            IpProblem::OutsidePrefixes(ip) => write!(f, "{ip} is outside the managed prefixes"),
            IpProblem::TooMany => write!(
                f,
                "IPs beyond the first {MAX_IPS_PER_SERVICE} it asks for (the per-Service limit)"
            ),
        }
    }
}

/// Why a Service is or is not announced here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Its `loadBalancerClass` belongs to another implementation.
    OtherClass,
    /// It asks for no IP that l3lb manages.
    NoManagedIp,
    /// This many ready endpoints run on this node.
    LocalReady(usize),
    /// No endpoint is ready anywhere, but one on this node still serves (kube-proxy's rule).
    ServingFallback,
    /// No ready endpoint runs here.
    NoLocalEndpoint,
    /// `--mode gateway`: announced regardless of endpoints.
    Gateway,
}

impl Reason {
    pub fn announces(self) -> bool {
        matches!(
            self,
            Reason::LocalReady(_) | Reason::ServingFallback | Reason::Gateway
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::OtherClass => {
                f.write_str("loadBalancerClass belongs to another implementation")
            }
            Reason::NoManagedIp => f.write_str("asks for no managed IP"),
            Reason::LocalReady(n) => write!(f, "{n} ready endpoint(s) on this node"),
            Reason::ServingFallback => {
                f.write_str("no endpoint ready anywhere; a local one is still serving")
            }
            Reason::NoLocalEndpoint => f.write_str("no ready endpoint on this node"),
            Reason::Gateway => f.write_str("gateway mode"),
        }
    }
}

/// The verdict on one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Every valid IP inside the managed prefixes that the Service asks for.
    pub ips: BTreeSet<IpAddr>,
    pub reason: Reason,
    pub problems: BTreeSet<IpProblem>,
}

impl Decision {
    /// The IPs this node announces for the Service.
    pub fn announced(&self) -> impl Iterator<Item = &IpAddr> {
        self.ips.iter().filter(|_| self.reason.announces())
    }
}

/// Does l3lb manage this Service at all (class check)?
pub fn manages(policy: &Policy, service: &ServiceSpec) -> bool {
    service
        .load_balancer_class
        .as_deref()
        .is_none_or(|class| class == policy.load_balancer_class)
}

/// The IPs a Service asks l3lb for, raw, in the order they are written. Status counts only when
/// another controller wrote it: an address l3lb published itself would otherwise keep itself
/// announced after its request is gone.
fn requested_raw<'a>(policy: &Policy, service: &'a ServiceSpec) -> impl Iterator<Item = &'a str> {
    let external_status =
        policy.status_ips == StatusIps::External && service.ingress_owner == IngressOwner::Other;
    let load_balancer = service.is_load_balancer.then(|| {
        requested_by_spec(service).chain(
            service
                .ingress_ips
                .iter()
                .filter(move |_| external_status)
                .map(String::as_str),
        )
    });
    let external = policy.external_ips.then(|| service.external_ips.iter());
    load_balancer
        .into_iter()
        .flatten()
        .chain(external.into_iter().flatten().map(String::as_str))
}

/// What a LoadBalancer Service's own object asks for: the annotations (the user's and an
/// allocator's) and the deprecated `spec.loadBalancerIP`.
fn requested_by_spec(service: &ServiceSpec) -> impl Iterator<Item = &str> {
    service
        .annotation_ips
        .iter()
        .chain(service.allocated_ips.iter())
        .chain(service.load_balancer_ip.iter())
        .map(String::as_str)
}

/// Parses and checks raw IPs against the prefixes: the first [`MAX_IPS_PER_SERVICE`] of them,
/// in the order they are written, so every node honours the same ones.
fn validate<'a>(
    policy: &Policy,
    service: &ServiceSpec,
    raw: impl Iterator<Item = &'a str>,
) -> (BTreeSet<IpAddr>, BTreeSet<IpProblem>) {
    let mut ips = BTreeSet::new();
    let mut problems = BTreeSet::new();
    let mut raw = raw.peekable();
    for raw in raw.by_ref().take(MAX_IPS_PER_SERVICE) {
        match raw.trim().parse::<IpAddr>() {
            Ok(ip) if policy.prefixes.iter().any(|prefix| prefix.contains(&ip)) => {
                ips.insert(ip);
            }
            Ok(ip) => {
                problems.insert(IpProblem::OutsidePrefixes(ip));
            }
            Err(_) => {
                problems.insert(IpProblem::Malformed(raw.to_owned()));
            }
        }
    }
    if service.ips_over_limit || raw.peek().is_some() {
        problems.insert(IpProblem::TooMany);
    }
    (ips, problems)
}

/// What the status writer should make `status.loadBalancer.ingress` say: the IPs a managed
/// LoadBalancer Service requests itself inside the prefixes; nothing (`Some` of an empty set) when
/// it requests none any more but the status is still the one l3lb wrote; `None` to leave the
/// status alone (another controller's, or nothing to say).
pub fn ingress_to_publish(policy: &Policy, service: &ServiceSpec) -> Option<BTreeSet<IpAddr>> {
    let ips = if service.is_load_balancer && manages(policy, service) {
        validate(policy, service, requested_by_spec(service)).0
    } else {
        BTreeSet::new()
    };
    if !ips.is_empty() {
        return Some(ips);
    }
    (service.ingress_owner == IngressOwner::L3lb && !service.ingress_ips.is_empty())
        .then(BTreeSet::new)
}

/// Judges one Service from its spec and the slices that belong to it.
pub fn decide<'a>(
    policy: &Policy,
    service: &ServiceSpec,
    slices: impl IntoIterator<Item = &'a SliceSpec>,
) -> Decision {
    if !manages(policy, service) {
        return Decision {
            ips: BTreeSet::new(),
            reason: Reason::OtherClass,
            problems: BTreeSet::new(),
        };
    }
    let (ips, problems) = validate(policy, service, requested_raw(policy, service));
    let reason = if ips.is_empty() {
        Reason::NoManagedIp
    } else if policy.mode == Mode::Gateway {
        Reason::Gateway
    } else {
        let mut any_ready = false;
        let mut local_ready = 0;
        let mut local_serving = false;
        for slice in slices {
            any_ready |= slice.any_ready;
            local_ready += slice.local.iter().filter(|e| e.ready).count();
            local_serving |= slice.local.iter().any(|e| e.serving);
        }
        if local_ready > 0 {
            Reason::LocalReady(local_ready)
        } else if !any_ready && local_serving {
            Reason::ServingFallback
        } else {
            Reason::NoLocalEndpoint
        }
    };
    Decision {
        ips,
        reason,
        problems,
    }
}

/// What a change did, for logs and Kubernetes Events.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// IPs that became wanted on this node, each with the Service that now claims it.
    pub assumed: BTreeMap<IpAddr, ServiceKey>,
    /// IPs no Service wants here any more.
    pub forfeited: BTreeSet<IpAddr>,
    /// Services whose announcement from this node started (with their IPs).
    pub announced: Vec<(ServiceKey, BTreeSet<IpAddr>)>,
    /// Services whose announcement from this node stopped (with their IPs).
    pub withdrawn: Vec<(ServiceKey, BTreeSet<IpAddr>)>,
    /// Newly seen problems per Service (reported once, not on every event).
    pub problems: Vec<(ServiceKey, IpProblem)>,
    /// IPs that became requested by more than one Service (anywhere in the cluster, whether or
    /// not this node announces them: the same on every node).
    pub shared: Vec<(IpAddr, Vec<ServiceKey>)>,
    /// Services whose decision changed in any way.
    pub changed_services: BTreeSet<ServiceKey>,
    /// Services whose spec or slices changed (a superset of `changed_services`): what the
    /// status writer re-examines.
    pub touched: BTreeSet<ServiceKey>,
    /// Addresses announced before and after whose weight changed, with the new weight (only
    /// with `--weights endpoints`).
    pub reweighted: BTreeMap<IpAddr, u32>,
    /// The node went into maintenance or came out of it: everything is withdrawn or announced
    /// again ([`DesiredState::maintenance`] says which).
    pub maintenance_changed: bool,
}

impl Outcome {
    /// Whether the interface needs reconciling: an address to add or remove, or to re-weight.
    pub fn addresses_changed(&self) -> bool {
        !self.assumed.is_empty()
            || !self.forfeited.is_empty()
            || !self.reweighted.is_empty()
            || self.maintenance_changed
    }
}

/// The cluster as this node sees it, and what it should announce.
pub struct DesiredState {
    policy: Policy,
    services: HashMap<ServiceKey, ServiceSpec>,
    slices: HashMap<SliceKey, SliceSpec>,
    slices_of: HashMap<ServiceKey, KeySet<SliceKey>>,
    decisions: HashMap<ServiceKey, Decision>,
    /// Each announced IP and the Services claiming it.
    claims: BTreeMap<IpAddr, KeySet<ServiceKey>>,
    /// Each valid requested IP and the Services requesting it, announced here or not.
    requests: BTreeMap<IpAddr, KeySet<ServiceKey>>,
    /// The weight of each announced IP (the keys of `claims`), with `--weights endpoints` only.
    weights: BTreeMap<IpAddr, u32>,
    /// This node's Node object, where the source has one.
    node: Option<NodeSpec>,
    /// Set while the node is in maintenance: then nothing is announced, though `claims` keeps
    /// what would be, to announce it again at once when maintenance ends.
    maintenance: Option<Maintenance>,
}

impl DesiredState {
    pub fn new(policy: Policy) -> Self {
        DesiredState {
            policy,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            decisions: HashMap::new(),
            claims: BTreeMap::new(),
            requests: BTreeMap::new(),
            weights: BTreeMap::new(),
            node: None,
            maintenance: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The IPs this node should have on its interface: none in maintenance.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        if self.maintenance.is_some() {
            return BTreeSet::new();
        }
        self.claims.keys().copied().collect()
    }

    /// Why this node announces nothing at all, if it is in maintenance.
    pub fn maintenance(&self) -> Option<Maintenance> {
        self.maintenance
    }

    /// This node's Node object, as last seen.
    pub fn node(&self) -> Option<&NodeSpec> {
        self.node.as_ref()
    }

    /// The weight of each address this node should have, with `--weights endpoints`; empty
    /// with `--weights none`.
    pub fn weights(&self) -> &BTreeMap<IpAddr, u32> {
        static NONE: BTreeMap<IpAddr, u32> = BTreeMap::new();
        if self.maintenance.is_some() {
            return &NONE;
        }
        &self.weights
    }

    /// IPs requested by more than one Service, with the Services.
    pub fn shared(&self) -> impl Iterator<Item = (&IpAddr, &KeySet<ServiceKey>)> {
        self.requests
            .iter()
            .filter(|(_, services)| services.len() > 1)
    }

    /// The Services claiming `ip` here.
    pub fn claimants(&self, ip: &IpAddr) -> Option<&KeySet<ServiceKey>> {
        self.claims.get(ip)
    }

    pub fn decision(&self, service: &ServiceKey) -> Option<&Decision> {
        self.decisions.get(service)
    }

    pub fn service(&self, service: &ServiceKey) -> Option<&ServiceSpec> {
        self.services.get(service)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.services.values()
    }

    /// The slices that belong to `service`.
    pub fn slices_of(&self, service: &ServiceKey) -> impl Iterator<Item = &SliceSpec> {
        self.slices_of
            .get(service)
            .into_iter()
            .flat_map(KeySet::iter)
            .filter_map(|key| self.slices.get(key))
    }

    /// Applies one change and recomputes the Services it touches.
    pub fn apply(&mut self, change: ClusterChange) -> Outcome {
        let mut touched = BTreeSet::new();
        self.absorb(change, &mut touched);
        self.recompute(touched)
    }

    /// Applies a burst of changes, recomputing each touched Service once.
    pub fn apply_all(&mut self, changes: impl IntoIterator<Item = ClusterChange>) -> Outcome {
        let mut touched = BTreeSet::new();
        for change in changes {
            self.absorb(change, &mut touched);
        }
        self.recompute(touched)
    }

    fn absorb(&mut self, change: ClusterChange, touched: &mut BTreeSet<ServiceKey>) {
        match change {
            ClusterChange::ServiceApplied(spec) => self.put_service(spec, touched),
            ClusterChange::ServiceDeleted(key) => {
                if self.services.remove(&key).is_some() {
                    touched.insert(key);
                }
            }
            ClusterChange::ServicesListed(specs) => {
                let listed: BTreeSet<ServiceKey> = specs.iter().map(|s| s.key.clone()).collect();
                let gone: Vec<ServiceKey> = self
                    .services
                    .keys()
                    .filter(|key| !listed.contains(*key))
                    .cloned()
                    .collect();
                for key in gone {
                    self.services.remove(&key);
                    touched.insert(key);
                }
                for spec in specs {
                    self.put_service(spec, touched);
                }
            }
            ClusterChange::NodeApplied(node) | ClusterChange::NodeListed(node) => self.node = node,
            ClusterChange::SliceApplied(spec) => self.put_slice(spec, touched),
            ClusterChange::SliceDeleted(key) => self.remove_slice(&key, touched),
            ClusterChange::SlicesListed(specs) => {
                let listed: BTreeSet<SliceKey> = specs.iter().map(|s| s.key.clone()).collect();
                let gone: Vec<SliceKey> = self
                    .slices
                    .keys()
                    .filter(|key| !listed.contains(*key))
                    .cloned()
                    .collect();
                for key in gone {
                    self.remove_slice(&key, touched);
                }
                for spec in specs {
                    self.put_slice(spec, touched);
                }
            }
        }
    }

    fn put_service(&mut self, spec: ServiceSpec, touched: &mut BTreeSet<ServiceKey>) {
        if self.services.get(&spec.key) != Some(&spec) {
            touched.insert(spec.key.clone());
            self.services.insert(spec.key.clone(), spec);
        }
    }

    fn put_slice(&mut self, spec: SliceSpec, touched: &mut BTreeSet<ServiceKey>) {
        let previous = self.slices.get(&spec.key);
        if previous == Some(&spec) {
            return;
        }
        // A slice relabelled to another Service touches both.
        if let Some(old_service) = previous.and_then(|p| p.service.clone())
            && Some(&old_service) != spec.service.as_ref()
        {
            self.unlink(&old_service, &spec.key);
            touched.insert(old_service);
        }
        if let Some(service) = &spec.service {
            self.slices_of
                .entry(service.clone())
                .or_default()
                .insert(spec.key.clone());
            touched.insert(service.clone());
        }
        self.slices.insert(spec.key.clone(), spec);
    }

    fn remove_slice(&mut self, key: &SliceKey, touched: &mut BTreeSet<ServiceKey>) {
        if let Some(service) = self.slices.remove(key).and_then(|s| s.service) {
            self.unlink(&service, key);
            touched.insert(service);
        }
    }

    fn unlink(&mut self, service: &ServiceKey, slice: &SliceKey) {
        if let Some(set) = self.slices_of.get_mut(service) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_of.remove(service);
            }
        }
    }

    fn recompute(&mut self, touched: BTreeSet<ServiceKey>) -> Outcome {
        let mut outcome = Outcome::default();
        let before = self.maintenance;
        self.maintenance = maintenance(self.node.as_ref(), self.policy.withdraw_on_cordon);
        outcome.maintenance_changed = self.maintenance != before;
        // Announced IPs of touched Services, before and after: their weights may have changed
        // even when a decision did not (a pod replaced by one of the other family).
        let mut reweigh = BTreeSet::new();
        for key in &touched {
            let key = key.clone();
            let new = self
                .services
                .get(&key)
                .map(|spec| decide(&self.policy, spec, self.slices_of(&key)));
            let old = match &new {
                Some(decision) => self.decisions.insert(key.clone(), decision.clone()),
                None => self.decisions.remove(&key),
            };
            let new_ips: BTreeSet<IpAddr> =
                new.iter().flat_map(|d| d.announced()).copied().collect();
            reweigh.extend(new_ips.iter().copied());
            if old == new {
                continue;
            }
            outcome.changed_services.insert(key.clone());
            let old_ips: BTreeSet<IpAddr> =
                old.iter().flat_map(|d| d.announced()).copied().collect();
            reweigh.extend(old_ips.iter().copied());

            for ip in old_ips.difference(&new_ips) {
                if let Some(claimants) = self.claims.get_mut(ip) {
                    claimants.remove(&key);
                    if claimants.is_empty() {
                        self.claims.remove(ip);
                        // Assumed and forfeited within one burst is no change at all.
                        if outcome.assumed.remove(ip).is_none() {
                            outcome.forfeited.insert(*ip);
                        }
                    }
                }
            }
            for ip in new_ips.difference(&old_ips) {
                let claimants = self.claims.entry(*ip).or_default();
                claimants.insert(key.clone());
                match claimants.len() {
                    // Forfeited (by another claimant) and assumed within one burst: no change.
                    1 if outcome.forfeited.remove(ip) => {}
                    1 => {
                        outcome.assumed.insert(*ip, key.clone());
                    }
                    _ => {}
                }
            }
            let old_requested = old.as_ref().map(|d| d.ips.clone()).unwrap_or_default();
            let new_requested = new.as_ref().map(|d| d.ips.clone()).unwrap_or_default();
            for ip in old_requested.difference(&new_requested) {
                if let Some(requesters) = self.requests.get_mut(ip) {
                    requesters.remove(&key);
                    if requesters.is_empty() {
                        self.requests.remove(ip);
                    }
                }
            }
            for ip in new_requested.difference(&old_requested) {
                let requesters = self.requests.entry(*ip).or_default();
                requesters.insert(key.clone());
                if requesters.len() == 2 {
                    outcome
                        .shared
                        .push((*ip, requesters.iter().cloned().collect()));
                }
            }
            if new_ips.is_empty() && !old_ips.is_empty() {
                outcome.withdrawn.push((key.clone(), old_ips.clone()));
            } else if !new_ips.is_empty() && old_ips != new_ips {
                outcome.announced.push((key.clone(), new_ips.clone()));
            }

            let old_problems = old.map(|d| d.problems).unwrap_or_default();
            if let Some(new) = &new {
                for problem in new.problems.difference(&old_problems) {
                    outcome.problems.push((key.clone(), problem.clone()));
                }
            }
        }
        self.reweigh(reweigh, &mut outcome);
        outcome.touched = touched;
        outcome
    }

    /// Recomputes the weights of `ips` from the local endpoints of every Service claiming each.
    fn reweigh(&mut self, ips: BTreeSet<IpAddr>, outcome: &mut Outcome) {
        if self.policy.weights == Weights::None {
            return;
        }
        for ip in ips {
            let Some(claimants) = self.claims.get(&ip) else {
                self.weights.remove(&ip);
                continue;
            };
            let endpoints = claimants
                .iter()
                .flat_map(|service| self.slices_of(service))
                .flat_map(|slice| slice.local.iter());
            let weight = weights::weight(ip, endpoints);
            let old = self.weights.insert(ip, weight);
            if old.is_some_and(|old| old != weight) && !outcome.assumed.contains_key(&ip) {
                outcome.reweighted.insert(ip, weight);
            }
        }
    }
}

/// A small ordered set: a sorted `Vec`. Most Services have one slice and most IPs one Service,
/// and a `BTreeSet` spends a whole node (over 500 bytes for these keys) on a single element;
/// this spends the element. Iterates in order, as a `BTreeSet` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySet<T>(Vec<T>);

impl<T> Default for KeySet<T> {
    fn default() -> Self {
        KeySet(Vec::new())
    }
}

impl<T: Ord> KeySet<T> {
    /// Adds `value`; `false` when it was there already.
    pub fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                // Exact room while small (the common case is one or two), amortised beyond.
                if self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(at, value);
                true
            }
        }
    }

    /// Removes `value`; `false` when it was not there.
    pub fn remove(&mut self, value: &T) -> bool {
        match self.0.binary_search(value) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }
}

impl<T> KeySet<T> {
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a, T> IntoIterator for &'a KeySet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
#[path = "desired_weights_tests.rs"]
mod weights_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_is_an_ordered_set() {
        let mut set = KeySet::default();
        assert!(set.is_empty());
        for name in ["c", "a", "b"] {
            assert!(set.insert(ServiceKey::new("default", name)));
        }
        assert!(
            !set.insert(ServiceKey::new("default", "a")),
            "already there"
        );
        let names: Vec<&str> = set.iter().map(|key| &*key.name).collect();
        assert_eq!(names, ["a", "b", "c"], "in order, as a BTreeSet iterates");
        assert!(set.remove(&ServiceKey::new("default", "b")));
        assert!(!set.remove(&ServiceKey::new("default", "b")));
        assert_eq!(set.len(), 2);
    }
    use crate::cluster::model::LocalEndpoint;

    pub(super) const NODE: &str = "node-a";

    pub(super) fn policy(mode: Mode) -> Policy {
        Policy {
            node: NODE.into(),
            mode,
            prefixes: vec![
                "10.0.100.0/24".parse().unwrap(),
                "2001:db8:100::/64".parse().unwrap(),
            ],
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.into(),
            external_ips: true,
            status_ips: StatusIps::External,
            weights: Weights::None,
            withdraw_on_cordon: false,
        }
    }

    pub(super) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub(super) fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    pub(super) fn lb(name: &str, annotation: &[&str]) -> ServiceSpec {
        ServiceSpec {
            key: ServiceKey::new("default", name),
            is_load_balancer: true,
            annotation_ips: annotation.iter().map(|s| s.to_string()).collect(),
            ..ServiceSpec::default()
        }
    }

    pub(super) fn endpoint(ready: bool, serving: bool, terminating: bool) -> LocalEndpoint {
        LocalEndpoint {
            addresses: vec!["10.244.0.5".into()],
            ready,
            serving,
            terminating,
        }
    }

    pub(super) fn slice(
        service: &str,
        name: &str,
        any_ready: bool,
        local: Vec<LocalEndpoint>,
    ) -> SliceSpec {
        SliceSpec {
            key: SliceKey {
                namespace: "default".into(),
                name: name.into(),
            },
            service: Some(ServiceKey::new("default", service)),
            any_ready,
            local,
            ports: vec![],
        }
    }

    pub(super) fn ready_here(service: &str) -> SliceSpec {
        slice(
            service,
            &format!("{service}-abc"),
            true,
            vec![endpoint(true, true, false)],
        )
    }

    #[test]
    fn announces_only_with_a_local_ready_endpoint() {
        let p = policy(Mode::Pods);
        let svc = lb("web", &["10.0.100.7"]);
        let here = ready_here("web");
        assert_eq!(decide(&p, &svc, [&here]).reason, Reason::LocalReady(1));

        let elsewhere = slice("web", "web-abc", true, vec![]);
        let d = decide(&p, &svc, [&elsewhere]);
        assert_eq!(d.reason, Reason::NoLocalEndpoint);
        assert_eq!(d.announced().count(), 0);
        assert_eq!(
            d.ips,
            ips(&["10.0.100.7"]),
            "still knows which IPs it would manage"
        );
    }

    #[test]
    fn gateway_mode_announces_without_endpoints() {
        let d = decide(&policy(Mode::Gateway), &lb("web", &["10.0.100.7"]), []);
        assert_eq!(d.reason, Reason::Gateway);
        assert_eq!(
            d.announced().copied().collect::<BTreeSet<_>>(),
            ips(&["10.0.100.7"])
        );
    }

    #[test]
    fn only_the_first_ips_count_and_the_excess_is_one_problem() {
        let p = policy(Mode::Gateway);
        let many: Vec<String> = (0..200).map(|i| format!("10.0.100.{i}")).collect();
        let mut svc = ServiceSpec {
            external_ips: many,
            ..lb("greedy", &["2001:db8:100::1"])
        };
        let d = decide(&p, &svc, []);
        assert_eq!(d.ips.len(), MAX_IPS_PER_SERVICE);
        assert!(
            d.ips.contains(&ip("2001:db8:100::1")),
            "the annotation comes first"
        );
        assert!(
            !d.ips.contains(&ip("10.0.100.63")),
            "the 65th IP is ignored"
        );
        assert_eq!(d.problems, BTreeSet::from([IpProblem::TooMany]));

        // Already cut on arrival: still reported.
        svc.external_ips.truncate(3);
        svc.ips_over_limit = true;
        assert!(decide(&p, &svc, []).problems.contains(&IpProblem::TooMany));

        // Reported once, however the count changes.
        let mut state = DesiredState::new(p);
        let first = state.apply(ClusterChange::ServiceApplied(svc.clone()));
        assert_eq!(first.problems, [(svc.key.clone(), IpProblem::TooMany)]);
        svc.external_ips.push("10.0.100.99".into());
        let again = state.apply(ClusterChange::ServiceApplied(svc));
        assert!(again.problems.is_empty());
    }

    #[test]
    fn every_ip_source_counts_and_externalips_follow_the_flag() {
        let mut p = policy(Mode::Gateway);
        let svc = ServiceSpec {
            key: ServiceKey::new("default", "all"),
            is_load_balancer: true,
            annotation_ips: vec!["10.0.100.1".into(), "2001:db8:100::1".into()],
            allocated_ips: vec!["10.0.100.5".into()],
            load_balancer_ip: Some("10.0.100.2".into()),
            ingress_ips: vec!["10.0.100.3".into()],
            ingress_owner: IngressOwner::Other,
            external_ips: vec!["10.0.100.4".into()],
            ..ServiceSpec::default()
        };
        assert_eq!(
            decide(&p, &svc, []).ips,
            ips(&[
                "10.0.100.1",
                "10.0.100.2",
                "10.0.100.3",
                "10.0.100.4",
                "10.0.100.5",
                "2001:db8:100::1"
            ])
        );
        p.external_ips = false;
        assert!(!decide(&p, &svc, []).ips.contains(&ip("10.0.100.4")));

        // A ClusterIP Service is managed through externalIPs only, and only with the flag.
        let cluster_ip = ServiceSpec {
            key: ServiceKey::new("default", "gw"),
            is_load_balancer: false,
            load_balancer_ip: Some("10.0.100.9".into()),
            external_ips: vec!["10.0.100.30".into()],
            ..ServiceSpec::default()
        };
        assert_eq!(decide(&p, &cluster_ip, []).reason, Reason::NoManagedIp);
        p.external_ips = true;
        assert_eq!(decide(&p, &cluster_ip, []).ips, ips(&["10.0.100.30"]));
    }

    #[test]
    fn other_load_balancer_classes_are_ignored() {
        let p = policy(Mode::Gateway);
        let mut svc = lb("web", &["10.0.100.7"]);
        svc.load_balancer_class = Some("metallb.io/metallb".into());
        assert_eq!(decide(&p, &svc, []).reason, Reason::OtherClass);
        svc.load_balancer_class = Some(DEFAULT_LOAD_BALANCER_CLASS.into());
        assert_eq!(decide(&p, &svc, []).reason, Reason::Gateway);
    }

    #[test]
    fn bad_and_foreign_ips_are_problems_never_announced() {
        let p = policy(Mode::Gateway);
        let svc = lb(
            "web",
            &[
                "10.0.100.7",
                "10.0.100.300",
                "192.0.2.1",
                " 2001:db8:100::7 ",
                "2001:db8:999::1",
            ],
        );
        let d = decide(&p, &svc, []);
        assert_eq!(d.ips, ips(&["10.0.100.7", "2001:db8:100::7"]));
        assert_eq!(
            d.problems,
            [
                IpProblem::Malformed("10.0.100.300".into()),
                IpProblem::OutsidePrefixes(ip("192.0.2.1")),
                IpProblem::OutsidePrefixes(ip("2001:db8:999::1")),
            ]
            .into_iter()
            .collect()
        );
    }

    #[test]
    fn terminating_endpoints_withdraw_unless_nothing_is_ready_anywhere() {
        let p = policy(Mode::Pods);
        let svc = lb("web", &["10.0.100.7"]);
        // Local endpoint terminating (not ready, still serving) while another node is ready.
        let draining = slice("web", "web-abc", true, vec![endpoint(false, true, true)]);
        assert_eq!(
            decide(&p, &svc, [&draining]).reason,
            Reason::NoLocalEndpoint
        );
        // Nothing ready anywhere: keep announcing where endpoints still serve.
        let last = slice("web", "web-abc", false, vec![endpoint(false, true, true)]);
        assert_eq!(decide(&p, &svc, [&last]).reason, Reason::ServingFallback);
        // Not serving either: withdraw.
        let dead = slice("web", "web-abc", false, vec![endpoint(false, false, true)]);
        assert_eq!(decide(&p, &svc, [&dead]).reason, Reason::NoLocalEndpoint);
    }

    #[test]
    fn slices_of_a_service_add_up() {
        let p = policy(Mode::Pods);
        let svc = lb("web", &["10.0.100.7"]);
        let a = slice("web", "web-a", true, vec![]);
        let b = slice(
            "web",
            "web-b",
            true,
            vec![endpoint(true, true, false), endpoint(true, true, false)],
        );
        assert_eq!(decide(&p, &svc, [&a, &b]).reason, Reason::LocalReady(2));
    }

    #[test]
    fn state_tracks_assume_and_forfeit() {
        let mut state = DesiredState::new(policy(Mode::Pods));
        let out = state.apply(ClusterChange::ServiceApplied(lb("web", &["10.0.100.7"])));
        assert!(!out.addresses_changed(), "no endpoint yet");
        let out = state.apply(ClusterChange::SliceApplied(ready_here("web")));
        assert_eq!(
            out.assumed.keys().copied().collect::<BTreeSet<_>>(),
            ips(&["10.0.100.7"])
        );
        assert_eq!(out.announced.len(), 1);
        assert_eq!(state.addresses(), ips(&["10.0.100.7"]));

        // The same slice again is no work and no change.
        let out = state.apply(ClusterChange::SliceApplied(ready_here("web")));
        assert_eq!(out, Outcome::default(), "nothing touched");

        let out = state.apply(ClusterChange::SliceDeleted(ready_here("web").key));
        assert_eq!(out.forfeited, ips(&["10.0.100.7"]));
        assert_eq!(out.withdrawn.len(), 1);
        assert!(state.addresses().is_empty());
    }

    #[test]
    fn a_shared_ip_stays_while_any_claimant_needs_it() {
        let mut state = DesiredState::new(policy(Mode::Pods));
        let out = state.apply_all([
            ClusterChange::ServiceApplied(lb("a", &["10.0.100.7"])),
            ClusterChange::ServiceApplied(lb("b", &["10.0.100.7"])),
            ClusterChange::SliceApplied(ready_here("a")),
            ClusterChange::SliceApplied(ready_here("b")),
        ]);
        assert_eq!(out.assumed.len(), 1, "announced once");
        assert_eq!(out.shared.len(), 1, "the double claim is reported");
        assert_eq!(out.shared[0].1.len(), 2);

        let out = state.apply(ClusterChange::ServiceDeleted(ServiceKey::new(
            "default", "a",
        )));
        assert!(!out.addresses_changed(), "b still needs it");
        assert_eq!(state.addresses(), ips(&["10.0.100.7"]));
        assert_eq!(
            state
                .claimants(&ip("10.0.100.7"))
                .unwrap()
                .iter()
                .map(|k| &*k.name)
                .collect::<Vec<_>>(),
            ["b"]
        );
        let out = state.apply(ClusterChange::SliceDeleted(ready_here("b").key));
        assert_eq!(out.forfeited, ips(&["10.0.100.7"]));
    }

    #[test]
    fn sharing_is_judged_on_requests_not_on_what_this_node_announces() {
        let mut state = DesiredState::new(policy(Mode::Pods));
        let out = state.apply_all([
            ClusterChange::ServiceApplied(lb("a", &["10.0.100.7"])),
            ClusterChange::ServiceApplied(lb("b", &["10.0.100.7"])),
        ]);
        assert!(state.addresses().is_empty(), "no endpoint here");
        assert_eq!(out.shared.len(), 1, "still two Services ask for one IP");
        assert_eq!(state.shared().count(), 1);
        state.apply(ClusterChange::ServiceDeleted(ServiceKey::new(
            "default", "a",
        )));
        assert_eq!(state.shared().count(), 0);
    }

    #[test]
    fn relists_replace_the_world_and_only_diff_what_changed() {
        let mut state = DesiredState::new(policy(Mode::Pods));
        state.apply_all([
            ClusterChange::ServicesListed(vec![lb("a", &["10.0.100.1"]), lb("b", &["10.0.100.2"])]),
            ClusterChange::SlicesListed(vec![ready_here("a"), ready_here("b")]),
        ]);
        assert_eq!(state.addresses(), ips(&["10.0.100.1", "10.0.100.2"]));

        // After a 410 the relist no longer has `b`'s slice; `a` is unchanged and not recomputed.
        let out = state.apply(ClusterChange::SlicesListed(vec![ready_here("a")]));
        assert_eq!(out.forfeited, ips(&["10.0.100.2"]));
        assert_eq!(
            out.changed_services
                .iter()
                .map(|k| &*k.name)
                .collect::<Vec<_>>(),
            ["b"]
        );

        let out = state.apply(ClusterChange::ServicesListed(vec![lb(
            "a",
            &["10.0.100.1"],
        )]));
        assert!(!out.addresses_changed());
        assert!(state.service(&ServiceKey::new("default", "b")).is_none());
    }

    #[test]
    fn problems_are_reported_once_per_service() {
        let mut state = DesiredState::new(policy(Mode::Gateway));
        let svc = lb("web", &["10.0.100.7", "not-an-ip"]);
        let out = state.apply(ClusterChange::ServiceApplied(svc.clone()));
        assert_eq!(out.problems.len(), 1);
        // Another event for the same Service with the same problem: silent.
        let mut touched = svc.clone();
        touched.ports.push(crate::cluster::model::ServicePort {
            name: None,
            protocol: "TCP".into(),
            port: 80,
        });
        let out = state.apply(ClusterChange::ServiceApplied(touched));
        assert!(out.problems.is_empty());
    }

    #[test]
    fn a_slice_moving_to_another_service_touches_both() {
        let mut state = DesiredState::new(policy(Mode::Pods));
        state.apply_all([
            ClusterChange::ServiceApplied(lb("a", &["10.0.100.1"])),
            ClusterChange::ServiceApplied(lb("b", &["10.0.100.2"])),
            ClusterChange::SliceApplied(ready_here("a")),
        ]);
        let mut moved = ready_here("a");
        moved.service = Some(ServiceKey::new("default", "b"));
        let out = state.apply(ClusterChange::SliceApplied(moved));
        assert_eq!(out.forfeited, ips(&["10.0.100.1"]));
        assert_eq!(
            out.assumed.keys().copied().collect::<BTreeSet<_>>(),
            ips(&["10.0.100.2"])
        );
    }

    #[test]
    fn ingress_published_only_for_requested_managed_ips() {
        let p = policy(Mode::Pods);
        let mut svc = lb("web", &["10.0.100.7", "192.0.2.9"]);
        svc.ingress_ips = vec!["10.0.100.99".into()];
        svc.ingress_owner = IngressOwner::Other;
        assert_eq!(ingress_to_publish(&p, &svc), Some(ips(&["10.0.100.7"])));
        svc.annotation_ips.clear();
        assert_eq!(
            ingress_to_publish(&p, &svc),
            None,
            "nothing requested: leave another controller's status alone"
        );
        svc.load_balancer_ip = Some("10.0.100.8".into());
        assert_eq!(ingress_to_publish(&p, &svc), Some(ips(&["10.0.100.8"])));
        svc.load_balancer_ip = None;
        svc.allocated_ips = vec!["10.0.100.9".into()];
        assert_eq!(
            ingress_to_publish(&p, &svc),
            Some(ips(&["10.0.100.9"])),
            "an allocator's IPs are published"
        );
    }

    #[test]
    fn own_status_is_no_request_and_is_cleared() {
        let p = policy(Mode::Gateway);
        let mut svc = lb("web", &["10.0.100.7"]);
        svc.ingress_ips = vec!["10.0.100.7".into()];
        svc.ingress_owner = IngressOwner::L3lb;
        assert_eq!(decide(&p, &svc, []).ips, ips(&["10.0.100.7"]));
        // The annotation goes: what l3lb published itself no longer keeps the IP alive.
        svc.annotation_ips.clear();
        let d = decide(&p, &svc, []);
        assert_eq!((d.ips.len(), d.reason), (0, Reason::NoManagedIp));
        assert_eq!(
            ingress_to_publish(&p, &svc),
            Some(BTreeSet::new()),
            "l3lb's own status is cleared"
        );
        // Status whose writer is unknown is ambiguous: neither a request nor cleared.
        svc.ingress_owner = IngressOwner::Unknown;
        assert!(decide(&p, &svc, []).ips.is_empty());
        assert_eq!(ingress_to_publish(&p, &svc), None);
        // Another controller's status is a request, unless told to ignore status.
        svc.ingress_owner = IngressOwner::Other;
        assert_eq!(decide(&p, &svc, []).ips, ips(&["10.0.100.7"]));
        let ignore = Policy {
            status_ips: StatusIps::Ignore,
            ..p.clone()
        };
        assert!(decide(&ignore, &svc, []).ips.is_empty());
    }
}
