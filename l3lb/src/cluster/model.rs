//! The slim view of Services and EndpointSlices that l3lb keeps in memory.
//!
//! API objects are converted as soon as they arrive and then dropped, so managed fields, pod
//! specs and every endpoint on other nodes never stay resident: a slice is reduced to this node's
//! endpoints plus two cluster-wide flags. A slice change elsewhere that flips neither flag
//! converts to an equal value, and the desired-state engine then does no work at all.
use std::{
    collections::BTreeSet,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::api::core::v1::Node;

use super::{
    limits::{
        MAX_ADDRESSES_PER_ENDPOINT, MAX_IPS_PER_SERVICE, MAX_LOCAL_ENDPOINTS_PER_SLICE, split_list,
    },
    objects::{EndpointSlice, Service},
};

/// The `loadBalancerClass` l3lb answers to unless told otherwise.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "l3lb.io/l3lb";

/// The annotation listing the IPs a LoadBalancer Service asks for, comma-separated and
/// dual-stack (the replacement for the deprecated `spec.loadBalancerIP`).
pub const LOAD_BALANCER_IPS_ANNOTATION: &str = "l3lb.io/loadBalancerIPs";

/// The annotation through which an IP-pool allocator hands a Service its addresses, in the same
/// form as [`LOAD_BALANCER_IPS_ANNOTATION`]. It is how allocations reach the nodes; status is not.
pub const ALLOCATED_IPS_ANNOTATION: &str = "l3lb.io/allocated-ips";

/// The field manager l3lb's status writer uses: `managedFields` then tells l3lb's own
/// `status.loadBalancer.ingress` apart from one another controller wrote.
pub const STATUS_FIELD_MANAGER: &str = "l3lb";

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name` of a Service. Shared strings: the desired state keeps a key in several
/// places (the Service, its decision, its slices' links, the IPs it requests), and a clone is a
/// reference count, not two allocations. They compare, order and hash as their text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// `text` as the one shared string of that text, for the few values many objects repeat:
/// namespaces, protocols, port names. Strings nothing holds any more are dropped now and then.
pub fn shared(text: &str) -> Arc<str> {
    static KNOWN: Mutex<(BTreeSet<Arc<str>>, usize)> = Mutex::new((BTreeSet::new(), 64));
    let mut guard = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    let (known, prune_at) = &mut *guard;
    if let Some(shared) = known.get(text) {
        return shared.clone();
    }
    if known.len() >= *prune_at {
        known.retain(|shared| Arc::strong_count(shared) > 1);
        *prune_at = (known.len() * 2).max(64);
    }
    let shared: Arc<str> = text.into();
    known.insert(shared.clone());
    shared
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `namespace/name` of an EndpointSlice, shared as [`ServiceKey`]'s.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl fmt::Display for SliceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What l3lb needs of a Service. IPs stay as the raw strings the user wrote, so the policy can
/// say exactly which one was malformed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    /// `metadata.uid`: Events name the object by it (`kubectl describe` filters on it).
    pub uid: Option<String>,
    pub is_load_balancer: bool,
    pub load_balancer_class: Option<String>,
    /// The `l3lb.io/loadBalancerIPs` annotation, split on commas.
    pub annotation_ips: Vec<String>,
    /// The `l3lb.io/allocated-ips` annotation (an IP-pool allocator's answer), split on commas.
    pub allocated_ips: Vec<String>,
    /// The deprecated `spec.loadBalancerIP`.
    pub load_balancer_ip: Option<String>,
    /// `status.loadBalancer.ingress[].ip`.
    pub ingress_ips: Vec<String>,
    /// Who wrote `status.loadBalancer.ingress`, according to `managedFields`.
    pub ingress_owner: IngressOwner,
    pub external_ips: Vec<String>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, default 10800); `None` without it.
    pub client_ip_affinity_secs: Option<u32>,
    /// Some IP list held more than [`MAX_IPS_PER_SERVICE`] items; only the first were kept.
    pub ips_over_limit: bool,
}

/// Who owns `status.loadBalancer.ingress` in the Service's `managedFields`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IngressOwner {
    /// No manager owns it (empty, or a server that records no managed fields): ambiguous.
    #[default]
    Unknown,
    /// l3lb's status writer ([`STATUS_FIELD_MANAGER`]) wrote it.
    L3lb,
    /// Only other managers own it: another controller's allocation.
    Other,
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`: three hours.
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<Arc<str>>,
    pub protocol: Arc<str>,
    pub port: u16,
}

/// What l3lb needs of an EndpointSlice, seen from one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    pub key: SliceKey,
    /// From the `kubernetes.io/service-name` label; a slice without it belongs to no Service.
    pub service: Option<ServiceKey>,
    /// Some endpoint on any node is ready (and not terminating).
    pub any_ready: bool,
    /// The endpoints on this node, in the slice's order.
    pub local: Vec<LocalEndpoint>,
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub addresses: Vec<String>,
    /// Ready and not terminating: may receive new connections.
    pub ready: bool,
    /// Still serving (possibly while terminating): may finish what it has.
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: Option<Arc<str>>,
    pub protocol: Arc<str>,
    pub port: u16,
}

impl ServiceSpec {
    /// From a `k8s_openapi` Service (the file source, tests), through its JSON form: the same
    /// decoding as the kube source's, so both read every field the same way.
    pub fn from_service(service: &k8s_openapi::api::core::v1::Service) -> Option<ServiceSpec> {
        let object: Service = serde_json::to_value(service)
            .and_then(serde_json::from_value)
            .ok()?;
        ServiceSpec::from_object(&object)
    }

    pub fn from_object(service: &Service) -> Option<ServiceSpec> {
        let metadata = &service.metadata;
        let key = ServiceKey::new(
            shared(metadata.namespace.as_deref()?),
            metadata.name.as_deref()?,
        );
        // Every list is cut to the per-Service limit, on arrival, so a Service asking for
        // thousands of IPs never keeps thousands of strings resident; the lists from the API
        // were cut while decoding already.
        let annotation = |value: &Option<String>| {
            value
                .as_deref()
                .map(|value| split_list(value, MAX_IPS_PER_SERVICE))
                .unwrap_or_default()
        };
        let (annotation_ips, annotation_more) = annotation(&service.load_balancer_ips);
        let (allocated_ips, allocated_more) = annotation(&service.allocated_ips);
        let ports = exact(service.ports.iter().filter_map(|port| {
            Some(ServicePort {
                name: port.name.as_deref().map(shared),
                protocol: shared(port.protocol.as_deref().unwrap_or("TCP")),
                port: u16::try_from(port.port).ok()?,
            })
        }));
        Some(ServiceSpec {
            key,
            uid: metadata.uid.clone(),
            is_load_balancer: service.type_.as_deref() == Some("LoadBalancer"),
            load_balancer_class: service.load_balancer_class.clone(),
            annotation_ips,
            allocated_ips,
            load_balancer_ip: service.load_balancer_ip.clone(),
            ingress_ips: service.ingress_ips.items.clone(),
            ingress_owner: service.ingress_owner,
            external_ips: service.external_ips.items.clone(),
            ports,
            client_ip_affinity_secs: (service.session_affinity.as_deref() == Some("ClientIP"))
                .then(|| {
                    service
                        .affinity_timeout_seconds
                        .and_then(|secs| u32::try_from(secs).ok())
                        .filter(|&secs| secs > 0)
                        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECS)
                }),
            ips_over_limit: annotation_more
                || allocated_more
                || service.ingress_ips.more()
                || service.external_ips.more(),
        })
    }
}

/// The items collected without spare room: these lists stay resident for every Service and
/// slice, and `collect` from a filter starts at room for four.
fn exact<T>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.collect();
    items.shrink_to_fit();
    items
}

/// Whether some endpoint of `slice` has no `nodeName` (a hand-made slice of a selectorless
/// Service, mirrored Endpoints): it cannot make any node announce.
pub fn has_unplaced_endpoints(slice: &EndpointSlice) -> bool {
    slice.endpoints.iter().any(|e| e.node_name.is_none())
}

impl SliceSpec {
    /// From a `k8s_openapi` EndpointSlice (tests), through its JSON form, as
    /// [`ServiceSpec::from_service`].
    pub fn from_endpoint_slice(
        slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
        node: &str,
    ) -> Option<SliceSpec> {
        let object: EndpointSlice = serde_json::to_value(slice)
            .and_then(serde_json::from_value)
            .ok()?;
        SliceSpec::from_object(&object, node)
    }

    /// Reduces `slice` to what matters on `node`.
    pub fn from_object(slice: &EndpointSlice, node: &str) -> Option<SliceSpec> {
        let metadata = &slice.metadata;
        let namespace = shared(metadata.namespace.as_deref()?);
        let key = SliceKey {
            namespace: namespace.clone(),
            name: metadata.name.as_deref()?.into(),
        };
        let service = slice
            .service_name
            .as_deref()
            .map(|name| ServiceKey::new(namespace, name));
        let mut any_ready = false;
        let mut local = Vec::new();
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            // The API defines an absent `ready` as ready, an absent `serving` as equal to
            // `ready`, and an absent `terminating` as not terminating.
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let ready_flag = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready_flag);
            let ready = ready_flag && !terminating;
            any_ready |= ready;
            // Past the limit the slice still counts towards `any_ready`; only what is kept
            // resident is bounded.
            if endpoint.node_name.as_deref() == Some(node)
                && local.len() < MAX_LOCAL_ENDPOINTS_PER_SLICE
            {
                local.push(LocalEndpoint {
                    addresses: endpoint.addresses.items.clone(),
                    ready,
                    serving,
                    terminating,
                });
            }
        }
        let ports = exact(slice.ports.iter().filter_map(|port| {
            Some(EndpointPort {
                name: port.name.as_deref().map(shared),
                protocol: shared(port.protocol.as_deref().unwrap_or("TCP")),
                port: u16::try_from(port.port?).ok()?,
            })
        }));
        Some(SliceSpec {
            key,
            service,
            any_ready,
            local,
            ports,
        })
    }
}

/// How `slice` exceeds what l3lb keeps of it on `node` ([`MAX_LOCAL_ENDPOINTS_PER_SLICE`]
/// endpoints, [`MAX_ADDRESSES_PER_ENDPOINT`] addresses each), for a warning; `None` within them.
pub fn slice_over_limits(slice: &EndpointSlice, node: &str) -> Option<String> {
    let endpoints = slice.endpoints.iter();
    let local = endpoints
        .clone()
        .filter(|e| e.node_name.as_deref() == Some(node))
        .count();
    let most_addresses = endpoints.map(|e| e.addresses.total).max().unwrap_or(0);
    let mut excess = Vec::new();
    if local > MAX_LOCAL_ENDPOINTS_PER_SLICE {
        excess.push(format!(
            "{local} endpoints on this node, only the first {MAX_LOCAL_ENDPOINTS_PER_SLICE} are used"
        ));
    }
    if most_addresses > MAX_ADDRESSES_PER_ENDPOINT {
        excess.push(format!(
            "an endpoint with {most_addresses} addresses, only the first {MAX_ADDRESSES_PER_ENDPOINT} are used"
        ));
    }
    (!excess.is_empty()).then(|| excess.join("; "))
}

/// One change from a cluster source. A relist replaces everything of its kind at once, which is
/// how a watch that lost its place (410 Gone) or a reloaded directory reports the world.
#[derive(Clone, Debug)]
pub enum ClusterChange {
    ServiceApplied(ServiceSpec),
    ServiceDeleted(ServiceKey),
    ServicesListed(Vec<ServiceSpec>),
    SliceApplied(SliceSpec),
    SliceDeleted(SliceKey),
    SlicesListed(Vec<SliceSpec>),
    /// This node's Node object changed (`None`: deleted).
    NodeApplied(Option<NodeSpec>),
    /// This node's Node object as a (re)list found it (`None`: there is none).
    NodeListed(Option<NodeSpec>),
}

/// The label that takes a node out of external load balancing (MetalLB and the service
/// controller honour it too): l3lb withdraws every address from such a node.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The taint a cordoned node carries (`kubectl cordon`, `kubectl drain`).
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// What l3lb needs of its own Node object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    /// `metadata.uid`, for Events on the Node.
    pub uid: Option<String>,
    /// Carries [`EXCLUDE_LABEL`] (with any value, as the service controller reads it).
    pub excluded: bool,
    /// Cordoned: `spec.unschedulable`, or the [`UNSCHEDULABLE_TAINT`].
    pub cordoned: bool,
}

impl NodeSpec {
    pub fn from_node(node: &Node) -> Option<NodeSpec> {
        let excluded = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|labels| labels.contains_key(EXCLUDE_LABEL));
        let spec = node.spec.as_ref();
        let tainted = spec
            .and_then(|spec| spec.taints.as_ref())
            .is_some_and(|taints| taints.iter().any(|t| t.key == UNSCHEDULABLE_TAINT));
        Some(NodeSpec {
            name: node.metadata.name.clone()?,
            uid: node.metadata.uid.clone(),
            excluded,
            cordoned: tainted || spec.and_then(|spec| spec.unschedulable) == Some(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: serde_json::Value) -> ServiceSpec {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": spec,
        }))
        .unwrap();
        ServiceSpec::from_object(&service).unwrap()
    }

    #[test]
    fn client_ip_affinity_and_its_timeout() {
        let none = service(serde_json::json!({"type": "LoadBalancer"}));
        assert_eq!(none.client_ip_affinity_secs, None);
        let explicit_none = service(serde_json::json!({"sessionAffinity": "None"}));
        assert_eq!(explicit_none.client_ip_affinity_secs, None);
        let default = service(serde_json::json!({"sessionAffinity": "ClientIP"}));
        assert_eq!(default.client_ip_affinity_secs, Some(10_800));
        let short = service(serde_json::json!({
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}},
        }));
        assert_eq!(short.client_ip_affinity_secs, Some(5));
        // A timeout the API server would reject falls back to the default, not to "forever".
        let invalid = service(serde_json::json!({
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
        }));
        assert_eq!(invalid.client_ip_affinity_secs, Some(10_800));
    }

    #[test]
    fn lists_are_cut_to_the_limits_on_arrival() {
        let many: Vec<String> = (0..100).map(|i| format!("10.0.100.{i}")).collect();
        let spec = service(serde_json::json!({"externalIPs": many}));
        assert_eq!(spec.external_ips.len(), MAX_IPS_PER_SERVICE);
        assert!(spec.ips_over_limit);
        let few = service(serde_json::json!({"externalIPs": ["10.0.100.1"]}));
        assert!(!few.ips_over_limit);

        let endpoint = |node: &str, addresses: usize| {
            serde_json::json!({
                "nodeName": node,
                "addresses": (0..addresses).map(|i| format!("10.244.{}.{}", i / 256, i % 256)).collect::<Vec<_>>(),
            })
        };
        let mut endpoints: Vec<_> = (0..1500).map(|_| endpoint("node-a", 1)).collect();
        endpoints.push(endpoint("node-b", 150));
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "big"},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .unwrap();
        let here = SliceSpec::from_object(&slice, "node-a").unwrap();
        assert_eq!(here.local.len(), MAX_LOCAL_ENDPOINTS_PER_SLICE);
        assert!(here.any_ready);
        let there = SliceSpec::from_object(&slice, "node-b").unwrap();
        assert_eq!(there.local[0].addresses.len(), MAX_ADDRESSES_PER_ENDPOINT);
        let excess = slice_over_limits(&slice, "node-a").expect("over the limits");
        assert!(excess.contains("1500 endpoints on this node"), "{excess}");
        assert!(excess.contains("150 addresses"), "{excess}");
        let within = slice_over_limits(&slice, "node-c").expect("addresses still over");
        assert!(!within.contains("endpoints on this node"), "{within}");
    }

    #[test]
    fn repeated_text_is_one_shared_string_and_keys_share_theirs() {
        let a = shared("team-a");
        assert!(Arc::ptr_eq(&a, &shared("team-a")));
        assert!(!Arc::ptr_eq(&a, &shared("team-b")));
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "team-a", "name": "web-x",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
        }))
        .unwrap();
        let spec = SliceSpec::from_object(&slice, "node-a").unwrap();
        let service = spec.service.unwrap();
        assert!(Arc::ptr_eq(&spec.key.namespace, &a));
        assert!(Arc::ptr_eq(&service.namespace, &a));
        assert_eq!(service, ServiceKey::new("team-a", "web"), "equal by text");
        assert!(Arc::ptr_eq(&spec.ports[0].protocol, &shared("TCP")));
    }

    #[test]
    fn a_node_is_excluded_by_the_label_and_cordoned_by_the_flag_or_the_taint() {
        let node = |json: serde_json::Value| {
            NodeSpec::from_node(&serde_json::from_value::<Node>(json).unwrap()).unwrap()
        };
        let plain = node(serde_json::json!({"metadata": {"name": "node-a", "uid": "u1"}}));
        assert_eq!(
            plain,
            NodeSpec {
                name: "node-a".into(),
                uid: Some("u1".into()),
                excluded: false,
                cordoned: false,
            }
        );
        let labelled = node(serde_json::json!({"metadata": {"name": "node-a",
            "labels": {EXCLUDE_LABEL: ""}}}));
        assert!(labelled.excluded && !labelled.cordoned);
        let cordoned = node(serde_json::json!({"metadata": {"name": "node-a"},
            "spec": {"unschedulable": true}}));
        assert!(cordoned.cordoned && !cordoned.excluded);
        let tainted = node(serde_json::json!({"metadata": {"name": "node-a"},
            "spec": {"taints": [{"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}]}}));
        assert!(tainted.cordoned);
    }
}
