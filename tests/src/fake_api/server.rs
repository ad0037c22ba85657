//! Connections and dispatch: the accept loop, one task per connection (kept in a registry so
//! tests can tear connections down), and the routing of each request to its handler.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::RequestRecord;
use super::error::ApiError;
use super::list_watch::{list, watch};
use super::rbac::{Attributes, DAEMON_TOKEN, Rbac};
use super::resources::RESOURCES;
use super::route::{Query, Route, parse_route};
use super::store::Store;
use super::write::{create, delete, delete_collection, patch, replace};

pub(super) type RespBody = UnsyncBoxBody<Bytes, Infallible>;

pub(super) fn json_response(code: StatusCode, v: &Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(super) struct ConnEntry {
    pub(super) handle: JoinHandle<()>,
    /// Whether the connection is currently streaming a watch (HTTP/1.1 serves one request at a
    /// time, so a flag suffices).
    pub(super) watching: bool,
}

#[derive(Default)]
pub(super) struct Conns {
    pub(super) next_id: u64,
    pub(super) tasks: HashMap<u64, ConnEntry>,
}

/// State shared by the test's handle and the connection tasks.
pub(super) struct Inner {
    pub(super) store: Mutex<Store>,
    pub(super) conns: Mutex<Conns>,
    pub(super) log: Mutex<Vec<RequestRecord>>,
    pub(super) response_delay: Mutex<Duration>,
    pub(super) bookmark_interval: Mutex<Duration>,
    /// How many of the next status-subresource writes fail, and with which HTTP code.
    pub(super) failing_status_writes: Mutex<(u32, u16)>,
    pub(super) watch_cache: Mutex<WatchCache>,
    /// The daemon's RBAC, once loaded: requests with its token are checked against it.
    pub(super) rbac: Mutex<Option<Rbac>>,
    /// Requests refused with 403, as `VERB path`.
    pub(super) denied: Mutex<Vec<String>>,
}

/// How the modelled watch cache behaves; see [`super::FakeApiServer::set_watch_cache`].
#[derive(Debug, Clone, Copy)]
pub struct WatchCache {
    /// Lists served from the cache (`resourceVersion=0`, `NotOlderThan`) ignore `limit` and
    /// arrive whole, as on API servers before 1.31 (default true).
    pub unpaginated_cache_lists: bool,
    /// How many resourceVersions the cache lags behind the store (default 0): a list from it may
    /// be older than what a client has already seen.
    pub stale_by: u64,
    /// Whether streaming lists (`sendInitialEvents`, the WatchList feature) are served (default
    /// true); without, such a watch is refused with 422 as by a server with the gate off.
    pub streaming_lists: bool,
}

impl Default for WatchCache {
    fn default() -> Self {
        WatchCache {
            unpaginated_cache_lists: true,
            stale_by: 0,
            streaming_lists: true,
        }
    }
}

/// Locks ignoring poison: a panicking test thread must not turn every later request into a panic.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(super) fn set_watching(&self, conn: u64, watching: bool) {
        if let Some(entry) = lock(&self.conns).tasks.get_mut(&conn) {
            entry.watching = watching;
        }
    }
}

/// Removes a connection from the registry however its task ends (including by abort).
struct ConnGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.inner.conns).tasks.remove(&self.id);
    }
}

pub(super) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: back off rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Spawn while holding the registry lock so the task cannot deregister before it is registered.
        let mut conns = lock(&inner.conns);
        let id = conns.next_id;
        conns.next_id += 1;
        let handle = tokio::spawn(serve_connection(inner.clone(), id, stream));
        conns.tasks.insert(
            id,
            ConnEntry {
                handle,
                watching: false,
            },
        );
    }
}

async fn serve_connection(inner: Arc<Inner>, id: u64, stream: TcpStream) {
    let _guard = ConnGuard {
        inner: inner.clone(),
        id,
    };
    let service = service_fn(move |req| handle_request(inner.clone(), id, req));
    // Errors here are the client's business (it hung up, sent garbage); the connection just ends.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle_request(
    inner: Arc<Inner>,
    conn: u64,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    lock(&inner.log).push(RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: raw_query.clone(),
    });

    let delay = *lock(&inner.response_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let user_agent = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(
                ApiError::bad_request(format!("failed to read request body: {e}")).into_response(),
            );
        }
    };
    let request = ApiRequest {
        method,
        path,
        query: Query::parse(&raw_query),
        content_type,
        user_agent,
        bearer,
        body,
    };
    Ok(match serve(&inner, conn, request) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    })
}

/// Checks a request carrying the daemon's token against its RBAC (when loaded).
fn authorize(inner: &Inner, route: &Route, req: &ApiRequest) -> Result<(), ApiError> {
    if req.bearer.as_deref() != Some(DAEMON_TOKEN) {
        return Ok(());
    }
    let mut rbac = lock(&inner.rbac);
    let Some(rbac) = rbac.as_mut() else {
        return Ok(());
    };
    let def = &RESOURCES[route.res];
    let verb = match (&req.method, route.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if req.query.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    };
    let attributes = Attributes {
        verb: verb.to_owned(),
        group: def.group.to_owned(),
        resource: match &route.subresource {
            Some(sub) => format!("{}/{sub}", def.plural),
            None => def.plural.to_owned(),
        },
        namespace: route.namespace.clone(),
        name: route.name.clone(),
    };
    if rbac.allows(&attributes) {
        return Ok(());
    }
    lock(&inner.denied).push(format!("{} {}", req.method, req.path));
    Err(ApiError::new(
        403,
        "Forbidden",
        attributes.forbidden_message(),
    ))
}

/// The error the apiserver gives for `code` (what a restart, overload or timeout looks like).
fn injected_failure(code: u16) -> ApiError {
    let reason = match code {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    ApiError::new(code, reason, format!("injected failure ({reason})"))
}

pub(super) struct ApiRequest {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: Query,
    pub(super) content_type: String,
    pub(super) user_agent: String,
    pub(super) bearer: Option<String>,
    pub(super) body: Bytes,
}

impl ApiRequest {
    pub(super) fn json_body(&self) -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(ApiError::bad_request("request body must be a JSON object"))
        }
    }

    pub(super) fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }
}

fn serve(inner: &Arc<Inner>, conn: u64, req: ApiRequest) -> Result<Response<RespBody>, ApiError> {
    match req.path.as_str() {
        "/version" if req.method == Method::GET => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({
                    "major": "1", "minor": "35", "gitVersion": "v1.35.0-l3lb-fake", "gitCommit": "0000000",
                    "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z", "goVersion": "go1.25",
                    "compiler": "gc", "platform": "linux/amd64"
                }),
            ));
        }
        "/healthz" | "/livez" | "/readyz" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")).boxed_unsync());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Ok(resp);
        }
        _ => {}
    }
    let route = parse_route(&req.path).ok_or_else(ApiError::no_such_path)?;
    let def = &RESOURCES[route.res];
    match route.subresource.as_deref() {
        None => {}
        Some("status") if def.status => {}
        Some(_) => return Err(ApiError::no_such_path()),
    }
    authorize(inner, &route, &req)?;
    if route.subresource.is_some() && matches!(req.method, Method::PUT | Method::PATCH) {
        let mut failing = lock(&inner.failing_status_writes);
        if failing.0 > 0 {
            failing.0 -= 1;
            return Err(injected_failure(failing.1));
        }
    }
    let ns = route.namespace.as_deref();
    match (&route.name, &req.method) {
        (None, &Method::GET) if req.query.flag("watch") => {
            watch(inner, conn, route.res, ns, &req.query)
        }
        (None, &Method::GET) => list(inner, route.res, ns, &req.query),
        (None, &Method::POST) if ns.is_some() || !def.namespaced => {
            create(inner, route.res, ns, &req)
        }
        (None, &Method::DELETE) => delete_collection(inner, route.res, ns, &req),
        (Some(name), &Method::GET) => {
            let key = (route.res, ns.unwrap_or_default().to_owned(), name.clone());
            let obj = lock(&inner.store)
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| ApiError::not_found(def, name))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Some(name), &Method::PUT) => replace(inner, &route, name, &req),
        (Some(name), &Method::PATCH) => patch(inner, &route, name, &req),
        (Some(name), &Method::DELETE) if route.subresource.is_none() => {
            delete(inner, route.res, ns, name, &req)
        }
        (_, method) => Err(ApiError::method_not_allowed(method)),
    }
}
