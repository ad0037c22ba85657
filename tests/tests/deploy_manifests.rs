//! Offline checks of what deploy/ ships: the Kubernetes manifests against the official JSON
//! schemas (kubernetes-validate), the kustomization against the files present, RBAC against an
//! allow-list, the DaemonSet's least-privilege settings, the XDP component applied to it, the
//! systemd unit (systemd-analyze verify), and the Containerfile against the workspace. Needs no
//! cluster and no root; the two external tools are installed by `cargo xtask test`'s bootstrap,
//! and a missing one fails the test naming its install instead of skipping.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value as Json;
use serde_yaml::Value;

/// The Kubernetes release whose schemas the manifests must satisfy: the newest that
/// kubernetes-validate 1.37.0 ships.
const KUBERNETES_VERSION: &str = "1.37.0";
const VALIDATOR: &str = "kubernetes-validate";
const VALIDATOR_INSTALL: &str = "python3 -m pip install 'kubernetes-validate==1.37.0' \
     (`cargo xtask test` installs it; on Debian's own python3 add --break-system-packages)";

const NAMESPACE: &str = "l3lb-system";
const NAME: &str = "l3lb";

/// Everything the ClusterRole may grant, and must grant: (apiGroup, resource, verb).
const CLUSTER_ROLE_GRANTS: &[(&str, &str, &str)] = &[
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "services", "patch"),
    ("", "services/status", "patch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
    ("l3lb.io", "l3lbippools", "list"),
    ("l3lb.io", "l3lbippools", "watch"),
    ("l3lb.io", "l3lbippools/status", "patch"),
];

/// Everything the Role in l3lb-system may grant, and must grant.
const ROLE_GRANTS: &[(&str, &str, &str)] = &[
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
];

/// Capabilities: the base DaemonSet adds exactly these...
const BASE_CAPABILITIES: &[&str] = &["NET_ADMIN"];
/// ...and with the XDP component exactly these.
const XDP_CAPABILITIES: &[&str] = &["NET_ADMIN", "BPF", "PERFMON", "SYS_RESOURCE"];

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files = manifest_files();
    let documents: usize = files.iter().map(|file| documents(file).len()).sum();
    validate(&files, documents);
}

#[test]
fn kustomization_lists_exactly_the_manifests() {
    let kustomization = single_document(&root().join("deploy/kustomization.yaml"));
    assert_eq!(str_at(&kustomization, "kind"), "Kustomization");
    let listed: Vec<String> = strings(at(&kustomization, "resources"));
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "deploy/kustomization.yaml lists a file twice: {listed:?}"
    );
    let listed: BTreeSet<String> = listed.into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("reading deploy/kubernetes")
        .map(|entry| {
            let entry = entry.expect("reading deploy/kubernetes");
            assert!(
                entry.file_type().expect("file type").is_file(),
                "deploy/kubernetes/ holds only manifests, found {}",
                entry.path().display()
            );
            format!("kubernetes/{}", entry.file_name().to_string_lossy())
        })
        .collect();
    let stray: Vec<_> = listed.difference(&present).collect();
    let missing: Vec<_> = present.difference(&listed).collect();
    assert!(
        stray.is_empty() && missing.is_empty(),
        "deploy/kustomization.yaml must list exactly the files in deploy/kubernetes/: \
         listed but absent {stray:?}, present but not listed {missing:?}"
    );
    for component in strings(at(&kustomization, "components")) {
        let component = single_document(
            &root()
                .join("deploy")
                .join(&component)
                .join("kustomization.yaml"),
        );
        assert_eq!(str_at(&component, "kind"), "Component");
    }
}

#[test]
fn rbac_grants_exactly_the_allow_list() {
    let objects = manifests();
    let of_kind = |kind: &str| -> Vec<&Value> {
        objects
            .iter()
            .filter(|object| str_at(object, "kind") == kind)
            .collect()
    };

    let cluster_roles = of_kind("ClusterRole");
    let roles = of_kind("Role");
    assert_eq!(cluster_roles.len(), 1, "exactly one ClusterRole");
    assert_eq!(roles.len(), 1, "exactly one Role");
    let (cluster_role, role) = (cluster_roles[0], roles[0]);
    assert_eq!(str_at(cluster_role, "metadata.name"), NAME);
    assert_eq!(str_at(role, "metadata.name"), NAME);
    assert_eq!(
        str_at(role, "metadata.namespace"),
        NAMESPACE,
        "the Lease grant stays in l3lb's namespace"
    );

    for (what, object, allowed) in [
        ("ClusterRole", cluster_role, CLUSTER_ROLE_GRANTS),
        ("Role", role, ROLE_GRANTS),
    ] {
        assert_no_wildcard(object, what);
        assert!(
            at(object, "aggregationRule").is_null(),
            "{what} must not aggregate other roles"
        );
        let granted = grants(object, what);
        let allowed: BTreeSet<(String, String, String)> = allowed
            .iter()
            .map(|(group, resource, verb)| {
                (group.to_string(), resource.to_string(), verb.to_string())
            })
            .collect();
        let extra: Vec<_> = granted.difference(&allowed).collect();
        let missing: Vec<_> = allowed.difference(&granted).collect();
        assert!(
            extra.is_empty(),
            "{what} grants more than l3lb needs (apiGroup, resource, verb): {extra:?}"
        );
        assert!(
            missing.is_empty(),
            "{what} lacks grants l3lb needs (apiGroup, resource, verb): {missing:?}"
        );
    }

    // Bindings: ours, to our ServiceAccount only, and nothing bound to another role.
    let service_accounts = of_kind("ServiceAccount");
    assert_eq!(service_accounts.len(), 1, "exactly one ServiceAccount");
    assert_eq!(str_at(service_accounts[0], "metadata.name"), NAME);
    assert_eq!(str_at(service_accounts[0], "metadata.namespace"), NAMESPACE);
    for (kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let bindings = of_kind(kind);
        assert_eq!(bindings.len(), 1, "exactly one {kind}");
        let binding = bindings[0];
        if kind == "RoleBinding" {
            assert_eq!(str_at(binding, "metadata.namespace"), NAMESPACE);
        }
        assert_eq!(
            str_at(binding, "roleRef.kind"),
            role_kind,
            "{kind} binds our {role_kind}"
        );
        assert_eq!(
            str_at(binding, "roleRef.name"),
            NAME,
            "{kind} binds our {role_kind}"
        );
        let subjects = seq(at(binding, "subjects"));
        assert_eq!(subjects.len(), 1, "{kind} binds only l3lb's ServiceAccount");
        assert_eq!(str_at(&subjects[0], "kind"), "ServiceAccount");
        assert_eq!(str_at(&subjects[0], "name"), NAME);
        assert_eq!(str_at(&subjects[0], "namespace"), NAMESPACE);
    }
    let daemonset = daemonset(&objects);
    assert_eq!(
        str_at(daemonset, "spec.template.spec.serviceAccountName"),
        NAME
    );
}

#[test]
fn daemonset_runs_least_privileged() {
    let objects = manifests();
    let daemonset = daemonset(&objects);
    assert_eq!(str_at(daemonset, "metadata.namespace"), NAMESPACE);
    assert_pod_not_privileged(daemonset);
    let pod = at(daemonset, "spec.template.spec");
    assert_eq!(
        at(pod, "hostNetwork"),
        &Value::Bool(true),
        "the addresses go on the node's own lo"
    );
    assert_eq!(str_at(pod, "dnsPolicy"), "ClusterFirstWithHostNet");
    assert_eq!(str_at(pod, "priorityClassName"), "system-node-critical");
    assert!(
        at(pod, "volumes").is_null(),
        "the base DaemonSet mounts nothing from the host"
    );
    let container = l3lb_container(daemonset);
    assert_capabilities(container, BASE_CAPABILITIES);
    assert!(
        at(container, "args").is_null(),
        "the base DaemonSet is configured through the environment only"
    );

    // Configuration: the node name from the downward API, addresses kept across restarts, every
    // variable one the daemon reads, the prefix from the ConfigMap.
    let env = seq(at(container, "env"));
    let env_var = |name: &str| -> &Value {
        env.iter()
            .find(|var| str_at(var, "name") == name)
            .unwrap_or_else(|| panic!("the l3lb container sets no {name}"))
    };
    assert_eq!(
        str_at(env_var("NODE_NAME"), "valueFrom.fieldRef.fieldPath"),
        "spec.nodeName"
    );
    assert_eq!(
        str_at(env_var("POD_NAMESPACE"), "valueFrom.fieldRef.fieldPath"),
        "metadata.namespace"
    );
    assert_eq!(
        str_at(env_var("L3LB_RETAIN_ON_EXIT"), "value"),
        "true",
        "upgrades must not withdraw routes"
    );
    let metrics_addr = str_at(env_var("L3LB_METRICS_ADDR"), "value");
    let known = daemon_variables();
    for var in env {
        let name = str_at(var, "name");
        assert!(
            known.contains(name),
            "the DaemonSet sets {name}, which `l3lb run` does not read (known: {known:?})"
        );
    }
    let config_maps: Vec<&String> = seq(at(container, "envFrom"))
        .iter()
        .map(|source| str_at(source, "configMapRef.name"))
        .collect();
    assert_eq!(
        config_maps,
        ["l3lb-config"],
        "the settings come from the l3lb-config ConfigMap"
    );
    let config_map = objects
        .iter()
        .find(|object| {
            str_at(object, "kind") == "ConfigMap"
                && str_at(object, "metadata.name") == "l3lb-config"
        })
        .expect("a ConfigMap l3lb-config");
    let Some(data) = at(config_map, "data").as_mapping() else {
        panic!("l3lb-config has no data")
    };
    for (key, value) in data {
        let key = key.as_str().expect("ConfigMap keys are strings");
        assert!(
            known.contains(key),
            "l3lb-config sets {key}, which `l3lb run` does not read (known: {known:?})"
        );
        assert!(value.is_string(), "l3lb-config's {key} must be a string");
    }
    let prefixes = str_at(config_map, "data.L3LB_PREFIX");
    for prefix in prefixes.split(',') {
        assert!(
            is_prefix(prefix.trim()),
            "L3LB_PREFIX {prefixes:?}: {prefix:?} is not an IP prefix"
        );
    }

    // The metrics port: the one the daemon listens on, probed and scraped there.
    let ports = seq(at(container, "ports"));
    let metrics = ports
        .iter()
        .find(|port| str_at(port, "name") == "metrics")
        .expect("a port named metrics");
    let port = at(metrics, "containerPort")
        .as_u64()
        .expect("containerPort is a number");
    assert!(
        metrics_addr.ends_with(&format!(":{port}")),
        "L3LB_METRICS_ADDR {metrics_addr} is not on port {port}"
    );
    assert_eq!(
        str_at(
            daemonset,
            "spec.template.metadata.annotations.prometheus\\.io/port"
        ),
        &port.to_string()
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(str_at(container, &format!("{probe}.httpGet.path")), path);
        assert_eq!(
            str_at(container, &format!("{probe}.httpGet.port")),
            "metrics"
        );
    }

    // Upgrades: one node at a time, never two l3lb on a node, a bounded stop.
    assert_eq!(
        str_at(daemonset, "spec.updateStrategy.type"),
        "RollingUpdate"
    );
    assert_eq!(
        at(
            daemonset,
            "spec.updateStrategy.rollingUpdate.maxUnavailable"
        )
        .as_u64(),
        Some(1)
    );
    assert_eq!(
        at(daemonset, "spec.updateStrategy.rollingUpdate.maxSurge").as_u64(),
        Some(0)
    );
    let grace = at(pod, "terminationGracePeriodSeconds")
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        (10..=60).contains(&grace),
        "terminationGracePeriodSeconds {grace}"
    );

    // Resources from the benchmark target (< 40 MB RSS at 10k services).
    assert_eq!(str_at(container, "resources.requests.cpu"), "10m");
    assert_eq!(str_at(container, "resources.requests.memory"), "32Mi");
    assert_eq!(str_at(container, "resources.limits.memory"), "128Mi");
}

#[test]
fn xdp_component_adds_only_what_xdp_needs() {
    let dir = root().join("deploy/xdp");
    let component = single_document(&dir.join("kustomization.yaml"));
    assert_eq!(str_at(&component, "kind"), "Component");
    for field in [
        "resources",
        "components",
        "patchesStrategicMerge",
        "patchesJson6902",
    ] {
        assert!(
            at(&component, field).is_null(),
            "deploy/xdp only patches the DaemonSet (found {field})"
        );
    }
    let mut files = BTreeSet::from(["kustomization.yaml".to_owned()]);
    let mut patched = to_json(daemonset(&manifests()));
    for patch in seq(at(&component, "patches")) {
        assert_eq!(str_at(patch, "target.kind"), "DaemonSet");
        assert_eq!(str_at(patch, "target.name"), NAME);
        let file = str_at(patch, "path");
        files.insert(file.clone());
        let ops = to_json(&single_document(&dir.join(file)));
        apply_json_patch(&mut patched, &ops, file);
    }
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("reading deploy/xdp")
        .map(|entry| {
            entry
                .expect("reading deploy/xdp")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        present, files,
        "deploy/xdp holds its kustomization and the patches it names, nothing else"
    );

    let patched: Value = serde_yaml::to_value(&patched).expect("JSON converts to YAML");
    assert_pod_not_privileged(&patched);
    let container = l3lb_container(&patched);
    assert_capabilities(container, XDP_CAPABILITIES);
    assert!(
        strings(at(container, "args")).contains(&"--xdp".to_owned()),
        "the component passes --xdp"
    );
    let volumes = seq(at(&patched, "spec.template.spec.volumes"));
    let bpffs = volumes
        .iter()
        .find(|volume| str_at(volume, "name") == "bpffs")
        .expect("a bpffs volume");
    assert_eq!(str_at(bpffs, "hostPath.path"), "/sys/fs/bpf");
    let mounts = seq(at(container, "volumeMounts"));
    let mount = mounts
        .iter()
        .find(|mount| str_at(mount, "name") == "bpffs")
        .expect("bpffs mounted");
    assert_eq!(str_at(mount, "mountPath"), "/sys/fs/bpf");
    assert_ne!(
        at(mount, "mountPropagation").as_str(),
        Some("Bidirectional"),
        "Bidirectional propagation needs a privileged container"
    );
    assert_eq!(
        volumes.len(),
        1,
        "the XDP fast path needs the host's bpffs and nothing else of the host"
    );

    let dir = scratch_dir("xdp");
    let file = dir.join("daemonset-with-xdp.yaml");
    std::fs::write(
        &file,
        serde_yaml::to_string(&patched).expect("YAML serializes"),
    )
    .expect("writing the patched DaemonSet");
    validate(&[file], 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/l3lb.service"))
        .expect("reading l3lb.service");
    for line in [
        "EnvironmentFile=/etc/default/l3lb",
        "ExecStart=/usr/local/bin/l3lb run",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "After=network-online.target frr.service",
    ] {
        assert!(
            unit.lines().any(|unit_line| unit_line.starts_with(line)),
            "l3lb.service lacks `{line}`"
        );
    }
    assert!(
        unit.lines().any(|line| line.starts_with("TimeoutStopSec=")),
        "l3lb.service lacks TimeoutStopSec="
    );

    let analyze = find_command("systemd-analyze").unwrap_or_else(|| {
        panic!(
            "systemd-analyze is not installed: apt-get install systemd (`cargo xtask test` does it)"
        )
    });
    // verify also checks that ExecStart's binary exists; where l3lb is not installed, check the
    // unit with a binary that is (everything else unchanged).
    let installed = Path::new("/usr/local/bin/l3lb").is_file();
    let checked = if installed {
        unit.clone()
    } else {
        assert_eq!(unit.matches("ExecStart=/usr/local/bin/l3lb ").count(), 1);
        unit.replace("ExecStart=/usr/local/bin/l3lb ", "ExecStart=/bin/true ")
    };
    let dir = scratch_dir("systemd");
    let file = dir.join("l3lb.service");
    std::fs::write(&file, checked).expect("writing the unit copy");
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .expect("running systemd-analyze");
    std::fs::remove_dir_all(&dir).ok();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify reports unknown keys and bad values but still exits 0: any word about our unit fails.
    let complaints: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("l3lb"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify l3lb.service ({}, binary {}):\n{report}",
        out.status,
        if installed {
            "installed"
        } else {
            "replaced by /bin/true"
        }
    );
}

#[test]
fn environment_file_documents_every_variable() {
    let text =
        std::fs::read_to_string(root().join("deploy/systemd/l3lb.env")).expect("reading l3lb.env");
    let mut documented = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || (line.starts_with('#') && !line.contains('=')) {
            continue;
        }
        let setting = line.trim_start_matches('#');
        let Some((name, _)) = setting.split_once('=') else {
            continue;
        };
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            documented.insert(name.to_owned());
        } else {
            assert!(
                line.starts_with('#'),
                "l3lb.env: `{line}` is no NAME=value line"
            );
        }
    }
    let mut expected = daemon_variables();
    expected.insert("KUBECONFIG".to_owned());
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "deploy/systemd/l3lb.env documents every variable `l3lb run` reads; missing {missing:?}"
    );
}

#[test]
fn address_protocol_name_matches_the_daemon() {
    let text = std::fs::read_to_string(root().join("deploy/rt_addrprotos.d/l3lb.conf"))
        .expect("reading l3lb.conf");
    assert_eq!(
        text,
        format!("{} l3lb\n", l3lb::reconcile::addresses::L3LB_ADDR_PROTO)
    );
}

#[test]
fn frr_weights_snippet_is_what_frr_config_prints() {
    let shipped = std::fs::read_to_string(root().join("deploy/frr/weights.conf"))
        .expect("reading deploy/frr/weights.conf");
    assert!(
        shipped == l3lb::weights::frr_route_map(),
        "deploy/frr/weights.conf differs from `l3lb frr-config`: regenerate it with \
         `cargo run -p l3lb -- frr-config > deploy/frr/weights.conf`"
    );
    // It hooks into the service route-map both node configs really have.
    for file in ["node.conf", "node-unnumbered.conf"] {
        let node = std::fs::read_to_string(root().join("deploy/frr").join(file))
            .unwrap_or_else(|err| panic!("reading deploy/frr/{file}: {err}"));
        for entry in ["permit 10", "permit 20"] {
            let line = format!("route-map {} {entry}", l3lb::weights::SERVICES_ROUTE_MAP);
            assert!(node.contains(&line), "{file} has no `{line}`");
        }
    }
}

/// The unnumbered configs filter exactly as the numbered ones (the same prefix-lists and
/// route-maps), peer over interfaces, and the router keeps what weighted multipath needs.
/// (The lab e2e runs both pairs in real FRR.)
#[test]
fn frr_unnumbered_configs_match_the_numbered_ones() {
    let read = |file: &str| {
        std::fs::read_to_string(root().join("deploy/frr").join(file))
            .unwrap_or_else(|err| panic!("reading deploy/frr/{file}: {err}"))
    };
    // Everything before `router bgp`, comments aside: prefix-lists and route-maps.
    let policy = |text: &str| -> Vec<String> {
        text.lines()
            .take_while(|line| !line.starts_with("router bgp"))
            .filter(|line| !line.trim_start().starts_with('!') && !line.trim().is_empty())
            .map(str::to_owned)
            .collect()
    };
    for (numbered, unnumbered) in [
        ("node.conf", "node-unnumbered.conf"),
        ("router.conf", "router-unnumbered.conf"),
    ] {
        assert_eq!(
            policy(&read(numbered)),
            policy(&read(unnumbered)),
            "{unnumbered} filters differently from {numbered}"
        );
    }
    let node = read("node-unnumbered.conf");
    for line in [
        " neighbor {{UPLINK}} interface remote-as external",
        "  neighbor {{UPLINK}} activate",
        "  neighbor {{UPLINK}} route-map L3LB-SERVICES out",
    ] {
        assert!(node.contains(line), "node-unnumbered.conf has no `{line}`");
    }
    assert_eq!(node.matches("  neighbor {{UPLINK}} activate").count(), 2);
    let router = read("router-unnumbered.conf");
    for line in [
        " neighbor {{NODE_INTERFACE}} interface peer-group NODES",
        " bgp bestpath as-path multipath-relax",
        "  neighbor NODES default-originate",
        "  neighbor NODES route-map L3LB-TO-NODES out",
        "  maximum-paths 16",
    ] {
        assert!(
            router.contains(line),
            "router-unnumbered.conf has no `{line}`"
        );
    }
    // Both address families of the one session per node.
    assert_eq!(router.matches("  neighbor NODES activate").count(), 2);
    assert_eq!(
        router.matches("  neighbor NODES default-originate").count(),
        2
    );
}

#[test]
fn containerfile_matches_the_workspace() {
    let containerfile =
        std::fs::read_to_string(root().join("Containerfile")).expect("reading Containerfile");
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("reading Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .expect("the workspace names a rust-version")
        .trim_matches('"');
    // The builder's Debian release is the runtime's (the binary links that glibc).
    assert!(
        containerfile.contains(&format!(
            "FROM docker.io/library/rust:{rust_version}-bookworm AS build"
        )),
        "the builder must be rust:{rust_version}-bookworm"
    );
    assert!(containerfile.contains("FROM gcr.io/distroless/cc-debian12\n"));
    assert!(containerfile.contains("cargo xtask build-ebpf --release"));
    assert!(containerfile.contains("COPY --from=build /l3lb /l3lb\n"));
    assert!(
        containerfile
            .trim_end()
            .ends_with(r#"ENTRYPOINT ["/l3lb", "run"]"#)
    );
    // Every workspace member is copied in, or cargo cannot load the workspace.
    let members = manifest
        .lines()
        .find_map(|line| line.strip_prefix("members = "))
        .expect("the workspace lists its members");
    for member in members.trim_matches(['[', ']']).split(',') {
        let member = member.trim().trim_matches('"');
        assert!(
            containerfile.contains(&format!("COPY {member}/ {member}/\n")),
            "the Containerfile does not copy the workspace member {member}"
        );
    }
}

// --- validation ------------------------------------------------------------------------------

/// Runs kubernetes-validate (strict: unknown fields are errors) over `files` and requires
/// `documents` objects to pass: it only warns about kinds it has no schema for, so a count that
/// falls short is a failure too.
fn validate(files: &[PathBuf], documents: usize) {
    let validator = find_command(VALIDATOR).unwrap_or_else(|| {
        panic!("{VALIDATOR} is not installed; install it with: {VALIDATOR_INSTALL}")
    });
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}", validator.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if report.contains("does not support kubernetes version") {
        panic!(
            "{VALIDATOR} lacks the Kubernetes {KUBERNETES_VERSION} schemas; upgrade it: {VALIDATOR_INSTALL}\n{report}"
        );
    }
    let passed = report
        .lines()
        .filter(|line| line.contains(" passed for resource "))
        .count();
    let complaints: Vec<&str> = report
        .lines()
        .filter(|line| !line.contains(" passed for resource "))
        .filter(|line| !line.trim().is_empty())
        .collect();
    let hint = if passed == 0 {
        format!("\n(a broken or missing {VALIDATOR}? install it with: {VALIDATOR_INSTALL})")
    } else {
        String::new()
    };
    assert!(
        out.status.success() && complaints.is_empty() && passed == documents,
        "{VALIDATOR} --strict -k {KUBERNETES_VERSION} ({}): {passed} of {documents} objects passed\n{report}{hint}",
        out.status
    );
}

/// `name` on PATH, in the python3's scripts directories (where pip puts commands), in
/// ~/.local/bin or /usr/local/bin.
fn find_command(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts')); print(sysconfig.get_path('scripts', 'posix_user'))",
        ])
        .output()
    {
        dirs.extend(String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    dirs.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

// --- RBAC and pod checks ---------------------------------------------------------------------

fn grants(role: &Value, what: &str) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in seq(at(role, "rules")) {
        let Some(fields) = rule.as_mapping() else {
            panic!("{what}: a rule is not a mapping")
        };
        for key in fields.keys() {
            let key = key.as_str().unwrap_or_default();
            assert!(
                ["apiGroups", "resources", "verbs"].contains(&key),
                "{what}: rules use only apiGroups, resources and verbs (found {key})"
            );
        }
        for group in strings(at(rule, "apiGroups")) {
            for resource in strings(at(rule, "resources")) {
                for verb in strings(at(rule, "verbs")) {
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    granted
}

fn assert_no_wildcard(value: &Value, what: &str) {
    match value {
        Value::String(text) => assert!(!text.contains('*'), "{what} contains a wildcard: {text:?}"),
        Value::Sequence(items) => items.iter().for_each(|item| assert_no_wildcard(item, what)),
        Value::Mapping(map) => map.iter().for_each(|(key, item)| {
            assert_no_wildcard(key, what);
            assert_no_wildcard(item, what);
        }),
        _ => {}
    }
}

/// No `privileged: true` anywhere, no host PID/IPC namespace, no other container.
fn assert_pod_not_privileged(daemonset: &Value) {
    fn walk(value: &Value) {
        match value {
            Value::Mapping(map) => {
                for (key, item) in map {
                    let key = key.as_str().unwrap_or_default();
                    assert!(
                        !(["privileged", "hostPID", "hostIPC"].contains(&key)
                            && item == &Value::Bool(true)),
                        "the DaemonSet sets {key}: true"
                    );
                    walk(item);
                }
            }
            Value::Sequence(items) => items.iter().for_each(walk),
            _ => {}
        }
    }
    walk(daemonset);
    let pod = at(daemonset, "spec.template.spec");
    assert_eq!(seq(at(pod, "containers")).len(), 1, "one container, l3lb");
    assert!(at(pod, "initContainers").is_null(), "no init containers");
}

fn assert_capabilities(container: &Value, added: &[&str]) {
    let security = at(container, "securityContext");
    assert_eq!(
        strings(at(security, "capabilities.drop")),
        ["ALL"],
        "every capability is dropped first"
    );
    let mut granted = strings(at(security, "capabilities.add"));
    granted.sort();
    let mut expected: Vec<String> = added.iter().map(|cap| cap.to_string()).collect();
    expected.sort();
    assert_eq!(granted, expected, "capabilities added");
    assert_eq!(at(security, "readOnlyRootFilesystem"), &Value::Bool(true));
    assert_eq!(
        at(security, "allowPrivilegeEscalation"),
        &Value::Bool(false)
    );
    assert_eq!(
        at(security, "runAsUser").as_u64(),
        Some(0),
        "root in the host netns (see the comment)"
    );
    assert_eq!(str_at(security, "seccompProfile.type"), "RuntimeDefault");
}

fn daemonset(objects: &[Value]) -> &Value {
    let mut found = objects
        .iter()
        .filter(|object| str_at(object, "kind") == "DaemonSet");
    let daemonset = found.next().expect("a DaemonSet");
    assert!(found.next().is_none(), "exactly one DaemonSet");
    assert_eq!(str_at(daemonset, "metadata.name"), NAME);
    daemonset
}

fn l3lb_container(daemonset: &Value) -> &Value {
    let containers = seq(at(daemonset, "spec.template.spec.containers"));
    assert_eq!(str_at(&containers[0], "name"), NAME);
    &containers[0]
}

/// The environment variables `l3lb run` reads: every `env = "…"` of its clap configuration.
fn daemon_variables() -> BTreeSet<String> {
    let source = std::fs::read_to_string(root().join("l3lb/src/config.rs"))
        .expect("reading l3lb/src/config.rs");
    let mut names: BTreeSet<String> = source
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_owned()))
        .collect();
    assert!(
        names.contains("NODE_NAME") && names.contains("L3LB_PREFIX"),
        "found {names:?} in config.rs"
    );
    names.insert("RUST_LOG".to_owned());
    names
}

fn is_prefix(text: &str) -> bool {
    let Some((address, length)) = text.split_once('/') else {
        return false;
    };
    let Ok(length) = length.parse::<u8>() else {
        return false;
    };
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => length <= 32,
        Ok(std::net::IpAddr::V6(_)) => length <= 128,
        Err(_) => false,
    }
}

// --- JSON patch (RFC 6902), the subset the component uses --------------------------------------

/// Applies `test`, `add` and `replace` operations like kustomize does, except that `add` refuses
/// to overwrite an existing member: the component must add to the base, never silently replace
/// a field the base grew later.
fn apply_json_patch(document: &mut Json, ops: &Json, file: &str) {
    let Some(ops) = ops.as_array() else {
        panic!("{file}: a JSON patch is a list of operations")
    };
    for op in ops {
        let kind = op["op"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: an operation without op"));
        let path = op["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: an operation without path"));
        let value = op.get("value").cloned();
        match kind {
            "test" => assert_eq!(
                document.pointer(path),
                value.as_ref(),
                "{file}: test {path} failed"
            ),
            "replace" => {
                let target = document
                    .pointer_mut(path)
                    .unwrap_or_else(|| panic!("{file}: replace {path}: no such member"));
                *target = value.unwrap_or_else(|| panic!("{file}: replace {path} without value"));
            }
            "add" => {
                let value = value.unwrap_or_else(|| panic!("{file}: add {path} without value"));
                let (parent, last) = path
                    .rsplit_once('/')
                    .unwrap_or_else(|| panic!("{file}: bad path {path}"));
                let last = last.replace("~1", "/").replace("~0", "~");
                let parent = document
                    .pointer_mut(parent)
                    .unwrap_or_else(|| panic!("{file}: add {path}: {parent} does not exist"));
                match parent {
                    Json::Array(items) if last == "-" => items.push(value),
                    Json::Array(items) => {
                        let index: usize = last
                            .parse()
                            .unwrap_or_else(|_| panic!("{file}: bad index in {path}"));
                        assert!(
                            index <= items.len(),
                            "{file}: add {path}: index out of range"
                        );
                        items.insert(index, value);
                    }
                    Json::Object(members) => {
                        assert!(
                            !members.contains_key(&last),
                            "{file}: add {path} would overwrite the base's {last}"
                        );
                        members.insert(last, value);
                    }
                    _ => panic!("{file}: add {path}: {parent} is neither a list nor an object"),
                }
            }
            other => panic!("{file}: operation {other} is not supported by this check"),
        }
    }
}

// --- YAML access -----------------------------------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf()
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("reading deploy/kubernetes")
        .map(|entry| entry.expect("reading deploy/kubernetes").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/kubernetes/ is empty");
    for file in &files {
        assert_eq!(
            file.extension().and_then(|ext| ext.to_str()),
            Some("yaml"),
            "{}: manifests end in .yaml",
            file.display()
        );
    }
    files
}

fn manifests() -> Vec<Value> {
    manifest_files()
        .iter()
        .flat_map(|file| documents(file))
        .collect()
}

/// The YAML documents of a file, without the empty ones (only comments between `---`).
fn documents(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|err| panic!("reading {}: {err}", file.display()));
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            chunks.push(String::new());
        } else {
            let chunk = chunks.last_mut().expect("never empty");
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    chunks
        .iter()
        .map(|chunk| {
            serde_yaml::from_str::<Value>(chunk)
                .unwrap_or_else(|err| panic!("{}: {err}", file.display()))
        })
        .filter(|document| !document.is_null())
        .collect()
}

fn single_document(file: &Path) -> Value {
    let mut documents = documents(file);
    assert_eq!(documents.len(), 1, "{}: one YAML document", file.display());
    documents.remove(0)
}

/// The value at a dotted path (`\.` for a dot inside a key, a number for a list index), or null.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    let escaped = path.replace("\\.", "\u{0}");
    let mut current = value;
    for key in escaped.split('.') {
        let key = key.replace('\u{0}', ".");
        current = match current {
            Value::Mapping(map) => map.get(key.as_str()),
            Value::Sequence(items) => key.parse::<usize>().ok().and_then(|index| items.get(index)),
            _ => None,
        }
        .unwrap_or(&NULL);
    }
    current
}

/// The string at `path`; fails naming the path when it is absent or not a string.
#[track_caller]
fn str_at<'a>(value: &'a Value, path: &str) -> &'a String {
    match at(value, path) {
        Value::String(text) => text,
        other => panic!("{path}: expected a string, found {other:?}"),
    }
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

fn strings(value: &Value) -> Vec<String> {
    seq(value)
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("expected strings, found {item:?}"))
                .to_owned()
        })
        .collect()
}

fn to_json(value: &Value) -> Json {
    serde_json::to_value(value).expect("YAML converts to JSON")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("l3lb-deploy-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}
