//! What the lab tells the l3lbs: a Service and its endpoints, written as Kubernetes manifests
//! into the directory every l3lb reads (`--source file:`).
use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use super::{SERVICE_PORT, topology::PodAddresses};
use crate::fixtures::{self, endpoint, port, slice};

/// A Service and its endpoints, as the lab writes them: a `type: LoadBalancer` Service with the
/// `l3lb.io/loadBalancerIPs` annotation, and one EndpointSlice per address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// The Service's IPs; with `from_pool`, the ones the pool will give it (the nodes' DNAT and
    /// the slices' families need them), not written into the manifest.
    pub ips: Vec<IpAddr>,
    pub endpoints: Vec<Endpoint>,
    /// Ask for no IP: l3lb allocates one from an `L3lbIPPool` (see [`pool`]).
    pub from_pool: bool,
}

impl Service {
    pub fn new(name: &str, ips: &[&str]) -> Self {
        Service {
            name: name.to_owned(),
            ips: ips
                .iter()
                .map(|ip| ip.parse().unwrap_or_else(|_| panic!("{ip:?} is not an IP")))
                .collect(),
            endpoints: Vec::new(),
            from_pool: false,
        }
    }

    /// A Service that names no IP and expects `expected` from a pool.
    pub fn pooled(name: &str, expected: &[&str]) -> Self {
        Service {
            from_pool: true,
            ..Service::new(name, expected)
        }
    }

    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }
}

/// One endpoint: a pod (created on first use) on node `node`, with its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: String,
    pub node: usize,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    pub fn ready(pod: &str, node: usize) -> Self {
        Endpoint {
            pod: pod.to_owned(),
            node,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Draining: still serving its connections, no longer ready.
    pub fn terminating(pod: &str, node: usize) -> Self {
        Endpoint {
            ready: false,
            serving: true,
            terminating: true,
            ..Endpoint::ready(pod, node)
        }
    }

    pub fn not_ready(pod: &str, node: usize) -> Self {
        Endpoint {
            ready: false,
            serving: false,
            terminating: false,
            ..Endpoint::ready(pod, node)
        }
    }
}

/// The YAML for `service` (real Kubernetes object shapes, namespace `default`), with `pod`
/// giving each endpoint's pod addresses.
pub(super) fn render(service: &Service, pod: impl Fn(&str) -> PodAddresses) -> String {
    let name = &service.name;
    let ips: Vec<String> = service.ips.iter().map(IpAddr::to_string).collect();
    let mut object = fixtures::service(name).namespace("default");
    if !service.from_pool {
        object = object.annotated_ips(&ips.join(","));
    }
    let mut yamls = vec![
        object
            .load_balancer()
            .selector("app", name)
            .port(port("TCP", SERVICE_PORT).named("http").target(SERVICE_PORT))
            .yaml(),
    ];
    for (family, suffix, is_v4) in [("IPv4", "v4", true), ("IPv6", "v6", false)] {
        if !service.ips.iter().any(|ip| ip.is_ipv4() == is_v4) {
            continue;
        }
        let mut family_slice = slice(&format!("{name}-{suffix}"), name, family)
            .namespace("default")
            .port(port("TCP", SERVICE_PORT).named("http"));
        for e in &service.endpoints {
            let addresses = pod(&e.pod);
            let address = if is_v4 {
                addresses.ipv4.to_string()
            } else {
                addresses.ipv6.to_string()
            };
            family_slice = family_slice.endpoint(
                endpoint([address])
                    .node(&super::node_name(e.node))
                    .pod("default", &e.pod)
                    .conditions(e.ready, e.serving, e.terminating),
            );
        }
        yamls.push(family_slice.yaml());
    }
    fixtures::documents(yamls)
}

/// An `L3lbIPPool` manifest: l3lb gives Services without an IP addresses from `blocks`.
pub fn pool(name: &str, blocks: &[&str]) -> String {
    let blocks: Vec<String> = blocks.iter().map(|b| format!("{b:?}")).collect();
    format!(
        "apiVersion: l3lb.io/v1alpha1\nkind: L3lbIPPool\nmetadata:\n  name: {name}\nspec:\n  blocks: [{}]\n",
        blocks.join(", ")
    )
}

/// The directory the l3lbs read, one file per Service.
pub(super) struct Manifests {
    dir: PathBuf,
}

impl Manifests {
    /// Creates `dir`.
    pub fn create(dir: PathBuf) -> Manifests {
        fs::create_dir(&dir).unwrap_or_else(|err| {
            panic!("creating the manifest directory {}: {err}", dir.display())
        });
        Manifests { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `<name>.yaml` at once (a rename, so no l3lb reads half of it); returns when.
    pub fn write(&self, name: &str, text: &str) -> Instant {
        let file = self.dir.join(format!("{name}.yaml"));
        let temporary = self.dir.join(format!(".{name}.yaml.tmp"));
        fs::write(&temporary, text)
            .unwrap_or_else(|err| panic!("writing {}: {err}", temporary.display()));
        fs::rename(&temporary, &file)
            .unwrap_or_else(|err| panic!("moving {} into place: {err}", file.display()));
        Instant::now()
    }

    /// Removes `<name>.yaml`; returns when.
    pub fn remove(&self, name: &str) -> Instant {
        let file = self.dir.join(format!("{name}.yaml"));
        fs::remove_file(&file).unwrap_or_else(|err| panic!("removing {}: {err}", file.display()));
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use l3lb::cluster::model::{ServiceSpec, SliceSpec};
    use serde::Deserialize as _;

    use super::*;

    #[test]
    fn a_service_renders_as_one_service_and_a_slice_per_family() {
        let web = Service::new("web", &["10.0.100.7", "2001:db8:100::7"])
            .endpoint(Endpoint::ready("web-a", 0))
            .endpoint(Endpoint::terminating("web-b", 1));
        let yaml = render(&web, |pod| match pod {
            "web-a" => PodAddresses::of(0, 0),
            _ => PodAddresses::of(1, 0),
        });
        let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
            .collect();
        assert_eq!(documents.len(), 3, "{yaml}");
        let service: k8s_openapi::api::core::v1::Service =
            serde_yaml::from_value(documents[0].clone()).expect("a Service");
        let spec = ServiceSpec::from_service(&service).expect("named, in default");
        assert_eq!(spec.annotation_ips, ["10.0.100.7", "2001:db8:100::7"]);
        assert!(spec.is_load_balancer);

        // node-b sees its own, draining endpoint in each family's slice.
        for (document, address) in [
            (&documents[1], "10.244.2.2"),
            (&documents[2], "fd00:244:2::2"),
        ] {
            let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
                serde_yaml::from_value(document.clone()).expect("an EndpointSlice");
            let slice = SliceSpec::from_endpoint_slice(&slice, "node-b").expect("a slice");
            assert_eq!(slice.service.unwrap().to_string(), "default/web");
            assert!(slice.any_ready);
            assert_eq!(slice.local.len(), 1, "{yaml}");
            assert_eq!(slice.local[0].addresses, [address]);
            assert!(slice.local[0].terminating && slice.local[0].serving);
        }
    }

    #[test]
    fn a_pooled_service_names_no_ip_and_the_pool_parses() {
        let yaml = render(&Service::pooled("auto", &["10.0.100.200"]), |_| {
            unreachable!("no pods")
        });
        assert!(!yaml.contains("loadBalancerIPs"), "{yaml}");
        assert!(yaml.contains("kind: EndpointSlice"), "{yaml}");
        let pool: l3lb::crd::L3lbIPPool =
            serde_yaml::from_str(&pool("lab", &["10.0.100.200/30"])).expect("an L3lbIPPool");
        assert_eq!(pool.spec.blocks, ["10.0.100.200/30"]);
    }

    #[test]
    fn a_service_without_endpoints_says_so() {
        let yaml = render(&Service::new("empty", &["10.0.100.9"]), |_| {
            unreachable!("no pods")
        });
        assert_eq!(yaml.matches("kind: EndpointSlice").count(), 1, "{yaml}");
        assert!(yaml.contains("endpoints: []"), "{yaml}");
    }
}
