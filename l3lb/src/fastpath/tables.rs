//! Keeps the kernel's service, backend and Maglev maps equal to the plan.
//!
//! Each service id owns a region of `2 × table_size` entries in `L3LB_MAGLEV`. A new table is
//! written to the half packets are not reading, and only then does the service entry switch to
//! it (one map update, atomic for readers). Backends live in `L3LB_BACKENDS` slots shared by
//! every service that uses the same pod address and port; a slot is cleared only once no table
//! refers to it, and flows still pinned to a cleared slot are rescheduled by the program.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
};
use l3lb_common::{
    BACKEND_REDIRECT_NEIGH, BACKEND_REDIRECT_PEER, BACKEND_TERMINATING, Backend, PacketCounter,
    SERVICE_AFFINITY, ServiceEntry, ServiceKey, addr, capacity, map_names,
};
use tracing::{debug, warn};

use super::{
    maglev,
    plan::{Delivery, Target, Vip},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{vip}: updating map {map}: {source}")]
    Update {
        vip: Vip,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{vip}: all {capacity} fast-path service slots are in use (raise --xdp-max-services)")]
    ServicesFull { vip: Vip, capacity: u32 },
    #[error("{vip}: all {} backend slots are in use", capacity::BACKENDS)]
    BackendsFull { vip: Vip },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingMap(_) | Error::Map { .. } => "fastpath_map",
            Error::Update { .. } => "fastpath_update",
            Error::ServicesFull { .. } | Error::BackendsFull { .. } => "fastpath_full",
        }
    }
}

/// What the kernel holds for one service address/port/protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Installed {
    id: u32,
    /// Which half of the region the active table is in.
    half: u32,
    targets: Vec<Target>,
    /// The session affinity timeout (seconds), when the service has `ClientIP` affinity.
    affinity: Option<u32>,
    /// What each half of the region holds, as the backends (name, slot) its table was built
    /// from; `None` when unknown (adopted from an earlier run, or a reused region). A table is
    /// rewritten only where it differs from what its half holds: Maglev keeps consecutive
    /// tables alike, so a change costs a few map updates, not one per entry.
    halves: [Option<Live>; 2],
}

/// The backends that take new flows, by Maglev name and slot, in table order.
type Live = Vec<(Vec<u8>, u32)>;

#[derive(Clone, Copy, Debug)]
struct Slot {
    id: u32,
    refs: u32,
    terminating: bool,
    delivery: Delivery,
}

pub struct Tables {
    services: BpfHashMap<MapData, ServiceKey, ServiceEntry>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    service_stats: PerCpuArray<MapData, PacketCounter>,
    table_size: u32,
    max_services: u32,
    installed: BTreeMap<Vip, Installed>,
    free_service_ids: BTreeSet<u32>,
    slots: HashMap<(IpAddr, u16), Slot>,
    free_slots: BTreeSet<u32>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|source| Error::Map { map: name, source })
}

/// How a backend slot written by [`Tables::set`] says its pod is reached.
pub fn delivery_of(backend: &Backend) -> Delivery {
    if backend.flags & BACKEND_REDIRECT_PEER != 0 {
        Delivery::Peer {
            ifindex: backend.ifindex,
        }
    } else if backend.flags & BACKEND_REDIRECT_NEIGH != 0 {
        Delivery::Neigh {
            ifindex: backend.ifindex,
        }
    } else {
        Delivery::Stack
    }
}

/// The number of `L3LB_MAGLEV` entries for this configuration.
pub fn maglev_entries(table_size: u32, max_services: u32) -> u32 {
    2 * table_size * max_services
}

pub fn service_key(vip: &Vip) -> ServiceKey {
    ServiceKey::new(vip.ip, vip.port, vip.proto)
}

pub fn vip_of(key: &ServiceKey) -> Option<Vip> {
    Some(Vip {
        ip: key.ip()?,
        port: key.port(),
        proto: key.proto,
    })
}

impl Tables {
    /// Takes the maps out of a loaded object and adopts what they already hold (a previous run's
    /// state, when they were pinned), so nothing a restart finds in place is rewritten.
    pub fn adopt(ebpf: &mut Ebpf, table_size: u32, max_services: u32) -> Result<Tables, Error> {
        let mut tables = Tables {
            services: take(ebpf, map_names::SERVICES)?,
            backends: take(ebpf, map_names::BACKENDS)?,
            maglev: take(ebpf, map_names::MAGLEV)?,
            service_stats: take(ebpf, map_names::SERVICE_STATS)?,
            table_size,
            max_services: max_services.min(capacity::SERVICES),
            installed: BTreeMap::new(),
            free_service_ids: BTreeSet::new(),
            slots: HashMap::new(),
            free_slots: BTreeSet::new(),
        };
        tables.read_back()?;
        Ok(tables)
    }

    fn read_back(&mut self) -> Result<(), Error> {
        let map_error = |map| move |source| Error::Map { map, source };
        let mut by_id: HashMap<u32, Target> = HashMap::new();
        for (id, backend) in self.backends.iter().enumerate() {
            let backend = backend.map_err(map_error(map_names::BACKENDS))?;
            let id = id as u32;
            match addr::from_bytes(&backend.addr, backend.family).filter(|_| backend.in_use != 0) {
                Some(ip) => {
                    let port = u16::from_be(backend.port_be);
                    let target = Target {
                        ip,
                        port,
                        terminating: backend.flags & BACKEND_TERMINATING != 0,
                        delivery: delivery_of(&backend),
                    };
                    by_id.insert(id, target);
                    self.slots.insert(
                        (ip, port),
                        Slot {
                            id,
                            refs: 0,
                            terminating: target.terminating,
                            delivery: target.delivery,
                        },
                    );
                }
                None => {
                    self.free_slots.insert(id);
                }
            }
        }
        let mut used_ids = BTreeSet::new();
        let entries: Vec<(ServiceKey, ServiceEntry)> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(map_names::SERVICES))?;
        for (key, entry) in entries {
            let region = entry.id * 2 * self.table_size;
            let Some(vip) = vip_of(&key).filter(|_| {
                entry.id < self.max_services
                    && (entry.table_size == 0
                        || (entry.table_size == self.table_size && entry.table_base >= region))
            }) else {
                // Left by a run with other limits: not trustworthy, rebuilt by the next sync.
                let _ = self.services.remove(&key);
                continue;
            };
            let half = if entry.table_size == 0 {
                0
            } else {
                (entry.table_base - region) / self.table_size
            };
            let mut ids = BTreeSet::new();
            for i in 0..entry.table_size {
                let backend = self
                    .maglev
                    .get(&(entry.table_base + i), 0)
                    .map_err(map_error(map_names::MAGLEV))?;
                ids.insert(backend);
            }
            let mut targets: Vec<Target> =
                ids.iter().filter_map(|id| by_id.get(id).copied()).collect();
            targets.sort();
            for target in &targets {
                if let Some(slot) = self.slots.get_mut(&(target.ip, target.port)) {
                    slot.refs += 1;
                }
            }
            used_ids.insert(entry.id);
            self.installed.insert(
                vip,
                Installed {
                    id: entry.id,
                    half,
                    targets,
                    affinity: (entry.flags & SERVICE_AFFINITY != 0)
                        .then_some(entry.affinity_timeout_secs),
                    halves: [None, None],
                },
            );
        }
        self.free_service_ids = (0..self.max_services)
            .filter(|id| !used_ids.contains(id))
            .collect();
        debug!(
            services = self.installed.len(),
            backends = self.slots.len(),
            "adopted fast-path state"
        );
        Ok(())
    }

    /// The host interfaces that backends are delivered through directly: where the reply
    /// program must run.
    pub fn delivery_interfaces(&self) -> BTreeSet<u32> {
        self.slots
            .values()
            .filter(|slot| slot.refs > 0)
            .filter_map(|slot| slot.delivery.ifindex())
            .collect()
    }

    /// The service addresses currently installed.
    pub fn vips(&self) -> impl Iterator<Item = &Vip> {
        self.installed.keys()
    }

    /// Makes the kernel steer `vip` to `targets` (sorted, as the plan gives them), with
    /// `ClientIP` session affinity of `affinity` seconds when given.
    pub fn set(
        &mut self,
        vip: Vip,
        targets: &[Target],
        affinity: Option<u32>,
    ) -> Result<(), Error> {
        if self
            .installed
            .get(&vip)
            .is_some_and(|i| i.targets == targets && i.affinity == affinity)
        {
            return Ok(());
        }
        let update = |map: &'static str| move |source: MapError| Error::Update { vip, map, source };

        // Slots first: a table must never name a slot that does not hold its backend yet.
        let mut ids = Vec::with_capacity(targets.len());
        for target in targets {
            ids.push(self.claim_slot(vip, target)?);
        }
        let (id, half, fresh) = match self.installed.get(&vip) {
            Some(installed) => (installed.id, 1 - installed.half, false),
            None => {
                let id = self
                    .free_service_ids
                    .pop_first()
                    .ok_or(Error::ServicesFull {
                        vip,
                        capacity: self.max_services,
                    })?;
                (id, 0, true)
            }
        };
        if fresh {
            // A reused id must not inherit the previous service's counters.
            let cpus = aya::util::nr_cpus().map_or(1, |n| n);
            match PerCpuValues::try_from(vec![PacketCounter::default(); cpus]) {
                Ok(zero) => self
                    .service_stats
                    .set(id, zero, 0)
                    .map_err(update(map_names::SERVICE_STATS))?,
                Err(err) => warn!(%vip, "not resetting counters of reused slot {id}: {err}"),
            }
        }

        // Only backends that take new flows are in the table.
        let live: Live = targets
            .iter()
            .zip(&ids)
            .filter(|(target, _)| !target.terminating)
            .map(|(target, id)| (target.name(), *id))
            .collect();
        let mut halves = match self.installed.get(&vip) {
            Some(installed) => installed.halves.clone(),
            None => [None, None],
        };
        let table = self.slots_table(&live);
        let base = (id * 2 + half) * self.table_size;
        if !table.is_empty() {
            let held = halves[half as usize]
                .as_ref()
                .map(|held| self.slots_table(held));
            // A half left unwritten keeps what it held; a failure leaves it unknown.
            halves[half as usize] = None;
            for (i, &slot) in table.iter().enumerate() {
                if held.as_ref().is_some_and(|held| held.get(i) == Some(&slot)) {
                    continue;
                }
                self.maglev
                    .set(base + i as u32, slot, 0)
                    .map_err(update(map_names::MAGLEV))?;
            }
            halves[half as usize] = Some(live);
        }
        let entry = ServiceEntry {
            id,
            table_base: base,
            table_size: if table.is_empty() { 0 } else { self.table_size },
            flags: if affinity.is_some() {
                SERVICE_AFFINITY
            } else {
                0
            },
            affinity_timeout_secs: affinity.unwrap_or(0),
        };
        self.services
            .insert(service_key(&vip), entry, 0)
            .map_err(update(map_names::SERVICES))?;

        let previous = self.installed.insert(
            vip,
            Installed {
                id,
                half,
                targets: targets.to_vec(),
                affinity,
                halves,
            },
        );
        if let Some(previous) = previous {
            for target in &previous.targets {
                self.release_slot(target);
            }
        }
        debug!(%vip, backends = targets.len(), "fast path updated");
        Ok(())
    }

    /// The Maglev table of `live` as backend slots (empty without a backend).
    fn slots_table(&self, live: &Live) -> Vec<u32> {
        let names: Vec<&[u8]> = live.iter().map(|(name, _)| name.as_slice()).collect();
        maglev::build_table(&names, self.table_size)
            .iter()
            .map(|&backend| live[backend as usize].1)
            .collect()
    }

    /// Stops steering `vip`.
    pub fn remove(&mut self, vip: &Vip) -> Result<(), Error> {
        let Some(installed) = self.installed.remove(vip) else {
            return Ok(());
        };
        match self.services.remove(&service_key(vip)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => {
                self.installed.insert(*vip, installed);
                return Err(Error::Update {
                    vip: *vip,
                    map: map_names::SERVICES,
                    source,
                });
            }
        }
        for target in &installed.targets {
            self.release_slot(target);
        }
        self.free_service_ids.insert(installed.id);
        Ok(())
    }

    /// Clears backend slots no service refers to (after adopting a previous run's state).
    pub fn sweep(&mut self) {
        let unused: Vec<(IpAddr, u16)> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.refs == 0)
            .map(|(key, _)| *key)
            .collect();
        for key in unused {
            self.clear_slot(key);
        }
    }

    fn claim_slot(&mut self, vip: Vip, target: &Target) -> Result<u32, Error> {
        let key = (target.ip, target.port);
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.refs += 1;
            if slot.terminating != target.terminating || slot.delivery != target.delivery {
                slot.terminating = target.terminating;
                slot.delivery = target.delivery;
                let id = slot.id;
                self.write_slot(vip, id, target)?;
            }
            return Ok(self.slots[&key].id);
        }
        let id = self
            .free_slots
            .pop_first()
            .ok_or(Error::BackendsFull { vip })?;
        self.write_slot(vip, id, target)?;
        self.slots.insert(
            key,
            Slot {
                id,
                refs: 1,
                terminating: target.terminating,
                delivery: target.delivery,
            },
        );
        Ok(id)
    }

    fn write_slot(&mut self, vip: Vip, id: u32, target: &Target) -> Result<(), Error> {
        let (delivery, ifindex) = match target.delivery {
            Delivery::Stack => (0, 0),
            Delivery::Peer { ifindex } => (BACKEND_REDIRECT_PEER, ifindex),
            Delivery::Neigh { ifindex } => (BACKEND_REDIRECT_NEIGH, ifindex),
        };
        let terminating = if target.terminating {
            BACKEND_TERMINATING
        } else {
            0
        };
        let backend = Backend {
            ifindex,
            ..Backend::new(target.ip, target.port, delivery | terminating)
        };
        self.backends
            .set(id, backend, 0)
            .map_err(|source| Error::Update {
                vip,
                map: map_names::BACKENDS,
                source,
            })
    }

    fn release_slot(&mut self, target: &Target) {
        let key = (target.ip, target.port);
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        slot.refs = slot.refs.saturating_sub(1);
        if slot.refs == 0 {
            self.clear_slot(key);
        }
    }

    fn clear_slot(&mut self, key: (IpAddr, u16)) {
        let Some(slot) = self.slots.remove(&key) else {
            return;
        };
        // Flows still pinned to this slot see it cleared and are rescheduled.
        match self.backends.set(slot.id, Backend::default(), 0) {
            Ok(()) => {
                self.free_slots.insert(slot.id);
            }
            Err(err) => warn!(
                "clearing backend slot {} ({}:{}): {err}",
                slot.id, key.0, key.1
            ),
        }
    }
}
