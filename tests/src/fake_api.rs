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
//! - paginated lists (`limit`/`continue`), label and field selectors on lists and watches
//!   (objects moving out of a watch's selector show up as DELETED, moving in as ADDED);
//! - BOOKMARK events carrying the cluster-wide resourceVersion;
//! - the `/status` subresource: writes to the main resource keep the stored status (and create
//!   drops it), writes to `/status` change nothing but `.status`;
//! - the server going down ([`FakeApiServer::stop`]) and connections dropping
//!   ([`FakeApiServer::drop_watches`]), by aborting the connection tasks so clients see a torn
//!   connection rather than a clean end of stream.
//!
//! What it does not model: authentication, admission, defaulting, validation beyond what the
//! protocol needs, finalizers (DELETE removes at once), real server-side apply field ownership
//! (an apply patch is a JSON merge), JSON patch, protobuf, and MVCC snapshots (a paginated list
//! reads the current state for every page, but reports the first page's resourceVersion, so a
//! watch started from it replays whatever changed in between).
//!
//! The test-facing control API ([`FakeApiServer::apply`] and friends) writes the store directly,
//! bypassing the status-subresource rules, so tests can set `.status` the way other controllers
//! would.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How one kind of object is served. Adding a resource is one line in [`RESOURCES`].
#[derive(Debug)]
struct ResourceDef {
    /// API group; empty for the core group (served under `/api/v1`).
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    /// Whether `/status` is a subresource (and so main-resource writes cannot change status).
    status: bool,
    /// Whether PUT on a missing object creates it (true for leases and events upstream).
    create_on_update: bool,
}

impl ResourceDef {
    const fn namespaced(
        group: &'static str,
        version: &'static str,
        plural: &'static str,
        kind: &'static str,
    ) -> Self {
        ResourceDef {
            group,
            version,
            plural,
            kind,
            namespaced: true,
            status: false,
            create_on_update: false,
        }
    }

    const fn cluster(
        group: &'static str,
        version: &'static str,
        plural: &'static str,
        kind: &'static str,
    ) -> Self {
        ResourceDef {
            namespaced: false,
            ..Self::namespaced(group, version, plural, kind)
        }
    }

    const fn with_status(self) -> Self {
        ResourceDef {
            status: true,
            ..self
        }
    }

    const fn create_on_update(self) -> Self {
        ResourceDef {
            create_on_update: true,
            ..self
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` for the core group, `plural.group` otherwise: the name the control API takes and
    /// the one the apiserver uses in its error messages.
    fn key(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

static RESOURCES: &[ResourceDef] = &[
    ResourceDef::namespaced("", "v1", "services", "Service").with_status(),
    ResourceDef::namespaced("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceDef::namespaced("coordination.k8s.io", "v1", "leases", "Lease").create_on_update(),
    ResourceDef::namespaced("", "v1", "events", "Event").create_on_update(),
    ResourceDef::namespaced("events.k8s.io", "v1", "events", "Event").create_on_update(),
    ResourceDef::cluster("", "v1", "nodes", "Node").with_status(),
    ResourceDef::cluster("", "v1", "namespaces", "Namespace").with_status(),
];

/// Index into [`RESOURCES`]; the store's notion of "which resource".
type ResIdx = usize;

/// Finds a resource by `plural.group` (or `plural` for core), or by a bare plural when that is
/// unambiguous, so tests can say "endpointslices".
fn resource_by_name(name: &str) -> Option<ResIdx> {
    if let Some(i) = RESOURCES.iter().position(|r| r.key() == name) {
        return Some(i);
    }
    let mut by_plural = RESOURCES
        .iter()
        .enumerate()
        .filter(|(_, r)| r.plural == name);
    match (by_plural.next(), by_plural.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

fn resource_by_type(api_version: &str, kind: &str) -> Option<ResIdx> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

fn resource_by_path(group: &str, version: &str, plural: &str) -> Option<ResIdx> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

// ---------------------------------------------------------------------------------------------
// Errors, as `Status` objects so kube-rs surfaces them as `kube::Error::Api`.

#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, def: &ResourceDef, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": def.group, "kind": def.plural}));
        self
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.key()),
        )
        .with_details(def, name)
    }

    fn no_such_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn method_not_allowed(method: &Method) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.key()),
        )
        .with_details(def, name)
    }

    fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                def.key()
            ),
        )
        .with_details(def, name)
    }

    fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?}; json-patch is not supported by this fake)"
            ),
        )
    }

    fn invalid(def: &ResourceDef, name: &str, message: impl fmt::Display) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {message}", def.kind),
        )
        .with_details(def, name)
    }

    fn status_object(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    fn into_response(self) -> Response<RespBody> {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.status_object())
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors.

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Debug, Clone, Default)]
struct LabelSelector(Vec<LabelReq>);

/// Splits on commas that are not inside `in (...)` value lists.
fn split_top_level_commas(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_label_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let mut reqs = Vec::new();
        for term in split_top_level_commas(s) {
            reqs.push(
                Self::parse_term(term.trim())
                    .map_err(|e| format!("unable to parse requirement {term:?}: {e}"))?,
            );
        }
        Ok(LabelSelector(reqs))
    }

    fn parse_term(term: &str) -> Result<LabelReq, String> {
        let key = |k: &str| -> Result<String, String> {
            let k = k.trim();
            if valid_label_key(k) {
                Ok(k.to_owned())
            } else {
                Err(format!("invalid label key {k:?}"))
            }
        };
        let value = |v: &str| -> Result<String, String> {
            let v = v.trim();
            if valid_label_value(v) {
                Ok(v.to_owned())
            } else {
                Err(format!("invalid label value {v:?}"))
            }
        };
        if let Some(k) = term.strip_prefix('!') {
            return Ok(LabelReq::NotExists(key(k)?));
        }
        if let Some(open) = term.find('(') {
            let close = term
                .rfind(')')
                .filter(|&c| c > open && term[c + 1..].trim().is_empty());
            let Some(close) = close else {
                return Err("unbalanced parentheses".into());
            };
            let mut head = term[..open].split_whitespace();
            let (Some(k), Some(op), None) = (head.next(), head.next(), head.next()) else {
                return Err("expected `key in (values)` or `key notin (values)`".into());
            };
            let values = term[open + 1..close]
                .split(',')
                .map(value)
                .collect::<Result<Vec<_>, _>>()?;
            return match op {
                "in" => Ok(LabelReq::In(key(k)?, values)),
                "notin" => Ok(LabelReq::NotIn(key(k)?, values)),
                other => Err(format!("unknown operator {other:?}")),
            };
        }
        if let Some((k, v)) = term.split_once("!=") {
            return Ok(LabelReq::NotEq(key(k)?, value(v)?));
        }
        if let Some((k, v)) = term.split_once("==") {
            return Ok(LabelReq::Eq(key(k)?, value(v)?));
        }
        if let Some((k, v)) = term.split_once('=') {
            return Ok(LabelReq::Eq(key(k)?, value(v)?));
        }
        Ok(LabelReq::Exists(key(term)?))
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            // As upstream: `!=` and `notin` also match objects without the label.
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

/// Field selectors on any dotted path (upstream allows only a few fields per type; being more
/// permissive here cannot make a correct client fail).
#[derive(Debug, Clone, Default)]
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let mut reqs = Vec::new();
        for term in s.split(',') {
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(format!(
                    "invalid field selector term {term:?}: expected `field=value` or `field!=value`"
                ));
            };
            reqs.push((
                format!("/{}", path.trim().replace('.', "/")),
                equal,
                value.trim().to_owned(),
            ));
        }
        Ok(FieldSelector(reqs))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(pointer, equal, want)| {
            let got = match obj.pointer(pointer) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *equal
        })
    }
}

/// Which objects a list or watch is about.
#[derive(Debug, Clone)]
struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn from_query(namespace: Option<&str>, query: &Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?;
        Ok(Filter {
            namespace: namespace.map(str::to_owned),
            labels,
            fields,
        })
    }

    fn matches(&self, namespace: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

// ---------------------------------------------------------------------------------------------
// The store.

type ObjKey = (ResIdx, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as kept in history and fanned out to live watches.
#[derive(Debug)]
struct Change {
    resource: ResIdx,
    kind: ChangeKind,
    rv: u64,
    namespace: String,
    object: Value,
    /// The object before a MODIFIED, so selector watches can turn it into ADDED/DELETED.
    prev: Option<Value>,
}

/// Live watches that fall this far behind are closed with 410, as upstream closes slow watchers.
const WATCH_CHANNEL_CAPACITY: usize = 1 << 14;

struct Store {
    rv: u64,
    /// Watches must resume from at least this resourceVersion; history before it is gone.
    compacted: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: Vec<Vec<Arc<Change>>>,
    /// Sent to while holding the store lock, so that subscribing and snapshotting history under
    /// the same lock yields every change exactly once.
    tx: broadcast::Sender<Arc<Change>>,
}

fn random_u64() -> u64 {
    std::hash::RandomState::new().build_hasher().finish()
}

fn random_suffix() -> String {
    // The alphabet upstream uses for generateName (no vowels, no look-alikes).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
            n /= ALPHABET.len() as u64;
            c as char
        })
        .collect()
}

fn random_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// Now as RFC 3339 with second precision, the format of `metadata.creationTimestamp`.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata` as a mutable map, creating it (or replacing a non-object) as needed.
fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(map) = obj else {
        unreachable!("just made it an object")
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(meta) = meta else {
        unreachable!("just made it an object")
    };
    meta
}

/// Everything but metadata and status: what `metadata.generation` counts changes of.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

impl Store {
    fn new() -> Self {
        let (tx, _) = broadcast::channel(WATCH_CHANNEL_CAPACITY);
        Store {
            rv: 1,
            compacted: 0,
            objects: BTreeMap::new(),
            history: RESOURCES.iter().map(|_| Vec::new()).collect(),
            tx,
        }
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history[change.resource].push(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Stores `obj` (fully prepared apart from resourceVersion) and emits ADDED or MODIFIED.
    /// A write that changes nothing is dropped, as upstream drops no-op updates.
    fn commit_put(
        &mut self,
        res: ResIdx,
        ns: &str,
        name: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Value {
        let key = (res, ns.to_owned(), name.to_owned());
        let prev = self.objects.get(&key).cloned();
        if let Some(prev) = &prev {
            meta_mut(&mut obj).insert(
                "resourceVersion".into(),
                prev["metadata"]["resourceVersion"].clone(),
            );
            if *prev == obj || dry_run {
                return obj;
            }
        } else if dry_run {
            return obj;
        }
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        self.objects.insert(key, obj.clone());
        let kind = if prev.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            resource: res,
            kind,
            rv: self.rv,
            namespace: ns.to_owned(),
            object: obj.clone(),
            prev,
        });
        obj
    }

    fn commit_delete(&mut self, res: ResIdx, ns: &str, name: &str, dry_run: bool) -> Option<Value> {
        let key = (res, ns.to_owned(), name.to_owned());
        if dry_run {
            return self.objects.get(&key).cloned();
        }
        let mut obj = self.objects.remove(&key)?;
        self.rv += 1;
        // Upstream reports a deletion at the resourceVersion of the delete itself.
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        self.record(Change {
            resource: res,
            kind: ChangeKind::Deleted,
            rv: self.rv,
            namespace: ns.to_owned(),
            object: obj.clone(),
            prev: None,
        });
        Some(obj)
    }

    /// Fills in what the server owns on create and stores the object. `obj` already has the
    /// right apiVersion, kind, name and namespace.
    fn create(
        &mut self,
        res: ResIdx,
        ns: &str,
        name: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let def = &RESOURCES[res];
        if self
            .objects
            .contains_key(&(res, ns.to_owned(), name.to_owned()))
        {
            return Err(ApiError::already_exists(def, name));
        }
        let meta = meta_mut(&mut obj);
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        meta.insert("uid".into(), Value::String(random_uid()));
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        Ok(self.commit_put(res, ns, name, obj, dry_run))
    }

    /// Replaces an existing object with `new`, keeping what the server owns.
    fn replace(
        &mut self,
        res: ResIdx,
        ns: &str,
        name: &str,
        old: &Value,
        mut new: Value,
        dry_run: bool,
    ) -> Value {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let generation = if spec_part(old) == spec_part(&new) {
            generation
        } else {
            generation + 1
        };
        let meta = meta_mut(&mut new);
        for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert("generation".into(), json!(generation));
        self.commit_put(res, ns, name, new, dry_run)
    }

    /// Create-or-replace for the test control API: everything, status included, as given.
    fn apply(&mut self, mut obj: Value) -> Result<Value, String> {
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let res = resource_by_type(api_version, kind).ok_or_else(|| {
            format!("fake API server does not serve apiVersion {api_version:?} kind {kind:?}")
        })?;
        let def = &RESOURCES[res];
        let name = meta_str(&obj, "name")
            .filter(|n| !n.is_empty())
            .ok_or("object has no metadata.name")?
            .to_owned();
        let ns = if def.namespaced {
            let ns = meta_str(&obj, "namespace")
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned();
            meta_mut(&mut obj).insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            meta_mut(&mut obj).remove("namespace");
            String::new()
        };
        match self.objects.get(&(res, ns.clone(), name.clone())).cloned() {
            Some(old) => Ok(self.replace(res, &ns, &name, &old, obj, false)),
            None => self
                .create(res, &ns, &name, obj, false)
                .map_err(|e| e.message),
        }
    }

    fn compact(&mut self) {
        // Upstream's compactor records each compaction with a write, which bumps the revision; doing
        // the same guarantees that every watch resuming after a compaction is too old.
        self.rv += 1;
        self.compacted = self.rv;
        for h in &mut self.history {
            h.clear();
        }
    }

    fn objects_of(&self, res: ResIdx) -> impl Iterator<Item = (&ObjKey, &Value)> {
        self.objects
            .range((res, String::new(), String::new())..)
            .take_while(move |(k, _)| k.0 == res)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

type RespBody = UnsyncBoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, v: &Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded query parameters; the last occurrence of a key wins.
#[derive(Debug, Clone, Default)]
struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: &str) -> Self {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Go's strconv.ParseBool, which the apiserver uses for `watch` and friends.
    fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }
}

/// A request path resolved against [`RESOURCES`].
#[derive(Debug, Clone, PartialEq)]
struct Route {
    res: ResIdx,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_route(path: &str) -> Option<Route> {
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

// ---------------------------------------------------------------------------------------------
// Server state shared with the connection tasks.

struct ConnEntry {
    handle: JoinHandle<()>,
    /// Whether the connection is currently streaming a watch (HTTP/1.1 serves one request at a
    /// time, so a flag suffices).
    watching: bool,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    tasks: HashMap<u64, ConnEntry>,
}

struct Inner {
    store: Mutex<Store>,
    conns: Mutex<Conns>,
    log: Mutex<Vec<RequestRecord>>,
    response_delay: Mutex<Duration>,
    bookmark_interval: Mutex<Duration>,
}

/// Locks ignoring poison: a panicking test thread must not turn every later request into a panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn set_watching(&self, conn: u64, watching: bool) {
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

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
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
        body,
    };
    Ok(match serve(&inner, conn, request) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    })
}

struct ApiRequest {
    method: Method,
    path: String,
    query: Query,
    content_type: String,
    body: Bytes,
}

impl ApiRequest {
    fn json_body(&self) -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(ApiError::bad_request("request body must be a JSON object"))
        }
    }

    fn dry_run(&self) -> bool {
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

/// Continue tokens are `rv/namespace/name` of the last item served; opaque enough for clients,
/// and names cannot contain `/`.
fn parse_continue(token: &str) -> Option<(u64, String, String)> {
    let mut parts = token.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_owned(), parts.next()?.to_owned()))
}

fn list(
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
    let store = lock(&inner.store);
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

/// Checks and completes apiVersion, kind and namespace of a body against the URL.
fn conform(def: &ResourceDef, ns: Option<&str>, body: &mut Value) -> Result<(), ApiError> {
    let api_version = def.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", def.kind)] {
        match body.get(field).and_then(Value::as_str) {
            None | Some("") => body[field] = Value::String(want.to_owned()),
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {got:?} in the body does not match {want:?} of the URL"
                )));
            }
        }
    }
    match (meta_str(body, "namespace").filter(|n| !n.is_empty()), ns) {
        (Some(body_ns), Some(url_ns)) if body_ns != url_ns => {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({url_ns})"
            )));
        }
        _ => {}
    }
    let meta = meta_mut(body);
    match ns {
        Some(ns) => meta.insert("namespace".into(), Value::String(ns.to_owned())),
        None => meta.remove("namespace"),
    };
    Ok(())
}

fn create(
    inner: &Inner,
    res: ResIdx,
    ns: Option<&str>,
    req: &ApiRequest,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[res];
    let mut body = req.json_body()?;
    create_object(inner, def, res, ns, None, &mut body, req.dry_run())
        .map(|obj| json_response(StatusCode::CREATED, &obj))
}

/// Shared by POST, PUT-creates and apply-patch-creates. `url_name` is the name from the URL, if any.
fn create_object(
    inner: &Inner,
    def: &ResourceDef,
    res: ResIdx,
    ns: Option<&str>,
    url_name: Option<&str>,
    body: &mut Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    conform(def, ns, body)?;
    let name = match (meta_str(body, "name").filter(|n| !n.is_empty()), url_name) {
        (Some(n), Some(u)) if n != u => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({u})"
            )));
        }
        (Some(n), _) => n.to_owned(),
        (None, Some(u)) => u.to_owned(),
        (None, None) => match meta_str(body, "generateName").filter(|n| !n.is_empty()) {
            Some(prefix) => format!("{prefix}{}", random_suffix()),
            None => {
                return Err(ApiError::invalid(
                    def,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        },
    };
    if meta_str(body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
        return Err(ApiError::new(
            500,
            "InternalError",
            "resourceVersion should not be set on objects to be created",
        ));
    }
    meta_mut(body).insert("name".into(), Value::String(name.clone()));
    if def.status {
        // Status belongs to the status subresource; upstream resets it on create.
        if let Value::Object(m) = body {
            m.remove("status");
        }
    }
    lock(&inner.store).create(res, ns.unwrap_or_default(), &name, body.take(), dry_run)
}

/// The resourceVersion precondition carried in a PUT or PATCH body.
fn check_precondition(
    def: &ResourceDef,
    name: &str,
    body: &Value,
    current: &Value,
) -> Result<(), ApiError> {
    match meta_str(body, "resourceVersion").filter(|rv| !rv.is_empty()) {
        Some(rv) if Some(rv) != meta_str(current, "resourceVersion") => {
            Err(ApiError::conflict(def, name))
        }
        _ => Ok(()),
    }
}

/// What a write through `route` turns `old` into, given the client's intended full object.
fn scoped_update(def: &ResourceDef, route: &Route, old: &Value, mut intended: Value) -> Value {
    fn set_status(target: &mut Value, from: &Value) {
        if let Value::Object(m) = target {
            match from.get("status") {
                Some(s) => m.insert("status".into(), s.clone()),
                None => m.remove("status"),
            };
        }
    }
    if route.subresource.as_deref() == Some("status") {
        let mut result = old.clone();
        set_status(&mut result, &intended);
        result
    } else {
        if def.status {
            set_status(&mut intended, old);
        }
        intended
    }
}

fn replace(
    inner: &Inner,
    route: &Route,
    name: &str,
    req: &ApiRequest,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[route.res];
    let ns = route.namespace.as_deref();
    let mut body = req.json_body()?;
    conform(def, ns, &mut body)?;
    match meta_str(&body, "name") {
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        None => return Err(ApiError::bad_request("metadata.name is required on update")),
    }
    let key = (
        route.res,
        ns.unwrap_or_default().to_owned(),
        name.to_owned(),
    );
    let mut store = lock(&inner.store);
    let Some(old) = store.objects.get(&key).cloned() else {
        drop(store);
        if def.create_on_update && route.subresource.is_none() {
            if let Value::Object(m) = &mut body {
                // Upstream ignores the precondition when an update turns into a create.
                if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                    meta.remove("resourceVersion");
                }
            }
            let obj = create_object(
                inner,
                def,
                route.res,
                ns,
                Some(name),
                &mut body,
                req.dry_run(),
            )?;
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        return Err(ApiError::not_found(def, name));
    };
    check_precondition(def, name, &body, &old)?;
    let new = scoped_update(def, route, &old, body);
    let obj = store.replace(route.res, &key.1, name, &old, new, req.dry_run());
    Ok(json_response(StatusCode::OK, &obj))
}

fn patch(
    inner: &Inner,
    route: &Route,
    name: &str,
    req: &ApiRequest,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[route.res];
    let ns = route.namespace.as_deref();
    let is_apply = match req.content_type.as_str() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        "application/apply-patch+yaml" => true,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if is_apply && req.query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "fieldManager: Required value: is required for apply patch",
        ));
    }
    // kube-rs sends apply patches as JSON, which is YAML; a YAML-only body is refused as bad JSON.
    let mut body = req.json_body()?;
    let key = (
        route.res,
        ns.unwrap_or_default().to_owned(),
        name.to_owned(),
    );
    let mut store = lock(&inner.store);
    let Some(old) = store.objects.get(&key).cloned() else {
        drop(store);
        if is_apply && route.subresource.is_none() {
            let obj = create_object(
                inner,
                def,
                route.res,
                ns,
                Some(name),
                &mut body,
                req.dry_run(),
            )?;
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        return Err(ApiError::not_found(def, name));
    };
    check_precondition(def, name, &body, &old)?;
    let mut merged = old.clone();
    merge_patch(&mut merged, &body);
    // A patch cannot rename, move or retype an object.
    merged["apiVersion"] = old["apiVersion"].clone();
    merged["kind"] = old["kind"].clone();
    let meta = meta_mut(&mut merged);
    for field in ["name", "namespace"] {
        match old["metadata"].get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    let new = scoped_update(def, route, &old, merged);
    let obj = store.replace(route.res, &key.1, name, &old, new, req.dry_run());
    Ok(json_response(StatusCode::OK, &obj))
}

/// DeleteOptions preconditions, if the client sent a body.
fn check_delete_preconditions(
    def: &ResourceDef,
    name: &str,
    body: &Bytes,
    current: &Value,
) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let opts: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("DeleteOptions body is not valid JSON: {e}")))?;
    for (field, pointer) in [
        ("resourceVersion", "/metadata/resourceVersion"),
        ("uid", "/metadata/uid"),
    ] {
        if let Some(want) = opts
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
            && current.pointer(pointer).and_then(Value::as_str) != Some(want)
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("Precondition failed: {field}: {want} in precondition does not match the current one"),
            )
            .with_details(def, name));
        }
    }
    Ok(())
}

fn delete(
    inner: &Inner,
    res: ResIdx,
    ns: Option<&str>,
    name: &str,
    req: &ApiRequest,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[res];
    let ns = ns.unwrap_or_default();
    let mut store = lock(&inner.store);
    let current = store
        .objects
        .get(&(res, ns.to_owned(), name.to_owned()))
        .ok_or_else(|| ApiError::not_found(def, name))?;
    check_delete_preconditions(def, name, &req.body, current)?;
    let obj = store
        .commit_delete(res, ns, name, req.dry_run())
        .ok_or_else(|| ApiError::not_found(def, name))?;
    Ok(json_response(StatusCode::OK, &obj))
}

fn delete_collection(
    inner: &Inner,
    res: ResIdx,
    ns: Option<&str>,
    req: &ApiRequest,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[res];
    let filter = Filter::from_query(ns, &req.query)?;
    let mut store = lock(&inner.store);
    let doomed: Vec<(String, String)> = store
        .objects_of(res)
        .filter(|((_, ons, _), obj)| filter.matches(ons, obj))
        .map(|((_, n, m), _)| (n.clone(), m.clone()))
        .collect();
    let items: Vec<Value> = doomed
        .iter()
        .filter_map(|(n, m)| store.commit_delete(res, n, m, req.dry_run()))
        .collect();
    let list = json!({
        "kind": format!("{}List", def.kind),
        "apiVersion": def.api_version(),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

// ---------------------------------------------------------------------------------------------
// Watches.

/// Default watch length when the client sends no `timeoutSeconds` (upstream picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
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

fn watch(
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

// ---------------------------------------------------------------------------------------------
// The handle tests hold.

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
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
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

    /// A kubeconfig pointing at this server, with a credential-less user.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
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

    /// How often watches that allow bookmarks get one (default 1 s). Applies to each watch from
    /// its next bookmark on.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.inner.bookmark_interval) = interval;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_parse_and_match() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let cases = [
            ("", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (web, api)", true),
            ("app notin (web)", false),
            ("app in (api),tier", false),
            ("missing notin (x)", true),
        ];
        for (selector, want) in cases {
            let sel =
                LabelSelector::parse(selector).unwrap_or_else(|e| panic!("{selector:?}: {e}"));
            assert_eq!(sel.matches(&obj), want, "selector {selector:?}");
        }
        for bad in ["app=we b", "=x", "app in (x", "a b c (x)", "app in x)"] {
            assert!(
                LabelSelector::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn field_selectors_match_dotted_paths() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"type": "LoadBalancer"}});
        let sel = FieldSelector::parse("metadata.name=a,spec.type!=ClusterIP").unwrap();
        assert!(sel.matches(&obj));
        assert!(
            !FieldSelector::parse("metadata.namespace==other")
                .unwrap()
                .matches(&obj)
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }

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
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "list": [3], "new": {"x": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "list": [3], "new": {"x": 1}})
        );
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&x=%zz&empty");
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(q.get("empty"), Some(""));
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert!(ts.as_str() > "2024-01-01T00:00:00Z", "{ts}");
    }
}
