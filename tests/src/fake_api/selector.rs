//! Label and field selectors, which decide what a list or watch sees (and so turn a watched
//! object leaving or entering the selector into DELETED or ADDED).

use serde_json::Value;

use super::error::ApiError;
use super::route::Query;

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
pub(super) struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub(super) fn from_query(namespace: Option<&str>, query: &Query) -> Result<Self, ApiError> {
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

    pub(super) fn matches(&self, namespace: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
