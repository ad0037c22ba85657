//! Request paths and query strings, resolved against the resource table; shared by the server
//! and by [`super::RequestRecord`], so tests classify requests the way the server served them.

use std::collections::HashMap;

use super::resources::{RESOURCES, ResIdx, resource_by_path};

/// Decoded query parameters; the last occurrence of a key wins.
#[derive(Debug, Clone, Default)]
pub(super) struct Query(HashMap<String, String>);

impl Query {
    /// Form-decoded (`+` is a space); a malformed `%` escape is kept as is rather than refused.
    pub(super) fn parse(raw: &str) -> Self {
        Query(
            form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Go's strconv.ParseBool, which the apiserver uses for `watch` and friends.
    pub(super) fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }
}

/// A request path resolved against [`RESOURCES`].
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Route {
    pub(super) res: ResIdx,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) subresource: Option<String>,
}

pub(super) fn parse_route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    if rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let route = |plural: &str, namespace: Option<&str>, tail: &[&str]| {
        let res = resource_by_path(group, version, plural)?;
        if RESOURCES[res].namespaced != namespace.is_some()
            && !(namespace.is_none() && tail.is_empty())
        {
            // Namespaced objects need a namespace (only their collections are served cluster-wide),
            // and cluster-scoped ones cannot have one.
            return None;
        }
        let (name, subresource) = match tail {
            [] => (None, None),
            [name] => (Some(*name), None),
            [name, sub] => (Some(*name), Some(*sub)),
            _ => return None,
        };
        Some(Route {
            res,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            subresource: subresource.map(str::to_owned),
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resource_by_path(group, version, plural)
                .is_some_and(|r| RESOURCES[r].namespaced) =>
        {
            route(plural, Some(ns), tail)
        }
        [plural, tail @ ..] => route(plural, None, tail),
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve_core_grouped_namespaced_and_cluster_paths() {
        let r = parse_route("/api/v1/namespaces/default/services/web/status").unwrap();
        assert_eq!(RESOURCES[r.res].plural, "services");
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (Some("default"), Some("web"), Some("status"))
        );
        let r = parse_route("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(
            (RESOURCES[r.res].kind, r.namespace, r.name),
            ("EndpointSlice", None, None)
        );
        let r = parse_route("/apis/events.k8s.io/v1/namespaces/x/events").unwrap();
        assert_eq!(RESOURCES[r.res].group, "events.k8s.io");
        let r = parse_route("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(
            (RESOURCES[r.res].plural, r.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let r = parse_route("/api/v1/nodes/n1/status").unwrap();
        assert_eq!(
            (RESOURCES[r.res].plural, r.subresource.as_deref()),
            ("nodes", Some("status"))
        );
        for bad in [
            "/",
            "/api",
            "/api/v1/services/x",
            "/api/v1/widgets",
            "/apis/discovery.k8s.io/v1/namespaces/a/nodes/x",
            "/api/v1//services",
        ] {
            assert_eq!(parse_route(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&x=%zz&empty");
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(q.get("empty"), Some(""));
        let q = Query::parse("a=%&b=%4&&b=%4&c=1&c=2");
        assert_eq!((q.get("a"), q.get("b")), (Some("%"), Some("%4")));
        assert_eq!(q.get("c"), Some("2"), "the last occurrence wins");
    }
}
