//! The soak's model of the cluster: its Services and their endpoints, the seeded schedule of
//! changes and faults drawn from it, and the oracle: which nodes the router must route each
//! service IP to. Pure, so the oracle is tested without a lab.
//!
//! The oracle is written from l3lb's documented rule, not from its code: a node announces a
//! Service's IPs when a ready endpoint of it runs there, or, when no endpoint is ready
//! anywhere, when one there is still serving (terminating).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::lab::{Endpoint, Service};

/// At most this many Services at once, and endpoints per Service.
const MAX_SERVICES: usize = 4;
const MAX_ENDPOINTS: usize = 4;

/// One step of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A Service's manifest changed (endpoints, or a new Service): write it.
    Apply(Service),
    /// A Service was deleted: remove its manifest.
    Delete(String),
    /// SIGKILL to a node's l3lb, restarted after a pause.
    KillL3lb(usize),
    /// A node's bgpd stopped and started again.
    RestartBgpd(usize),
    /// The manifest directory gone for a while.
    SourceOutage,
}

impl Change {
    /// The kind, for the report.
    pub fn kind(&self, before: &World) -> &'static str {
        match self {
            Change::Apply(service) => match before.services.get(&service.name) {
                None => "service created",
                Some(old) => endpoint_change(old, service),
            },
            Change::Delete(_) => "service deleted",
            Change::KillL3lb(_) => "l3lb SIGKILL and restart",
            Change::RestartBgpd(_) => "bgpd restart",
            Change::SourceOutage => "source outage",
        }
    }
}

fn endpoint_change(old: &Service, new: &Service) -> &'static str {
    if new.endpoints.len() > old.endpoints.len() {
        return "scale-up";
    }
    if new.endpoints.len() < old.endpoints.len() {
        return "terminated pod gone";
    }
    let flipped_to_terminating = old
        .endpoints
        .iter()
        .zip(&new.endpoints)
        .any(|(a, b)| !a.terminating && b.terminating);
    if flipped_to_terminating {
        "pod terminating"
    } else {
        "readiness flip"
    }
}

/// The cluster as the soak has made it so far.
#[derive(Clone, Debug)]
pub struct World {
    nodes: usize,
    pub services: BTreeMap<String, Service>,
    /// Pods no endpoint uses any more, per node: scale-ups reuse them (the lab keeps every pod
    /// it started running).
    idle_pods: Vec<(String, usize)>,
    next_pod: usize,
    next_service: usize,
}

impl World {
    pub fn new(nodes: usize) -> World {
        World {
            nodes,
            services: BTreeMap::new(),
            idle_pods: Vec::new(),
            next_pod: 0,
            next_service: 0,
        }
    }

    /// The nodes the router must route each service IP to; IPs no node announces are absent.
    pub fn expected(&self) -> BTreeMap<IpAddr, BTreeSet<usize>> {
        let mut routes = BTreeMap::new();
        for service in self.services.values() {
            let nodes = announcing_nodes(&service.endpoints);
            if nodes.is_empty() {
                continue;
            }
            for ip in &service.ips {
                routes.insert(*ip, nodes.clone());
            }
        }
        routes
    }

    /// The next change, drawn with `rng`: mostly endpoint changes, sometimes a Service created
    /// or deleted, and now and then a fault.
    pub fn draw(&mut self, rng: &mut fastrand::Rng) -> Change {
        loop {
            let roll = rng.u32(0..100);
            let change = match roll {
                0..30 => self.flip_readiness(rng),
                30..42 => self.terminate(rng),
                42..52 => self.remove_terminated(rng),
                52..67 => self.scale_up(rng),
                67..75 => self.create(rng),
                75..81 => self.delete(rng),
                81..88 => Some(Change::KillL3lb(rng.usize(0..self.nodes))),
                88..94 => Some(Change::RestartBgpd(rng.usize(0..self.nodes))),
                _ => Some(Change::SourceOutage),
            };
            if let Some(change) = change {
                return change;
            }
        }
    }

    /// Records a change the lab has made.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Apply(service) => {
                if let Some(old) = self.services.get(&service.name) {
                    for gone in old
                        .endpoints
                        .iter()
                        .filter(|e| !service.endpoints.iter().any(|n| n.pod == e.pod))
                    {
                        self.idle_pods.push((gone.pod.clone(), gone.node));
                    }
                }
                self.idle_pods
                    .retain(|(pod, _)| !service.endpoints.iter().any(|e| &e.pod == pod));
                self.services.insert(service.name.clone(), service.clone());
            }
            Change::Delete(name) => {
                if let Some(old) = self.services.remove(name) {
                    self.idle_pods
                        .extend(old.endpoints.into_iter().map(|e| (e.pod, e.node)));
                }
            }
            Change::KillL3lb(_) | Change::RestartBgpd(_) | Change::SourceOutage => {}
        }
    }

    /// A Service with `endpoints` ready pods on random nodes.
    pub fn create_with(&mut self, rng: &mut fastrand::Rng, endpoints: usize) -> Change {
        let k = self.next_service;
        self.next_service += 1;
        let slot = 20 + (k % 200) as u8;
        let v4 = format!("10.0.100.{slot}");
        let v6 = format!("2001:db8:100::{slot:x}");
        // Every other Service dual-stack.
        let ips: Vec<&str> = if k.is_multiple_of(2) {
            vec![&v4, &v6]
        } else {
            vec![&v4]
        };
        let mut service = Service::new(&format!("soak-{k}"), &ips);
        for _ in 0..endpoints {
            let node = rng.usize(0..self.nodes);
            let pod = self.pod_on(node);
            service.endpoints.push(Endpoint::ready(&pod, node));
        }
        Change::Apply(service)
    }

    fn create(&mut self, rng: &mut fastrand::Rng) -> Option<Change> {
        if self.services.len() >= MAX_SERVICES {
            return None;
        }
        let endpoints = rng.usize(1..=3);
        Some(self.create_with(rng, endpoints))
    }

    fn delete(&mut self, rng: &mut fastrand::Rng) -> Option<Change> {
        // Keep one Service at least, so that the clients always have something to reach.
        if self.services.len() <= 1 {
            return None;
        }
        let name = self.pick_service(rng)?.name.clone();
        Some(Change::Delete(name))
    }

    fn flip_readiness(&mut self, rng: &mut fastrand::Rng) -> Option<Change> {
        let (mut service, i) = self.pick_live_endpoint(rng)?;
        let e = &service.endpoints[i];
        service.endpoints[i] = if e.ready {
            Endpoint::not_ready(&e.pod, e.node)
        } else {
            Endpoint::ready(&e.pod, e.node)
        };
        Some(Change::Apply(service))
    }

    fn terminate(&mut self, rng: &mut fastrand::Rng) -> Option<Change> {
        let (mut service, i) = self.pick_live_endpoint(rng)?;
        let e = &service.endpoints[i];
        service.endpoints[i] = Endpoint::terminating(&e.pod, e.node);
        Some(Change::Apply(service))
    }

    fn remove_terminated(&mut self, rng: &mut fastrand::Rng) -> Option<Change> {
        let mut service = self.pick_service(rng)?.clone();
        let candidates: Vec<usize> = (0..service.endpoints.len())
            .filter(|&i| service.endpoints[i].terminating)
            .collect();
        let i = *pick(rng, &candidates)?;
        service.endpoints.remove(i);
        Some(Change::Apply(service))
    }

    fn scale_up(&mut self, rng: &mut fastrand::Rng) -> Option<Change> {
        let mut service = self.pick_service(rng)?.clone();
        if service.endpoints.len() >= MAX_ENDPOINTS {
            return None;
        }
        let node = rng.usize(0..self.nodes);
        let pod = self.pod_on(node);
        service.endpoints.push(Endpoint::ready(&pod, node));
        Some(Change::Apply(service))
    }

    fn pick_service(&self, rng: &mut fastrand::Rng) -> Option<&Service> {
        let services: Vec<&Service> = self.services.values().collect();
        pick(rng, &services).copied()
    }

    /// A Service (a copy to change) and one of its endpoints that is not terminating.
    fn pick_live_endpoint(&self, rng: &mut fastrand::Rng) -> Option<(Service, usize)> {
        let service = self.pick_service(rng)?.clone();
        let candidates: Vec<usize> = (0..service.endpoints.len())
            .filter(|&i| !service.endpoints[i].terminating)
            .collect();
        let i = *pick(rng, &candidates)?;
        Some((service, i))
    }

    /// An idle pod on `node`, or a new one.
    fn pod_on(&mut self, node: usize) -> String {
        if let Some(at) = self.idle_pods.iter().position(|(_, n)| *n == node) {
            return self.idle_pods.remove(at).0;
        }
        let pod = format!(
            "p{}-{}",
            self.next_pod,
            crate::lab::node_name(node)[5..].to_owned()
        );
        self.next_pod += 1;
        pod
    }
}

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> Option<&'a T> {
    (!items.is_empty()).then(|| &items[rng.usize(0..items.len())])
}

/// The nodes that announce a Service with these endpoints (see the module's comment).
pub fn announcing_nodes(endpoints: &[Endpoint]) -> BTreeSet<usize> {
    let any_ready = endpoints.iter().any(|e| e.ready);
    endpoints
        .iter()
        .filter(|e| if any_ready { e.ready } else { e.serving })
        .map(|e| e.node)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_with_a_ready_pod_announce_and_serving_ones_only_when_none_is_ready() {
        let ready = |node| Endpoint::ready(&format!("r{node}"), node);
        let draining = |node| Endpoint::terminating(&format!("t{node}"), node);
        let down = |node| Endpoint::not_ready(&format!("n{node}"), node);
        assert_eq!(
            announcing_nodes(&[ready(0), draining(1), down(2)]),
            [0].into()
        );
        assert_eq!(announcing_nodes(&[draining(1), down(2)]), [1].into());
        assert_eq!(announcing_nodes(&[down(2)]), BTreeSet::new());
        assert_eq!(
            announcing_nodes(&[ready(0), ready(0), ready(2)]),
            [0, 2].into()
        );
    }

    #[test]
    fn the_schedule_is_seeded_and_keeps_its_bounds() {
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut world = World::new(3);
            let first = world.create_with(&mut rng, 2);
            world.apply(&first);
            let mut changes = Vec::new();
            for _ in 0..500 {
                let change = world.draw(&mut rng);
                world.apply(&change);
                assert!((1..=MAX_SERVICES).contains(&world.services.len()));
                for service in world.services.values() {
                    assert!(service.endpoints.len() <= MAX_ENDPOINTS);
                    let pods: BTreeSet<&str> =
                        service.endpoints.iter().map(|e| e.pod.as_str()).collect();
                    assert_eq!(pods.len(), service.endpoints.len(), "a pod serves once");
                }
                changes.push(change);
            }
            changes
        };
        let a = run(7);
        assert_eq!(a, run(7), "the same seed, the same schedule");
        assert_ne!(a, run(8));
        let kinds: std::collections::HashSet<std::mem::Discriminant<Change>> =
            a.iter().map(std::mem::discriminant).collect();
        assert_eq!(kinds.len(), 5, "every kind of change occurs");
    }

    #[test]
    fn expected_routes_cover_every_ip_of_an_announced_service() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut world = World::new(3);
        let change = world.create_with(&mut rng, 2);
        world.apply(&change);
        let Change::Apply(service) = change else {
            unreachable!()
        };
        let routes = world.expected();
        assert_eq!(routes.len(), 2, "dual-stack: {routes:?}");
        for ip in &service.ips {
            assert_eq!(routes[ip], announcing_nodes(&service.endpoints));
        }
    }
}
