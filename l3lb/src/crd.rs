//! The `L3lbIPPool` custom resource (`l3lb.io/v1alpha1`, cluster-scoped): where automatic
//! addresses come from. The CRD manifest in `deploy/kubernetes/` is generated from these types
//! (the test below fails when it is stale and rewrites it with `L3LB_UPDATE_CRDS=1`).
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time},
    jiff::Timestamp,
};
use kube::{CustomResource, core::Selector};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pools::{Block, BlockError, Family, Pool, PoolUsage};

/// The condition saying the pool is usable.
pub const READY: &str = "Ready";
/// The condition saying the pool's blocks overlap another pool's.
pub const CONFLICT: &str = "Conflict";

/// A pool of addresses that LoadBalancer Services without a hand-picked IP get theirs from.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "l3lb.io",
    version = "v1alpha1",
    kind = "L3lbIPPool",
    plural = "l3lbippools",
    shortname = "l3pool",
    status = "L3lbIPPoolStatus",
    doc = "A pool of addresses that LoadBalancer Services without a hand-picked IP get theirs from",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Auto","type":"boolean","jsonPath":".spec.autoAssign"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"IPv4 free","type":"integer","jsonPath":".status.ipv4.available"}"#,
    printcolumn = r#"{"name":"IPv6 free","type":"integer","jsonPath":".status.ipv6.available"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L3lbIPPoolSpec {
    /// Address blocks, each a CIDR (`10.0.100.32/28`) or an inclusive `first-last` range
    /// (`10.0.100.60-10.0.100.63`); IPv4 and IPv6 may be mixed.
    pub blocks: Vec<String>,
    /// Only Services whose labels match get addresses from this pool. The pseudo-labels
    /// `io.kubernetes.service.namespace` and `io.kubernetes.service.name` match a Service's
    /// namespace and name. Absent: every Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Only Services in these namespaces get addresses from this pool. Empty: every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Pools are tried in ascending priority, then by name.
    #[serde(default)]
    pub priority: i32,
    /// When false, only Services that name this pool in the `l3lb.io/ip-pool` annotation get
    /// addresses from it.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Never hand out IPv4 addresses ending in .0 or .255.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// No new allocations from this pool; addresses already handed out stay.
    #[serde(default)]
    pub disabled: bool,
}

fn default_true() -> bool {
    true
}

/// Address counts of one family. Counts beyond 2^63-1 (large IPv6 blocks) saturate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct FamilyCounts {
    pub total: i64,
    pub used: i64,
    pub available: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct L3lbIPPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyCounts>,
    /// `Ready` and `Conflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool {pool}: {source}")]
    Block {
        pool: String,
        #[source]
        source: BlockError,
    },
    #[error("pool {pool}: serviceSelector: {source}")]
    Selector {
        pool: String,
        #[source]
        source: kube::core::ParseExpressionError,
    },
    #[error("pool without a name")]
    Unnamed,
}

impl PoolError {
    fn reason(&self) -> &'static str {
        match self {
            PoolError::Block { .. } => "InvalidBlock",
            PoolError::Selector { .. } => "InvalidSelector",
            PoolError::Unnamed => "Unnamed",
        }
    }
}

impl L3lbIPPool {
    /// The allocator's view of this pool.
    pub fn to_pool(&self) -> Result<Pool, PoolError> {
        let name = self.metadata.name.clone().ok_or(PoolError::Unnamed)?;
        let spec = &self.spec;
        let blocks = spec
            .blocks
            .iter()
            .map(|raw| raw.parse::<Block>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| PoolError::Block {
                pool: name.clone(),
                source,
            })?;
        let selector = spec
            .service_selector
            .clone()
            .map(Selector::try_from)
            .transpose()
            .map_err(|source| PoolError::Selector {
                pool: name.clone(),
                source,
            })?;
        Ok(Pool {
            name,
            blocks,
            selector,
            namespaces: spec.namespaces.clone(),
            priority: spec.priority,
            auto_assign: spec.auto_assign,
            avoid_buggy_ips: spec.avoid_buggy_ips,
            disabled: spec.disabled,
        })
    }
}

fn saturate(count: u128) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The status a pool should have. `previous` keeps each condition's transition time while its
/// status stays the same, so an unchanged pool produces an identical status (and no write).
pub fn pool_status(
    usage: Result<&PoolUsage, &PoolError>,
    generation: Option<i64>,
    previous: Option<&L3lbIPPoolStatus>,
    now: Timestamp,
) -> L3lbIPPoolStatus {
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map_or(Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let counts = |usage: &PoolUsage, family| {
        usage.families.get(&family).map(|f| FamilyCounts {
            total: saturate(f.total),
            used: saturate(f.used),
            available: saturate(f.available()),
        })
    };
    match usage {
        Ok(usage) => {
            let exhausted: Vec<Family> = usage
                .families
                .iter()
                .filter(|(_, f)| f.available() == 0)
                .map(|(family, _)| *family)
                .collect();
            let ready_message = if exhausted.is_empty() {
                "addresses available".to_owned()
            } else {
                let names: Vec<&str> = exhausted.iter().map(|f| f.as_kube()).collect();
                format!("exhausted: no free {} address", names.join(" or "))
            };
            let conflict = if usage.overlaps.is_empty() {
                condition(
                    CONFLICT,
                    false,
                    "NoOverlap",
                    "no other pool overlaps".into(),
                )
            } else {
                let others: Vec<&str> = usage.overlaps.iter().map(String::as_str).collect();
                condition(
                    CONFLICT,
                    true,
                    "BlocksOverlap",
                    format!("blocks overlap pool {}", others.join(", ")),
                )
            };
            L3lbIPPoolStatus {
                ipv4: counts(usage, Family::V4),
                ipv6: counts(usage, Family::V6),
                conditions: vec![
                    condition(
                        READY,
                        true,
                        if exhausted.is_empty() {
                            "Ready"
                        } else {
                            "Exhausted"
                        },
                        ready_message,
                    ),
                    conflict,
                ],
            }
        }
        Err(err) => L3lbIPPoolStatus {
            ipv4: None,
            ipv6: None,
            conditions: vec![condition(READY, false, err.reason(), err.to_string())],
        },
    }
}

/// The CRD manifest, as checked in under `deploy/kubernetes/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    let yaml = serde_yaml::to_string(&L3lbIPPool::crd()).expect("a CRD always serializes");
    format!(
        "# Generated from l3lb/src/crd.rs; do not edit. Regenerate with\n\
         # `L3LB_UPDATE_CRDS=1 cargo test -p l3lb --lib crd`.\n{yaml}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::FamilyUsage;

    const CHECKED_IN: &str = "../deploy/kubernetes/l3lbippool-crd.yaml";

    #[test]
    fn checked_in_crd_matches_the_rust_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
        let generated = crd_yaml();
        if std::env::var_os("L3LB_UPDATE_CRDS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} is stale; regenerate it with `L3LB_UPDATE_CRDS=1 cargo test -p l3lb --lib crd`",
            path.display()
        );
    }

    #[test]
    fn a_pool_manifest_parses_with_defaults() {
        let pool: L3lbIPPool = serde_yaml::from_str(
            "apiVersion: l3lb.io/v1alpha1\n\
             kind: L3lbIPPool\n\
             metadata: {name: web}\n\
             spec:\n  blocks: [10.0.100.32/28, 10.0.100.60-10.0.100.63, '2001:db8:100::/120']\n\
             \x20 serviceSelector: {matchLabels: {team: blue}}\n\
             \x20 avoidBuggyIPs: true\n",
        )
        .unwrap();
        assert!(pool.spec.auto_assign, "autoAssign defaults to true");
        assert!(
            pool.spec.avoid_buggy_ips,
            "spelled avoidBuggyIPs, as in MetalLB"
        );
        let parsed = pool.to_pool().unwrap();
        assert_eq!(parsed.name, "web");
        assert_eq!(parsed.blocks.len(), 3);
        assert!(parsed.selector.is_some());

        let mut broken = pool.clone();
        broken.spec.blocks.push("10.0.0.0/33".into());
        let err = broken.to_pool().unwrap_err();
        assert_eq!(err.reason(), "InvalidBlock");
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn the_example_pool_in_deploy_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples/l3lbippool.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let pool: L3lbIPPool = serde_yaml::from_str(&text).unwrap();
        let parsed = pool.to_pool().unwrap();
        assert_eq!(parsed.blocks.len(), 3);
        assert!(parsed.avoid_buggy_ips && parsed.auto_assign);
    }

    #[test]
    fn status_counts_and_conditions() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let later: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let mut usage = PoolUsage::default();
        usage
            .families
            .insert(Family::V4, FamilyUsage { total: 4, used: 4 });
        usage.families.insert(
            Family::V6,
            FamilyUsage {
                total: u128::MAX,
                used: 1,
            },
        );
        usage.overlaps.insert("other".into());
        let status = pool_status(Ok(&usage), Some(3), None, now);
        assert_eq!(
            status.ipv4,
            Some(FamilyCounts {
                total: 4,
                used: 4,
                available: 0
            })
        );
        assert_eq!(status.ipv6.as_ref().unwrap().total, i64::MAX);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.reason.as_str()),
            (READY, "Exhausted")
        );
        assert!(ready.message.contains("IPv4"));
        let conflict = &status.conditions[1];
        assert_eq!(
            (conflict.status.as_str(), conflict.message.as_str()),
            ("True", "blocks overlap pool other")
        );

        // The same facts later: the very same status, transition times included.
        assert_eq!(
            pool_status(Ok(&usage), Some(3), Some(&status), later),
            status
        );
        // A flip gets a new transition time.
        usage.overlaps.clear();
        let flipped = pool_status(Ok(&usage), Some(3), Some(&status), later);
        assert_eq!(flipped.conditions[1].last_transition_time, Time(later));
        assert_eq!(flipped.conditions[0].last_transition_time, Time(now));

        let err = PoolError::Unnamed;
        let failed = pool_status(Err(&err), None, None, now);
        assert_eq!(failed.conditions[0].status, "False");
    }
}
