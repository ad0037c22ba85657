//! Reads: paginated lists and watches (history replay, live feed, bookmarks, expiry), the
//! protocol `kube::runtime::watcher` depends on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::error::ApiError;
use super::resources::{RESOURCES, ResIdx, ResourceDef};
use super::route::Query;
use super::selector::Filter;
use super::server::{Inner, RespBody, json_response, lock};
use super::store::{Change, ChangeKind, meta_mut};

/// Continue tokens are `rv/namespace/name` of the last item served; opaque enough for clients,
/// and names cannot contain `/`.
fn parse_continue(token: &str) -> Option<(u64, String, String)> {
    let mut parts = token.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_owned(), parts.next()?.to_owned()))
}

pub(super) fn list(
    inner: &Inner,
    res: ResIdx,
    ns: Option<&str>,
    query: &Query,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[res];
    let filter = Filter::from_query(ns, query)?;
    let limit = match query.get("limit") {
        None | Some("") => None,
        Some(l) => match l.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid limit {l:?}: must be a non-negative integer"
                )));
            }
        },
    };
    // `resourceVersion=0` (and `NotOlderThan` any version) is served from the watch cache: the
    // whole list in one response whatever the limit (as many server versions do), possibly
    // behind etcd by some versions.
    let cache = *lock(&inner.watch_cache);
    let from_cache = query.get("continue").is_none_or(str::is_empty)
        && (query.get("resourceVersion") == Some("0")
            || query.get("resourceVersionMatch") == Some("NotOlderThan"));
    let limit = if from_cache && cache.unpaginated_cache_lists {
        None
    } else {
        limit
    };
    let store = lock(&inner.store);
    if from_cache && cache.stale_by > 0 {
        let (rv, objects) = store.stale_view(res, cache.stale_by);
        drop(store);
        let items: Vec<Value> = objects
            .into_iter()
            .filter(|((ons, _), obj)| filter.matches(ons, obj))
            .map(|(_, obj)| obj)
            .collect();
        let list = json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        });
        return Ok(json_response(StatusCode::OK, &list));
    }
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (store.rv, None),
        Some(token) => {
            let (rv, ns, name) = parse_continue(token).ok_or_else(|| {
                ApiError::bad_request(format!("invalid continue token {token:?}"))
            })?;
            if rv < store.compacted {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            (rv, Some((ns, name)))
        }
    };
    let mut matching = store
        .objects_of(res)
        .filter(|((_, ons, oname), _)| {
            after
                .as_ref()
                .is_none_or(|(ans, aname)| (ons, oname) > (ans, aname))
        })
        .filter(|((_, ons, _), obj)| filter.matches(ons, obj));
    let mut items = Vec::new();
    let mut last = String::new();
    while limit.is_none_or(|l| items.len() < l) {
        let Some(((_, ons, oname), obj)) = matching.next() else {
            break;
        };
        items.push(obj.clone());
        last = format!("{ons}/{oname}");
    }
    let more = matching.next().is_some();
    drop(matching);
    drop(store);

    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if more {
        metadata["continue"] = Value::String(format!("{list_rv}/{last}"));
    }
    let list = json!({
        "kind": format!("{}List", def.kind),
        "apiVersion": def.api_version(),
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// Clears the connection's watching flag when the watch body is dropped.
struct WatchGuard {
    inner: Arc<Inner>,
    conn: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.inner.set_watching(self.conn, false);
    }
}

/// Default watch length when the client sends no `timeoutSeconds` (upstream picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// One watch event, `type` first as the API server writes it (Go encodes the struct's fields in
/// order). The order matters to clients: serde decodes an adjacently tagged enum such as kube's
/// `WatchEvent` straight into the object only when the tag comes first, and otherwise buffers
/// the whole object as generic content before decoding it again, which would make every client
/// look more expensive here than against a real server.
fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut line, kind).unwrap_or_default();
    line.extend_from_slice(b",\"object\":");
    serde_json::to_writer(&mut line, object).unwrap_or_default();
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn bookmark_object(def: &ResourceDef, rv: u64, initial_events_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta})
}

/// One open watch: its backlog, its live feed and its timers.
struct WatchStream {
    inner: Arc<Inner>,
    res: ResIdx,
    filter: Filter,
    rx: broadcast::Receiver<Arc<Change>>,
    pending: Vec<u8>,
    /// The resourceVersion the client says it has seen; nothing at or before it is sent.
    seen: u64,
    deadline: Instant,
    bookmarks: bool,
    next_bookmark: Instant,
    finished: bool,
    _guard: WatchGuard,
}

enum Wake {
    Deadline,
    Bookmark,
    Change(Result<Arc<Change>, broadcast::error::RecvError>),
}

impl WatchStream {
    /// Appends what `change` looks like through this watch's filter, if anything.
    fn push_change(&mut self, change: &Change) {
        if change.resource != self.res || change.rv <= self.seen {
            return;
        }
        let now = self.filter.matches(&change.namespace, &change.object);
        let before = change
            .prev
            .as_ref()
            .is_some_and(|p| self.filter.matches(&change.namespace, p));
        let line = match (change.kind, before, now) {
            (ChangeKind::Modified, true, true) => watch_line("MODIFIED", &change.object),
            (ChangeKind::Modified, false, true) | (ChangeKind::Added, _, true) => {
                watch_line("ADDED", &change.object)
            }
            (ChangeKind::Deleted, _, true) => watch_line("DELETED", &change.object),
            // Left the selector: upstream reports the old object, at the new resourceVersion.
            (ChangeKind::Modified, true, false) => {
                let mut old = change.prev.clone().unwrap_or_default();
                meta_mut(&mut old).insert(
                    "resourceVersion".into(),
                    Value::String(change.rv.to_string()),
                );
                watch_line("DELETED", &old)
            }
            _ => return,
        };
        self.pending.extend_from_slice(&line);
    }

    fn push_expired(&mut self, message: String) {
        let status = ApiError::expired(message).status_object();
        self.pending
            .extend_from_slice(&watch_line("ERROR", &status));
        self.finished = true;
    }

    fn handle_recv(&mut self, r: Result<Arc<Change>, broadcast::error::RecvError>) {
        match r {
            Ok(change) => self.push_change(&change),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.push_expired(format!(
                    "watch fell {n} events behind and was closed; relist"
                ));
            }
            Err(broadcast::error::RecvError::Closed) => self.finished = true,
        }
    }

    /// A bookmark promises the client has seen everything up to its resourceVersion, so drain the
    /// feed under the store lock (changes are sent under it) before reading the current one.
    fn push_bookmark(&mut self) {
        let rv = {
            let inner = self.inner.clone();
            let store = lock(&inner.store);
            loop {
                match self.rx.try_recv() {
                    Ok(change) => self.push_change(&change),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        self.push_expired(format!(
                            "watch fell {n} events behind and was closed; relist"
                        ));
                        return;
                    }
                    Err(
                        broadcast::error::TryRecvError::Empty
                        | broadcast::error::TryRecvError::Closed,
                    ) => break,
                }
            }
            store.rv
        };
        self.pending.extend_from_slice(&watch_line(
            "BOOKMARK",
            &bookmark_object(&RESOURCES[self.res], rv, false),
        ));
        self.next_bookmark = Instant::now() + *lock(&self.inner.bookmark_interval);
    }

    async fn next_chunk(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, Self)> {
        loop {
            if !self.pending.is_empty() {
                let chunk = Bytes::from(std::mem::take(&mut self.pending));
                return Some((Ok(Frame::data(chunk)), self));
            }
            if self.finished {
                return None;
            }
            let wake = tokio::select! {
                () = tokio::time::sleep_until(self.deadline) => Wake::Deadline,
                () = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => Wake::Bookmark,
                r = self.rx.recv() => Wake::Change(r),
            };
            match wake {
                Wake::Deadline => self.finished = true,
                Wake::Bookmark => self.push_bookmark(),
                Wake::Change(r) => self.handle_recv(r),
            }
        }
    }
}

pub(super) fn watch(
    inner: &Arc<Inner>,
    conn: u64,
    res: ResIdx,
    ns: Option<&str>,
    query: &Query,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[res];
    let filter = Filter::from_query(ns, query)?;
    let timeout = match query.get("timeoutSeconds") {
        None | Some("") => DEFAULT_WATCH_TIMEOUT,
        Some(t) => Duration::from_secs(t.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid timeoutSeconds {t:?}: must be a non-negative integer"
            ))
        })?),
    };
    // Empty or "0" means "current state, then changes": synthetic ADDED events for what exists.
    let from: Option<u64> = match query.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let send_initial_events = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    if query.get("sendInitialEvents").is_some() {
        if !lock(&inner.watch_cache).streaming_lists {
            // A server without the WatchList feature.
            return Err(ApiError::invalid(
                def,
                "",
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
            ));
        }
        if send_initial_events
            && (query.get("resourceVersionMatch") != Some("NotOlderThan") || !bookmarks)
        {
            return Err(ApiError::invalid(
                def,
                "",
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan and allowWatchBookmarks",
            ));
        }
    }
    let interval = *lock(&inner.bookmark_interval);

    inner.set_watching(conn, true);
    let guard = WatchGuard {
        inner: inner.clone(),
        conn,
    };
    let store = lock(&inner.store);
    let rx = store.tx.subscribe();
    let mut stream = WatchStream {
        inner: inner.clone(),
        res,
        filter,
        rx,
        pending: Vec::new(),
        seen: from.unwrap_or(0),
        deadline: Instant::now() + timeout,
        bookmarks,
        next_bookmark: Instant::now() + interval,
        finished: false,
        _guard: guard,
    };
    match from {
        Some(rv) if rv < store.compacted => {
            // Upstream answers 200 and reports the expiry in the stream; clients rely on that.
            stream.push_expired(format!(
                "too old resource version: {rv} ({})",
                store.compacted
            ));
        }
        Some(_) if !send_initial_events => {
            for change in &store.history[res] {
                stream.push_change(change);
            }
        }
        // A streaming list "at any version" (`resourceVersion=0`) comes from the watch cache,
        // which may lag: its initial events and bookmark are that old, and the changes since
        // follow as the watch goes on.
        _ if send_initial_events
            && query.get("resourceVersion") == Some("0")
            && lock(&inner.watch_cache).stale_by > 0 =>
        {
            let (at, objects) = store.stale_view(res, lock(&inner.watch_cache).stale_by);
            for ((ns, _), obj) in &objects {
                if stream.filter.matches(ns, obj) {
                    stream.pending.extend_from_slice(&watch_line("ADDED", obj));
                }
            }
            stream
                .pending
                .extend_from_slice(&watch_line("BOOKMARK", &bookmark_object(def, at, true)));
            stream.seen = at;
            for change in &store.history[res] {
                stream.push_change(change);
            }
        }
        _ => {
            for ((_, ns, _), obj) in store.objects_of(res) {
                if stream.filter.matches(ns, obj) {
                    stream.pending.extend_from_slice(&watch_line("ADDED", obj));
                }
            }
            if send_initial_events {
                stream.pending.extend_from_slice(&watch_line(
                    "BOOKMARK",
                    &bookmark_object(def, store.rv, true),
                ));
            }
        }
    }
    drop(store);

    let body = StreamBody::new(futures::stream::unfold(stream, WatchStream::next_chunk));
    let mut resp = Response::new(body_of(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn body_of<S>(body: StreamBody<S>) -> RespBody
where
    S: Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static,
{
    body.boxed_unsync()
}
