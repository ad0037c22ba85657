//! Node maintenance end to end: the real `l3lb` against the fake API server (which enforces the
//! deploy RBAC), managing `lo` in a namespace the test owns. Labelling the node
//! `node.kubernetes.io/exclude-from-external-load-balancers` withdraws every address, with an
//! Event on the Node; removing the label announces them again; another node's label changes
//! nothing; a restart on an excluded node never announces.
use std::time::Duration;

use l3lb_tests::{
    daemon::L3lb,
    fake_api::FakeApiServer,
    fixtures::{self, endpoint, port},
    netns::{IpIn, NetNs},
    privileged, wait_until,
};
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(10);
const EXCLUDE: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
const HTTP: &str = "127.0.0.1:9474";

fn node(name: &str, excluded: bool) -> Value {
    let labels = if excluded {
        json!({ EXCLUDE: "" })
    } else {
        json!({ "kubernetes.io/hostname": name })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    })
}

fn node_event(server: &FakeApiServer, reason: &str) -> bool {
    server.events().iter().any(|event| {
        event.pointer("/regarding/kind").and_then(Value::as_str) == Some("Node")
            && event.pointer("/regarding/name").and_then(Value::as_str) == Some("node-a")
            && event.get("reason").and_then(Value::as_str) == Some(reason)
    })
}

#[test]
fn the_exclusion_label_withdraws_everything_and_removing_it_announces_again() {
    if !privileged("the_exclusion_label_withdraws_everything_and_removing_it_announces_again") {
        return;
    }
    let ns = NetNs::new("w8-maint");
    let oracle = IpIn::of(&ns);
    ns.run_inside(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(scenario(oracle));
    });
}

async fn scenario(ns: IpIn) {
    let scratch = tempfile::Builder::new()
        .prefix("l3lb-w8-maint-")
        .tempdir()
        .expect("a scratch directory");
    let server = FakeApiServer::start().await;
    server.enforce_rbac();
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    server.apply(node("node-a", false));
    server.apply(node("node-b", false));
    server.apply(
        fixtures::service("web")
            .namespace("default")
            .annotated_ips("10.0.100.7")
            .load_balancer()
            .port(port("TCP", 80))
            .json(),
    );
    server.apply(
        fixtures::slice("web-1", "web", "IPv4")
            .namespace("default")
            .endpoint(
                endpoint(["10.244.0.5"])
                    .node("node-a")
                    .conditions(true, true, false),
            )
            .port(port("TCP", 8080))
            .json(),
    );
    let log = scratch.path().join("l3lb.log");
    let mut daemon = L3lb::kube("node-a", "lo", &kubeconfig, HTTP, log.clone());
    let converged = |present: bool| {
        wait_until(CONVERGE, || {
            ns.has_address("lo", "10.0.100.7/32") == present
        })
    };
    assert!(converged(true), "announced; log:\n{}", daemon.log());

    // Another node's label is not ours: l3lb only ever asks for its own Node.
    server.apply(node("node-b", true));
    let node_requests: Vec<Option<String>> = server
        .request_log()
        .iter()
        .filter(|request| request.resource().as_deref() == Some("nodes"))
        .map(|request| request.param("fieldSelector"))
        .collect();
    assert!(
        !node_requests.is_empty()
            && node_requests
                .iter()
                .all(|selector| selector.as_deref() == Some("metadata.name=node-a")),
        "every Node request selects node-a only: {node_requests:?}"
    );

    server.apply(node("node-a", true));
    assert!(converged(false), "withdrawn; log:\n{}", daemon.log());
    daemon.wait_for_log("withdrawing every address from node node-a", CONVERGE);
    assert!(
        wait_until(CONVERGE, || node_event(&server, "LoadBalancingWithdrawn")),
        "an Event on the Node: {:#?}",
        server.events()
    );
    let (_, report) = L3lb::get(HTTP, "/status").expect("/status answers");
    let report: Value = serde_json::from_str(&report).expect("/status is JSON");
    assert!(
        report["maintenance"]
            .as_str()
            .is_some_and(|why| why.contains(EXCLUDE)),
        "{report}"
    );

    // A restart while excluded: the Node is read before anything is announced.
    let assumed = daemon.log_count("assuming address 10.0.100.7");
    assert!(daemon.terminate(), "l3lb exits on SIGTERM");
    let daemon = L3lb::kube("node-a", "lo", &kubeconfig, HTTP, log);
    assert!(
        wait_until(CONVERGE, || L3lb::get(HTTP, "/readyz").map(|r| r.0)
            == Some(200)),
        "ready again; log:\n{}",
        daemon.log()
    );
    assert!(
        !ns.has_address("lo", "10.0.100.7/32")
            && daemon.log_count("assuming address 10.0.100.7") == assumed,
        "an excluded node announced after a restart; log:\n{}",
        daemon.log()
    );

    server.apply(node("node-a", false));
    assert!(converged(true), "announced again; log:\n{}", daemon.log());
    assert!(
        wait_until(CONVERGE, || node_event(&server, "LoadBalancingRestored")),
        "an Event on the Node: {:#?}",
        server.events()
    );
    assert_eq!(
        server.denied_requests(),
        Vec::<String>::new(),
        "refused by RBAC"
    );
}
