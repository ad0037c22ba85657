//! Typed Services and EndpointSlices for the tests, the lab and the bench: one builder on the
//! k8s-openapi types, written out as YAML manifests (for `--source file:`) or as JSON (for the
//! fake API server's `apply`). Only the fields a test sets appear in the output, as k8s-openapi
//! serializes nothing that is unset.
//!
//! ```
//! use l3lb_tests::fixtures::{self, endpoint, port, service, slice};
//! let web = service("web")
//!     .load_balancer()
//!     .annotated_ips("10.0.100.7")
//!     .port(port("TCP", 80).named("http").target(8080));
//! let endpoints = slice("web-1", "web", "IPv4")
//!     .endpoint(endpoint(["10.244.1.5"]).node("node-a").ready(true))
//!     .port(port("TCP", 8080).named("http"));
//! let yaml = fixtures::documents([web.yaml(), endpoints.yaml()]);
//! assert!(yaml.contains("l3lb.io/loadBalancerIPs: 10.0.100.7"));
//! ```
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ObjectReference, Service,
            ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde::Serialize;
use serde_json::Value;

/// The annotation l3lb reads a Service's IPs from (comma-separated).
pub const IPS_ANNOTATION: &str = "l3lb.io/loadBalancerIPs";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service named `name`, with nothing else set (no namespace: readers put it in `default`).
pub fn service(name: &str) -> ServiceFixture {
    ServiceFixture(Service {
        metadata: meta(name),
        ..Service::default()
    })
}

/// An EndpointSlice named `name` of Service `service` (the `kubernetes.io/service-name` label),
/// with `address_type` `IPv4` or `IPv6` and no endpoints yet (`endpoints: []`).
pub fn slice(name: &str, service: &str, address_type: &str) -> SliceFixture {
    let mut metadata = meta(name);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SERVICE_NAME_LABEL.to_owned(), service.to_owned());
    SliceFixture(EndpointSlice {
        metadata,
        address_type: address_type.to_owned(),
        endpoints: Some(Vec::new()),
        ports: None,
    })
}

/// An endpoint with these addresses and nothing else (no node, no conditions).
pub fn endpoint<I>(addresses: I) -> EndpointFixture
where
    I: IntoIterator,
    I::Item: ToString,
{
    EndpointFixture(Endpoint {
        addresses: addresses.into_iter().map(|a| a.to_string()).collect(),
        ..Endpoint::default()
    })
}

/// A port: `protocol` (`TCP`, `UDP`, `SCTP`) and number; for a Service the port it listens on,
/// for an EndpointSlice the endpoints' port.
pub fn port(protocol: &str, port: u16) -> PortFixture {
    PortFixture {
        name: None,
        protocol: protocol.to_owned(),
        port,
        target: None,
    }
}

/// Joins YAML documents into one multi-document manifest.
pub fn documents(yamls: impl IntoIterator<Item = String>) -> String {
    yamls.into_iter().collect::<Vec<_>>().join("---\n")
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

fn to_yaml(object: &impl Serialize) -> String {
    serde_yaml::to_string(object).expect("a k8s-openapi object serializes to YAML")
}

fn to_json(object: &impl Serialize) -> Value {
    serde_json::to_value(object).expect("a k8s-openapi object serializes to JSON")
}

#[derive(Clone, Debug)]
pub struct ServiceFixture(Service);

impl ServiceFixture {
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.0.metadata.namespace = Some(namespace.to_owned());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// The `l3lb.io/loadBalancerIPs` annotation, exactly as given (comma-separated IPs).
    pub fn annotated_ips(self, ips: &str) -> Self {
        self.annotation(IPS_ANNOTATION, ips)
    }

    /// `spec.type: LoadBalancer`.
    pub fn load_balancer(self) -> Self {
        self.type_("LoadBalancer")
    }

    /// `spec.type`.
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.to_owned());
        self
    }

    /// `spec.loadBalancerClass`.
    pub fn class(mut self, class: &str) -> Self {
        self.spec().load_balancer_class = Some(class.to_owned());
        self
    }

    /// `spec.loadBalancerIP` (deprecated in Kubernetes, still read by l3lb).
    pub fn load_balancer_ip(mut self, ip: &str) -> Self {
        self.spec().load_balancer_ip = Some(ip.to_owned());
        self
    }

    /// `spec.externalIPs`.
    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|ip| ip.to_string()).collect());
        self
    }

    /// `spec.sessionAffinity: ClientIP` with `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub fn client_ip_affinity(mut self, timeout_seconds: i32) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".to_owned());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(timeout_seconds),
            }),
        });
        self
    }

    /// `spec.externalTrafficPolicy`.
    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.to_owned());
        self
    }

    /// `spec.ipFamilies`.
    pub fn ip_families(mut self, families: &[&str]) -> Self {
        self.spec().ip_families = Some(families.iter().map(|f| f.to_string()).collect());
        self
    }

    /// One `spec.selector` entry.
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.spec()
            .selector
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Appends a port to `spec.ports`.
    pub fn port(mut self, port: PortFixture) -> Self {
        let port = ServicePort {
            name: port.name,
            protocol: Some(port.protocol),
            port: i32::from(port.port),
            target_port: port.target.map(|t| IntOrString::Int(i32::from(t))),
            ..ServicePort::default()
        };
        self.spec().ports.get_or_insert_with(Vec::new).push(port);
        self
    }

    /// `status.loadBalancer.ingress`, one entry per IP.
    pub fn ingress(mut self, ips: &[&str]) -> Self {
        let ingress = ips
            .iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ..LoadBalancerIngress::default()
            })
            .collect();
        self.0.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..ServiceStatus::default()
        });
        self
    }

    pub fn build(self) -> Service {
        self.0
    }

    pub fn yaml(&self) -> String {
        to_yaml(&self.0)
    }

    pub fn json(&self) -> Value {
        to_json(&self.0)
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(ServiceSpec::default)
    }
}

#[derive(Clone, Debug)]
pub struct SliceFixture(EndpointSlice);

impl SliceFixture {
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.0.metadata.namespace = Some(namespace.to_owned());
        self
    }

    /// A label besides `kubernetes.io/service-name`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn endpoint(mut self, endpoint: EndpointFixture) -> Self {
        self.0
            .endpoints
            .get_or_insert_with(Vec::new)
            .push(endpoint.0);
        self
    }

    /// Appends a port to `ports`; a slice's ports have no target.
    pub fn port(mut self, port: PortFixture) -> Self {
        assert!(
            port.target.is_none(),
            "an EndpointSlice port has no targetPort"
        );
        let port = EndpointPort {
            name: port.name,
            protocol: Some(port.protocol),
            port: Some(i32::from(port.port)),
            ..EndpointPort::default()
        };
        self.0.ports.get_or_insert_with(Vec::new).push(port);
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.0
    }

    pub fn yaml(&self) -> String {
        to_yaml(&self.0)
    }

    pub fn json(&self) -> Value {
        to_json(&self.0)
    }
}

#[derive(Clone, Debug)]
pub struct EndpointFixture(Endpoint);

impl EndpointFixture {
    pub fn node(mut self, node: &str) -> Self {
        self.0.node_name = Some(node.to_owned());
        self
    }

    /// `targetRef`: the Pod behind the endpoint.
    pub fn pod(mut self, namespace: &str, name: &str) -> Self {
        self.0.target_ref = Some(ObjectReference {
            kind: Some("Pod".to_owned()),
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..ObjectReference::default()
        });
        self
    }

    /// `conditions.ready` (the others stay unset unless set too).
    pub fn ready(mut self, ready: bool) -> Self {
        self.conditions_mut().ready = Some(ready);
        self
    }

    pub fn serving(mut self, serving: bool) -> Self {
        self.conditions_mut().serving = Some(serving);
        self
    }

    pub fn terminating(mut self, terminating: bool) -> Self {
        self.conditions_mut().terminating = Some(terminating);
        self
    }

    /// All three conditions at once.
    pub fn conditions(self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.ready(ready).serving(serving).terminating(terminating)
    }

    fn conditions_mut(&mut self) -> &mut EndpointConditions {
        self.0
            .conditions
            .get_or_insert_with(EndpointConditions::default)
    }
}

/// A port for [`ServiceFixture::port`] or [`SliceFixture::port`].
#[derive(Clone, Debug)]
pub struct PortFixture {
    name: Option<String>,
    protocol: String,
    port: u16,
    target: Option<u16>,
}

impl PortFixture {
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// A Service port's `targetPort`.
    pub fn target(mut self, target: u16) -> Self {
        self.target = Some(target);
        self
    }
}

#[cfg(test)]
mod tests {
    use l3lb::cluster::model::{ServiceSpec as Model, SliceSpec};
    use serde::Deserialize as _;
    use serde_json::json;

    use super::*;

    /// What the daemon's file source does with a manifest: each document by its kind into the
    /// k8s-openapi type, then into the daemon's model.
    fn read_back(yaml: &str, node: &str) -> (Vec<Model>, Vec<SliceSpec>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(document).expect("valid YAML");
            match value["kind"].as_str() {
                Some("Service") => {
                    let mut service: Service = serde_yaml::from_value(value).expect("a Service");
                    service
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    services.extend(Model::from_service(&service));
                }
                Some("EndpointSlice") => {
                    let mut slice: EndpointSlice =
                        serde_yaml::from_value(value).expect("an EndpointSlice");
                    slice
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    slices.extend(SliceSpec::from_endpoint_slice(&slice, node));
                }
                other => panic!("unexpected kind {other:?} in\n{yaml}"),
            }
        }
        (services, slices)
    }

    fn web() -> ServiceFixture {
        service("web")
            .namespace("default")
            .load_balancer()
            .annotated_ips("10.0.100.7, 2001:db8:100::7")
            .port(port("TCP", 80).named("http").target(8080))
            .port(port("UDP", 53))
    }

    fn web_slice() -> SliceFixture {
        slice("web-1", "web", "IPv4")
            .namespace("default")
            .endpoint(endpoint(["10.244.1.5"]).node("node-a").ready(true))
            .endpoint(
                endpoint(["10.244.2.5"])
                    .node("node-b")
                    .conditions(false, true, true)
                    .pod("default", "web-b"),
            )
            .port(port("TCP", 8080).named("http"))
    }

    #[test]
    fn the_daemon_reads_back_what_the_fixtures_write() {
        let yaml = documents([web().yaml(), web_slice().yaml()]);
        let (services, slices) = read_back(&yaml, "node-b");
        assert_eq!(services.len(), 1, "{yaml}");
        let service = &services[0];
        assert_eq!(service.key.to_string(), "default/web");
        assert_eq!(service.annotation_ips, ["10.0.100.7", "2001:db8:100::7"]);
        assert!(service.is_load_balancer);

        assert_eq!(slices.len(), 1, "{yaml}");
        let slice = &slices[0];
        assert_eq!(slice.service.as_ref().unwrap().to_string(), "default/web");
        assert!(slice.any_ready, "node-a's endpoint is ready");
        assert_eq!(slice.local.len(), 1, "only node-b's endpoint is kept");
        let local = &slice.local[0];
        assert!(!local.ready && local.serving && local.terminating);
        assert_eq!(slice.ports[0].port, 8080);
    }

    #[test]
    fn only_what_is_set_is_written() {
        assert_eq!(
            web().json(),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default",
                             "annotations": {"l3lb.io/loadBalancerIPs": "10.0.100.7, 2001:db8:100::7"}},
                "spec": {"type": "LoadBalancer",
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                                   {"port": 53, "protocol": "UDP"}]}
            })
        );
        assert_eq!(
            web_slice().json(),
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-1", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.244.1.5"], "nodeName": "node-a", "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.5"], "nodeName": "node-b",
                     "conditions": {"ready": false, "serving": true, "terminating": true},
                     "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-b"}}
                ],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
            })
        );
        // An empty slice still says so: no endpoints, not unknown ones.
        assert_eq!(
            slice("x", "web", "IPv6").json()["endpoints"],
            json!([]),
            "an empty slice lists no endpoints"
        );
    }

    #[test]
    fn the_other_service_fields_land_where_kubernetes_has_them() {
        let value = service("api")
            .class("l3lb.io/anycast")
            .load_balancer_ip("10.0.100.9")
            .external_ips(&["10.0.100.10"])
            .external_traffic_policy("Local")
            .ip_families(&["IPv4", "IPv6"])
            .selector("app", "api")
            .ingress(&["10.0.100.9"])
            .json();
        assert_eq!(
            value,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "api"},
                "spec": {"loadBalancerClass": "l3lb.io/anycast", "loadBalancerIP": "10.0.100.9",
                         "externalIPs": ["10.0.100.10"], "externalTrafficPolicy": "Local",
                         "ipFamilies": ["IPv4", "IPv6"], "selector": {"app": "api"}},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.0.100.9"}]}}
            })
        );
        let yaml = service("api")
            .load_balancer()
            .class("l3lb.io/anycast")
            .load_balancer_ip("10.0.100.9")
            .external_ips(&["10.0.100.10"])
            .ingress(&["10.0.100.11"])
            .port(port("TCP", 443))
            .yaml();
        let (services, _) = read_back(&yaml, "node-a");
        assert_eq!(services.len(), 1, "{yaml}");
        let api = &services[0];
        assert_eq!(
            api.key.to_string(),
            "default/api",
            "no namespace reads as default"
        );
        assert_eq!(api.load_balancer_class.as_deref(), Some("l3lb.io/anycast"));
        assert_eq!(api.load_balancer_ip.as_deref(), Some("10.0.100.9"));
        assert_eq!(api.external_ips, ["10.0.100.10"]);
        assert_eq!(api.ingress_ips, ["10.0.100.11"]);
        assert_eq!((&*api.ports[0].protocol, api.ports[0].port), ("TCP", 443));
    }
}
