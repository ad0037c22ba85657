//! An in-process fake Kubernetes API server that speaks the real HTTP list/watch protocol, so the
//! controller's end-to-end tests can run the real kube-rs client (and `kube::runtime::watcher`)
//! against it.
//!
//! What it models, because the watcher depends on it:
//! - one cluster-wide resourceVersion counter (strings of integers, as etcd does); every write
//!   bumps it, and no-op writes do not (so they emit no watch event, like the real apiserver);
//! - per-resource watch history since the last [`FakeApiServer::compact`], replayed to watches
//!   that resume from a resourceVersion; resuming from before the compaction point gets a
//!   `410 Expired` ERROR event inside a 200 stream, exactly as the apiserver's watch cache does;
//! - a watch cache ([`WatchCache`]): `resourceVersion=0` lists ignore `limit` and may be stale
//!   by a configurable number of versions; streaming lists (`sendInitialEvents`) with the
//!   initial-events-end bookmark, or their refusal by a server without them;
//! - paginated lists (`limit`/`continue`), label and field selectors on lists and watches
//!   (objects moving out of a watch's selector show up as DELETED, moving in as ADDED);
//! - BOOKMARK events carrying the cluster-wide resourceVersion, about once a minute
//!   ([`FakeApiServer::set_bookmark_interval`]);
//! - the `/status` subresource: writes to the main resource keep the stored status (and create
//!   drops it), writes to `/status` change nothing but `.status`;
//! - `metadata.managedFields` for writes through the API (see `managed`), so a controller can
//!   tell the fields it wrote from another's;
//! - Event validation as upstream (required fields, lengths) and `regarding.uid` (see
//!   `validate`);
//! - injected failures of status writes ([`FakeApiServer::fail_next_status_writes`]);
//! - the server going down ([`FakeApiServer::stop`]) and connections dropping
//!   ([`FakeApiServer::drop_watches`]), by aborting the connection tasks so clients see a torn
//!   connection rather than a clean end of stream.
//!
//! - RBAC for the daemon's ServiceAccount, from the deploy manifests ([`FakeApiServer::enforce_rbac`]);
//!
//! What it does not model: authentication beyond one token, admission, defaulting, validation beyond Events and what the
//! protocol needs, finalizers (DELETE removes at once), real server-side apply (an apply patch is a
//! JSON merge; managed fields are a simplified model), JSON patch, protobuf, and MVCC snapshots (a paginated list
//! reads the current state for every page, but reports the first page's resourceVersion, so a
//! watch started from it replays whatever changed in between).
//!
//! The test-facing control API ([`FakeApiServer::apply`] and friends) writes the store directly,
//! bypassing the status-subresource rules, so tests can set `.status` the way other controllers
//! would.

mod error;
mod list_watch;
mod managed;
mod rbac;
mod resources;
mod route;
mod selector;
mod server;
mod store;
mod validate;
mod write;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use resources::{RESOURCES, resource_by_name};
use route::{Query, parse_route};
pub use server::WatchCache;
use server::{Conns, Inner, accept_loop, lock};
use store::{Store, meta_str};

/// A fake Kubernetes API server on 127.0.0.1, plain HTTP/1.1, no auth. Dropping it shuts it down.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // So start_again can take the port back despite connections lingering in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl FakeApiServer {
    /// Starts serving on a free port. Panics if no port can be bound (a broken test host).
    pub async fn start() -> FakeApiServer {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("fake API server: cannot bind 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("fake API server: bound socket has no local address");
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new()),
            conns: Mutex::new(Conns::default()),
            log: Mutex::new(Vec::new()),
            response_delay: Mutex::new(Duration::ZERO),
            bookmark_interval: Mutex::new(Duration::from_secs(60)),
            failing_status_writes: Mutex::new((0, 500)),
            watch_cache: Mutex::new(WatchCache::default()),
            rbac: Mutex::new(None),
            denied: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(inner.clone(), listener));
        FakeApiServer {
            inner,
            addr,
            accept_task: Mutex::new(Some(accept)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server, with the daemon's ServiceAccount token: once
    /// [`Self::enforce_rbac`] has loaded the RBAC, requests made with it are authorized.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: {}\n",
            self.url(),
            rbac::DAEMON_TOKEN
        )
    }

    /// Enforces the RBAC of the deploy manifests (`deploy/kubernetes/*.yaml`) on requests made
    /// with the kubeconfig's token: what the ServiceAccount's bindings do not allow gets 403.
    /// Requests without a token (the test's own [`Self::client`]) stay unrestricted.
    pub fn enforce_rbac(&self) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
        let rbac = rbac::Rbac::load(&dir)
            .unwrap_or_else(|e| panic!("fake API server: loading RBAC from deploy/: {e}"));
        *lock(&self.inner.rbac) = Some(rbac);
    }

    /// Requests the RBAC refused (403), as `METHOD path`.
    pub fn denied_requests(&self) -> Vec<String> {
        lock(&self.inner.denied).clone()
    }

    /// The grants of the deploy RBAC that no request has used so far, as
    /// `(apiGroup, resource, verb, namespace)`; empty until [`Self::enforce_rbac`].
    pub fn unused_grants(&self) -> Vec<rbac::Grant> {
        lock(&self.inner.rbac)
            .as_ref()
            .map(rbac::Rbac::unused)
            .unwrap_or_default()
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`, for `KUBECONFIG` or
    /// `kube::Config::from_custom_kubeconfig`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// A kube client for this server. Needs a Tokio runtime (kube spawns its request buffer).
    /// Built from the URL rather than a kubeconfig so `HTTPS_PROXY` in the environment is ignored.
    pub fn client(&self) -> kube::Client {
        let url = self
            .url()
            .parse()
            .expect("fake API server URL is a valid URI");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client for the fake API server")
    }

    /// Create-or-replace `obj` (resource from apiVersion + kind, namespace defaulting to
    /// "default"), emitting ADDED or MODIFIED (nothing if unchanged). Status is written as given.
    /// Returns the stored object. Panics on objects the server cannot store: that is a test bug.
    pub fn apply(&self, obj: Value) -> Value {
        lock(&self.inner.store)
            .apply(obj)
            .unwrap_or_else(|e| panic!("FakeApiServer::apply: {e}"))
    }

    /// Deletes an object, emitting DELETED; returns it as deleted, or None if it did not exist.
    /// `resource` is `plural` or `plural.group` (e.g. "services", "endpointslices"); `namespace`
    /// is ignored for cluster-scoped resources.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resource_by_name(resource)?;
        let ns = if RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        lock(&self.inner.store).commit_delete(res, ns, name, false)
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resource_by_name(resource)?;
        let ns = if RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        lock(&self.inner.store)
            .objects
            .get(&(res, ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object of `resource`, all namespaces, ordered by namespace then name.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        let Some(res) = resource_by_name(resource) else {
            return Vec::new();
        };
        lock(&self.inner.store)
            .objects_of(res)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The cluster-wide resourceVersion of the latest write.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    /// Forgets all watch history up to now: a watch resuming from any earlier resourceVersion
    /// gets `410 Expired`. Open watches keep streaming.
    pub fn compact(&self) {
        lock(&self.inner.store).compact();
    }

    /// Simulates the API server going down: stops listening and tears down every open
    /// connection (watches included). The store survives for [`Self::start_again`].
    pub async fn stop(&self) {
        let accept = lock(&self.accept_task).take();
        if let Some(accept) = accept {
            accept.abort();
            // Awaiting guarantees the listener is closed, so clients see connection refused.
            let _ = accept.await;
        }
        let conns: Vec<JoinHandle<()>> = lock(&self.inner.conns)
            .tasks
            .drain()
            .map(|(_, e)| e.handle)
            .collect();
        abort_all(conns).await;
    }

    /// Listens again on the same port after [`Self::stop`] (a no-op if running). Panics if the
    /// port has been taken in the meantime.
    pub async fn start_again(&self) {
        if lock(&self.accept_task).is_some() {
            return;
        }
        let give_up = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= give_up => {
                    panic!("fake API server: cannot listen on {} again: {e}", self.addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        *lock(&self.accept_task) = Some(tokio::spawn(accept_loop(self.inner.clone(), listener)));
    }

    /// Tears down the connections currently streaming a watch, as a network blip would; other
    /// connections and the listener are untouched.
    pub async fn drop_watches(&self) {
        let doomed: Vec<JoinHandle<()>> = {
            let mut conns = lock(&self.inner.conns);
            let ids: Vec<u64> = conns
                .tasks
                .iter()
                .filter(|(_, e)| e.watching)
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| conns.tasks.remove(id))
                .map(|e| e.handle)
                .collect()
        };
        abort_all(doomed).await;
    }

    /// How many connections are streaming a watch right now; lets a test wait until a client's
    /// watch is established before disturbing it.
    pub fn open_watches(&self) -> usize {
        lock(&self.inner.conns)
            .tasks
            .values()
            .filter(|e| e.watching)
            .count()
    }

    /// Delays every response (watches: their headers) by `delay`.
    pub fn set_response_delay(&self, delay: Duration) {
        *lock(&self.inner.response_delay) = delay;
    }

    /// Changes how the modelled watch cache serves lists and streaming watches.
    pub fn set_watch_cache(&self, cache: WatchCache) {
        *lock(&self.inner.watch_cache) = cache;
    }

    /// How often watches that allow bookmarks get one (default 60 s, about as often as a real
    /// server sends them). Applies to each watch from its next bookmark on.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.inner.bookmark_interval) = interval;
    }

    /// Makes the next `count` writes to a `/status` subresource fail with HTTP `code` (500,
    /// 429, 503, …) before they touch the store, as an API server restarting or shedding load
    /// would.
    pub fn fail_next_status_writes(&self, count: u32, code: u16) {
        *lock(&self.inner.failing_status_writes) = (count, code);
    }

    /// How many injected status-write failures are still to come.
    pub fn pending_status_failures(&self) -> u32 {
        lock(&self.inner.failing_status_writes).0
    }

    /// Every stored Event, from both `v1` and `events.k8s.io/v1`, in resourceVersion order.
    pub fn events(&self) -> Vec<Value> {
        let store = lock(&self.inner.store);
        let mut events: Vec<Value> = RESOURCES
            .iter()
            .enumerate()
            .filter(|(_, r)| r.kind == "Event")
            .flat_map(|(i, _)| store.objects_of(i).map(|(_, v)| v.clone()))
            .collect();
        events.sort_by_key(|e| {
            meta_str(e, "resourceVersion")
                .and_then(|rv| rv.parse::<u64>().ok())
                .unwrap_or(0)
        });
        events
    }

    /// Every request received so far, in arrival order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        lock(&self.inner.log).clone()
    }

    pub fn clear_request_log(&self) {
        lock(&self.inner.log).clear();
    }
}

async fn abort_all(tasks: Vec<JoinHandle<()>>) {
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        // Waiting makes sure the sockets are closed before the caller goes on.
        let _ = t.await;
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(accept) = lock(&self.accept_task).take() {
            accept.abort();
        }
        for (_, entry) in lock(&self.inner.conns).tasks.drain() {
            entry.handle.abort();
        }
    }
}

/// One request as the server saw it, for assertions such as "a relist happened".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw (still percent-encoded) query string, empty if none.
    pub query: String,
}

impl RequestRecord {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        Query::parse(&self.query).get(key).map(str::to_owned)
    }

    /// The resource this request addressed, as `plural` (core) or `plural.group`.
    pub fn resource(&self) -> Option<String> {
        parse_route(&self.path).map(|r| RESOURCES[r.res].key())
    }

    /// The subresource addressed (`status`), if any.
    pub fn subresource(&self) -> Option<String> {
        parse_route(&self.path).and_then(|r| r.subresource)
    }

    pub fn is_watch(&self) -> bool {
        self.method == "GET" && Query::parse(&self.query).flag("watch")
    }

    /// A GET of a collection that is not a watch.
    pub fn is_list(&self) -> bool {
        self.method == "GET"
            && !self.is_watch()
            && parse_route(&self.path).is_some_and(|r| r.name.is_none())
    }

    /// A request that may change the store (create, replace, patch, delete).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

impl fmt::Display for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.query.is_empty() {
            write!(f, "{} {}", self.method, self.path)
        } else {
            write!(f, "{} {}?{}", self.method, self.path, self.query)
        }
    }
}
