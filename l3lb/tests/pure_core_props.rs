//! Property tests of the pure core, on random inputs instead of hand-picked cases:
//!
//! - the desired state kept incrementally over a random sequence of Service and EndpointSlice
//!   events and relists equals the one computed from scratch over the same final objects;
//! - an IP that any Service still needs is never missing from what the node announces, however
//!   many Services share it;
//! - with `--weights endpoints` every announced address has a weight in range, and the weights
//!   kept incrementally equal those computed from scratch;
//! - Maglev tables of random backend sets are balanced (shares within one entry of each other),
//!   and removing a backend moves few of the other backends' entries.
use std::collections::{BTreeMap, BTreeSet};

use l3lb::{
    cluster::model::{
        ClusterChange, EndpointPort, LocalEndpoint, ServiceKey, ServicePort, ServiceSpec, SliceKey,
        SliceSpec,
    },
    desired::{DesiredState, Mode, Policy, StatusIps},
    fastpath::maglev::build_table,
    weights::{MAX_WEIGHT, MIN_WEIGHT, Weights},
};
use proptest::prelude::*;

const NODE: &str = "node-a";

fn policy(mode: Mode) -> Policy {
    Policy {
        node: NODE.into(),
        mode,
        prefixes: vec!["10.0.100.0/24".parse().unwrap()],
        load_balancer_class: "l3lb.io/l3lb".into(),
        external_ips: true,
        status_ips: StatusIps::default(),
        weights: Weights::Endpoints,
        withdraw_on_cordon: false,
    }
}

/// A Service among a few names, asking for one or two IPs among a few (so Services share IPs),
/// sometimes one outside the prefix or malformed.
fn service() -> impl Strategy<Value = ServiceSpec> {
    let ip = prop_oneof![
        6 => (1u8..6).prop_map(|last| format!("10.0.100.{last}")),
        1 => Just("192.0.2.1".to_owned()),
        1 => Just("not-an-ip".to_owned()),
    ];
    (0usize..5, prop::collection::vec(ip, 1..3), any::<bool>()).prop_map(
        |(name, ips, annotated)| {
            let mut spec = ServiceSpec {
                key: ServiceKey::new("default", format!("svc-{name}")),
                is_load_balancer: true,
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    protocol: "TCP".into(),
                    port: 80,
                }],
                ..ServiceSpec::default()
            };
            if annotated {
                spec.annotation_ips = ips;
            } else {
                spec.external_ips = ips;
            }
            spec
        },
    )
}

/// An EndpointSlice of one of the Services, with local endpoints in random conditions.
fn slice() -> impl Strategy<Value = SliceSpec> {
    let endpoint = (any::<bool>(), any::<bool>(), any::<bool>(), 2u8..9).prop_map(
        |(ready, serving, terminating, last)| LocalEndpoint {
            addresses: vec![format!("10.244.1.{last}")],
            ready: ready && !terminating,
            serving: serving || ready,
            terminating,
        },
    );
    (
        0usize..5,
        0usize..2,
        any::<bool>(),
        prop::collection::vec(endpoint, 0..3),
    )
        .prop_map(|(service, n, any_ready, local)| SliceSpec {
            key: SliceKey {
                namespace: "default".into(),
                name: format!("svc-{service}-{n}").into(),
            },
            service: Some(ServiceKey::new("default", format!("svc-{service}"))),
            any_ready: any_ready || local.iter().any(|e| e.ready),
            local,
            ports: vec![EndpointPort {
                name: Some("http".into()),
                protocol: "TCP".into(),
                port: 8080,
            }],
        })
}

#[derive(Clone, Debug)]
enum Event {
    ApplyService(ServiceSpec),
    DeleteService(usize),
    ApplySlice(SliceSpec),
    DeleteSlice(usize, usize),
    /// Relist everything as it is now (a watch restart).
    Relist,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => service().prop_map(Event::ApplyService),
        1 => (0usize..5).prop_map(Event::DeleteService),
        5 => slice().prop_map(Event::ApplySlice),
        1 => (0usize..5, 0usize..2).prop_map(|(s, n)| Event::DeleteSlice(s, n)),
        1 => Just(Event::Relist),
    ]
}

/// What the cluster holds: the truth both computations are checked against.
#[derive(Default)]
struct Cluster {
    services: BTreeMap<ServiceKey, ServiceSpec>,
    slices: BTreeMap<SliceKey, SliceSpec>,
}

impl Cluster {
    fn lists(&self) -> [ClusterChange; 2] {
        [
            ClusterChange::ServicesListed(self.services.values().cloned().collect()),
            ClusterChange::SlicesListed(self.slices.values().cloned().collect()),
        ]
    }

    /// Applies `event` to the truth and returns the change a watch would deliver.
    fn apply(&mut self, event: Event) -> Vec<ClusterChange> {
        match event {
            Event::ApplyService(spec) => {
                self.services.insert(spec.key.clone(), spec.clone());
                vec![ClusterChange::ServiceApplied(spec)]
            }
            Event::DeleteService(n) => {
                let key = ServiceKey::new("default", format!("svc-{n}"));
                self.services.remove(&key);
                vec![ClusterChange::ServiceDeleted(key)]
            }
            Event::ApplySlice(spec) => {
                self.slices.insert(spec.key.clone(), spec.clone());
                vec![ClusterChange::SliceApplied(spec)]
            }
            Event::DeleteSlice(s, n) => {
                let key = SliceKey {
                    namespace: "default".into(),
                    name: format!("svc-{s}-{n}").into(),
                };
                self.slices.remove(&key);
                vec![ClusterChange::SliceDeleted(key)]
            }
            Event::Relist => self.lists().into(),
        }
    }
}

/// Every Service's decision, for comparing two states.
fn decisions(state: &DesiredState) -> BTreeMap<ServiceKey, String> {
    state
        .services()
        .filter_map(|spec| {
            let decision = state.decision(&spec.key)?;
            Some((spec.key.clone(), format!("{decision:?}")))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn incremental_state_equals_a_fresh_computation(
        initial in prop::collection::vec(event(), 0..6),
        events in prop::collection::vec(event(), 1..40),
        gateway in any::<bool>(),
    ) {
        let mode = if gateway { Mode::Gateway } else { Mode::Pods };
        let mut cluster = Cluster::default();
        for event in initial {
            cluster.apply(event);
        }
        let mut incremental = DesiredState::new(policy(mode));
        incremental.apply_all(cluster.lists());
        for event in events {
            let changes = cluster.apply(event);
            incremental.apply_all(changes);

            // Whatever a Service needs is announced, shared or not.
            let announced = incremental.addresses();
            for spec in incremental.services() {
                let Some(decision) = incremental.decision(&spec.key) else {
                    continue;
                };
                if !decision.reason.announces() {
                    continue;
                }
                for ip in &decision.ips {
                    prop_assert!(
                        announced.contains(ip),
                        "{} needs {ip}, which is not announced", spec.key
                    );
                }
            }
        }
        let mut fresh = DesiredState::new(policy(mode));
        fresh.apply_all(cluster.lists());
        prop_assert_eq!(incremental.addresses(), fresh.addresses());
        prop_assert_eq!(decisions(&incremental), decisions(&fresh));
        // Every announced address has a weight in range, and the same as computed afresh.
        prop_assert_eq!(incremental.weights(), fresh.weights());
        prop_assert_eq!(
            incremental.weights().keys().copied().collect::<BTreeSet<_>>(),
            incremental.addresses()
        );
        prop_assert!(incremental
            .weights()
            .values()
            .all(|w| (MIN_WEIGHT..=MAX_WEIGHT).contains(w)));
    }

    #[test]
    fn maglev_tables_are_balanced_and_stable(
        names in prop::collection::btree_set("[a-z0-9.:]{3,20}", 2..40),
        size in prop::sample::select(vec![251u32, 1021, 4093]),
        removed in any::<prop::sample::Index>(),
    ) {
        let all: Vec<Vec<u8>> = names.iter().map(|n| n.clone().into_bytes()).collect();
        let table = build_table(&all, size);
        prop_assert_eq!(table.len(), size as usize);
        let mut shares = vec![0usize; all.len()];
        for &backend in &table {
            shares[backend as usize] += 1;
        }
        let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        prop_assert!(max - min <= 1, "shares {min}..{max} for {} backends", all.len());

        // Remove one backend: its entries go elsewhere, and few of the others' move.
        let gone = removed.index(all.len());
        let mut fewer = all.clone();
        fewer.remove(gone);
        let after = build_table(&fewer, size);
        let original = |i: u32| if (i as usize) < gone { i } else { i + 1 };
        let kept: BTreeSet<usize> = (0..table.len())
            .filter(|&slot| table[slot] as usize != gone)
            .collect();
        let moved = kept
            .iter()
            .filter(|&&slot| original(after[slot]) != table[slot])
            .count();
        // The Maglev paper's disruption is a few percent of the table; with few backends a
        // larger share of the other entries can move, so the bound allows for that.
        let fraction = moved as f64 / kept.len().max(1) as f64;
        prop_assert!(
            fraction <= 0.25,
            "{:.1}% of the kept entries moved ({} backends, M={size})",
            fraction * 100.0,
            all.len()
        );
    }
}
