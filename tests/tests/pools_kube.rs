//! IP pools end to end: two real `l3lb` daemons against the fake API server, in a network
//! namespace the test owns. A Service without an IP gets one from an `L3lbIPPool`; the leader
//! writes it once (annotation, ingress, condition, Event) and the node with the ready pod puts it
//! on its interface; a new leader keeps every allocation, even after a status wipe; an exhausted
//! pool is visible as an Event, a condition, a metric and the pool's status; a deleted Service's
//! address goes to the next; a new, preferred pool moves nothing.
use std::time::Duration;

use l3lb_tests::{
    daemon::L3lb,
    fake_api::FakeApiServer,
    fixtures::{self, endpoint, port},
    netns::{IpIn, NetNs},
    privileged, wait_until,
};
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(15);
const LEADS: &str = "became the status writer";

fn pool(name: &str, blocks: &[&str]) -> Value {
    json!({
        "apiVersion": "l3lb.io/v1alpha1",
        "kind": "L3lbIPPool",
        "metadata": { "name": name },
        "spec": { "blocks": blocks },
    })
}

/// A LoadBalancer Service that asks for no IP.
fn service(name: &str) -> Value {
    fixtures::service(name)
        .namespace("default")
        .load_balancer()
        .port(port("TCP", 80))
        .json()
}

fn slice(service: &str, node: &str) -> Value {
    fixtures::slice(&format!("{service}-1"), service, "IPv4")
        .namespace("default")
        .endpoint(
            endpoint(["10.244.0.5"])
                .node(node)
                .conditions(true, true, false),
        )
        .port(port("TCP", 8080))
        .json()
}

fn svc(server: &FakeApiServer, name: &str) -> Value {
    server
        .get("services", "default", name)
        .unwrap_or(Value::Null)
}

fn ingress(server: &FakeApiServer, name: &str) -> Vec<String> {
    svc(server, name)
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("ip")?.as_str().map(str::to_owned))
        .collect()
}

fn allocated(server: &FakeApiServer, name: &str) -> Option<String> {
    svc(server, name)
        .pointer("/metadata/annotations/l3lb.io~1allocated-ips")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `(status, reason, message)` of the Service's `l3lb.io/IPAllocated` condition.
fn condition(server: &FakeApiServer, name: &str) -> Option<(String, String, String)> {
    let service = svc(server, name);
    let conditions = service.pointer("/status/conditions")?.as_array()?;
    let ours = conditions
        .iter()
        .find(|c| c["type"] == "l3lb.io/IPAllocated")?;
    let field = |key: &str| ours[key].as_str().unwrap_or_default().to_owned();
    Some((field("status"), field("reason"), field("message")))
}

fn has_event(server: &FakeApiServer, service: &str, reason: &str, note_contains: &str) -> bool {
    server.events().iter().any(|event| {
        event.pointer("/regarding/name").and_then(Value::as_str) == Some(service)
            && event.get("reason").and_then(Value::as_str) == Some(reason)
            && event
                .get("note")
                .and_then(Value::as_str)
                .is_some_and(|n| n.contains(note_contains))
    })
}

/// Status writes (PATCH …/status) on one Service so far.
fn status_writes(server: &FakeApiServer, name: &str) -> usize {
    server
        .request_log()
        .iter()
        .filter(|r| {
            r.is_write()
                && r.resource().as_deref() == Some("services")
                && r.subresource().as_deref() == Some("status")
                && r.path.ends_with(&format!("/services/{name}/status"))
        })
        .count()
}

#[test]
fn services_without_an_ip_get_one_from_a_pool() {
    if !privileged("services_without_an_ip_get_one_from_a_pool") {
        return;
    }
    let ns = NetNs::new("pools");
    let oracle = IpIn::of(&ns);
    ns.run_inside(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(scenario(oracle));
    });
}

async fn scenario(ns: IpIn) {
    let scratch = tempfile::Builder::new()
        .prefix("l3lb-pools-")
        .tempdir()
        .unwrap();
    let server = FakeApiServer::start().await;
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    for (interface, peer) in [("node-a0", "node-a1"), ("node-b0", "node-b1")] {
        ns.ip(&[
            "link", "add", interface, "type", "veth", "peer", "name", peer,
        ]);
        ns.ip(&["link", "set", interface, "up"]);
    }
    // Two addresses only, so the third Service exhausts it.
    server.apply(pool("small", &["10.0.100.32-10.0.100.33"]));
    server.apply(service("web"));
    server.apply(slice("web", "node-a"));

    const A: &str = "127.0.0.1:9484";
    const B: &str = "127.0.0.1:9485";
    let mut a = L3lb::kube(
        "node-a",
        "node-a0",
        &kubeconfig,
        A,
        scratch.path().join("a.log"),
    );
    let mut b = L3lb::kube(
        "node-b",
        "node-b0",
        &kubeconfig,
        B,
        scratch.path().join("b.log"),
    );
    let logs = |a: &L3lb, b: &L3lb| format!("--- a:\n{}\n--- b:\n{}", a.log(), b.log());

    // The Service gets the pool's first address: memory, ingress, condition, Event.
    assert!(
        wait_until(CONVERGE, || ingress(&server, "web") == ["10.0.100.32"]),
        "web got an address; {}",
        logs(&a, &b)
    );
    assert_eq!(allocated(&server, "web").as_deref(), Some("10.0.100.32"));
    assert_eq!(
        condition(&server, "web"),
        Some((
            "True".into(),
            "Allocated".into(),
            "10.0.100.32 from pool small".into()
        ))
    );
    assert!(
        wait_until(CONVERGE, || has_event(
            &server,
            "web",
            "IPAllocated",
            "from pool small"
        )),
        "IPAllocated event: {:?}",
        server.events()
    );
    // Only the node with the ready pod announces it.
    assert!(
        wait_until(CONVERGE, || ns.has_address("node-a0", "10.0.100.32/32")),
        "node-a announces the allocation; {}",
        logs(&a, &b)
    );
    assert!(
        !ns.has_address("node-b0", "10.0.100.32/32"),
        "node-b has no pod"
    );
    // Written once: later events (the node's Announced Event, pool status, renewals) change
    // nothing, so no second status write.
    let pool_used = |server: &FakeApiServer| {
        server
            .get("l3lbippools", "", "small")
            .and_then(|p| p.pointer("/status/ipv4/used").and_then(Value::as_i64))
    };
    assert!(
        wait_until(CONVERGE, || pool_used(&server) == Some(1)),
        "pool status: {:?}",
        server.get("l3lbippools", "", "small")
    );
    // The allocator writes ingress and condition in one patch; the leader's status writer,
    // which publishes every requested IP (the `l3lb.io/allocated-ips` annotation among them),
    // may write the same ingress once more if it saw the annotation before the status. After
    // that nothing churns: more events (pool status, Announced, Lease renewals) write nothing.
    let writes = status_writes(&server, "web");
    assert!(
        (1..=2).contains(&writes),
        "one status write, or two with the same content: {:?}",
        server.request_log()
    );
    assert!(
        !wait_until(Duration::from_secs(2), || status_writes(&server, "web")
            > writes),
        "no further status writes once converged: {:?}",
        server.request_log()
    );

    let (leader, follower, leader_http, follower_http) = if a.log().contains(LEADS) {
        (&mut a, &mut b, A, B)
    } else {
        (&mut b, &mut a, B, A)
    };

    // A second Service takes the other address; the third finds the pool exhausted.
    server.apply(service("api"));
    assert!(wait_until(CONVERGE, || ingress(&server, "api") == ["10.0.100.33"]));
    server.apply(service("extra"));
    assert!(
        wait_until(CONVERGE, || condition(&server, "extra")
            .is_some_and(|c| c.1 == "PoolExhausted")),
        "exhaustion on the condition: {:?}",
        svc(&server, "extra")
    );
    let (status, _, message) = condition(&server, "extra").unwrap();
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("False", "pool small exhausted (IPv4)")
    );
    assert!(ingress(&server, "extra").is_empty());
    assert!(
        wait_until(CONVERGE, || has_event(
            &server,
            "extra",
            "AllocationFailed",
            "pool small exhausted"
        )),
        "AllocationFailed event: {:?}",
        server.events()
    );
    let available = "l3lb_pool_addresses_available{pool=\"small\",family=\"IPv4\"}";
    assert!(
        wait_until(CONVERGE, || L3lb::metric(leader_http, available)
            == Some(0.0)),
        "the leader's metric: {:?}",
        L3lb::get(leader_http, "/metrics")
    );
    assert_eq!(
        L3lb::metric(
            leader_http,
            "l3lb_pool_addresses_in_use{pool=\"small\",family=\"IPv4\"}"
        ),
        Some(2.0)
    );
    assert!(
        wait_until(CONVERGE, || server
            .get("l3lbippools", "", "small")
            .and_then(|p| p
                .pointer("/status/ipv4/available")
                .and_then(Value::as_i64))
            == Some(0)),
        "pool status shows the exhaustion"
    );
    assert_eq!(
        L3lb::metric(follower_http, available),
        None,
        "only the leader allocates"
    );

    // The leader crashes; the follower takes over and keeps every allocation, even for a
    // Service whose status was wiped in between.
    leader.kill();
    let mut wiped = svc(&server, "web");
    wiped["status"] = json!({});
    server.apply(wiped);
    follower.wait_for_log(LEADS, CONVERGE);
    assert!(
        wait_until(CONVERGE, || ingress(&server, "web") == ["10.0.100.32"]),
        "the new leader restores web's address from its annotation; log:\n{}",
        follower.log()
    );
    assert_eq!(ingress(&server, "api"), ["10.0.100.33"]);
    assert_eq!(allocated(&server, "web").as_deref(), Some("10.0.100.32"));
    assert_eq!(allocated(&server, "api").as_deref(), Some("10.0.100.33"));
    assert!(
        ingress(&server, "extra").is_empty(),
        "still no room for extra"
    );

    // A deleted Service's address goes to the next one.
    server.delete("services", "default", "api");
    assert!(
        wait_until(CONVERGE, || ingress(&server, "extra") == ["10.0.100.33"]),
        "extra gets api's address; log:\n{}",
        follower.log()
    );
    assert!(wait_until(CONVERGE, || condition(&server, "extra")
        .is_some_and(|c| c.0 == "True")));
    assert_eq!(ingress(&server, "web"), ["10.0.100.32"], "web never moved");

    // A preferred pool appears: new Services draw from it, existing ones stay where they are.
    let mut better = pool("better", &["10.0.100.40/30"]);
    better["spec"]["priority"] = json!(-1);
    server.apply(better);
    server.apply(service("late"));
    assert!(
        wait_until(CONVERGE, || ingress(&server, "late") == ["10.0.100.40"]),
        "late draws from the preferred pool; log:\n{}",
        follower.log()
    );
    assert_eq!(ingress(&server, "web"), ["10.0.100.32"]);
    assert_eq!(ingress(&server, "extra"), ["10.0.100.33"]);
    assert!(follower.terminate(), "clean exit; log:\n{}", follower.log());
}
