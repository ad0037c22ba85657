//! What the fast path should steer, derived (purely) from the desired state: for each announced
//! service IP, port and protocol, the local endpoints that serve it.
use std::{collections::BTreeMap, fmt, net::IpAddr};

use l3lb_common::{PROTO_TCP, PROTO_UDP};

use crate::{
    cluster::model::{ServiceKey, SliceSpec},
    desired::{DesiredState, Reason},
};

/// A service address, port and protocol as packets carry them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vip {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            _ => "?",
        };
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{proto}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{proto}", self.port),
        }
    }
}

/// How service packets reach a local pod. The plan leaves every target to the kernel's
/// routing; the fast path resolves the real way from the host's routes and links
/// (`pods::Resolver`), which is I/O and so not part of this pure plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Delivery {
    /// Rewritten and handed to the kernel, which routes it to the pod.
    #[default]
    Stack,
    /// Straight into the pod's namespace through the peer of this host-side veth/netkit.
    Peer { ifindex: u32 },
    /// Out of this host interface (a bridge, a device without a peer), the kernel resolving
    /// the pod's MAC.
    Neigh { ifindex: u32 },
}

impl Delivery {
    /// The host interface the packets leave through, when not the kernel's routing.
    pub fn ifindex(self) -> Option<u32> {
        match self {
            Delivery::Stack => None,
            Delivery::Peer { ifindex } | Delivery::Neigh { ifindex } => Some(ifindex),
        }
    }
}

/// A local pod endpoint for one service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
    /// Keeps its established flows, gets no new ones.
    pub terminating: bool,
    pub delivery: Delivery,
}

impl Target {
    /// The name Maglev hashes: address and port, not the terminating flag, so a pod starting to
    /// terminate keeps its identity.
    pub fn name(&self) -> Vec<u8> {
        format!("{}:{}", self.ip, self.port).into_bytes()
    }
}

fn protocol_number(protocol: &str) -> Option<u8> {
    match protocol {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        // SCTP and anything newer stay with kube-proxy.
        _ => None,
    }
}

/// The fast-path entries of one Service on this node, each with its targets sorted.
///
/// An IP that is no longer announced keeps its entry while local endpoints still serve: the
/// routers stop sending new flows, but flows already here drain to their (terminating) pods
/// instead of falling into the kernel, which no longer has the address.
///
/// Terminating pods take no new flows, except when no endpoint is ready anywhere and this node
/// announces because its pods still serve (kube-proxy's rule): then they take them, or the
/// node would attract connections it can only refuse.
///
/// A pod that turns not ready keeps its TCP connections, as conntrack keeps them for kube-proxy
/// (it has a target that takes no new flows); its UDP flows move to the ready pods, as
/// kube-proxy clears the conntrack entries of UDP endpoints that stop serving.
pub fn plan_service(state: &DesiredState, key: &ServiceKey) -> BTreeMap<Vip, Vec<Target>> {
    let mut entries = BTreeMap::new();
    let (Some(spec), Some(decision)) = (state.service(key), state.decision(key)) else {
        return entries;
    };
    let slices: Vec<&SliceSpec> = state.slices_of(key).collect();
    let announced = decision.reason.announces();
    let serving_takes_new_flows = decision.reason == Reason::ServingFallback;
    for ip in &decision.ips {
        for service_port in &spec.ports {
            let Some(proto) = protocol_number(&service_port.protocol) else {
                continue;
            };
            let mut targets: Vec<Target> = slices
                .iter()
                .flat_map(|slice| {
                    // EndpointSlice ports carry the Service port's name and the resolved target.
                    let target_port = slice
                        .ports
                        .iter()
                        .find(|p| {
                            p.name.as_deref().unwrap_or("")
                                == service_port.name.as_deref().unwrap_or("")
                                && p.protocol == service_port.protocol
                        })
                        .map(|p| p.port);
                    slice
                        .local
                        .iter()
                        .filter(move |e| e.ready || e.serving || proto != PROTO_UDP)
                        .flat_map(move |endpoint| {
                            endpoint.addresses.iter().filter_map(move |address| {
                                let address: IpAddr = address.parse().ok()?;
                                (address.is_ipv4() == ip.is_ipv4()).then_some(Target {
                                    ip: address,
                                    port: target_port?,
                                    terminating: !endpoint.ready && !serving_takes_new_flows,
                                    delivery: Delivery::Stack,
                                })
                            })
                        })
                })
                .collect();
            targets.sort();
            targets.dedup_by_key(|t| (t.ip, t.port));
            if !announced && targets.is_empty() {
                continue;
            }
            entries.insert(
                Vip {
                    ip: *ip,
                    port: service_port.port,
                    proto,
                },
                targets,
            );
        }
    }
    entries
}

/// The `ClientIP` session affinity timeout (seconds) of the Service's entries, if it has one.
pub fn session_affinity(state: &DesiredState, key: &ServiceKey) -> Option<u32> {
    state.service(key)?.client_ip_affinity_secs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::model::{
            ClusterChange, EndpointPort, LocalEndpoint, ServicePort, ServiceSpec, SliceKey,
        },
        desired::{DEFAULT_LOAD_BALANCER_CLASS, Mode, Policy},
    };

    fn state() -> DesiredState {
        DesiredState::new(Policy {
            node: "node-a".into(),
            mode: Mode::Pods,
            prefixes: vec![
                "10.0.100.0/24".parse().unwrap(),
                "2001:db8:100::/64".parse().unwrap(),
            ],
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.into(),
            external_ips: true,
            status_ips: Default::default(),
            weights: Default::default(),
            withdraw_on_cordon: false,
        })
    }

    fn service() -> ServiceSpec {
        ServiceSpec {
            key: ServiceKey::new("default", "web"),
            is_load_balancer: true,
            annotation_ips: vec!["10.0.100.7".into(), "2001:db8:100::7".into()],
            ports: vec![
                ServicePort {
                    name: Some("http".into()),
                    protocol: "TCP".into(),
                    port: 80,
                },
                ServicePort {
                    name: Some("dns".into()),
                    protocol: "UDP".into(),
                    port: 53,
                },
                ServicePort {
                    name: Some("sig".into()),
                    protocol: "SCTP".into(),
                    port: 9,
                },
            ],
            ..ServiceSpec::default()
        }
    }

    fn vip(ip: &str, port: u16, proto: u8) -> Vip {
        Vip {
            ip: ip.parse().unwrap(),
            port,
            proto,
        }
    }

    fn target(ip: &str, port: u16, terminating: bool) -> Target {
        Target {
            ip: ip.parse().unwrap(),
            port,
            terminating,
            delivery: Delivery::Stack,
        }
    }

    fn endpoint(address: &str, ready: bool) -> LocalEndpoint {
        LocalEndpoint {
            addresses: vec![address.into()],
            ready,
            serving: true,
            terminating: !ready,
        }
    }

    fn slice(name: &str, local: Vec<LocalEndpoint>) -> SliceSpec {
        SliceSpec {
            key: SliceKey {
                namespace: "default".into(),
                name: name.into(),
            },
            service: Some(ServiceKey::new("default", "web")),
            any_ready: true,
            local,
            ports: vec![
                EndpointPort {
                    name: Some("http".into()),
                    protocol: "TCP".into(),
                    port: 8080,
                },
                EndpointPort {
                    name: Some("dns".into()),
                    protocol: "UDP".into(),
                    port: 5353,
                },
            ],
        }
    }

    #[test]
    fn each_announced_ip_and_port_maps_to_local_targets_of_its_family() {
        let mut state = state();
        state.apply_all([
            ClusterChange::ServiceApplied(service()),
            ClusterChange::SliceApplied(slice(
                "v4",
                vec![endpoint("10.244.1.6", true), endpoint("10.244.1.5", false)],
            )),
            ClusterChange::SliceApplied(slice("v6", vec![endpoint("fd00::5", true)])),
        ]);
        let plan = plan_service(&state, &ServiceKey::new("default", "web"));
        let keys: Vec<String> = plan.keys().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            [
                "10.0.100.7:53/udp",
                "10.0.100.7:80/tcp",
                "[2001:db8:100::7]:53/udp",
                "[2001:db8:100::7]:80/tcp"
            ],
            "SCTP is left to kube-proxy"
        );
        let http = &plan[&vip("10.0.100.7", 80, PROTO_TCP)];
        assert_eq!(
            http,
            &[
                target("10.244.1.5", 8080, true),
                target("10.244.1.6", 8080, false),
            ]
        );
        let dns6 = &plan[&vip("2001:db8:100::7", 53, PROTO_UDP)];
        assert_eq!(dns6, &[target("fd00::5", 5353, false)]);
    }

    #[test]
    fn a_draining_node_keeps_entries_for_its_terminating_pods() {
        let mut state = state();
        state.apply_all([
            ClusterChange::ServiceApplied(service()),
            ClusterChange::SliceApplied(slice("v4", vec![endpoint("10.244.1.5", false)])),
        ]);
        let key = ServiceKey::new("default", "web");
        assert!(
            !state.decision(&key).unwrap().reason.announces(),
            "withdrawn: ready elsewhere"
        );
        let plan = plan_service(&state, &key);
        let http = &plan[&vip("10.0.100.7", 80, PROTO_TCP)];
        assert_eq!(http, &[target("10.244.1.5", 8080, true)]);
    }

    #[test]
    fn serving_pods_take_new_flows_when_nothing_is_ready_anywhere() {
        let mut state = state();
        let mut draining = slice("v4", vec![endpoint("10.244.1.5", false)]);
        draining.any_ready = false;
        state.apply_all([
            ClusterChange::ServiceApplied(service()),
            ClusterChange::SliceApplied(draining),
        ]);
        let key = ServiceKey::new("default", "web");
        assert_eq!(
            state.decision(&key).unwrap().reason,
            Reason::ServingFallback
        );
        let plan = plan_service(&state, &key);
        let http = &plan[&vip("10.0.100.7", 80, PROTO_TCP)];
        assert_eq!(
            http,
            &[target("10.244.1.5", 8080, false)],
            "announced for them, so they take the new flows"
        );
    }

    #[test]
    fn a_pod_turning_not_ready_keeps_its_tcp_flows_and_loses_its_udp_ones() {
        let mut state = state();
        let not_ready = LocalEndpoint {
            ready: false,
            serving: false,
            terminating: false,
            ..endpoint("10.244.1.6", false)
        };
        state.apply_all([
            ClusterChange::ServiceApplied(service()),
            ClusterChange::SliceApplied(slice("v4", vec![endpoint("10.244.1.5", true), not_ready])),
        ]);
        let plan = plan_service(&state, &ServiceKey::new("default", "web"));
        assert_eq!(
            plan[&vip("10.0.100.7", 80, PROTO_TCP)],
            [
                target("10.244.1.5", 8080, false),
                target("10.244.1.6", 8080, true)
            ],
            "TCP: established connections stay, no new ones"
        );
        assert_eq!(
            plan[&vip("10.0.100.7", 53, PROTO_UDP)],
            [target("10.244.1.5", 5353, false)],
            "UDP: its flows move on"
        );
    }

    #[test]
    fn nothing_when_not_announced_here() {
        let mut state = state();
        state.apply_all([
            ClusterChange::ServiceApplied(service()),
            ClusterChange::SliceApplied(slice("v4", vec![])),
        ]);
        assert!(plan_service(&state, &ServiceKey::new("default", "web")).is_empty());
        assert!(plan_service(&state, &ServiceKey::new("default", "gone")).is_empty());
    }
}
