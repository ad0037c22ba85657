//! The object store: the cluster-wide resourceVersion, per-resource history since the last
//! compaction, and the broadcast feed live watches follow. Every write goes through here so
//! the counter, history and feed cannot disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::resources::{RESOURCES, ResIdx, resource_by_type};

pub(super) type ObjKey = (ResIdx, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as kept in history and fanned out to live watches.
#[derive(Debug)]
pub(super) struct Change {
    pub(super) resource: ResIdx,
    pub(super) kind: ChangeKind,
    pub(super) rv: u64,
    pub(super) namespace: String,
    pub(super) object: Value,
    /// The object before a MODIFIED, so selector watches can turn it into ADDED/DELETED.
    pub(super) prev: Option<Value>,
}

/// Live watches that fall this far behind are closed with 410, as upstream closes slow watchers.
const WATCH_CHANNEL_CAPACITY: usize = 1 << 14;

pub(super) struct Store {
    pub(super) rv: u64,
    /// Watches must resume from at least this resourceVersion; history before it is gone.
    pub(super) compacted: u64,
    pub(super) objects: BTreeMap<ObjKey, Value>,
    pub(super) history: Vec<Vec<Arc<Change>>>,
    /// Sent to while holding the store lock, so that subscribing and snapshotting history under
    /// the same lock yields every change exactly once.
    pub(super) tx: broadcast::Sender<Arc<Change>>,
}

pub(super) fn random_suffix() -> String {
    // The alphabet upstream uses for generateName (no vowels, no look-alikes).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

/// A random (version 4) UUID, the form of `metadata.uid`.
fn random_uid() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
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
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata` as a mutable map, creating it (or replacing a non-object) as needed.
pub(super) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
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

impl Store {
    pub(super) fn new() -> Self {
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

    pub(super) fn commit_delete(
        &mut self,
        res: ResIdx,
        ns: &str,
        name: &str,
        dry_run: bool,
    ) -> Option<Value> {
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
    pub(super) fn create(
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
    pub(super) fn replace(
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
    pub(super) fn apply(&mut self, mut obj: Value) -> Result<Value, String> {
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

    pub(super) fn compact(&mut self) {
        // Upstream's compactor records each compaction with a write, which bumps the revision; doing
        // the same guarantees that every watch resuming after a compaction is too old.
        self.rv += 1;
        self.compacted = self.rv;
        for h in &mut self.history {
            h.clear();
        }
    }

    /// The objects of `res` as they were `behind` versions ago (not before the compaction
    /// point), ordered by namespace and name, with that resourceVersion: what a lagging watch
    /// cache serves.
    pub(super) fn stale_view(
        &self,
        res: ResIdx,
        behind: u64,
    ) -> (u64, BTreeMap<(String, String), Value>) {
        let at = self.rv.saturating_sub(behind).max(self.compacted);
        let mut objects: BTreeMap<(String, String), Value> = self
            .objects_of(res)
            .map(|((_, ns, name), obj)| ((ns.clone(), name.clone()), obj.clone()))
            .collect();
        for change in self.history[res].iter().rev().take_while(|c| c.rv > at) {
            let key = (
                change.namespace.clone(),
                meta_str(&change.object, "name")
                    .unwrap_or_default()
                    .to_owned(),
            );
            match change.kind {
                ChangeKind::Added => {
                    objects.remove(&key);
                }
                ChangeKind::Modified => {
                    if let Some(prev) = &change.prev {
                        objects.insert(key, prev.clone());
                    }
                }
                ChangeKind::Deleted => {
                    objects.insert(key, change.object.clone());
                }
            }
        }
        (at, objects)
    }

    pub(super) fn objects_of(&self, res: ResIdx) -> impl Iterator<Item = (&ObjKey, &Value)> {
        self.objects
            .range((res, String::new(), String::new())..)
            .take_while(move |(k, _)| k.0 == res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert!(ts.as_str() > "2024-01-01T00:00:00Z", "{ts}");
        let parsed: jiff::Timestamp = ts.parse().unwrap_or_else(|e| panic!("{ts}: {e}"));
        assert_eq!(parsed.subsec_nanosecond(), 0, "{ts}");
    }

    #[test]
    fn generated_names_and_uids_have_the_upstream_shape() {
        let suffix = random_suffix();
        assert_eq!(suffix.len(), 5, "{suffix}");
        assert!(
            suffix
                .bytes()
                .all(|c| b"bcdfghjklmnpqrstvwxz2456789".contains(&c)),
            "{suffix}"
        );
        let uid = random_uid();
        let groups: Vec<&str> = uid.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(lengths, [8, 4, 4, 4, 12], "{uid}");
        assert!(
            uid.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()),
            "{uid}"
        );
        assert!(groups[2].starts_with('4'), "version 4: {uid}");
        assert!(
            groups[3].starts_with(['8', '9', 'a', 'b']),
            "RFC 4122 variant: {uid}"
        );
        assert_ne!(random_uid(), uid, "uids must differ");
    }
}
