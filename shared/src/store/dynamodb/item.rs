//! Reading and writing DynamoDB attribute maps.

use crate::store::{StoreError, StoreResult};
use aws_sdk_dynamodb::primitives::Blob;
pub use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;

pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub fn b(value: impl Into<Vec<u8>>) -> AttributeValue {
    AttributeValue::B(Blob::new(value))
}

fn corrupt(item: &Item, name: &str, what: &str) -> StoreError {
    let key = item
        .get("client_id")
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .unwrap_or("?");
    StoreError::Corrupt(format!("attribute {name} of item {key} is not {what}"))
}

pub fn get_s(item: &Item, name: &str) -> StoreResult<String> {
    opt_s(item, name)?.ok_or_else(|| corrupt(item, name, "a string"))
}

pub fn opt_s(item: &Item, name: &str) -> StoreResult<Option<String>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(corrupt(item, name, "a string")),
    }
}

pub fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> StoreResult<T> {
    opt_n(item, name)?.ok_or_else(|| corrupt(item, name, "a number"))
}

pub fn opt_n<T: std::str::FromStr>(item: &Item, name: &str) -> StoreResult<Option<T>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| corrupt(item, name, "a number")),
        Some(_) => Err(corrupt(item, name, "a number")),
    }
}

pub fn get_b(item: &Item, name: &str) -> StoreResult<Vec<u8>> {
    match item.get(name) {
        Some(AttributeValue::B(v)) => Ok(v.as_ref().to_vec()),
        _ => Err(corrupt(item, name, "binary")),
    }
}

pub fn opt_bool(item: &Item, name: &str) -> StoreResult<Option<bool>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::Bool(v)) => Ok(Some(*v)),
        Some(_) => Err(corrupt(item, name, "a boolean")),
    }
}

pub fn opt_b(item: &Item, name: &str) -> StoreResult<Option<Vec<u8>>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::B(v)) => Ok(Some(v.as_ref().to_vec())),
        Some(_) => Err(corrupt(item, name, "binary")),
    }
}
