//! The resources the fake serves, in one table, so adding a kind is one line and every other
//! part (routing, store, errors) looks kinds up here rather than knowing them.

/// How one kind of object is served. Adding a resource is one line in [`RESOURCES`].
#[derive(Debug)]
pub(super) struct ResourceDef {
    /// API group; empty for the core group (served under `/api/v1`).
    pub(super) group: &'static str,
    pub(super) version: &'static str,
    pub(super) plural: &'static str,
    pub(super) kind: &'static str,
    pub(super) namespaced: bool,
    /// Whether `/status` is a subresource (and so main-resource writes cannot change status).
    pub(super) status: bool,
    /// Whether PUT on a missing object creates it (true for leases and events upstream).
    pub(super) create_on_update: bool,
}

impl ResourceDef {
    const fn namespaced(
        group: &'static str,
        version: &'static str,
        plural: &'static str,
        kind: &'static str,
    ) -> Self {
        ResourceDef {
            group,
            version,
            plural,
            kind,
            namespaced: true,
            status: false,
            create_on_update: false,
        }
    }

    const fn cluster(
        group: &'static str,
        version: &'static str,
        plural: &'static str,
        kind: &'static str,
    ) -> Self {
        ResourceDef {
            namespaced: false,
            ..Self::namespaced(group, version, plural, kind)
        }
    }

    const fn with_status(self) -> Self {
        ResourceDef {
            status: true,
            ..self
        }
    }

    const fn create_on_update(self) -> Self {
        ResourceDef {
            create_on_update: true,
            ..self
        }
    }

    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` for the core group, `plural.group` otherwise: the name the control API takes and
    /// the one the apiserver uses in its error messages.
    pub(super) fn key(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

pub(super) static RESOURCES: &[ResourceDef] = &[
    ResourceDef::namespaced("", "v1", "services", "Service").with_status(),
    ResourceDef::namespaced("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceDef::namespaced("coordination.k8s.io", "v1", "leases", "Lease").create_on_update(),
    ResourceDef::namespaced("", "v1", "events", "Event").create_on_update(),
    ResourceDef::namespaced("events.k8s.io", "v1", "events", "Event").create_on_update(),
    ResourceDef::cluster("", "v1", "nodes", "Node").with_status(),
    ResourceDef::cluster("", "v1", "namespaces", "Namespace").with_status(),
    ResourceDef::cluster("l3lb.io", "v1alpha1", "l3lbippools", "L3lbIPPool").with_status(),
];

/// Index into [`RESOURCES`]; the store's notion of "which resource".
pub(super) type ResIdx = usize;

/// Finds a resource by `plural.group` (or `plural` for core), or by a bare plural when that is
/// unambiguous, so tests can say "endpointslices".
pub(super) fn resource_by_name(name: &str) -> Option<ResIdx> {
    if let Some(i) = RESOURCES.iter().position(|r| r.key() == name) {
        return Some(i);
    }
    let mut by_plural = RESOURCES
        .iter()
        .enumerate()
        .filter(|(_, r)| r.plural == name);
    match (by_plural.next(), by_plural.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

pub(super) fn resource_by_type(api_version: &str, kind: &str) -> Option<ResIdx> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

pub(super) fn resource_by_path(group: &str, version: &str, plural: &str) -> Option<ResIdx> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}
