//! What this node announces and why: the report the controller builds, `/status` serves as JSON
//! and `l3lb status` prints. It lives apart from all three so none of them depends on another.
use std::net::IpAddr;

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
    /// Every Service that asks for a managed IP (or asks wrongly), sorted by namespace/name.
    pub services: Vec<ServiceReport>,
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
