//! `GET /v1/responses/{id}/input_items`: a stored response's own input items (not those a
//! `previous_response_id` brought), in OpenAI's item shapes, a page at a time.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Map, Value};

use super::super::{ApiError, AppState};
use super::not_found;
use crate::protocol::ValidationError;

/// Items listed when `limit` is not given, and the most a page holds.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

/// `GET /v1/responses/{id}/input_items`: newest first unless `order=asc`, `limit` items (1 to
/// 100, 20 by default) after the item `after`; `include` is accepted and changes nothing (no
/// item here has the fields it adds).
pub async fn input_items(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(&query)?;
    let stored = state.responses.get(&id).ok_or_else(|| not_found(&id))?;
    // the ids given to items without one are made from the response's: the same on every call
    let suffix = id.strip_prefix("resp_").unwrap_or(&id);
    let own = stored.own_input().iter().enumerate();
    let mut data: Vec<Value> = own.map(|(i, item)| listed(item, suffix, i)).collect();
    if page.desc {
        data.reverse();
    }
    if let Some(after) = &page.after {
        let at = data.iter().position(|item| item["id"] == after.as_str());
        let at = at.ok_or_else(|| {
            let msg = format!("response {id} has no input item {after}");
            ValidationError::new("after", msg)
        })?;
        data.drain(..=at);
    }
    let has_more = data.len() > page.limit;
    data.truncate(page.limit);
    let id_of = |item: Option<&Value>| item.map(|item| item["id"].clone());
    let (first, last) = (id_of(data.first()), id_of(data.last()));
    let list = json!({"object": "list", "data": data, "first_id": first, "last_id": last,
                      "has_more": has_more});
    Ok(Json(list))
}

/// The query of `input_items`.
#[derive(Debug, PartialEq)]
struct Page {
    limit: usize,
    desc: bool,
    after: Option<String>,
}

impl Page {
    /// Reads `limit`, `order` and `after` (the last of each given); out of range is a 400.
    fn parse(query: &[(String, String)]) -> Result<Self, ValidationError> {
        let mut page = Page {
            limit: DEFAULT_LIMIT,
            desc: true,
            after: None,
        };
        for (key, value) in query {
            match key.as_str() {
                "limit" => {
                    page.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            let msg = format!("limit must be from 1 to {MAX_LIMIT}, not {value}");
                            ValidationError::new("limit", msg)
                        })?;
                }
                "order" => {
                    page.desc = match value.as_str() {
                        "asc" => false,
                        "desc" => true,
                        _ => {
                            let msg = format!("order must be asc or desc, not {value}");
                            return Err(ValidationError::new("order", msg));
                        }
                    };
                }
                "after" => page.after = Some(value.clone()),
                _ => {}
            }
        }
        Ok(page)
    }
}

/// The input item `item` (the `index`-th of its request) as OpenAI lists it: a message with its
/// content as parts (`input_text`; `output_text` for the assistant's), other items as given,
/// each with an id (its own, else one made from `suffix` and `index`) and a status.
fn listed(item: &Value, suffix: &str, index: usize) -> Value {
    let kind = match item.get("type").and_then(Value::as_str) {
        Some(kind) => kind,
        None if item.get("role").is_some() => "message",
        None => "item",
    };
    let id = match item.get("id").filter(|id| !id.is_null()) {
        Some(id) => id.clone(),
        None => {
            let prefix = match kind {
                "message" => "msg",
                "function_call" => "fc",
                "function_call_output" => "fco",
                "reasoning" => "rs",
                _ => "item",
            };
            Value::String(format!("{prefix}_{suffix}_{index}"))
        }
    };
    let status = item.get("status").cloned().unwrap_or(json!("completed"));
    if kind == "message" {
        let role = item.get("role").cloned().unwrap_or(json!("user"));
        let assistant = role == "assistant";
        let content: Vec<Value> = match item.get("content") {
            Some(Value::String(text)) => vec![text_part(text, assistant)],
            Some(Value::Array(parts)) => parts.iter().map(|p| part(p, assistant)).collect(),
            _ => Vec::new(),
        };
        return json!({"type": "message", "id": id, "role": role, "content": content,
                      "status": status});
    }
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    out.insert("id".into(), id);
    if let Some(fields) = item.as_object() {
        let rest = fields.iter().filter(|(k, _)| *k != "type" && *k != "id");
        out.extend(rest.map(|(k, v)| (k.clone(), v.clone())));
    }
    if matches!(kind, "function_call" | "function_call_output") {
        out.entry("status").or_insert(status);
    }
    Value::Object(out)
}

/// A message's content part: text as the part its role lists (`input_text`, `output_text`),
/// any other as given.
fn part(part: &Value, assistant: bool) -> Value {
    let kind = part.get("type").and_then(Value::as_str);
    match (kind, part.get("text").and_then(Value::as_str)) {
        (Some("input_text" | "output_text" | "text"), Some(text)) => {
            let mut listed = text_part(text, assistant);
            if let (true, Some(notes)) = (assistant, part.get("annotations")) {
                listed["annotations"] = notes.clone();
            }
            listed
        }
        _ => part.clone(),
    }
}

fn text_part(text: &str, assistant: bool) -> Value {
    if assistant {
        json!({"type": "output_text", "text": text, "annotations": []})
    } else {
        json!({"type": "input_text", "text": text})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let pairs = pairs.iter();
        pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_query_reads_limit_order_and_after() {
        let page = Page::parse(&query(&[
            ("order", "asc"),
            ("limit", "100"),
            ("after", "x"),
        ]));
        let want = Page {
            limit: 100,
            desc: false,
            after: Some("x".into()),
        };
        assert_eq!(page.unwrap(), want);
        let plain = Page::parse(&query(&[("include[]", "anything")])).unwrap();
        assert_eq!((plain.limit, plain.desc), (DEFAULT_LIMIT, true));
        for (key, value) in [
            ("limit", "0"),
            ("limit", "101"),
            ("limit", "x"),
            ("order", "up"),
        ] {
            let e = Page::parse(&query(&[(key, value)])).unwrap_err();
            assert_eq!(e.param, key);
        }
    }

    #[test]
    fn items_take_openai_shapes_and_ids_made_from_the_response() {
        let user = listed(&json!({"role": "user", "content": "hi"}), "abc", 0);
        let want = json!({"type": "message", "id": "msg_abc_0", "role": "user",
                          "content": [{"type": "input_text", "text": "hi"}],
                          "status": "completed"});
        assert_eq!(user, want);
        let said = json!({"type": "message", "id": "m1", "role": "assistant",
                          "content": [{"type": "input_text", "text": "ok"}]});
        let said = listed(&said, "abc", 1);
        assert_eq!(said["id"], "m1");
        assert_eq!(said["content"][0]["type"], "output_text");
        let call = json!({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"});
        let call = listed(&call, "abc", 2);
        assert_eq!(
            (&call["id"], &call["status"]),
            (&json!("fc_abc_2"), &json!("completed"))
        );
        assert_eq!(call["call_id"], "c");
        let out = json!({"type": "function_call_output", "call_id": "c", "output": "sunny"});
        assert_eq!(listed(&out, "abc", 3)["id"], "fco_abc_3");
    }
}
