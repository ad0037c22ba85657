//! Writes: create, replace, patch and delete, with the apiserver's rules for names,
//! preconditions, the status subresource and create-on-update.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::ApiError;
use super::managed::{self, Writer};
use super::resources::{RESOURCES, ResIdx, ResourceDef};
use super::route::Route;
use super::selector::Filter;
use super::server::{ApiRequest, Inner, RespBody, json_response, lock};
use super::store::{Store, meta_mut, meta_str, random_suffix};
use super::validate;

/// The field manager of a write: `fieldManager` if given, else (as upstream) the client's
/// User-Agent up to its first `/`.
fn writer<'a>(req: &'a ApiRequest, subresource: Option<&'a str>) -> Writer<'a> {
    let manager = req
        .query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| req.user_agent.split('/').next().unwrap_or_default());
    Writer {
        manager: if manager.is_empty() {
            "unknown"
        } else {
            manager
        },
        operation: if req.content_type == "application/apply-patch+yaml" {
            "Apply"
        } else {
            "Update"
        },
        subresource,
    }
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

pub(super) fn create(
    inner: &Inner,
    res: ResIdx,
    ns: Option<&str>,
    req: &ApiRequest,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[res];
    let mut body = req.json_body()?;
    create_object(inner, def, res, ns, None, &mut body, req)
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
    req: &ApiRequest,
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
    managed::record(None, body, &writer(req, None));
    validate::check(def, body)?;
    lock(&inner.store).create(
        res,
        ns.unwrap_or_default(),
        &name,
        body.take(),
        req.dry_run(),
    )
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

pub(super) fn replace(
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
            let obj = create_object(inner, def, route.res, ns, Some(name), &mut body, req)?;
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        return Err(ApiError::not_found(def, name));
    };
    check_precondition(def, name, &body, &old)?;
    commit_update(&mut store, route, &key.1, name, &old, body, req)
}

/// The end both update verbs share: keep what the (sub)resource may not change, record the
/// writer's fields, validate, store.
fn commit_update(
    store: &mut Store,
    route: &Route,
    ns: &str,
    name: &str,
    old: &Value,
    intended: Value,
    req: &ApiRequest,
) -> Result<Response<RespBody>, ApiError> {
    let def = &RESOURCES[route.res];
    let mut new = scoped_update(def, route, old, intended);
    managed::record(
        Some(old),
        &mut new,
        &writer(req, route.subresource.as_deref()),
    );
    validate::check(def, &new)?;
    let obj = store.replace(route.res, ns, name, old, new, req.dry_run());
    Ok(json_response(StatusCode::OK, &obj))
}

pub(super) fn patch(
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
            let obj = create_object(inner, def, route.res, ns, Some(name), &mut body, req)?;
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        return Err(ApiError::not_found(def, name));
    };
    check_precondition(def, name, &body, &old)?;
    let mut merged = old.clone();
    // Strategic-merge and apply patches are taken as plain merge patches: the fake models neither
    // patch strategies nor field ownership.
    json_patch::merge(&mut merged, &body);
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
    commit_update(&mut store, route, &key.1, name, &old, merged, req)
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

pub(super) fn delete(
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

pub(super) fn delete_collection(
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// Patches are RFC 7386 merges: nested objects merge, null deletes, arrays are replaced.
    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]});
        json_patch::merge(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "list": [3], "new": {"x": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "list": [3], "new": {"x": 1}})
        );
    }
}
