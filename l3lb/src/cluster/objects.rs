//! Services and EndpointSlices as the kube source decodes them: only the fields the model
//! ([`super::model`]) reads, straight from the watch event's JSON.
//!
//! A full `k8s_openapi` object allocates every string, map and list of the object (managed
//! fields as a generic JSON tree, every label and annotation, each endpoint's `targetRef`, …),
//! only for the conversion to the model to drop nearly all of it. These types let serde skip
//! whatever the model does not read without allocating (unknown fields go to `IgnoredAny`) and
//! cut the lists the model bounds ([`super::limits`]) while decoding, so a hostile object costs
//! its bounded part and no more. Annotations, labels and `managedFields` are read for the few
//! keys that matter, nothing else of them is kept.
//!
//! `metadata` stays a `k8s_openapi` [`ObjectMeta`], as `kube::Resource` requires, holding only
//! name, namespace, resourceVersion and a Service's uid (the watcher resumes from the last object's
//! resourceVersion). Where a field is required or typed in the API (`spec.ports[].port`,
//! `endpoints[].addresses`, `addressType`), it is here too, so an object that `k8s_openapi` would
//! refuse is refused the same way.
use std::fmt;

use k8s_openapi::{
    Metadata, NamespaceResourceScope, Resource, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use super::{
    limits::{MAX_ADDRESSES_PER_ENDPOINT, MAX_IPS_PER_SERVICE, clip},
    model::{IngressOwner, STATUS_FIELD_MANAGER},
};

/// A Service, as much of it as [`super::model::ServiceSpec`] reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "RawService")]
pub struct Service {
    pub metadata: ObjectMeta,
    /// The `l3lb.io/loadBalancerIPs` annotation.
    pub load_balancer_ips: Option<String>,
    /// The `l3lb.io/allocated-ips` annotation.
    pub allocated_ips: Option<String>,
    /// Who owns `status.loadBalancer.ingress`, from `managedFields`.
    pub ingress_owner: IngressOwner,
    pub type_: Option<String>,
    pub load_balancer_class: Option<String>,
    /// `spec.loadBalancerIP`, cut to [`super::limits::MAX_IP_TEXT`].
    pub load_balancer_ip: Option<String>,
    /// `spec.externalIPs`, the first [`MAX_IPS_PER_SERVICE`].
    pub external_ips: Bounded<MAX_IPS_PER_SERVICE>,
    pub ports: Vec<ServicePort>,
    pub session_affinity: Option<String>,
    /// `spec.sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub affinity_timeout_seconds: Option<i32>,
    /// `status.loadBalancer.ingress[].ip`, the first [`MAX_IPS_PER_SERVICE`].
    pub ingress_ips: Bounded<MAX_IPS_PER_SERVICE>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: i32,
}

/// An EndpointSlice, as much of it as [`super::model::SliceSpec`] reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "RawSlice")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    /// The `kubernetes.io/service-name` label.
    pub service_name: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The first [`MAX_ADDRESSES_PER_ENDPOINT`] addresses, and how many there were. Required:
    /// through `deserialize_with`, as serde would take a missing list for an empty one.
    #[serde(deserialize_with = "Bounded::deserialize")]
    pub addresses: Bounded<MAX_ADDRESSES_PER_ENDPOINT>,
    #[serde(default)]
    pub conditions: Option<Conditions>,
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i32>,
}

impl Resource for Service {
    const API_VERSION: &'static str =
        <k8s_openapi::api::core::v1::Service as Resource>::API_VERSION;
    const GROUP: &'static str = <k8s_openapi::api::core::v1::Service as Resource>::GROUP;
    const KIND: &'static str = <k8s_openapi::api::core::v1::Service as Resource>::KIND;
    const VERSION: &'static str = <k8s_openapi::api::core::v1::Service as Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <k8s_openapi::api::core::v1::Service as Resource>::URL_PATH_SEGMENT;
    type Scope = NamespaceResourceScope;
}

impl Metadata for Service {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Resource for EndpointSlice {
    const API_VERSION: &'static str =
        <k8s_openapi::api::discovery::v1::EndpointSlice as Resource>::API_VERSION;
    const GROUP: &'static str = <k8s_openapi::api::discovery::v1::EndpointSlice as Resource>::GROUP;
    const KIND: &'static str = <k8s_openapi::api::discovery::v1::EndpointSlice as Resource>::KIND;
    const VERSION: &'static str =
        <k8s_openapi::api::discovery::v1::EndpointSlice as Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <k8s_openapi::api::discovery::v1::EndpointSlice as Resource>::URL_PATH_SEGMENT;
    type Scope = NamespaceResourceScope;
}

impl Metadata for EndpointSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The first `N` strings of a list (items without a string skipped), each cut to
/// [`super::limits::MAX_IP_TEXT`], and how many there were: a list of a million costs `N`
/// strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bounded<const N: usize> {
    pub items: Vec<String>,
    pub total: usize,
}

impl<const N: usize> Bounded<N> {
    /// Whether items were dropped.
    pub fn more(&self) -> bool {
        self.total > self.items.len()
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bounded<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for Items<N> {
            type Value = Bounded<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Bounded::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Bounded::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_seq(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut bounded = Bounded::<N>::default();
                while let Some(item) = seq.next_element_seed(Item {
                    keep: bounded.items.len() < N,
                })? {
                    if let Some(item) = item {
                        bounded.total += 1;
                        if bounded.items.len() < N {
                            bounded.items.push(item);
                        }
                    }
                }
                Ok(bounded)
            }
        }
        deserializer.deserialize_option(Items::<N>)
    }
}

/// One item of a [`Bounded`] list: a string, or an object whose `ip` is one (an ingress entry).
/// `Some(item)` when it has one (clipped, or empty when not kept).
struct Item {
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for Item {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, or an object with an `ip`")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Some(if self.keep { clip(text) } else { String::new() }))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut ip = None;
        while let Some(key) = map.next_key::<Key>()? {
            if key.0 == KeyKind::Ip {
                ip = map.next_value_seed(OptionalString {
                    keep: self.keep,
                    blank_is_none: false,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(ip)
    }
}

/// An optional string, cut to [`super::limits::MAX_IP_TEXT`] (empty when not kept).
struct OptionalString {
    keep: bool,
    /// A blank string counts as none.
    blank_is_none: bool,
}

impl<'de> DeserializeSeed<'de> for OptionalString {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptionalString {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if self.blank_is_none && text.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(if self.keep { clip(text) } else { String::new() }))
    }
}

/// A map key, told apart without allocating.
struct Key(KeyKind);

#[derive(PartialEq, Eq)]
enum KeyKind {
    Ip,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(Key(if key == "ip" {
                    KeyKind::Ip
                } else {
                    KeyKind::Other
                }))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// `spec.loadBalancerIP`: cut to [`super::limits::MAX_IP_TEXT`] on arrival; a blank one is none.
fn clipped<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    OptionalString {
        keep: true,
        blank_is_none: true,
    }
    .deserialize(deserializer)
}

#[derive(Deserialize)]
struct RawService {
    #[serde(default)]
    metadata: RawServiceMeta,
    #[serde(default)]
    spec: Option<RawServiceSpec>,
    #[serde(default)]
    status: Option<RawServiceStatus>,
}

// The metadata every kind keeps is spelled out in each (no `#[serde(flatten)]`: it would make
// serde buffer every other field of `metadata` as generic content): name, namespace, uid and
// resourceVersion, what `kube::Resource` and the model's keys need.

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServiceMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    annotations: Option<ServiceAnnotations>,
    #[serde(default)]
    managed_fields: Option<Vec<ManagedFieldsEntry>>,
}

fn object_meta(
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
) -> ObjectMeta {
    ObjectMeta {
        name,
        namespace,
        uid,
        resource_version,
        ..ObjectMeta::default()
    }
}

/// The annotations l3lb reads ([`super::model::LOAD_BALANCER_IPS_ANNOTATION`],
/// [`super::model::ALLOCATED_IPS_ANNOTATION`]); the others are skipped.
#[derive(Default, Deserialize)]
struct ServiceAnnotations {
    #[serde(rename = "l3lb.io/loadBalancerIPs")]
    load_balancer_ips: Option<String>,
    #[serde(rename = "l3lb.io/allocated-ips")]
    allocated_ips: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManagedFieldsEntry {
    #[serde(default)]
    manager: Option<IsStatusManager>,
    #[serde(default, rename = "fieldsV1")]
    fields_v1: OwnsIngress,
}

/// Whether a field manager is l3lb's status writer ([`STATUS_FIELD_MANAGER`]).
struct IsStatusManager(bool);

impl<'de> Deserialize<'de> for IsStatusManager {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Manager;
        impl Visitor<'_> for Manager {
            type Value = IsStatusManager;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field manager's name")
            }
            fn visit_str<E: de::Error>(self, manager: &str) -> Result<IsStatusManager, E> {
                Ok(IsStatusManager(manager == STATUS_FIELD_MANAGER))
            }
        }
        deserializer.deserialize_str(Manager)
    }
}

/// Whether a FieldsV1 set holds `f:status` → `f:loadBalancer` → `f:ingress`. Anything else
/// (another shape, null) is "no", as a JSON pointer lookup would say.
#[derive(Default)]
struct OwnsIngress(bool);

const INGRESS_PATH: [&str; 3] = ["f:status", "f:loadBalancer", "f:ingress"];

impl<'de> Deserialize<'de> for OwnsIngress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Path(&INGRESS_PATH)
            .deserialize(deserializer)
            .map(OwnsIngress)
    }
}

/// Whether the value holds `path` (object keys, outermost first); the rest is skipped.
#[derive(Clone, Copy)]
struct Path(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Path {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A key of a [`Path`] step: whether it is the step's.
struct PathKey(&'static str);

impl<'de> DeserializeSeed<'de> for PathKey {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for PathKey {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

impl<'de> Visitor<'de> for Path {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let Some((&first, rest)) = self.0.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(true);
        };
        let mut found = false;
        while let Some(is_step) = map.next_key_seed(PathKey(first))? {
            if is_step && !found {
                found = map.next_value_seed(Path(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.0.is_empty())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(self.0.is_empty())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(self.0.is_empty())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(self.0.is_empty())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(self.0.is_empty())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(self.0.is_empty())
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(self.0.is_empty())
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(self.0.is_empty())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        self.deserialize(d)
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServiceSpec {
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    load_balancer_class: Option<String>,
    #[serde(default, rename = "loadBalancerIP", deserialize_with = "clipped")]
    load_balancer_ip: Option<String>,
    #[serde(default, rename = "externalIPs")]
    external_ips: Bounded<MAX_IPS_PER_SERVICE>,
    #[serde(default)]
    ports: Option<Vec<ServicePort>>,
    #[serde(default)]
    session_affinity: Option<String>,
    #[serde(default)]
    session_affinity_config: Option<RawAffinityConfig>,
}

#[derive(Deserialize)]
struct RawAffinityConfig {
    #[serde(default, rename = "clientIP")]
    client_ip: Option<RawClientIp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClientIp {
    #[serde(default)]
    timeout_seconds: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServiceStatus {
    #[serde(default)]
    load_balancer: Option<RawLoadBalancerStatus>,
}

#[derive(Deserialize)]
struct RawLoadBalancerStatus {
    #[serde(default)]
    ingress: Bounded<MAX_IPS_PER_SERVICE>,
}

impl From<RawService> for Service {
    fn from(raw: RawService) -> Service {
        let meta = raw.metadata;
        let annotations = meta.annotations.unwrap_or_default();
        // As `managedFields` are read: the status writer's entry wins, another's makes it
        // someone else's, none leaves it unknown.
        let mut ingress_owner = IngressOwner::Unknown;
        for entry in meta.managed_fields.into_iter().flatten() {
            if !entry.fields_v1.0 {
                continue;
            }
            if entry.manager.is_some_and(|m| m.0) {
                ingress_owner = IngressOwner::L3lb;
                break;
            }
            ingress_owner = IngressOwner::Other;
        }
        let spec = raw.spec.unwrap_or_default();
        Service {
            metadata: object_meta(meta.name, meta.namespace, meta.uid, meta.resource_version),
            load_balancer_ips: annotations.load_balancer_ips,
            allocated_ips: annotations.allocated_ips,
            ingress_owner,
            type_: spec.type_,
            load_balancer_class: spec.load_balancer_class,
            load_balancer_ip: spec.load_balancer_ip,
            external_ips: spec.external_ips,
            ports: spec.ports.unwrap_or_default(),
            session_affinity: spec.session_affinity,
            affinity_timeout_seconds: spec
                .session_affinity_config
                .and_then(|config| config.client_ip)
                .and_then(|client_ip| client_ip.timeout_seconds),
            ingress_ips: raw
                .status
                .and_then(|status| status.load_balancer)
                .map(|lb| lb.ingress)
                .unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSlice {
    #[serde(default)]
    metadata: RawSliceMeta,
    /// Required by the API, unread by l3lb.
    #[expect(
        dead_code,
        reason = "present only to be required, as the API requires it"
    )]
    address_type: IgnoredAny,
    #[serde(default)]
    endpoints: Option<Vec<Endpoint>>,
    #[serde(default)]
    ports: Option<Vec<EndpointPort>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSliceMeta {
    name: Option<String>,
    namespace: Option<String>,
    // No uid: nothing names a slice in an Event.
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<SliceLabels>,
}

/// The label l3lb reads ([`super::model::SERVICE_NAME_LABEL`]); the others are skipped.
#[derive(Default, Deserialize)]
struct SliceLabels {
    #[serde(rename = "kubernetes.io/service-name")]
    service_name: Option<String>,
}

impl From<RawSlice> for EndpointSlice {
    fn from(raw: RawSlice) -> EndpointSlice {
        let meta = raw.metadata;
        EndpointSlice {
            metadata: object_meta(meta.name, meta.namespace, None, meta.resource_version),
            service_name: meta.labels.and_then(|labels| labels.service_name),
            endpoints: raw.endpoints.unwrap_or_default(),
            ports: raw.ports.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cluster::model::{
        ALLOCATED_IPS_ANNOTATION, LOAD_BALANCER_IPS_ANNOTATION, SERVICE_NAME_LABEL,
    };

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_kinds_are_the_apis() {
        use kube::Resource as _;
        assert_eq!(Service::plural(&()), "services");
        assert_eq!(Service::api_version(&()), "v1");
        assert_eq!(
            Service::url_path(&(), Some("default")),
            "/api/v1/namespaces/default/services"
        );
        assert_eq!(EndpointSlice::api_version(&()), "discovery.k8s.io/v1");
        assert_eq!(
            EndpointSlice::url_path(&(), None),
            "/apis/discovery.k8s.io/v1/endpointslices"
        );
    }

    #[test]
    fn a_service_keeps_what_the_model_reads_and_nothing_else() {
        let svc = service(json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "web"},
                "annotations": {
                    LOAD_BALANCER_IPS_ANNOTATION: "10.0.0.1, 10.0.0.2",
                    ALLOCATED_IPS_ANNOTATION: "10.0.0.3",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": [1, 2, 3]}",
                },
                "ownerReferences": [{"kind": "X", "name": "x", "uid": "y", "apiVersion": "v1"}],
            },
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": "l3lb.io/l3lb",
                "loadBalancerIP": " 10.0.0.4 ",
                "externalIPs": ["10.0.0.5"],
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web",
                           "nodePort": 30080}],
                "selector": {"app": "web"},
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "externalTrafficPolicy": "Local",
                "ipFamilies": ["IPv4"],
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "10.0.0.6", "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]},
                {"hostname": "no-ip.example"},
            ]}},
        }));
        let meta = &svc.metadata;
        assert_eq!(meta.name.as_deref(), Some("web"));
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        assert_eq!(meta.uid.as_deref(), Some("u-1"));
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert!(meta.labels.is_none() && meta.annotations.is_none());
        assert!(meta.owner_references.is_none() && meta.creation_timestamp.is_none());
        assert_eq!(svc.load_balancer_ips.as_deref(), Some("10.0.0.1, 10.0.0.2"));
        assert_eq!(svc.allocated_ips.as_deref(), Some("10.0.0.3"));
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(svc.load_balancer_class.as_deref(), Some("l3lb.io/l3lb"));
        assert_eq!(svc.load_balancer_ip.as_deref(), Some(" 10.0.0.4 "));
        assert_eq!(svc.external_ips.items, ["10.0.0.5"]);
        assert_eq!(svc.ports.len(), 1);
        assert_eq!(svc.ports[0].port, 80);
        assert_eq!(svc.ports[0].name.as_deref(), Some("http"));
        assert_eq!(svc.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(svc.affinity_timeout_seconds, Some(60));
        assert_eq!(
            svc.ingress_ips.items,
            ["10.0.0.6"],
            "entries without an ip are skipped"
        );
        assert!(!svc.ingress_ips.more());
        assert_eq!(svc.ingress_owner, IngressOwner::Unknown);
    }

    #[test]
    fn nulls_and_absences_are_empty() {
        let svc = service(json!({
            "metadata": {"name": "a", "annotations": null, "managedFields": null},
            "spec": {"externalIPs": null, "ports": null, "loadBalancerIP": "  "},
            "status": {"loadBalancer": {"ingress": null}},
        }));
        assert!(svc.external_ips.items.is_empty() && svc.ports.is_empty());
        assert_eq!(svc.load_balancer_ip, None, "a blank loadBalancerIP is none");
        assert!(svc.ingress_ips.items.is_empty());
        let bare = service(json!({}));
        assert_eq!(bare.metadata.name, None);
        assert!(bare.type_.is_none());
    }

    #[test]
    fn the_status_writer_is_told_apart_in_managed_fields() {
        let owner = |managed: serde_json::Value| {
            service(json!({"metadata": {"name": "a", "managedFields": managed}})).ingress_owner
        };
        let ingress = json!({"f:status": {"f:loadBalancer": {"f:ingress": {}}}});
        let entry = |manager: &str, fields: &serde_json::Value| {
            json!({"manager": manager, "operation": "Update", "apiVersion": "v1",
                   "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                   "fieldsV1": fields, "subresource": "status"})
        };
        let spec = json!({"f:spec": {"f:ports": {".": {}}}, "f:status": {"f:conditions": {}}});
        assert_eq!(owner(json!([])), IngressOwner::Unknown);
        assert_eq!(
            owner(json!([entry("kubectl", &spec)])),
            IngressOwner::Unknown
        );
        assert_eq!(
            owner(json!([
                entry("kubectl", &spec),
                entry(STATUS_FIELD_MANAGER, &ingress)
            ])),
            IngressOwner::L3lb
        );
        assert_eq!(
            owner(json!([
                entry("metallb", &ingress),
                entry(STATUS_FIELD_MANAGER, &ingress)
            ])),
            IngressOwner::L3lb,
            "l3lb's entry wins wherever it is"
        );
        assert_eq!(
            owner(json!([entry("metallb", &ingress)])),
            IngressOwner::Other
        );
        // Shapes a JSON pointer would find nothing in.
        for odd in [
            json!(null),
            json!("f:status"),
            json!({"f:status": "f:loadBalancer"}),
            json!({"f:status": {"f:loadBalancer": [1, {"f:ingress": {}}]}}),
        ] {
            assert_eq!(
                owner(json!([entry("metallb", &odd)])),
                IngressOwner::Unknown,
                "{odd}"
            );
        }
        // A present but null `f:ingress` is still present.
        let null = json!({"f:status": {"f:loadBalancer": {"f:ingress": null}}});
        assert_eq!(owner(json!([entry("metallb", &null)])), IngressOwner::Other);
    }

    #[test]
    fn lists_are_cut_while_decoding() {
        let many: Vec<String> = (0..100).map(|i| format!("10.0.{i}.1")).collect();
        let long = "1".repeat(10_000);
        let svc = service(json!({
            "metadata": {"name": "a"},
            "spec": {"externalIPs": many, "loadBalancerIP": long},
            "status": {"loadBalancer": {"ingress": many.iter().map(|ip| json!({"ip": ip}))
                .collect::<Vec<_>>()}},
        }));
        assert_eq!(svc.external_ips.items.len(), MAX_IPS_PER_SERVICE);
        assert_eq!(svc.external_ips.total, 100);
        assert!(svc.external_ips.more() && svc.ingress_ips.more());
        assert_eq!(svc.ingress_ips.items[63], "10.0.63.1");
        let ip = svc.load_balancer_ip.unwrap();
        assert!(ip.len() < 100 && ip.ends_with('…'), "{ip}");
    }

    #[test]
    fn a_slice_keeps_endpoints_ports_and_its_service() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": "web-x", "namespace": "shop", "resourceVersion": "7",
                         "labels": {SERVICE_NAME_LABEL: "web", "other": "x"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "t"},
                         "managedFields": [{"manager": "kube-controller-manager",
                                            "fieldsV1": {"f:endpoints": {}}}]},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.0.1"], "conditions": {"ready": true, "serving": true,
                 "terminating": false}, "nodeName": "node-a", "zone": "z",
                 "targetRef": {"kind": "Pod", "name": "p", "namespace": "shop", "uid": "u"}},
                {"addresses": (0..150).map(|i| format!("10.245.0.{i}")).collect::<Vec<_>>()},
            ],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "http"}],
        }))
        .unwrap();
        assert_eq!(slice.metadata.resource_version.as_deref(), Some("7"));
        assert!(slice.metadata.labels.is_none());
        assert_eq!(slice.service_name.as_deref(), Some("web"));
        assert_eq!(slice.endpoints.len(), 2);
        let first = &slice.endpoints[0];
        assert_eq!(first.addresses.items, ["10.244.0.1"]);
        assert_eq!(first.node_name.as_deref(), Some("node-a"));
        assert_eq!(first.conditions.and_then(|c| c.ready), Some(true));
        let second = &slice.endpoints[1];
        assert_eq!(second.addresses.items.len(), MAX_ADDRESSES_PER_ENDPOINT);
        assert_eq!(second.addresses.total, 150);
        assert!(second.node_name.is_none() && second.conditions.is_none());
        assert_eq!(slice.ports[0].port, Some(8080));
    }

    #[test]
    fn what_the_api_requires_is_required() {
        let no_type = json!({"metadata": {"name": "a"}, "endpoints": []});
        assert!(serde_json::from_value::<EndpointSlice>(no_type).is_err());
        let no_addresses =
            json!({"metadata": {"name": "a"}, "addressType": "IPv4", "endpoints": [{}]});
        assert!(serde_json::from_value::<EndpointSlice>(no_addresses).is_err());
        let no_port = json!({"metadata": {"name": "a"}, "spec": {"ports": [{"name": "x"}]}});
        assert!(serde_json::from_value::<Service>(no_port).is_err());
        let null_endpoints = json!({"metadata": {"name": "a"}, "addressType": "IPv4",
                                    "endpoints": null});
        let slice: EndpointSlice = serde_json::from_value(null_endpoints).unwrap();
        assert!(slice.endpoints.is_empty());
    }

    #[test]
    fn watch_events_decode_into_the_slim_types() {
        let line = r#"{"type":"MODIFIED","object":{"kind":"Service","apiVersion":"v1","metadata":{"name":"a","namespace":"default","resourceVersion":"9","managedFields":[{"manager":"l3lb","fieldsV1":{"f:status":{"f:loadBalancer":{"f:ingress":{}}}}}]},"spec":{"type":"LoadBalancer"}}}"#;
        let event: kube::api::WatchEvent<Service> = serde_json::from_str(line).unwrap();
        let kube::api::WatchEvent::Modified(svc) = event else {
            panic!("a MODIFIED event")
        };
        assert_eq!(svc.ingress_owner, IngressOwner::L3lb);
        assert_eq!(svc.metadata.resource_version.as_deref(), Some("9"));
    }
}
