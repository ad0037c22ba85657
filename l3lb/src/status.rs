//! What this node announces and why: the report the controller builds, `/status` serves as JSON
//! and `l3lb status` prints. It lives apart from all three so none of them depends on another.
use std::{collections::BTreeMap, net::IpAddr};

use tokio::sync::oneshot;

/// What this node announces and why.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub interface: String,
    pub prefixes: Vec<String>,
    /// Both Services and EndpointSlices have been listed: until then nothing is withdrawn.
    pub synced: bool,
    pub services_seen: usize,
    pub announced: Vec<IpAddr>,
    /// Why this node announces nothing at all (node maintenance), if it does not.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// The weight (interface metric) of each announced address with `--weights endpoints`;
    /// empty without weights.
    #[serde(default)]
    pub weights: BTreeMap<IpAddr, u32>,
    /// Every Service that asks for a managed IP (or asks wrongly), sorted by namespace/name.
    pub services: Vec<ServiceReport>,
    /// The IP pools as this node's allocator last saw them: with the API server only on the
    /// leader, with `--source file:DIR` on every node.
    #[serde(default)]
    pub pools: Vec<PoolReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolReport {
    pub pool: String,
    /// Address counts per family, e.g. `IPv4 1 used, 1 free of 2`.
    pub usage: String,
    /// Why the pool is not (fully) usable: a bad block, an overlap with another pool.
    pub problems: Vec<String>,
    /// `namespace/name ip[,ip]` of each Service given an address from this pool.
    pub allocations: Vec<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceReport {
    pub service: String,
    pub ips: Vec<IpAddr>,
    pub announced: bool,
    pub reason: String,
    /// Addresses of this node's ready endpoints.
    pub local_ready: Vec<String>,
    pub problems: Vec<String>,
}

/// A request for the controller's current [`NodeReport`], answered from its own loop so the
/// report is consistent and nothing is shared behind locks.
pub type ReportRequest = oneshot::Sender<NodeReport>;
