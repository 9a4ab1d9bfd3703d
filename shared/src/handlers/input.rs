//! Reading request fields with errors that name the field.

use crate::domain::unprintable_char;
use crate::error::ApiError;
use serde_json::{Map, Value};
use std::ops::RangeInclusive;

/// A JSON request body: always an object.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonBody(pub Map<String, Value>);

impl JsonBody {
    pub fn parse(bytes: &[u8]) -> Result<JsonBody, ApiError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(JsonBody(map)),
            Ok(_) => Err(ApiError::invalid_json(
                "the request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::invalid_json(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }

    /// A field that may be absent or null.
    pub fn optional(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    pub fn required(&self, field: &str) -> Result<&Value, ApiError> {
        self.0
            .get(field)
            .ok_or_else(|| ApiError::validation(format!("{field} is required")))
    }

    pub fn string(&self, field: &str, chars: RangeInclusive<usize>) -> Result<String, ApiError> {
        let value = self
            .optional(field)
            .ok_or_else(|| ApiError::validation(format!("{field} is required")))?;
        string_value(field, value, chars)
    }

    pub fn optional_string(
        &self,
        field: &str,
        chars: RangeInclusive<usize>,
    ) -> Result<Option<String>, ApiError> {
        self.optional(field)
            .map(|v| string_value(field, v, chars))
            .transpose()
    }

    /// Like [`JsonBody::optional_string`], for text that people read and
    /// operator tools print: no control or format characters
    /// ([`printable_text`]).
    pub fn optional_printable_string(
        &self,
        field: &str,
        chars: RangeInclusive<usize>,
    ) -> Result<Option<String>, ApiError> {
        let text = self.optional_string(field, chars)?;
        if let Some(text) = &text {
            printable_text(field, text)?;
        }
        Ok(text)
    }

    pub fn unsigned(&self, field: &str) -> Result<u64, ApiError> {
        let value = self
            .optional(field)
            .ok_or_else(|| ApiError::validation(format!("{field} is required")))?;
        value
            .as_u64()
            .ok_or_else(|| ApiError::validation(format!("{field} must be an integer ≥ 0")))
    }
}

pub fn string_value(
    field: &str,
    value: &Value,
    chars: RangeInclusive<usize>,
) -> Result<String, ApiError> {
    let text = value
        .as_str()
        .ok_or_else(|| ApiError::validation(format!("{field} must be a string")))?;
    let count = text.chars().count();
    if !chars.contains(&count) {
        return Err(ApiError::validation(format!(
            "{field} must be {} to {} characters long (got {count})",
            chars.start(),
            chars.end()
        )));
    }
    Ok(text.to_string())
}

/// Refuses text with a control or format character (Unicode Cc or Cf, see
/// [`unprintable_char`]), with a message naming the field and the character.
pub fn printable_text(field: &str, text: &str) -> Result<(), ApiError> {
    match unprintable_char(text) {
        None => Ok(()),
        Some(c) => Err(ApiError::validation(format!(
            "{field} must not contain control or format characters (found U+{:04X})",
            c as u32
        ))),
    }
}

/// Parses a query string into decoded pairs (`+` is a space, `%XX` a byte).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A numeric query parameter within `range`, or `default` when absent.
pub fn query_number(
    pairs: &[(String, String)],
    name: &str,
    range: RangeInclusive<u64>,
    default: Option<u64>,
) -> Result<Option<u64>, ApiError> {
    match pairs.iter().rev().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => match v.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::validation(format!(
                "{name} must be an integer from {} to {}",
                range.start(),
                range.end()
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn body_must_be_a_json_object() {
        assert_eq!(
            JsonBody::parse(b"nope").unwrap_err().code,
            ErrorCode::InvalidJson
        );
        assert_eq!(
            JsonBody::parse(b"[1]").unwrap_err().code,
            ErrorCode::InvalidJson
        );
        assert!(JsonBody::parse(br#"{"a":1}"#).is_ok());
    }

    #[test]
    fn field_errors_name_the_field() {
        let body = JsonBody::parse(br#"{"n": "x", "i": -1, "s": 5}"#).unwrap();
        assert!(body
            .string("n", 2..=4)
            .unwrap_err()
            .message
            .starts_with("n must be 2 to 4"));
        assert!(body
            .unsigned("i")
            .unwrap_err()
            .message
            .starts_with("i must be"));
        assert!(body
            .string("s", 1..=4)
            .unwrap_err()
            .message
            .starts_with("s must be a string"));
        assert_eq!(
            body.string("missing", 1..=4).unwrap_err().message,
            "missing is required"
        );
        assert_eq!(body.optional_string("missing", 1..=4).unwrap(), None);
    }

    #[test]
    fn printable_strings_refuse_control_and_format_characters() {
        let body = JsonBody(
            serde_json::json!({
                "bidi": "evil\u{202e}gnp.exe",
                "zw": "a\u{200b}b",
                "bell": "ding\u{7}",
                "ok": "Zoë 📱",
                "long": "x".repeat(5),
            })
            .as_object()
            .unwrap()
            .clone(),
        );
        for (field, code) in [("bidi", "U+202E"), ("zw", "U+200B"), ("bell", "U+0007")] {
            let err = body.optional_printable_string(field, 0..=100).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationFailed);
            assert_eq!(
                err.message,
                format!("{field} must not contain control or format characters (found {code})")
            );
        }
        assert_eq!(
            body.optional_printable_string("ok", 0..=100).unwrap(),
            Some("Zoë 📱".to_string())
        );
        assert_eq!(
            body.optional_printable_string("absent", 0..=1).unwrap(),
            None
        );
        // The length check still applies.
        assert!(body
            .optional_printable_string("long", 0..=4)
            .unwrap_err()
            .message
            .starts_with("long must be 0 to 4"));
        assert!(printable_text("name", "").is_ok());
    }

    #[test]
    fn query_decoding() {
        let pairs = query_pairs(Some("cursor=5&page_token=a%2Bb%3D&x=y+z&flag"));
        assert_eq!(pairs[1], ("page_token".into(), "a+b=".into()));
        assert_eq!(pairs[2], ("x".into(), "y z".into()));
        assert_eq!(pairs[3], ("flag".into(), "".into()));
        assert_eq!(
            query_number(&pairs, "cursor", 0..=10, None).unwrap(),
            Some(5)
        );
        assert_eq!(
            query_number(&pairs, "limit", 1..=10, Some(3)).unwrap(),
            Some(3)
        );
        assert!(query_number(&pairs, "cursor", 6..=10, None).is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("é%C3%A9"), "éé");
    }
}
