//! `PUT /operators/clients/{client_id}/tags`: replaces a client's tags, by
//! which publishes reach groups of clients (`to_tags`).

use super::auth::OperatorAuth;
use super::input::JsonBody;
use crate::domain::{valid_tag, ClientId, MAX_TAGS, MAX_TAG_CHARS};
use crate::error::ApiError;
use crate::App;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;

/// Checks one tag, naming it in the error.
pub fn checked_tag(field: &str, value: &Value) -> Result<String, ApiError> {
    match value.as_str() {
        Some(tag) if valid_tag(tag) => Ok(tag.to_string()),
        _ => Err(ApiError::validation(format!(
            "{field} must be 1 to {MAX_TAG_CHARS} characters of a-z, 0-9, '_', '.' and '-'"
        ))),
    }
}

/// A client's new tag set: distinct and sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsInput {
    pub tags: Vec<String>,
}

impl TagsInput {
    pub fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        let list = body
            .required("tags")?
            .as_array()
            .ok_or_else(|| ApiError::validation("tags must be an array of tags"))?;
        let mut tags = BTreeSet::new();
        for (i, value) in list.iter().enumerate() {
            tags.insert(checked_tag(&format!("tags[{i}]"), value)?);
        }
        if tags.len() > MAX_TAGS {
            return Err(ApiError::validation(format!(
                "a client carries at most {MAX_TAGS} tags (got {})",
                tags.len()
            )));
        }
        Ok(TagsInput {
            tags: tags.into_iter().collect(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tagged {
    pub id: String,
    pub tags: Vec<String>,
}

fn no_such_client() -> ApiError {
    ApiError::no_such("no such client (unknown, or deleted)")
}

pub async fn set_tags(
    app: &App,
    _operator: &OperatorAuth,
    client_id: &str,
    input: TagsInput,
) -> Result<Tagged, ApiError> {
    let id = ClientId::parse(client_id).ok_or_else(no_such_client)?;
    let tags = app
        .store
        .set_tags(id, &input.tags)
        .await?
        .ok_or_else(no_such_client)?;
    tracing::info!(client_id = %id, tags = tags.len(), "tags set");
    Ok(Tagged {
        id: id.to_string(),
        tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(body: Value) -> Result<TagsInput, ApiError> {
        TagsInput::from_body(&JsonBody::parse(body.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn tags_are_folded_sorted_and_checked() {
        let tags = input(json!({"tags": ["eu", "door-sensors", "eu", "a.b_c"]})).unwrap();
        assert_eq!(tags.tags, ["a.b_c", "door-sensors", "eu"]);
        assert!(input(json!({"tags": []})).unwrap().tags.is_empty());
        for bad in [
            json!({"tags": ["EU"]}),
            json!({"tags": [""]}),
            json!({"tags": ["a b"]}),
            json!({"tags": ["x".repeat(65)]}),
            json!({"tags": [7]}),
            json!({"tags": "eu"}),
            json!({}),
        ] {
            assert!(input(bad.clone()).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(input(json!({ "tags": many })).is_err());
        assert!(input(json!({ "tags": many[..20] })).is_ok());
    }
}
