//! The fake API server against the real kube-rs client: if these pass, the controller's
//! end-to-end tests exercise the same list/watch protocol a real apiserver speaks.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Resource, ResourceExt};
use l3lb_tests::fake_api::FakeApiServer;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const DEADLINE: Duration = Duration::from_secs(5);

fn service(name: &str, labels: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
        // A real apiserver drops status on create; so must the fake.
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
    }))
    .expect("valid Service")
}

fn slice(ns: &str, name: &str, address: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

fn rv_of<K: Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .expect("integer resourceVersion")
}

fn api_error(result: Result<impl Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

type WatchRx<K> = mpsc::UnboundedReceiver<Result<Event<K>, watcher::Error>>;

/// Runs a real kube watcher (with the default backoff, as controllers use it) on its own task so
/// it keeps consuming bookmarks and reconnecting while the test does other things.
fn spawn_watcher<K>(api: Api<K>, config: watcher::Config) -> WatchRx<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = watch_stream(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next_event<K: Debug>(rx: &mut WatchRx<K>) -> Result<Event<K>, watcher::Error> {
    timeout(DEADLINE, rx.recv())
        .await
        .expect("timed out waiting for a watcher event")
        .expect("watcher ended")
}

async fn next_ok<K: Debug>(rx: &mut WatchRx<K>) -> Event<K> {
    next_event(rx).await.expect("watcher error")
}

/// What a watcher's consumer would know: `ns/name -> resourceVersion`, rebuilt on every relist.
#[derive(Default, Debug)]
struct Mirror {
    state: BTreeMap<String, String>,
    relisting: Option<BTreeMap<String, String>>,
    inits: usize,
    errors: Vec<String>,
    expired: usize,
}

fn key_of<K: Resource>(obj: &K) -> (String, String) {
    let meta = obj.meta();
    let key = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    );
    (key, meta.resource_version.clone().unwrap_or_default())
}

impl Mirror {
    fn feed<K: Resource>(&mut self, event: Result<Event<K>, watcher::Error>) {
        match event {
            Ok(Event::Init) => {
                self.inits += 1;
                self.relisting = Some(BTreeMap::new());
            }
            Ok(Event::InitApply(obj)) => {
                let (k, rv) = key_of(&obj);
                self.relisting.get_or_insert_default().insert(k, rv);
            }
            Ok(Event::InitDone) => self.state = self.relisting.take().unwrap_or_default(),
            Ok(Event::Apply(obj)) => {
                let (k, rv) = key_of(&obj);
                self.state.insert(k, rv);
            }
            Ok(Event::Delete(obj)) => {
                self.state.remove(&key_of(&obj).0);
            }
            Err(e) => {
                if matches!(&e, watcher::Error::WatchError(s) if s.code == 410) {
                    self.expired += 1;
                }
                self.errors.push(e.to_string());
            }
        }
    }
}

fn server_state(server: &FakeApiServer, resource: &str) -> BTreeMap<String, String> {
    server
        .list(resource)
        .iter()
        .map(|o| {
            let meta = &o["metadata"];
            let ns = meta["namespace"].as_str().unwrap_or_default();
            (
                format!("{ns}/{}", meta["name"].as_str().unwrap_or_default()),
                meta["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Feeds watcher events into `mirror` until it agrees with the server (or the deadline passes).
async fn converge<K: Resource + Debug>(
    server: &FakeApiServer,
    resource: &str,
    rx: &mut WatchRx<K>,
    mirror: &mut Mirror,
) {
    let give_up = Instant::now() + DEADLINE;
    while mirror.state != server_state(server, resource) || mirror.relisting.is_some() {
        let left = give_up.saturating_duration_since(Instant::now());
        match timeout(left, rx.recv()).await {
            Ok(Some(event)) => mirror.feed(event),
            Ok(None) => panic!("watcher ended"),
            Err(_) => panic!(
                "watcher did not converge: mirror {:?} vs server {:?} (errors {:?})",
                mirror.state,
                server_state(server, resource),
                mirror.errors
            ),
        }
    }
}

async fn drain_initial_list<K: Resource + Debug>(rx: &mut WatchRx<K>, mirror: &mut Mirror) {
    loop {
        let event = next_event(rx).await;
        let done = matches!(event, Ok(Event::InitDone));
        mirror.feed(event);
        if done {
            return;
        }
    }
}

fn lists_of(server: &FakeApiServer, resource: &str) -> usize {
    server
        .request_log()
        .iter()
        .filter(|r| r.is_list() && r.resource().as_deref() == Some(resource))
        .count()
}

/// Polls `condition` every few milliseconds until it holds; false if `DEADLINE` passes first.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + DEADLINE;
    while !condition() {
        if Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn services_round_trip_through_the_kube_client() {
    let server = FakeApiServer::start().await;
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();

    let web = api
        .create(&pp, &service("web", json!({"app": "web"})))
        .await
        .expect("create web");
    assert!(
        web.metadata.uid.is_some() && web.metadata.creation_timestamp.is_some(),
        "server fills uid and timestamp: {web:?}"
    );
    assert_eq!(web.status, None, "status is not writable through create");
    let rv1 = rv_of(&web);
    assert_eq!(
        api.get("web").await.expect("get web").metadata,
        web.metadata
    );
    assert_eq!(
        api_error(api.create(&pp, &service("web", json!({}))).await),
        (409, "AlreadyExists".into())
    );
    assert_eq!(api_error(api.get("nope").await), (404, "NotFound".into()));

    let db = api
        .create(&pp, &service("db", json!({"tier": "backend"})))
        .await
        .expect("create db");
    assert!(rv_of(&db) > rv1, "resourceVersions increase");
    let names = |l: kube::core::ObjectList<Service>| {
        l.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        ["web"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("!app"))
                .await
                .unwrap()
        ),
        ["db"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("tier!=frontend"))
                .await
                .unwrap()
        ),
        ["db", "web"]
    );
    assert_eq!(
        api_error(api.list(&ListParams::default().labels("app in (x")).await),
        (400, "BadRequest".into())
    );

    // Replace with the current resourceVersion succeeds; replaying the stale one conflicts.
    let mut edited = web.clone();
    edited.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
    let replaced = api
        .replace("web", &pp, &edited)
        .await
        .expect("replace with current rv");
    let rv2 = rv_of(&replaced);
    assert!(rv2 > rv_of(&db));
    assert_eq!(
        replaced.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );
    assert_eq!(
        api_error(api.replace("web", &pp, &edited).await),
        (409, "Conflict".into())
    );

    // /status changes status only, however much else the patch tries to change.
    let status_patch = json!({
        "spec": {"type": "NodePort"},
        "metadata": {"labels": {"sneaky": "yes"}},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
    });
    let patched = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status_patch))
        .await
        .expect("patch status");
    assert!(rv_of(&patched) > rv2);
    assert_eq!(
        patched.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    assert!(!patched.labels().contains_key("sneaky"));
    let ingress = patched
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(
        server.get("services", "default", "web").unwrap()["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.10"
    );

    // The main resource cannot change status, and a no-op patch is not a write.
    let labelled = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}, "status": null})),
        )
        .await
        .expect("merge patch");
    assert_eq!(labelled.labels().get("x").map(String::as_str), Some("y"));
    assert_eq!(labelled.status, patched.status);
    let again = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        rv_of(&again),
        rv_of(&labelled),
        "no-op patches keep the resourceVersion"
    );
    let conflict = json!({"metadata": {"resourceVersion": rv2.to_string(), "labels": {"x": "z"}}});
    assert_eq!(
        api_error(
            api.patch("web", &PatchParams::default(), &Patch::Merge(&conflict))
                .await
        ),
        (409, "Conflict".into())
    );

    // Server-side apply creates, then merges.
    let ssa = PatchParams::apply("fake-api-test");
    let applied = api
        .patch(
            "ssa",
            &ssa,
            &Patch::Apply(service("ssa", json!({"via": "apply"}))),
        )
        .await
        .expect("apply creates");
    assert_eq!(
        applied.labels().get("via").map(String::as_str),
        Some("apply")
    );
    let applied = api
        .patch(
            "ssa",
            &ssa,
            &Patch::Apply(json!({"metadata": {"labels": {"more": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.labels().len(), 2);

    // Pagination walks every item exactly once.
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = api.list(&params).await.expect("list page");
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|s| s.name_any()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = ListParams::default().limit(2).continue_token(&token),
            None => break,
        }
    }
    assert_eq!(seen, ["db", "ssa", "web"]);

    api.delete("db", &DeleteParams::default())
        .await
        .expect("delete db");
    assert_eq!(api_error(api.get("db").await), (404, "NotFound".into()));
    assert_eq!(
        api_error(api.delete("db", &DeleteParams::default()).await),
        (404, "NotFound".into())
    );
    assert!(server.get("services", "default", "db").is_none());
}

#[tokio::test]
async fn bad_requests_get_status_errors() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let request = |method: &str, uri: &str, body: &str| {
        hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let cases = [
        (request("GET", "/api/v1/widgets", ""), 404),
        (request("GET", "/nonsense", ""), 404),
        (
            request("POST", "/api/v1/namespaces/default/services/web", "{}"),
            405,
        ),
        (
            request("POST", "/api/v1/namespaces/default/services", "not json"),
            400,
        ),
        (
            request("POST", "/api/v1/namespaces/default/services", "[1]"),
            400,
        ),
        (
            request(
                "POST",
                "/api/v1/namespaces/default/services",
                r#"{"metadata":{}}"#,
            ),
            422,
        ),
        (
            request(
                "POST",
                "/api/v1/namespaces/other/services",
                r#"{"metadata":{"name":"a","namespace":"default"}}"#,
            ),
            400,
        ),
        (
            request("GET", "/api/v1/services?labelSelector=a%20b", ""),
            400,
        ),
        (
            request("GET", "/api/v1/services?watch=true&resourceVersion=abc", ""),
            400,
        ),
        (request("GET", "/api/v1/services?limit=-1", ""), 400),
        (
            request("GET", "/api/v1/services?limit=1&continue=garbage", ""),
            400,
        ),
        (
            request("GET", "/api/v1/namespaces/default/services/web/scale", ""),
            404,
        ),
        (
            request(
                "GET",
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/x/status",
                "",
            ),
            404,
        ),
        (
            request("PATCH", "/api/v1/namespaces/default/services/web", "{}"),
            415,
        ),
    ];
    for (req, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        match client.request_text(req).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, code, "{what}: {status:?}"),
            other => panic!("{what}: expected a {code} Status, got {other:?}"),
        }
    }
    assert_eq!(
        client.apiserver_version().await.expect("version").major,
        "1"
    );
}

#[tokio::test]
async fn watcher_sees_initial_list_then_changes() {
    let server = FakeApiServer::start().await;
    server.apply(slice("default", "a", "10.0.0.1"));
    server.apply(slice("other", "b", "10.0.0.2"));

    let mut rx = spawn_watcher(
        Api::<EndpointSlice>::all(server.client()),
        watcher::Config::default(),
    );
    assert!(matches!(next_ok(&mut rx).await, Event::Init));
    let mut initial = Vec::new();
    for _ in 0..2 {
        match next_ok(&mut rx).await {
            Event::InitApply(s) => initial.push(s.name_any()),
            other => panic!("expected InitApply, got {other:?}"),
        }
    }
    assert_eq!(initial, ["a", "b"]);
    assert!(matches!(next_ok(&mut rx).await, Event::InitDone));

    let modified = server.apply(slice("default", "a", "10.0.0.9"));
    match next_ok(&mut rx).await {
        Event::Apply(s) => {
            assert_eq!(s.name_any(), "a");
            assert_eq!(s.endpoints.as_ref().unwrap()[0].addresses, ["10.0.0.9"]);
            assert_eq!(
                s.resource_version().as_deref(),
                modified["metadata"]["resourceVersion"].as_str()
            );
        }
        other => panic!("expected Apply, got {other:?}"),
    }
    server
        .delete("endpointslices", "default", "a")
        .expect("a existed");
    match next_ok(&mut rx).await {
        Event::Delete(s) => assert_eq!(
            (s.namespace().as_deref(), s.name_any().as_str()),
            (Some("default"), "a")
        ),
        other => panic!("expected Delete, got {other:?}"),
    }

    let log = server.request_log();
    let list = log.iter().find(|r| r.is_list()).expect("a LIST");
    assert_eq!(list.path, "/apis/discovery.k8s.io/v1/endpointslices");
    assert_eq!(list.param("limit").as_deref(), Some("500"));
    let watch = log.iter().find(|r| r.is_watch()).expect("a WATCH");
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
    assert_eq!(lists_of(&server, "endpointslices.discovery.k8s.io"), 1);
}

#[tokio::test]
async fn paginated_initial_list_and_label_selected_watch() {
    let server = FakeApiServer::start().await;
    for (i, app) in ["web", "db", "web", "cache", "web"].iter().enumerate() {
        server.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "default", "labels": {"app": app}},
            "spec": {"ports": [{"port": 80}]},
        }));
    }
    let config = watcher::Config::default().labels("app=web").page_size(2);
    let mut rx = spawn_watcher(
        Api::<Service>::namespaced(server.client(), "default"),
        config,
    );
    let mut mirror = Mirror::default();
    drain_initial_list(&mut rx, &mut mirror).await;
    assert_eq!(
        mirror.state.keys().collect::<Vec<_>>(),
        ["default/s0", "default/s2", "default/s4"]
    );
    let lists: Vec<_> = server
        .request_log()
        .into_iter()
        .filter(|r| r.is_list())
        .collect();
    assert_eq!(lists.len(), 2, "3 matching items in pages of 2: {lists:?}");
    assert!(lists[1].param("continue").is_some());

    // Leaving the selector is a delete, entering it an add, for this watch.
    server.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s0", "namespace": "default", "labels": {"app": "other"}}, "spec": {"ports": [{"port": 80}]}}));
    match next_ok(&mut rx).await {
        Event::Delete(s) => assert_eq!(s.name_any(), "s0"),
        other => panic!("expected Delete for s0 leaving the selector, got {other:?}"),
    }
    server.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s1", "namespace": "default", "labels": {"app": "web"}}, "spec": {"ports": [{"port": 80}]}}));
    match next_ok(&mut rx).await {
        Event::Apply(s) => assert_eq!(s.name_any(), "s1"),
        other => panic!("expected Apply for s1 entering the selector, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_watch_relists() {
    let server = FakeApiServer::start().await;
    server.apply(slice("default", "a", "10.0.0.1"));
    server.apply(slice("default", "b", "10.0.0.2"));
    let mut rx = spawn_watcher(
        Api::<EndpointSlice>::all(server.client()),
        watcher::Config::default(),
    );
    let mut mirror = Mirror::default();
    drain_initial_list(&mut rx, &mut mirror).await;
    assert_eq!(mirror.state, server_state(&server, "endpointslices"));

    // Disturb an established watch, not one still being set up.
    assert!(
        eventually(|| server.open_watches() == 1).await,
        "the watcher never started watching"
    );
    server.compact();
    let compacted_at = server.resource_version();
    server.drop_watches().await;
    server.apply(slice("default", "c", "10.0.0.3"));
    server.delete("endpointslices", "default", "a");
    server.apply(slice("default", "b", "10.0.0.22"));

    converge(&server, "endpointslices", &mut rx, &mut mirror).await;
    assert_eq!(mirror.inits, 2, "the watcher restarted with a fresh list");
    assert!(
        mirror.expired >= 1,
        "the resumed watch was told 410 Expired: {:?}",
        mirror.errors
    );
    assert_eq!(lists_of(&server, "endpointslices.discovery.k8s.io"), 2);
    let log = server.request_log();
    let resumed = log
        .iter()
        .filter(|r| r.is_watch())
        .nth(1)
        .unwrap_or_else(|| panic!("no resumed watch in {log:#?}"));
    let resumed_from: u64 = resumed.param("resourceVersion").unwrap().parse().unwrap();
    assert!(
        resumed_from < compacted_at,
        "resumed from {resumed_from}, compacted at {compacted_at}"
    );
}

#[tokio::test]
async fn watcher_recovers_after_server_restart() {
    let server = FakeApiServer::start().await;
    server.apply(slice("default", "a", "10.0.0.1"));
    server.apply(slice("default", "b", "10.0.0.2"));
    let mut rx = spawn_watcher(
        Api::<EndpointSlice>::all(server.client()),
        watcher::Config::default(),
    );
    let mut mirror = Mirror::default();
    drain_initial_list(&mut rx, &mut mirror).await;

    assert!(
        eventually(|| server.open_watches() == 1).await,
        "the watcher never started watching"
    );
    server.stop().await;
    assert_eq!(
        server.open_watches(),
        0,
        "stop tears down the in-flight watch"
    );
    server.apply(slice("default", "a", "10.0.0.11"));
    server.apply(slice("default", "c", "10.0.0.3"));
    server.delete("endpointslices", "default", "b");
    // Wait until the watcher has noticed the outage (a failed reconnect), so the restart is real.
    loop {
        let event = next_event(&mut rx).await;
        let failed = event.is_err();
        mirror.feed(event);
        if failed {
            break;
        }
    }
    assert_ne!(mirror.state, server_state(&server, "endpointslices"));

    server.start_again().await;
    converge(&server, "endpointslices", &mut rx, &mut mirror).await;
    // The store and its history survived, so the watch resumed instead of relisting.
    assert_eq!(mirror.inits, 1);
    assert_eq!(lists_of(&server, "endpointslices.discovery.k8s.io"), 1);
}

#[tokio::test]
async fn bookmarks_are_sent_and_carry_the_cluster_resource_version() {
    let server = FakeApiServer::start().await;
    server.set_bookmark_interval(Duration::from_millis(100));
    server.apply(slice("default", "a", "10.0.0.1"));
    let client = server.client();
    let slices: Api<EndpointSlice> = Api::all(client.clone());

    // A real watcher with a 1 s watch timeout, so it re-watches from whatever bookmarks taught it.
    let mut rx = spawn_watcher(slices.clone(), watcher::Config::default().timeout(1));
    let mut mirror = Mirror::default();
    drain_initial_list(&mut rx, &mut mirror).await;

    // A write to another resource moves the cluster resourceVersion past anything the
    // EndpointSlice watch has seen as an event; only a bookmark can tell it.
    let svc = server.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}));
    let svc_rv: u64 = svc["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let raw = slices
        .watch(&WatchParams::default(), &mirror.state["default/a"])
        .await
        .expect("raw watch");
    let bookmark_rv = timeout(DEADLINE, async {
        let mut raw = Box::pin(raw);
        while let Some(event) = raw.try_next().await.expect("raw watch stream") {
            if let WatchEvent::Bookmark(b) = event {
                assert_eq!(b.types.kind, "EndpointSlice");
                assert_eq!(b.types.api_version, "discovery.k8s.io/v1");
                return b.metadata.resource_version;
            }
        }
        panic!("raw watch ended without a bookmark");
    })
    .await
    .expect("a bookmark within the deadline");
    assert!(bookmark_rv.parse::<u64>().unwrap() >= svc_rv);

    let rewatched = eventually(|| {
        server.request_log().iter().any(|r| {
            r.is_watch()
                && r.resource().as_deref() == Some("endpointslices.discovery.k8s.io")
                && r.param("timeoutSeconds").as_deref() == Some("1")
                && r.param("resourceVersion")
                    .and_then(|rv| rv.parse::<u64>().ok())
                    .is_some_and(|rv| rv >= svc_rv)
        })
    })
    .await;
    assert!(
        rewatched,
        "the watcher resumed from a bookmark: {:#?}",
        server.request_log()
    );

    // And bookmarks did not upset it: it still sees changes, without ever relisting.
    server.apply(slice("default", "a", "10.0.0.5"));
    converge(&server, "endpointslices", &mut rx, &mut mirror).await;
    assert_eq!(lists_of(&server, "endpointslices.discovery.k8s.io"), 1);
    assert!(mirror.errors.is_empty(), "{:?}", mirror.errors);
}

#[tokio::test]
async fn events_kubeconfig_cluster_scope_and_slow_responses() {
    let server = FakeApiServer::start().await;
    let path = std::env::temp_dir().join(format!(
        "l3lb-fake-api-{}-{}.kubeconfig",
        std::process::id(),
        server.addr().port()
    ));
    server.write_kubeconfig(&path).expect("write kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig parses");
    let _ = std::fs::remove_file(&path);
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).expect("client from kubeconfig");

    // Cluster-scoped resources.
    server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"role": "lb"}}}));
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes
            .get("node-1")
            .await
            .expect("get node")
            .metadata
            .namespace,
        None
    );
    assert_eq!(
        nodes
            .list(&ListParams::default().labels("role=lb"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Events through both APIs end up in events().
    let ev = |api_version: &str| {
        json!({"apiVersion": api_version, "kind": "Event",
            "metadata": {"generateName": "web.", "namespace": "default"},
            "reason": "Assigned", "note": "assigned 192.0.2.1", "message": "assigned 192.0.2.1", "type": "Normal",
            "eventTime": "2025-01-01T00:00:00.000000Z", "reportingController": "l3lb", "reportingInstance": "node-1", "action": "Assign",
            "involvedObject": {"kind": "Service", "name": "web", "namespace": "default", "uid": "u-web"},
            "regarding": {"kind": "Service", "name": "web", "namespace": "default", "uid": "u-web"}})
    };
    let new_events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let created = new_events
        .create(
            &PostParams::default(),
            &serde_json::from_value(ev("events.k8s.io/v1")).unwrap(),
        )
        .await
        .unwrap();
    assert!(created.name_any().starts_with("web.") && created.name_any().len() == "web.".len() + 5);
    // Validated as upstream validates them, and without regarding.uid (invisible to `kubectl
    // describe`) refused.
    let mut invalid = ev("events.k8s.io/v1");
    invalid["regarding"]["uid"] = Value::Null;
    invalid["note"] = Value::String("x".repeat(1025));
    let refused = new_events
        .create(
            &PostParams::default(),
            &serde_json::from_value(invalid).unwrap(),
        )
        .await
        .expect_err("an invalid Event is refused");
    match refused {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("regarding.uid") && status.message.contains("note"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 422 Invalid, got {other}"),
    }
    let old_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), "default");
    old_events
        .create(
            &PostParams::default(),
            &serde_json::from_value(ev("v1")).unwrap(),
        )
        .await
        .unwrap();
    let events = server.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(events[1]["apiVersion"], "v1");

    // Slow responses are slow.
    server.set_response_delay(Duration::from_millis(300));
    let started = Instant::now();
    nodes.get("node-1").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_response_delay(Duration::ZERO);
    let writes = server.request_log().iter().filter(|r| r.is_write()).count();
    assert_eq!(writes, 3, "only the event creates wrote (one refused)");
}

#[tokio::test]
async fn streaming_list_watcher_is_supported() {
    let server = FakeApiServer::start().await;
    server.apply(slice("default", "a", "10.0.0.1"));
    server.apply(slice("default", "b", "10.0.0.2"));
    let config = watcher::Config::default().streaming_lists();
    let mut rx = spawn_watcher(Api::<EndpointSlice>::all(server.client()), config);
    let mut mirror = Mirror::default();
    drain_initial_list(&mut rx, &mut mirror).await;
    assert_eq!(mirror.state, server_state(&server, "endpointslices"));
    server.delete("endpointslices", "default", "a");
    converge(&server, "endpointslices", &mut rx, &mut mirror).await;
    assert_eq!(
        lists_of(&server, "endpointslices.discovery.k8s.io"),
        0,
        "no LIST with streaming lists"
    );
    let log = server.request_log();
    assert_eq!(log[0].param("sendInitialEvents").as_deref(), Some("true"));
}

/// The daemon's kubeconfig carries its ServiceAccount token; with the deploy RBAC enforced, what
/// the rules grant passes and anything else is 403, as on a real cluster.
#[tokio::test]
async fn rbac_from_deploy_is_enforced_on_the_daemons_token() {
    let server = FakeApiServer::start().await;
    server.apply(serde_json::to_value(service("web", json!({}))).unwrap());
    server.enforce_rbac();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&path).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let daemon = kube::Client::try_from(config).unwrap();
    let services: Api<Service> = Api::all(daemon.clone());
    assert_eq!(
        services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let one: Api<Service> = Api::namespaced(daemon, "default");
    match one.get("web").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
            assert!(
                status.message.contains("cannot get resource \"services\""),
                "{}",
                status.message
            );
        }
        other => panic!("get services is not granted, yet: {other:?}"),
    }
    assert_eq!(
        server.denied_requests(),
        ["GET /api/v1/namespaces/default/services/web"]
    );
    // The test's own client has no token: unrestricted.
    Api::<Service>::namespaced(server.client(), "default")
        .get("web")
        .await
        .unwrap();
    assert!(
        server
            .unused_grants()
            .iter()
            .any(|(group, resource, verb, _)| group == "events.k8s.io"
                && resource == "events"
                && verb == "create"),
        "grants not yet used are reported"
    );
}

/// The watch cache as modelled: `resourceVersion=0` lists ignore `limit` and may lag behind;
/// consistent lists (no resourceVersion) page and are current.
#[tokio::test]
async fn watch_cache_lists_ignore_limit_and_may_be_stale() {
    let server = FakeApiServer::start().await;
    for name in ["a", "b", "c"] {
        server.apply(slice("default", name, "10.0.0.1"));
    }
    let api: Api<EndpointSlice> = Api::all(server.client());
    // kube-rs drops resourceVersion=0 when it sends a limit, so ask as another client would.
    let client = server.client();
    let raw_list = |query: &'static str| {
        let client = client.clone();
        async move {
            let request =
                hyper::Request::get(format!("/apis/discovery.k8s.io/v1/endpointslices?{query}"))
                    .body(Vec::new())
                    .unwrap();
            let text = client.request_text(request).await.unwrap();
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let list = raw_list("resourceVersion=0&limit=1").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        3,
        "the cache ignores limit"
    );
    assert!(list["metadata"].get("continue").is_none());
    let cached = ListParams::default().match_any();
    let consistent = api.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(consistent.items.len(), 1, "a consistent list pages");

    server.set_watch_cache(l3lb_tests::fake_api::WatchCache {
        stale_by: 2,
        ..Default::default()
    });
    server.delete("endpointslices", "default", "a");
    server.apply(slice("default", "d", "10.0.0.4"));
    let stale = api.list(&cached).await.unwrap();
    let names: Vec<String> = stale.items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(
        names,
        ["a", "b", "c"],
        "two versions behind: before the delete and the add"
    );
    let current = api.list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = current.items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, ["b", "c", "d"]);
}

/// A streaming list needs `resourceVersionMatch=NotOlderThan` and bookmarks, and a server
/// without the WatchList feature refuses it.
#[tokio::test]
async fn streaming_lists_are_checked_and_can_be_unsupported() {
    let server = FakeApiServer::start().await;
    let api: Api<EndpointSlice> = Api::all(server.client());
    let code = |result: Result<_, kube::Error>| match result {
        Err(kube::Error::Api(status)) => status.code,
        Err(other) => panic!("expected an API error, got {other}"),
        Ok(_) => 200,
    };
    let streaming = WatchParams::streaming_lists();
    assert_eq!(code(api.watch(&streaming, "").await.map(|_| ())), 200);
    server.set_watch_cache(l3lb_tests::fake_api::WatchCache {
        streaming_lists: false,
        ..Default::default()
    });
    assert_eq!(code(api.watch(&streaming, "").await.map(|_| ())), 422);
    server.set_watch_cache(Default::default());
    let client = server.client();
    let request = hyper::Request::get(
        "/apis/discovery.k8s.io/v1/endpointslices?watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
    )
    .body(Vec::new())
    .unwrap();
    assert!(
        client.request_text(request).await.is_err(),
        "sendInitialEvents without resourceVersionMatch=NotOlderThan is refused"
    );
}

/// A streaming list at "any" version (`resourceVersion=0`) comes from the lagging cache: the
/// newest object arrives only after the initial-events-end bookmark. Without a resourceVersion
/// it is a consistent read: everything before the bookmark.
#[tokio::test]
async fn streaming_list_at_any_version_may_be_stale() {
    let server = FakeApiServer::start().await;
    server.apply(slice("default", "a", "10.0.0.1"));
    server.apply(slice("default", "b", "10.0.0.2"));
    server.set_watch_cache(l3lb_tests::fake_api::WatchCache {
        stale_by: 1,
        ..Default::default()
    });
    let client = server.client();
    let names_before_and_after_bookmark = |query: &'static str| {
        let client = client.clone();
        async move {
            let request = hyper::Request::get(format!(
                "/apis/discovery.k8s.io/v1/endpointslices?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1{query}"
            ))
            .body(Vec::new())
            .unwrap();
            let text = client.request_text(request).await.unwrap();
            let (mut before, mut after, mut ended) = (Vec::new(), Vec::new(), false);
            for line in text.lines() {
                let event: Value = serde_json::from_str(line).unwrap();
                let name = event["object"]["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned);
                match (event["type"].as_str(), name) {
                    (Some("BOOKMARK"), _) => {
                        ended |= event
                            .pointer("/object/metadata/annotations/k8s.io~1initial-events-end")
                            == Some(&json!("true"))
                    }
                    (Some("ADDED"), Some(name)) if ended => after.push(name),
                    (Some("ADDED"), Some(name)) => before.push(name),
                    _ => {}
                }
            }
            (before, after)
        }
    };
    assert_eq!(
        names_before_and_after_bookmark("&resourceVersion=0").await,
        (vec!["a".to_owned()], vec!["b".to_owned()]),
        "stale by one version"
    );
    assert_eq!(
        names_before_and_after_bookmark("").await,
        (vec!["a".to_owned(), "b".to_owned()], vec![]),
        "consistent"
    );
}
