//! The controller end to end: the real `l3lb` binary and its real kube-rs client against the fake
//! API server, managing `lo` in a network namespace the test owns. `ip` is the oracle for what
//! is on the interface; the fake server is the oracle for what was written to the API.
//!
//! The whole scenario runs on a thread inside the namespace, so the fake server listens on the
//! namespace's 127.0.0.1 and the daemon (a child of that thread) shares it.
use std::{process::Command, time::Duration};

use l3lb_tests::{
    daemon::{L3lb, l3lb_binary},
    fake_api::{FakeApiServer, WatchCache},
    fixtures::{self, endpoint, port},
    netns::{IpIn, NetNs},
    privileged, wait_until,
};
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(10);

fn service(name: &str, ip: &str) -> Value {
    fixtures::service(name)
        .namespace("default")
        .annotated_ips(ip)
        .load_balancer()
        .port(port("TCP", 80))
        .json()
}

fn slice(service: &str, node: &str, ready: bool) -> Value {
    fixtures::slice(&format!("{service}-1"), service, "IPv4")
        .namespace("default")
        .endpoint(
            endpoint(["10.244.0.5"])
                .node(node)
                .conditions(ready, ready, false),
        )
        .port(port("TCP", 8080))
        .json()
}

/// A directory for one test's kubeconfig and logs, removed when the test ends.
fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("l3lb-{tag}-"))
        .tempdir()
        .expect("creating a scratch directory")
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

fn ingress_ips(server: &FakeApiServer, name: &str) -> Vec<String> {
    server
        .get("services", "default", name)
        .and_then(|svc| svc.pointer("/status/loadBalancer/ingress").cloned())
        .and_then(|ingress| ingress.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| entry.get("ip")?.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn follows_the_api_and_fails_static() {
    if !privileged("follows_the_api_and_fails_static") {
        return;
    }
    let ns = NetNs::new("ctlkube");
    let oracle = IpIn::of(&ns);
    ns.run_inside(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(scenario(oracle));
    });
}

async fn scenario(ns: IpIn) {
    let scratch = scratch("ctlkube");
    let server = FakeApiServer::start().await;
    server.enforce_rbac();
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    // A lagging watch cache: anything read "at any version" may be a few versions old.
    server.set_watch_cache(WatchCache {
        stale_by: 3,
        ..WatchCache::default()
    });
    server.apply(service("web", "10.0.100.7, 2001:db8:100::7"));
    server.apply(slice("web", "node-a", true));
    ns.ip(&["addr", "add", "10.0.0.20/32", "dev", "lo"]); // the node's own loopback: not ours

    const HTTP: &str = "127.0.0.1:9474";
    let mut daemon = L3lb::kube(
        "node-a",
        "lo",
        &kubeconfig,
        HTTP,
        scratch.path().join("l3lb.log"),
    );
    let converged =
        |cidr: &str, present: bool| wait_until(CONVERGE, || ns.has_address("lo", cidr) == present);

    // A ready endpoint here: announced, both families.
    assert!(
        converged("10.0.100.7/32", true),
        "announced; log:\n{}",
        daemon.log()
    );
    assert!(converged("2001:db8:100::7/128", true), "IPv6 announced");
    daemon.wait_for_log("assuming address 10.0.100.7 (default/web)", CONVERGE);

    // What it does is visible: health, readiness, metrics, the status report, Events.
    assert_eq!(L3lb::get(HTTP, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(
        L3lb::get(HTTP, "/readyz").map(|r| r.0),
        Some(200),
        "ready once converged"
    );
    assert!(
        wait_until(CONVERGE, || L3lb::metric(HTTP, "l3lb_announced_addresses")
            == Some(2.0)),
        "metrics count the announced addresses: {:?}",
        L3lb::get(HTTP, "/metrics")
    );
    let (_, report) = L3lb::get(HTTP, "/status").expect("/status answers");
    let report: Value = serde_json::from_str(&report).expect("/status is JSON");
    assert_eq!(
        report["announced"],
        json!(["10.0.100.7", "2001:db8:100::7"])
    );
    assert_eq!(report["services"][0]["local_ready"], json!(["10.244.0.5"]));
    let table = Command::new(l3lb_binary())
        .args(["status", "--addr", HTTP])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().any(|row| row.contains("default/web")
            && row.contains("10.0.100.7")
            && row.contains("yes")),
        "`l3lb status` shows the announced row:\n{table}"
    );
    assert!(
        wait_until(CONVERGE, || has_event(
            &server,
            "web",
            "Announced",
            "node-a"
        )),
        "an Announced event on the Service: {:?}",
        server.events()
    );

    // The endpoint moves to another node: withdrawn.
    server.apply(slice("web", "node-b", true));
    assert!(
        converged("10.0.100.7/32", false),
        "withdrawn; log:\n{}",
        daemon.log()
    );
    daemon.wait_for_log("forfeiting address 10.0.100.7", CONVERGE);
    assert!(wait_until(CONVERGE, || L3lb::metric(
        HTTP,
        "l3lb_announced_addresses"
    ) == Some(0.0)));
    assert!(wait_until(CONVERGE, || has_event(
        &server,
        "web",
        "Withdrawn",
        "node-a"
    )));
    server.apply(slice("web", "node-a", true));
    assert!(converged("10.0.100.7/32", true), "back");

    // The leader (the only instance) publishes the requested IPs in the Service's status.
    assert!(
        wait_until(CONVERGE, || ingress_ips(&server, "web").len() == 2),
        "status.loadBalancer.ingress written; log:\n{}",
        daemon.log()
    );

    // API server down: nothing is withdrawn while the watches fail and retry.
    server.stop().await;
    assert!(
        wait_until(CONVERGE, || daemon
            .log_count("keeping the last known state")
            >= 2),
        "the daemon noticed the outage; log:\n{}",
        daemon.log()
    );
    assert!(
        ns.has_address("lo", "10.0.100.7/32"),
        "fail static: still announced"
    );
    assert!(ns.has_address("lo", "2001:db8:100::7/128"));
    assert!(
        L3lb::metric(HTTP, "l3lb_watch_errors_total{resource=\"services\"}")
            .is_some_and(|n| n >= 1.0),
        "watch errors counted"
    );

    // Changes made while it was down are picked up once it is back.
    server.apply(service("api", "10.0.100.8"));
    server.apply(slice("api", "node-a", true));
    server.delete("endpointslices", "default", "web-1");
    server.start_again().await;
    assert!(
        converged("10.0.100.8/32", true),
        "new service after recovery; log:\n{}",
        daemon.log()
    );
    assert!(
        converged("10.0.100.7/32", false),
        "deleted slice after recovery"
    );

    // History compacted and watches dropped: resuming gets 410 Gone, the daemon relists.
    server.compact();
    server.drop_watches().await;
    server.apply(slice("api", "node-b", true));
    assert!(
        converged("10.0.100.8/32", false),
        "converged through a relist; log:\n{}",
        daemon.log()
    );
    daemon.wait_for_log("relisted", CONVERGE);

    // A slow API server (every response delayed) only slows convergence down.
    server.set_response_delay(Duration::from_millis(300));
    server.drop_watches().await;
    server.apply(slice("api", "node-a", true));
    assert!(
        converged("10.0.100.8/32", true),
        "converged through a slow server; log:\n{}",
        daemon.log()
    );
    server.set_response_delay(Duration::ZERO);

    // Someone deletes an announced address by hand: it comes straight back.
    server.apply(slice("web", "node-a", true));
    assert!(converged("10.0.100.7/32", true));
    ns.ip(&["addr", "del", "10.0.100.7/32", "dev", "lo"]);
    assert!(
        converged("10.0.100.7/32", true),
        "restored; log:\n{}",
        daemon.log()
    );

    // SIGTERM without --retain-on-exit: owned addresses go, foreign ones stay.
    assert!(daemon.terminate(), "clean exit; log:\n{}", daemon.log());
    assert!(!ns.has_address("lo", "10.0.100.7/32"), "withdrawn on exit");
    assert!(
        !ns.has_address("lo", "2001:db8:100::7/128"),
        "withdrawn on exit"
    );
    assert!(
        ns.has_address("lo", "10.0.0.20/32"),
        "the node's own address untouched"
    );
    assert!(ns.has_address("lo", "127.0.0.1/8"));

    // It (re)listed through streaming lists, never from the watch cache's resourceVersion=0.
    let log = server.request_log();
    for resource in ["services", "endpointslices.discovery.k8s.io"] {
        assert!(
            log.iter().any(|r| r.resource().as_deref() == Some(resource)
                && r.is_watch()
                && r.param("sendInitialEvents").as_deref() == Some("true")),
            "a streaming list of {resource}"
        );
    }
    assert!(
        !log.iter()
            .any(|r| r.is_list() || r.param("resourceVersion").as_deref() == Some("0")),
        "no LIST and no resourceVersion=0 with streaming lists: {:?}",
        log.iter()
            .filter(|r| r.is_list() || r.param("resourceVersion").as_deref() == Some("0"))
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );

    // Everything it did, the deploy RBAC allowed, and everything the RBAC grants, it used.
    assert_eq!(
        server.denied_requests(),
        Vec::<String>::new(),
        "refused by RBAC"
    );
    // With streaming lists nothing is LISTed; the fallback to paginated lists, which
    // first_sync_of_many_services_publishes_every_status exercises, needs `list`.
    let list = |group: &str, resource: &str| {
        (
            group.to_owned(),
            resource.to_owned(),
            "list".to_owned(),
            None,
        )
    };
    // The IP-pool allocator writes only when there are pools and Services without an IP,
    // which tests/tests/pools_kube.rs covers: here its writes stay unused.
    let grant = |group: &str, resource: &str, verb: &str| {
        (group.to_owned(), resource.to_owned(), verb.to_owned(), None)
    };
    assert_eq!(
        server.unused_grants(),
        [
            list("", "services"),
            grant("", "services", "patch"),
            list("discovery.k8s.io", "endpointslices"),
            list("", "nodes"),
            list("l3lb.io", "l3lbippools"),
            grant("l3lb.io", "l3lbippools/status", "patch")
        ],
        "grants in deploy/ that l3lb never used"
    );
}

#[test]
fn one_status_writer_and_failover() {
    if !privileged("one_status_writer_and_failover") {
        return;
    }
    let ns = NetNs::new("ctllease");
    let oracle = IpIn::of(&ns);
    ns.run_inside(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(failover(oracle));
    });
}

async fn failover(ns: IpIn) {
    let scratch = scratch("ctllease");
    let server = FakeApiServer::start().await;
    server.enforce_rbac();
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    two_node_interfaces(&ns);
    let mut a = L3lb::kube(
        "node-a",
        "node-a0",
        &kubeconfig,
        "127.0.0.1:9474",
        scratch.path().join("a.log"),
    );
    let mut b = L3lb::kube(
        "node-b",
        "node-b0",
        &kubeconfig,
        "127.0.0.1:9475",
        scratch.path().join("b.log"),
    );
    const LEADS: &str = "became the status writer";
    assert!(
        wait_until(CONVERGE, || a.log().contains(LEADS)
            || b.log().contains(LEADS)),
        "someone leads; logs:\n{}\n{}",
        a.log(),
        b.log()
    );
    let ((leader, leader_http), (follower, follower_http)) = if a.log().contains(LEADS) {
        ((&mut a, "127.0.0.1:9474"), (&mut b, "127.0.0.1:9475"))
    } else {
        ((&mut b, "127.0.0.1:9475"), (&mut a, "127.0.0.1:9474"))
    };
    assert!(
        wait_until(CONVERGE, || L3lb::metric(leader_http, "l3lb_leader")
            == Some(1.0)
            && L3lb::metric(follower_http, "l3lb_leader") == Some(0.0)),
        "the leader gauge says who leads"
    );

    server.apply(service("web", "10.0.100.7"));
    assert!(
        wait_until(CONVERGE, || ingress_ips(&server, "web") == ["10.0.100.7"]),
        "status written"
    );
    // The line follows the write, so it may reach the log a moment after the server has it.
    leader.wait_for_log("published ingress", CONVERGE);
    assert!(!follower.log().contains(LEADS), "only one leader");
    assert!(
        !follower.log().contains("published ingress"),
        "the follower never writes"
    );

    // A cluster-wide Warning: the leader reports it, the follower does not.
    let follower_node = if follower_http.ends_with("9474") {
        "node-a"
    } else {
        "node-b"
    };
    let warned_by = |node: &str| {
        described_events(&server, "bad").iter().any(|e| {
            field(e, "reason") == "IPOutsidePrefixes" && field(e, "reportingInstance") == node
        })
    };
    server.apply(service("bad", "192.0.2.1"));
    assert!(
        wait_until(CONVERGE, || described_events(&server, "bad")
            .iter()
            .any(|e| field(e, "reason") == "IPOutsidePrefixes")),
        "the leader warns: {:?}",
        server.events()
    );
    assert!(!warned_by(follower_node), "the follower does not");

    // The leader crashes (no clean exit); the follower takes over once the Lease lapses, and
    // reports the Warnings of the state it finds.
    leader.kill();
    follower.wait_for_log(LEADS, CONVERGE);
    assert!(
        wait_until(CONVERGE, || warned_by(follower_node)),
        "the new leader reports the standing Warning: {:?}",
        server.events()
    );
    assert!(
        wait_until(CONVERGE, || L3lb::metric(follower_http, "l3lb_leader")
            == Some(1.0)),
        "the new leader's gauge"
    );
    server.apply(service("api", "10.0.100.8"));
    assert!(
        wait_until(CONVERGE, || ingress_ips(&server, "api") == ["10.0.100.8"]),
        "the new leader writes; log:\n{}",
        follower.log()
    );
    assert!(follower.log().contains("published ingress"));

    // The API server hangs (every answer takes longer than the Lease lasts): the Lease calls
    // time out and the leader steps down rather than keep a flag nobody can confirm.
    server.set_response_delay(Duration::from_secs(3));
    assert!(
        wait_until(CONVERGE, || L3lb::metric(follower_http, "l3lb_leader")
            == Some(0.0)),
        "a leader that cannot renew steps down; log:\n{}",
        follower.log()
    );
    server.set_response_delay(Duration::ZERO);
    assert!(follower.terminate());
    assert_eq!(
        server.denied_requests(),
        Vec::<String>::new(),
        "refused by RBAC"
    );
}

/// Two "nodes" in one namespace, each on its own interface (a veth end: this kernel has no dummy
/// driver), both reaching the server.
fn two_node_interfaces(ns: &IpIn) {
    for (interface, peer) in [("node-a0", "node-a1"), ("node-b0", "node-b1")] {
        ns.ip(&[
            "link", "add", interface, "type", "veth", "peer", "name", peer,
        ]);
        ns.ip(&["link", "set", interface, "up"]);
    }
}

/// A slice with one ready endpoint on each node.
fn slice_on_both(service: &str) -> Value {
    fixtures::slice(&format!("{service}-1"), service, "IPv4")
        .namespace("default")
        .endpoint(
            endpoint(["10.244.0.5"])
                .node("node-a")
                .conditions(true, true, false),
        )
        .endpoint(
            endpoint(["10.244.1.5"])
                .node("node-b")
                .conditions(true, true, false),
        )
        .port(port("TCP", 8080))
        .json()
}

/// What `kubectl describe service` shows: the Events whose `regarding` is the Service's uid.
fn described_events(server: &FakeApiServer, name: &str) -> Vec<Value> {
    let Some(uid) = server
        .get("services", "default", name)
        .and_then(|svc| svc.pointer("/metadata/uid")?.as_str().map(str::to_owned))
    else {
        return Vec::new();
    };
    server
        .events()
        .into_iter()
        .filter(|event| event.pointer("/regarding/uid").and_then(Value::as_str) == Some(&uid))
        .collect()
}

fn field<'a>(event: &'a Value, name: &str) -> &'a str {
    event.get(name).and_then(Value::as_str).unwrap_or_default()
}

#[test]
fn status_l3lb_wrote_is_no_request() {
    if !privileged("status_l3lb_wrote_is_no_request") {
        return;
    }
    let ns = NetNs::new("ctlstatus");
    let oracle = IpIn::of(&ns);
    ns.run_inside(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(own_status(oracle));
    });
}

async fn own_status(ns: IpIn) {
    let scratch = scratch("ctlstatus");
    let server = FakeApiServer::start().await;
    server.enforce_rbac();
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    two_node_interfaces(&ns);
    server.apply(service("web", "10.0.100.7"));
    server.apply(slice_on_both("web"));
    let mut a = L3lb::kube(
        "node-a",
        "node-a0",
        &kubeconfig,
        "127.0.0.1:9474",
        scratch.path().join("a.log"),
    );
    let mut b = L3lb::kube(
        "node-b",
        "node-b0",
        &kubeconfig,
        "127.0.0.1:9475",
        scratch.path().join("b.log"),
    );
    let on_both = |cidr: &str, present: bool| {
        wait_until(CONVERGE, || {
            ns.has_address("node-a0", cidr) == present && ns.has_address("node-b0", cidr) == present
        })
    };
    assert!(
        on_both("10.0.100.7/32", true),
        "announced on both nodes; logs:\n{}\n{}",
        a.log(),
        b.log()
    );
    assert!(
        wait_until(CONVERGE, || ingress_ips(&server, "web") == ["10.0.100.7"]),
        "status written"
    );
    let svc = server.get("services", "default", "web").unwrap();
    assert!(
        svc.pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .is_some_and(|entries| entries.iter().any(|e| e["manager"] == "l3lb"
                && e["subresource"] == "status"
                && e.pointer("/fieldsV1/f:status/f:loadBalancer/f:ingress")
                    .is_some())),
        "the status is written under l3lb's field manager: {svc}"
    );

    // `kubectl describe` finds each node's Announced Event by the Service's uid.
    assert!(
        wait_until(CONVERGE, || {
            let events = described_events(&server, "web");
            ["node-a", "node-b"].iter().all(|node| {
                events.iter().any(|e| {
                    field(e, "reason") == "Announced" && field(e, "reportingInstance") == *node
                })
            })
        }),
        "Announced Events by uid from both nodes: {:?}",
        server.events()
    );

    // The annotation goes, the way `kubectl annotate web l3lb.io/loadBalancerIPs-` removes it:
    // a patch through the API that leaves the status as it is.
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(server.client(), "default");
    services
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"l3lb.io/loadBalancerIPs": null}}}),
            ),
        )
        .await
        .expect("removing the annotation");
    assert!(
        on_both("10.0.100.7/32", false),
        "withdrawn on every node although the status still named it; logs:\n{}\n{}",
        a.log(),
        b.log()
    );
    assert!(
        wait_until(CONVERGE, || ingress_ips(&server, "web").is_empty()),
        "the leader clears the status it wrote: {:?}",
        server.get("services", "default", "web")
    );

    // An IP that another controller published (its field manager owns the field) is honoured.
    let mut other = fixtures::service("other")
        .namespace("default")
        .load_balancer()
        .port(port("TCP", 80))
        .ingress(&["10.0.100.9"])
        .json();
    other["metadata"]["managedFields"] = json!([{
        "manager": "other-lb", "operation": "Update", "apiVersion": "v1",
        "subresource": "status", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}}
    }]);
    server.apply(other);
    server.apply(slice_on_both("other"));
    assert!(
        on_both("10.0.100.9/32", true),
        "another controller's status is a request"
    );
    assert_eq!(
        ingress_ips(&server, "other"),
        ["10.0.100.9"],
        "and l3lb leaves it alone"
    );

    // A cluster-wide Warning comes from the leader only. Events are published in order, so once
    // both nodes' Announced Events of a later Service exist, both have handled the Warning.
    server.apply(service("bad", "192.0.2.1"));
    server.apply(service("late", "10.0.100.10"));
    server.apply(slice_on_both("late"));
    assert!(
        wait_until(CONVERGE, || {
            let events = described_events(&server, "late");
            ["node-a", "node-b"].iter().all(|node| {
                events.iter().any(|e| {
                    field(e, "reason") == "Announced" && field(e, "reportingInstance") == *node
                })
            })
        }),
        "Announced Events of the later Service: {:?}",
        server.events()
    );
    let warnings: Vec<Value> = described_events(&server, "bad")
        .into_iter()
        .filter(|e| field(e, "reason") == "IPOutsidePrefixes")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one Warning, not one per node: {warnings:?}"
    );
    assert_eq!(field(&warnings[0], "type"), "Warning");
    assert!(
        !a.log().contains("publishing event") && !b.log().contains("publishing event"),
        "no Event was rejected; logs:\n{}\n{}",
        a.log(),
        b.log()
    );

    // Status writes that fail (an API server restarting) are retried until they land.
    server.fail_next_status_writes(3, 503);
    server.apply(service("api", "10.0.100.8"));
    assert!(
        wait_until(Duration::from_secs(30), || ingress_ips(&server, "api")
            == ["10.0.100.8"]),
        "the status write is retried; logs:\n{}\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(server.pending_status_failures(), 0, "every failure was met");

    assert!(a.terminate());
    assert!(b.terminate());
    assert_eq!(
        server.denied_requests(),
        Vec::<String>::new(),
        "refused by RBAC"
    );
}

#[test]
fn first_sync_of_many_services_publishes_every_status() {
    if !privileged("first_sync_of_many_services_publishes_every_status") {
        return;
    }
    let ns = NetNs::new("ctlmany");
    ns.run_inside(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(many_services());
    });
}

/// More Services than any queue between the controller and the status writer holds (4 096),
/// all arriving in the first list: every one of them gets its status, none is dropped.
async fn many_services() {
    const SERVICES: usize = 4500;
    let scratch = scratch("ctlmany");
    let server = FakeApiServer::start().await;
    server.enforce_rbac();
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    for i in 0..SERVICES {
        // No endpoints anywhere: nothing is announced, but each status is still published.
        server.apply(service(
            &format!("bulk-{i}"),
            &format!("2001:db8:100::{:x}", i + 1),
        ));
    }
    // A few writes fail on the way, as when the API server sheds load.
    server.fail_next_status_writes(5, 429);
    // A server without streaming lists, whose watch cache lags and ignores `limit`: l3lb must
    // fall back to consistent lists in pages rather than read the cache.
    server.set_watch_cache(WatchCache {
        streaming_lists: false,
        stale_by: 50,
        unpaginated_cache_lists: true,
    });
    let mut daemon = L3lb::kube(
        "node-a",
        "lo",
        &kubeconfig,
        "127.0.0.1:9474",
        scratch.path().join("l3lb.log"),
    );
    let published = || {
        server
            .list("services")
            .iter()
            .filter(|svc| {
                svc.pointer("/status/loadBalancer/ingress/0/ip")
                    .and_then(Value::as_str)
                    .is_some()
            })
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(120), || published() == SERVICES),
        "{} of {SERVICES} statuses published; log tail:\n{}",
        published(),
        daemon
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(server.pending_status_failures(), 0);
    let log = server.request_log();
    let lists: Vec<_> = log
        .iter()
        .filter(|r| r.is_list() && r.resource().as_deref() == Some("services"))
        .collect();
    assert!(
        lists.len() >= SERVICES / 500,
        "the Services arrived in pages: {} lists",
        lists.len()
    );
    assert!(
        lists
            .iter()
            .all(|r| r.param("limit").as_deref() == Some("500")
                && r.param("resourceVersion").is_none()),
        "consistent lists in pages of 500, never resourceVersion=0: {:?}",
        lists.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    assert!(daemon.terminate());
    assert_eq!(server.denied_requests(), Vec::<String>::new());
}
