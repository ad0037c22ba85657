//! RBAC as the API server enforces it, for the daemon's ServiceAccount: the ClusterRoles,
//! Roles and bindings are loaded from the deploy manifests, and a request with the daemon's
//! token that no bound rule allows gets `403 Forbidden`. Requests without a token are the test
//! harness's own (an administrator) and always allowed.
//!
//! Rules match on verb, API group, resource (with `resource/subresource`) and, for Roles, the
//! namespace; `resourceNames` narrow a rule to named objects. Which rules were ever used is
//! recorded, so a test can insist that nothing is granted that l3lb does not use.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

/// The ServiceAccount the daemon runs as (deploy/kubernetes/serviceaccount.yaml).
pub(super) const DAEMON_NAMESPACE: &str = "l3lb-system";
pub(super) const DAEMON_SERVICE_ACCOUNT: &str = "l3lb";
/// The bearer token the fake's kubeconfig hands out; it stands for the daemon's ServiceAccount.
pub(super) const DAEMON_TOKEN: &str = "fake-token-system-serviceaccount-l3lb-system-l3lb";

/// One request, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Attributes {
    pub(super) verb: String,
    pub(super) group: String,
    /// `plural` or `plural/subresource`.
    pub(super) resource: String,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
}

impl Attributes {
    pub(super) fn forbidden_message(&self) -> String {
        let scope = match &self.namespace {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".to_owned(),
        };
        format!(
            "{} is forbidden: User \"system:serviceaccount:{DAEMON_NAMESPACE}:{DAEMON_SERVICE_ACCOUNT}\" cannot {} resource \"{}\" in API group \"{}\"{scope}",
            self.resource, self.verb, self.resource, self.group
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// One grant a rule makes: (apiGroup, resource, verb, namespace or `None` for cluster-wide).
pub type Grant = (String, String, String, Option<String>);

#[derive(Debug, Default)]
pub(super) struct Rbac {
    /// Rules bound to the daemon, with the namespace a RoleBinding limits them to.
    rules: Vec<(Rule, Option<String>)>,
    used: BTreeSet<Grant>,
}

#[derive(Deserialize)]
struct Doc {
    kind: Option<String>,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default, rename = "roleRef")]
    role_ref: Option<RoleRef>,
    #[serde(default)]
    subjects: Vec<Subject>,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Deserialize)]
struct Subject {
    kind: String,
    name: String,
    namespace: Option<String>,
}

impl Rbac {
    /// Loads every `*.yaml` in `dir`.
    pub(super) fn load(dir: &Path) -> Result<Rbac, String> {
        let mut docs = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(document)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if value.is_null() {
                    continue;
                }
                let doc: Doc = serde_yaml::from_value(value)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                docs.push(doc);
            }
        }
        Ok(Rbac::from_docs(&docs))
    }

    fn from_docs(docs: &[Doc]) -> Rbac {
        let role = |kind: &str, name: &str, namespace: Option<&str>| -> Vec<Rule> {
            docs.iter()
                .filter(|d| d.kind.as_deref() == Some(kind) && d.metadata.name == name)
                .filter(|d| kind == "ClusterRole" || d.metadata.namespace.as_deref() == namespace)
                .flat_map(|d| d.rules.clone())
                .collect()
        };
        let mut rules = Vec::new();
        for binding in docs {
            let (Some(kind), Some(role_ref)) = (binding.kind.as_deref(), &binding.role_ref) else {
                continue;
            };
            let binds_daemon = binding.subjects.iter().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == DAEMON_SERVICE_ACCOUNT
                    && s.namespace.as_deref() == Some(DAEMON_NAMESPACE)
            });
            if !binds_daemon {
                continue;
            }
            let scope = match kind {
                "ClusterRoleBinding" => None,
                "RoleBinding" => binding.metadata.namespace.clone(),
                _ => continue,
            };
            // A ClusterRoleBinding can only refer to a ClusterRole.
            if kind == "ClusterRoleBinding" && role_ref.kind != "ClusterRole" {
                continue;
            }
            for rule in role(&role_ref.kind, &role_ref.name, scope.as_deref()) {
                rules.push((rule, scope.clone()));
            }
        }
        Rbac {
            rules,
            used: BTreeSet::new(),
        }
    }

    /// Whether the daemon may do `request`; records the grant that allowed it.
    pub(super) fn allows(&mut self, request: &Attributes) -> bool {
        let matches = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        let found = self.rules.iter().find(|(rule, scope)| {
            scope
                .as_ref()
                .is_none_or(|ns| request.namespace.as_ref() == Some(ns))
                && matches(&rule.verbs, &request.verb)
                && matches(&rule.api_groups, &request.group)
                && matches(&rule.resources, &request.resource)
                && (rule.resource_names.is_empty()
                    || request
                        .name
                        .as_ref()
                        .is_some_and(|n| rule.resource_names.contains(n)))
        });
        if let Some((_, scope)) = found {
            self.used.insert((
                request.group.clone(),
                request.resource.clone(),
                request.verb.clone(),
                scope.clone(),
            ));
        }
        found.is_some()
    }

    /// Every (group, resource, verb, scope) the rules grant that no request has used.
    pub(super) fn unused(&self) -> Vec<Grant> {
        let mut unused = Vec::new();
        for (rule, scope) in &self.rules {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    for verb in &rule.verbs {
                        let grant = (group.clone(), resource.clone(), verb.clone(), scope.clone());
                        if !self.used.contains(&grant) {
                            unused.push(grant);
                        }
                    }
                }
            }
        }
        unused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_owned),
            name: Some("x".into()),
        }
    }

    #[test]
    fn bound_rules_allow_and_nothing_else_does() {
        let yaml = r#"
kind: ClusterRole
metadata: {name: l3lb}
rules:
  - {apiGroups: [""], resources: [services], verbs: [list, watch]}
  - {apiGroups: [""], resources: [services/status], verbs: [patch]}
---
kind: ClusterRoleBinding
metadata: {name: l3lb}
roleRef: {kind: ClusterRole, name: l3lb}
subjects: [{kind: ServiceAccount, name: l3lb, namespace: l3lb-system}]
---
kind: Role
metadata: {name: l3lb, namespace: l3lb-system}
rules:
  - {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get]}
---
kind: RoleBinding
metadata: {name: l3lb, namespace: l3lb-system}
roleRef: {kind: Role, name: l3lb}
subjects: [{kind: ServiceAccount, name: l3lb, namespace: l3lb-system}]
---
kind: ClusterRoleBinding
metadata: {name: someone-else}
roleRef: {kind: ClusterRole, name: admin}
subjects: [{kind: ServiceAccount, name: other, namespace: l3lb-system}]
"#;
        let docs: Vec<Doc> = serde_yaml::Deserializer::from_str(yaml)
            .map(|d| Doc::deserialize(d).unwrap())
            .collect();
        let mut rbac = Rbac::from_docs(&docs);
        assert!(rbac.allows(&attrs("list", "", "services", None)));
        assert!(rbac.allows(&attrs("patch", "", "services/status", Some("default"))));
        assert!(!rbac.allows(&attrs("update", "", "services/status", Some("default"))));
        assert!(!rbac.allows(&attrs("get", "", "services", Some("default"))));
        assert!(rbac.allows(&attrs(
            "get",
            "coordination.k8s.io",
            "leases",
            Some("l3lb-system")
        )));
        assert!(
            !rbac.allows(&attrs(
                "get",
                "coordination.k8s.io",
                "leases",
                Some("default")
            )),
            "a Role grants only in its namespace"
        );
        assert_eq!(
            rbac.unused(),
            [(
                "".to_owned(),
                "services".to_owned(),
                "watch".to_owned(),
                None
            )]
        );
    }
}
