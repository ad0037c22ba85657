//! `metadata.managedFields` for writes through the API: which field manager set which fields,
//! in the FieldsV1 form (`{"f:status":{"f:loadBalancer":{"f:ingress":{}}}}`), so a controller
//! can tell the fields it wrote from those another wrote, as on a real server.
//!
//! Simplified from upstream: every non-object value (lists included) is one leaf; an update
//! gives its manager the leaves it changed and takes them from every other manager; a leaf that
//! disappears belongs to nobody. Only `metadata.labels` and `metadata.annotations` of the
//! metadata are tracked. A write that changes nothing leaves `managedFields` as it was, so no-op
//! writes stay no-ops.

use serde_json::{Map, Value, json};

use super::store::meta_mut;

/// Who writes: the manager and the operation (`Update` or `Apply`), and through which
/// subresource.
pub(super) struct Writer<'a> {
    pub(super) manager: &'a str,
    pub(super) operation: &'static str,
    pub(super) subresource: Option<&'a str>,
}

/// Brings `new.metadata.managedFields` up to date for the write `old` → `new`.
pub(super) fn record(old: Option<&Value>, new: &mut Value, writer: &Writer<'_>) {
    let mut entries: Vec<Value> = old
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut set = Map::new();
    let mut gone = Map::new();
    diff(
        old.map(tracked).as_ref(),
        Some(&tracked(new)),
        &mut set,
        &mut gone,
    );
    if !set.is_empty() || !gone.is_empty() {
        let mut touched = set.clone();
        merge(&mut touched, &gone);
        for entry in &mut entries {
            if let Some(Value::Object(fields)) = entry.get_mut("fieldsV1") {
                remove(fields, &touched);
            }
        }
        let api_version = new.get("apiVersion").cloned().unwrap_or(Value::Null);
        let mine = entries.iter_mut().find(|e| {
            e["manager"] == writer.manager
                && e["operation"] == writer.operation
                && e.get("subresource").and_then(Value::as_str) == writer.subresource
        });
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        match mine {
            Some(entry) => {
                if let Some(Value::Object(fields)) = entry.get_mut("fieldsV1") {
                    merge(fields, &set);
                }
                entry["time"] = Value::String(now);
            }
            None if !set.is_empty() => {
                let mut entry = json!({
                    "manager": writer.manager,
                    "operation": writer.operation,
                    "apiVersion": api_version,
                    "time": now,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": set,
                });
                if let Some(sub) = writer.subresource {
                    entry["subresource"] = Value::String(sub.to_owned());
                }
                entries.push(entry);
            }
            None => {}
        }
        entries.retain(|e| {
            e.get("fieldsV1")
                .and_then(Value::as_object)
                .is_some_and(|f| !f.is_empty())
        });
    }
    let meta = meta_mut(new);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

/// The part of an object whose fields are owned.
fn tracked(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("apiVersion");
        m.remove("kind");
        let meta: Map<String, Value> = m
            .get("metadata")
            .and_then(Value::as_object)
            .map(|meta| {
                meta.iter()
                    .filter(|(k, _)| matches!(k.as_str(), "labels" | "annotations"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if meta.is_empty() {
            m.remove("metadata");
        } else {
            m.insert("metadata".into(), Value::Object(meta));
        }
    }
    v
}

/// The leaves that `new` sets differently from `old` (into `set`) and those it drops (`gone`).
fn diff(
    old: Option<&Value>,
    new: Option<&Value>,
    set: &mut Map<String, Value>,
    gone: &mut Map<String, Value>,
) {
    let empty = Map::new();
    let old_map = old.and_then(Value::as_object);
    let new_map = new.and_then(Value::as_object);
    let keys: std::collections::BTreeSet<&String> = old_map
        .unwrap_or(&empty)
        .keys()
        .chain(new_map.unwrap_or(&empty).keys())
        .collect();
    for key in keys {
        let (o, n) = (
            old_map.and_then(|m| m.get(key)),
            new_map.and_then(|m| m.get(key)),
        );
        if o == n {
            continue;
        }
        let field = format!("f:{key}");
        let both_objects = o.is_none_or(Value::is_object) && n.is_none_or(Value::is_object);
        if both_objects {
            let (mut s, mut g) = (Map::new(), Map::new());
            diff(o, n, &mut s, &mut g);
            if !s.is_empty() {
                set.insert(field.clone(), Value::Object(s));
            }
            if !g.is_empty() {
                gone.insert(field, Value::Object(g));
            }
        } else if n.is_some() {
            set.insert(field, json!({}));
        } else {
            gone.insert(field, json!({}));
        }
    }
}

/// Adds every leaf of `from` to `into`.
fn merge(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (key, sub) in from {
        match (into.get_mut(key), sub.as_object()) {
            (Some(Value::Object(existing)), Some(sub)) if !sub.is_empty() => merge(existing, sub),
            _ => {
                into.insert(key.clone(), sub.clone());
            }
        }
    }
}

/// Takes every leaf of `what` out of `from`, dropping subtrees that end up empty.
fn remove(from: &mut Map<String, Value>, what: &Map<String, Value>) {
    for (key, sub) in what {
        let Some(sub) = sub.as_object() else { continue };
        if sub.is_empty() {
            from.remove(key);
            continue;
        }
        if let Some(Value::Object(owned)) = from.get_mut(key) {
            if owned.is_empty() {
                // A leaf owned here is now an object someone else writes into.
                from.remove(key);
            } else {
                remove(owned, sub);
                if owned.is_empty() {
                    from.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer<'a>(manager: &'a str, subresource: Option<&'a str>) -> Writer<'a> {
        Writer {
            manager,
            operation: "Update",
            subresource,
        }
    }

    #[test]
    fn ownership_follows_who_changed_a_field() {
        let created = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "annotations": {"a": "1"}},
            "spec": {"type": "LoadBalancer"}});
        let mut obj = created.clone();
        record(None, &mut obj, &writer("kubectl", None));
        let fields = &obj["metadata"]["managedFields"];
        assert_eq!(fields.as_array().unwrap().len(), 1);
        assert_eq!(
            fields[0]["fieldsV1"],
            json!({"f:metadata": {"f:annotations": {"f:a": {}}}, "f:spec": {"f:type": {}}})
        );

        let mut status = obj.clone();
        status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.0.100.7"}]}});
        record(Some(&obj), &mut status, &writer("l3lb", Some("status")));
        let entries = status["metadata"]["managedFields"].as_array().unwrap();
        let l3lb = entries.iter().find(|e| e["manager"] == "l3lb").unwrap();
        assert_eq!(l3lb["subresource"], "status");
        assert!(
            l3lb["fieldsV1"]
                .pointer("/f:status/f:loadBalancer/f:ingress")
                .is_some()
        );

        // A no-op write changes nothing, not even the timestamps.
        let mut again = status.clone();
        record(Some(&status), &mut again, &writer("l3lb", Some("status")));
        assert_eq!(again, status);

        // Another manager overwrites the ingress: it owns it now, and l3lb's entry goes.
        let mut other = status.clone();
        other["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.0.100.8"}]}});
        record(
            Some(&status),
            &mut other,
            &writer("other-lb", Some("status")),
        );
        let entries = other["metadata"]["managedFields"].as_array().unwrap();
        assert!(
            entries.iter().all(|e| e["manager"] != "l3lb"),
            "{entries:?}"
        );

        // Removing the field removes its ownership.
        let mut cleared = other.clone();
        cleared["status"] = json!({"loadBalancer": {}});
        record(Some(&other), &mut cleared, &writer("l3lb", Some("status")));
        let entries = cleared["metadata"]["managedFields"].as_array().unwrap();
        assert!(
            entries.iter().all(|e| e["fieldsV1"]
                .pointer("/f:status/f:loadBalancer/f:ingress")
                .is_none()),
            "{entries:?}"
        );
    }
}
