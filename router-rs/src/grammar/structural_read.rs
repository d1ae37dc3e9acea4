//! Reading the fields of a structural tag's JSON (structural.rs), each error naming where.

use serde_json::{Map, Value};

use super::compile::err;
use super::schema::SchemaError;

pub(super) fn object<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>, SchemaError> {
    v.as_object().ok_or_else(|| err(path, "must be an object"))
}

pub(super) fn string<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'v str, SchemaError> {
    obj.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| err(path, format!("`{key}` must be a string")))
}

pub(super) fn elements<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'v Vec<Value>, SchemaError> {
    obj.get(key)
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| err(path, format!("`{key}` must be a non-empty list")))
}

pub(super) fn triggers<'v>(v: Option<&'v Value>, path: &str) -> Result<Vec<&'v str>, SchemaError> {
    v.and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .and_then(|t| t.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        .filter(|t| t.iter().all(|s| !s.is_empty()))
        .ok_or_else(|| {
            err(
                path,
                "triggers must be a non-empty list of non-empty strings",
            )
        })
}

pub(super) fn excluded<'v>(
    obj: &'v Map<String, Value>,
    path: &str,
) -> Result<Vec<&'v str>, SchemaError> {
    match obj.get("excluded_str") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => v
            .as_array()
            .and_then(|e| e.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .filter(|e| e.iter().all(|s| !s.is_empty()))
            .ok_or_else(|| err(path, "excluded_str must be a list of non-empty strings")),
    }
}

/// `at_least_one` and `stop_after_first` (false where left out).
pub(super) fn flags(obj: &Map<String, Value>, path: &str) -> Result<(bool, bool), SchemaError> {
    let flag = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(err(path, format!("`{key}` must be a boolean"))),
    };
    Ok((flag("at_least_one")?, flag("stop_after_first")?))
}
