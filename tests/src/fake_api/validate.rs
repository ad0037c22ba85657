//! Validation the real API server applies and l3lb's writes must pass: for now Events
//! (`events.k8s.io/v1`), with upstream's required fields and length limits, plus one rule
//! stricter than upstream: `regarding.uid` must be set, because `kubectl describe` finds an
//! object's Events by uid and an Event without one is invisible there.

use serde_json::Value;

use super::error::ApiError;
use super::resources::ResourceDef;
use super::store::meta_str;

/// Upstream's limits (k8s.io/kubernetes/pkg/apis/core/validation/events.go).
const NOTE_LIMIT_BYTES: usize = 1024;
const FIELD_LIMIT: usize = 128;

/// Checks `obj` as it is about to be stored.
pub(super) fn check(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    if def.kind == "Event" && def.group == "events.k8s.io" {
        let problems = event_problems(obj);
        if !problems.is_empty() {
            let name = meta_str(obj, "name").unwrap_or_default();
            return Err(ApiError::invalid(def, name, problems.join(", ")));
        }
    }
    Ok(())
}

fn event_problems(event: &Value) -> Vec<String> {
    let text = |field: &str| event.get(field).and_then(Value::as_str).unwrap_or_default();
    let mut problems = Vec::new();
    if event.get("eventTime").is_none_or(Value::is_null) {
        problems.push("eventTime: Required value".to_owned());
    }
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        let value = text(field);
        if value.is_empty() {
            problems.push(format!("{field}: Required value"));
        } else if value.chars().count() > FIELD_LIMIT {
            problems.push(format!(
                "{field}: Too long: may not be more than {FIELD_LIMIT} characters"
            ));
        }
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        problems.push(format!(
            "type: Unsupported value: {:?}: supported values: \"Normal\", \"Warning\"",
            text("type")
        ));
    }
    if text("note").len() > NOTE_LIMIT_BYTES {
        problems.push(format!(
            "note: Too long: may not be more than {NOTE_LIMIT_BYTES} bytes"
        ));
    }
    let regarding = |field: &str| {
        event
            .pointer(&format!("/regarding/{field}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    if regarding("uid").is_empty() {
        problems.push("regarding.uid: Required value".to_owned());
    }
    let namespace = meta_str(event, "namespace").unwrap_or_default();
    if !regarding("namespace").is_empty() && regarding("namespace") != namespace {
        problems.push(format!(
            "regarding.namespace: Invalid value: {:?}: does not match event.namespace",
            regarding("namespace")
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> Value {
        json!({
            "metadata": {"name": "web.1", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "l3lb", "reportingInstance": "node-a",
            "action": "Announce", "reason": "Announced", "type": "Normal", "note": "ok",
            "regarding": {"kind": "Service", "namespace": "default", "name": "web", "uid": "u-1"}
        })
    }

    #[test]
    fn events_are_validated_like_upstream() {
        assert!(event_problems(&valid()).is_empty());
        let mut e = valid();
        e["regarding"]["uid"] = Value::Null;
        assert_eq!(event_problems(&e), ["regarding.uid: Required value"]);
        let mut e = valid();
        e["note"] = Value::String("x".repeat(1025));
        assert_eq!(event_problems(&e).len(), 1);
        let mut e = valid();
        e["reportingInstance"] = Value::String("n".repeat(129));
        e["action"] = Value::Null;
        e["type"] = Value::String("Info".into());
        assert_eq!(event_problems(&e).len(), 3, "{:?}", event_problems(&e));
        let mut e = valid();
        e["regarding"]["namespace"] = Value::String("other".into());
        assert_eq!(event_problems(&e).len(), 1);
    }
}
