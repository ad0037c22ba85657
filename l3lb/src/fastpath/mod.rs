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
    /// Which Service put each address/port/protocol in; the first claimant keeps it.
    owners: BTreeMap<Vip, ServiceKey>,
    vips_of: HashMap<ServiceKey, BTreeSet<Vip>>,
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
            owners: BTreeMap::new(),
            vips_of: HashMap::new(),
        })
    }

    /// The first complete sync: every Service, then whatever an earlier run left that no
    /// Service wants any more is removed.
    pub fn sync_all(&mut self, state: &DesiredState) -> Vec<tables::Error> {
        let keys: Vec<ServiceKey> = state.services().map(|s| s.key.clone()).collect();
        let mut errors = self.sync_services(state, keys.iter());
        let stale: Vec<Vip> = self
            .loaded
            .tables
            .vips()
            .filter(|vip| !self.owners.contains_key(vip))
            .copied()
            .collect();
        for vip in stale {
            if let Err(err) = self.loaded.tables.remove(&vip) {
                errors.push(err);
            }
        }
        self.loaded.tables.sweep();
        errors
    }

    /// Brings the entries of `services` in line with the desired state.
    pub fn sync_services<'a>(
        &mut self,
        state: &DesiredState,
        services: impl IntoIterator<Item = &'a ServiceKey>,
    ) -> Vec<tables::Error> {
        let mut errors = Vec::new();
        for key in services {
            let planned = plan::plan_service(state, key);
            let before = self.vips_of.remove(key).unwrap_or_default();
            for vip in before.iter().filter(|vip| !planned.contains_key(vip)) {
                if self.owners.get(vip) == Some(key) {
                    self.owners.remove(vip);
                    if let Err(err) = self.loaded.tables.remove(vip) {
                        errors.push(err);
                    }
                }
            }
            let mut mine = BTreeSet::new();
            for (vip, targets) in planned {
                match self.owners.get(&vip) {
                    Some(owner) if owner != key => {
                        if !before.contains(&vip) {
                            warn!(service = %key, "{vip} is already steered for {owner}; not for this Service too");
                        }
                    }
                    _ => {
                        self.owners.insert(vip, key.clone());
                        if let Err(err) = self.loaded.tables.set(vip, &targets) {
                            errors.push(err);
                        }
                    }
                }
                mine.insert(vip);
            }
            if !mine.is_empty() {
                self.vips_of.insert(key.clone(), mine);
            }
        }
        errors
    }

    /// Detaches the programs and removes the pinned maps (a clean exit without
    /// `--retain-on-exit`).
    pub fn remove(self) {
        let pin_root = self.pin_root.clone();
        drop(self);
        loader::remove(&pin_root);
    }
}
