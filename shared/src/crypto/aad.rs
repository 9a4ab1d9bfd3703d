//! Canonical additional authenticated data.
//!
//! Both sides must authenticate the same bytes, so the `aad` object is
//! serialized one way only: keys sorted by code point, no whitespace,
//! non-ASCII left as UTF-8 — what Python's
//! `json.dumps(aad, separators=(",", ":"), sort_keys=True, ensure_ascii=False)`
//! produces. Values are restricted to strings, integers and booleans so that
//! no float formatting differences can creep in. The ordering is done here
//! explicitly rather than relying on `serde_json::Map` being a `BTreeMap`,
//! which any crate in the tree could change by enabling `preserve_order`.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("aad.{field} must be a string, an integer or a boolean")]
pub struct AadError {
    pub field: String,
}

pub fn canonical_aad(aad: &Map<String, Value>) -> Result<Vec<u8>, AadError> {
    let mut entries: Vec<(&String, &Value)> = aad.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::from("{");
    for (i, (key, value)) in entries.into_iter().enumerate() {
        let scalar = match value {
            Value::String(_) | Value::Bool(_) => true,
            Value::Number(n) => n.is_i64() || n.is_u64(),
            _ => false,
        };
        if !scalar {
            return Err(AadError { field: key.clone() });
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> Result<String, AadError> {
        canonical_aad(v.as_object().unwrap()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        assert_eq!(
            canon(json!({"id": 7, "client_id": "c", "created_at": "t"})).unwrap(),
            r#"{"client_id":"c","created_at":"t","id":7}"#
        );
        assert_eq!(canon(json!({})).unwrap(), "{}");
    }

    #[test]
    fn keeps_non_ascii_and_escapes_quotes() {
        assert_eq!(
            canon(json!({"note": "café ✓ \"q\"", "ok": true})).unwrap(),
            "{\"note\":\"café ✓ \\\"q\\\"\",\"ok\":true}"
        );
    }

    #[test]
    fn rejects_non_scalar_values() {
        for bad in [
            json!({"x": 1.5}),
            json!({"x": null}),
            json!({"x": [1]}),
            json!({"x": {}}),
        ] {
            assert_eq!(canon(bad), Err(AadError { field: "x".into() }));
        }
    }
}
