//! The `--xdp` fast path, userspace side: what to steer ([`plan`]), Maglev tables ([`maglev`]),
//! keeping the kernel maps in line ([`tables`]), loading and attaching ([`loader`]), and reading
//! it all back ([`inspect`]).
//!
//! The controller calls [`FastPath::sync_services`] with the Services each change touched, so
//! the cost follows the change, not the cluster.
pub mod inspect;
pub mod loader;
pub mod maglev;
pub mod plan;
pub mod pods;
pub mod tables;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
};

use tracing::{info, warn};

use crate::{cluster::model::ServiceKey, desired::DesiredState};
use plan::Vip;

/// Where the maps and links live (bpffs).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/l3lb";

/// Default number of service address/port/protocol triples the fast path can hold; with the
/// default table size this reserves 16 MiB of Maglev tables (2 × 1021 × 4 B each).
pub const DEFAULT_MAX_SERVICES: u32 = 2048;

pub struct FastPath {
    loaded: loader::Loaded,
    pin_root: PathBuf,
    owners: Owners,
    /// Resolves how each pod is reached directly; `None` in the XDP modes, where the kernel
    /// routes the forward packets, so their replies must take the kernel's way back too (a
    /// conntrack that saw one direction only would call the flow invalid).
    resolver: Option<pods::Resolver>,
    /// The uplinks: a pod is never reached through one of them.
    uplinks: BTreeSet<String>,
}

/// Which Service steers each address/port/protocol. Two Services may claim the same one (an IP
/// shared by Services with the same port); the first claimant keeps it until it lets go, and
/// the other is told once.
#[derive(Debug, Default)]
pub struct Owners {
    owner: BTreeMap<Vip, ServiceKey>,
    vips_of: HashMap<ServiceKey, BTreeSet<Vip>>,
}

/// What one Service's new plan means for the kernel's entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// Entries this Service owns and must install (or update).
    pub install: Vec<Vip>,
    /// Entries this Service owned and no longer plans: to be removed.
    pub release: Vec<Vip>,
    /// Entries it plans that another Service owns, newly seen (to say so once).
    pub refused: Vec<(Vip, ServiceKey)>,
}

impl Owners {
    /// Records `key`'s planned entries and says what to install, remove and refuse.
    pub fn claim(&mut self, key: &ServiceKey, planned: &BTreeSet<Vip>) -> Claims {
        let mut claims = Claims::default();
        let before = self.vips_of.remove(key).unwrap_or_default();
        for vip in before.iter().filter(|vip| !planned.contains(vip)) {
            if self.owner.get(vip) == Some(key) {
                self.owner.remove(vip);
                claims.release.push(*vip);
            }
        }
        for vip in planned {
            match self.owner.get(vip) {
                Some(owner) if owner != key => {
                    if !before.contains(vip) {
                        claims.refused.push((*vip, owner.clone()));
                    }
                }
                _ => {
                    self.owner.insert(*vip, key.clone());
                    claims.install.push(*vip);
                }
            }
        }
        if !planned.is_empty() {
            self.vips_of.insert(key.clone(), planned.clone());
        }
        claims
    }

    pub fn is_owned(&self, vip: &Vip) -> bool {
        self.owner.contains_key(vip)
    }
}

impl FastPath {
    pub fn start(config: &loader::LoadConfig) -> Result<FastPath, loader::Error> {
        let loaded = loader::load(config)?;
        info!(
            interfaces = ?config.interfaces,
            table_size = config.table_size,
            adopted = loaded.tables.vips().count(),
            "fast path ready"
        );
        Ok(FastPath {
            loaded,
            pin_root: config.pin_root.clone(),
            owners: Owners::default(),
            resolver: match config.mode {
                loader::AttachMode::Auto => Some(pods::Resolver::new()?),
                loader::AttachMode::Native | loader::AttachMode::Generic => None,
            },
            uplinks: config.interfaces.iter().cloned().collect(),
        })
    }

    /// The first complete sync: every Service, then whatever an earlier run left that no
    /// Service wants any more is removed.
    pub fn sync_all(&mut self, state: &DesiredState) -> Vec<loader::Error> {
        let keys: Vec<ServiceKey> = state.services().map(|s| s.key.clone()).collect();
        let mut errors = self.sync_services(state, keys.iter());
        let stale: Vec<Vip> = self
            .loaded
            .tables
            .vips()
            .filter(|vip| !self.owners.is_owned(vip))
            .copied()
            .collect();
        for vip in stale {
            if let Err(err) = self.loaded.tables.remove(&vip) {
                errors.push(err.into());
            }
        }
        self.loaded.tables.sweep();
        self.detach_unused();
        errors
    }

    /// Brings the entries of `services` in line with the desired state. The reply program is
    /// attached to new pods' interfaces before any entry steers to them; detaching it from
    /// interfaces no longer used is left to [`FastPath::detach_unused`], which waits on the
    /// kernel and is not urgent.
    pub fn sync_services<'a>(
        &mut self,
        state: &DesiredState,
        services: impl IntoIterator<Item = &'a ServiceKey>,
    ) -> Vec<loader::Error> {
        let mut errors = Vec::new();
        // One route look-up per pod per sync, however many ports and Services share it.
        let mut resolved: HashMap<std::net::IpAddr, plan::Delivery> = HashMap::new();
        let mut installs = Vec::new();
        for key in services {
            let mut planned = plan::plan_service(state, key);
            let affinity = plan::session_affinity(state, key);
            let vips: BTreeSet<Vip> = planned.keys().copied().collect();
            let claims = self.owners.claim(key, &vips);
            for vip in &claims.release {
                if let Err(err) = self.loaded.tables.remove(vip) {
                    errors.push(err.into());
                }
            }
            for (vip, owner) in &claims.refused {
                warn!(service = %key, "{vip} is already steered for {owner}; not for this Service too");
            }
            for vip in claims.install {
                let Some(mut targets) = planned.remove(&vip) else {
                    continue;
                };
                if let Some(resolver) = self.resolver.as_mut() {
                    for target in &mut targets {
                        target.delivery = *resolved.entry(target.ip).or_insert_with(|| {
                            resolver
                                .delivery(target.ip, &self.uplinks)
                                .unwrap_or_else(|err| {
                                    warn!(pod = %target.ip, "{err}; its packets take the kernel's routing");
                                    plan::Delivery::Stack
                                })
                        });
                    }
                }
                installs.push((vip, targets, affinity));
            }
        }
        // Also what is already steered: a link an earlier run pinned may not have been adopted.
        let mut interfaces = self.loaded.tables.delivery_interfaces();
        interfaces.extend(
            installs
                .iter()
                .flat_map(|(_, targets, _)| targets.iter().filter_map(|t| t.delivery.ifindex())),
        );
        errors.extend(
            self.loaded
                .pods
                .attach_missing(&mut self.loaded.ebpf, interfaces)
                .into_iter()
                .map(loader::Error::from),
        );
        for (vip, targets, affinity) in installs {
            if let Err(err) = self.loaded.tables.set(vip, &targets, affinity) {
                errors.push(err.into());
            }
        }
        errors
    }

    /// Detaches the reply program from the interfaces no backend is delivered through any more.
    pub fn detach_unused(&mut self) {
        let wanted = self.loaded.tables.delivery_interfaces();
        self.loaded.pods.detach_unwanted(&wanted);
    }

    /// Detaches the programs and removes the pinned maps (a clean exit without
    /// `--retain-on-exit`).
    pub fn remove(self) {
        let pin_root = self.pin_root.clone();
        drop(self);
        loader::remove(&pin_root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use l3lb_common::PROTO_TCP;

    fn vip(last: u8) -> Vip {
        Vip {
            ip: std::net::IpAddr::from([10, 0, 100, last]),
            port: 80,
            proto: PROTO_TCP,
        }
    }

    fn set(vips: &[Vip]) -> BTreeSet<Vip> {
        vips.iter().copied().collect()
    }

    #[test]
    fn the_first_claimant_keeps_a_shared_entry_until_it_lets_go() {
        let mut owners = Owners::default();
        let (a, b) = (ServiceKey::new("ns", "a"), ServiceKey::new("ns", "b"));
        let first = owners.claim(&a, &set(&[vip(1), vip(2)]));
        assert_eq!(first.install, [vip(1), vip(2)]);
        assert!(first.release.is_empty() && first.refused.is_empty());

        let second = owners.claim(&b, &set(&[vip(2), vip(3)]));
        assert_eq!(second.install, [vip(3)], "b gets only what nobody owns");
        assert_eq!(second.refused, [(vip(2), a.clone())]);

        let again = owners.claim(&b, &set(&[vip(2), vip(3)]));
        assert!(
            again.refused.is_empty(),
            "a refusal is reported once, not on every sync"
        );
        assert_eq!(again.install, [vip(3)]);

        // a lets go of 10.0.100.2: released for a, and b takes it on its next sync.
        let released = owners.claim(&a, &set(&[vip(1)]));
        assert_eq!(released.release, [vip(2)]);
        assert!(!owners.is_owned(&vip(2)));
        let taken = owners.claim(&b, &set(&[vip(2), vip(3)]));
        assert_eq!(taken.install, [vip(2), vip(3)]);
        assert!(owners.is_owned(&vip(2)));
    }

    #[test]
    fn a_service_that_plans_nothing_releases_only_what_it_owns() {
        let mut owners = Owners::default();
        let (a, b) = (ServiceKey::new("ns", "a"), ServiceKey::new("ns", "b"));
        owners.claim(&a, &set(&[vip(1)]));
        owners.claim(&b, &set(&[vip(1), vip(2)]));
        let gone = owners.claim(&b, &BTreeSet::new());
        assert_eq!(gone.release, [vip(2)], "10.0.100.1 stays a's");
        assert!(owners.is_owned(&vip(1)));
        assert!(!owners.is_owned(&vip(2)));
        let gone = owners.claim(&a, &BTreeSet::new());
        assert_eq!(gone.release, [vip(1)]);
        assert!(!owners.is_owned(&vip(1)));
    }
}
