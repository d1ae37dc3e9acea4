//! `POST /v1/responses` (OpenAI's Responses API), read as the chat request it amounts to: the
//! `input` items become messages (`function_call` items an assistant message's tool calls,
//! `function_call_output` items tool messages, `reasoning` items the next assistant message's
//! reasoning), `instructions` a system message first, function `tools` the chat form, `text.format`
//! a `response_format`, `max_output_tokens` the token limit, `reasoning.effort` `none` or
//! `minimal` thinking off. `previous_response_id` is resolved before (http/response_store.rs);
//! `background` runs on past the answer (the response at once, or with `stream` its events, which
//! a reader may leave and pick up again); `conversation` is refused, as are tools
//! other than functions and inputs other than text. `top_logprobs` or `include: ["message.output_text.logprobs"]` asks for the
//! answer text's logprobs.

use serde_json::{json, Map, Value};

use super::chat::ChatRequest;
use super::ValidationError;

/// Fields passed to the chat request as they are (the sampling extras vLLM takes too).
const PASSED: [&str; 23] = [
    "model",
    "stream",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "ignore_eos",
    "min_tokens",
    "logit_bias",
    "chat_template_kwargs",
    "cache_salt",
    "priority",
    // vLLM's constrained output, read as chat reads it
    "guided_json",
    "guided_choice",
    "guided_regex",
    "guided_grammar",
    "structured_outputs",
];

/// Fields that need what this server does not keep or do.
const REFUSED: [(&str, &str); 5] = [
    (
        "conversation",
        "conversations are not stored: send the whole conversation as input",
    ),
    ("prompt", "stored prompt templates are not supported"),
    ("n", "responses have one output"),
    (
        "response_format",
        "JSON output is asked for with text.format here",
    ),
    (
        "guided_whitespace_pattern",
        "a whitespace pattern is not supported (structured_outputs.disable_any_whitespace \
         leaves all whitespace out)",
    ),
];

/// A validated responses request: the chat request it amounts to, and what the response
/// repeats of it.
#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    pub chat: ChatRequest,
    /// `instructions`, `max_output_tokens`, `tools`, `tool_choice`, `text`, ... as given.
    pub echo: Map<String, Value>,
    /// `background`: the response runs on past the answer, polled for or its stream followed.
    pub background: bool,
}

impl ResponsesRequest {
    pub fn from_json(body: &Value) -> Result<Self, ValidationError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ValidationError::new("", "the body must be a JSON object"))?;
        for (field, why) in REFUSED {
            if obj.get(field).is_some_and(|v| !v.is_null()) {
                return Err(ValidationError::new(field, format!("{field}: {why}")));
            }
        }
        // logprobs of the answer text: `top_logprobs` alternatives, or none beside the token's
        // own when only `include` asks for them
        let included = obj
            .get("include")
            .and_then(Value::as_array)
            .is_some_and(|i| i.iter().any(|x| x == "message.output_text.logprobs"));
        let top = obj.get("top_logprobs").filter(|v| !v.is_null());
        for (field, kind) in [
            ("store", "a boolean"),
            ("text", "an object"),
            ("reasoning", "an object"),
            ("metadata", "an object"),
        ] {
            let ok = match obj.get(field) {
                None | Some(Value::Null) => true,
                Some(v) if kind == "a boolean" => v.is_boolean(),
                Some(v) => v.is_object(),
            };
            if !ok {
                return Err(ValidationError::new(
                    field,
                    format!("{field} must be {kind}"),
                ));
            }
        }
        if let Some(metadata) = obj.get("metadata").and_then(Value::as_object) {
            // as OpenAI bounds it: 16 pairs, keys of 64 and values of 512 characters
            let ok = metadata.len() <= 16
                && metadata.iter().all(|(k, v)| {
                    k.chars().count() <= 64 && v.as_str().is_some_and(|v| v.chars().count() <= 512)
                });
            if !ok {
                let msg = "metadata holds at most 16 string values, keys of at most 64 and values of at most 512 characters";
                return Err(ValidationError::new("metadata", msg));
            }
        }
        let background = match obj.get("background") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ValidationError::new("background", "must be a boolean")),
        };
        if background && obj.get("store") == Some(&Value::Bool(false)) {
            return Err(ValidationError::new(
                "background",
                "a background response is kept to be polled: it needs store true",
            ));
        }
        let mut chat = Map::new();
        for field in PASSED {
            if let Some(v) = obj.get(field).filter(|v| !v.is_null()) {
                chat.insert(field.into(), v.clone());
            }
        }
        chat.insert("messages".into(), Value::Array(messages(obj)?));
        if included || top.is_some() {
            chat.insert("logprobs".into(), Value::Bool(true));
            chat.insert("top_logprobs".into(), top.cloned().unwrap_or(json!(0)));
        }
        if let Some(max) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
            chat.insert("max_tokens".into(), max.clone());
        }
        if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
            chat.insert("tools".into(), chat_tools(tools)?);
        }
        if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
            chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
        }
        if let Some(format) = obj.get("text").and_then(|t| t.get("format")) {
            if let Some(f) = response_format(format)? {
                chat.insert("response_format".into(), f);
            }
        }
        let effort = obj
            .get("reasoning")
            .and_then(|r| r.get("effort"))
            .and_then(Value::as_str);
        if matches!(effort, Some("none" | "minimal")) {
            let kwargs = chat
                .entry("chat_template_kwargs")
                .or_insert_with(|| json!({}));
            if let Some(k) = kwargs.as_object_mut() {
                k.entry("enable_thinking").or_insert(Value::Bool(false));
            }
        }
        let chat = ChatRequest::from_json(&Value::Object(chat)).map_err(|e| ValidationError {
            param: responses_param(&e.param),
            message: e.message,
        })?;
        let echo = [
            "instructions",
            "max_output_tokens",
            "metadata",
            "parallel_tool_calls",
            "reasoning",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_p",
            "user",
        ]
        .into_iter()
        .filter_map(|k| obj.get(k).map(|v| (k.to_owned(), v.clone())))
        .collect();
        Ok(Self {
            chat,
            echo,
            background,
        })
    }
}

/// The name a chat field has in a responses request.
fn responses_param(chat: &str) -> String {
    if chat.starts_with("messages") {
        return "input".into();
    }
    if let Some(rest) = chat.strip_prefix("response_format") {
        let rest = rest.strip_prefix(".json_schema").unwrap_or(rest);
        return format!("text.format{rest}");
    }
    if chat.starts_with("tools") {
        return chat.replacen(".function", "", 1);
    }
    match chat {
        "max_tokens" | "max_completion_tokens" => "max_output_tokens".into(),
        other => other.into(),
    }
}

/// `instructions` and `input` as chat messages.
fn messages(obj: &Map<String, Value>) -> Result<Vec<Value>, ValidationError> {
    let mut out = Vec::new();
    if let Some(text) = obj.get("instructions").filter(|v| !v.is_null()) {
        let text = text
            .as_str()
            .ok_or_else(|| ValidationError::new("instructions", "instructions must be a string"))?;
        out.push(json!({"role": "system", "content": text}));
    }
    let items = match obj.get("input") {
        Some(Value::String(text)) => {
            return Ok([out, vec![json!({"role": "user", "content": text})]].concat())
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => {
            return Err(ValidationError::new(
                "input",
                "input must be a string or a non-empty list of items",
            ))
        }
    };
    let mut reasoning = String::new(); // for the next assistant message
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item.get("type").and_then(Value::as_str);
        let kind = kind.unwrap_or(if item.get("role").is_some() {
            "message"
        } else {
            ""
        });
        match kind {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(ValidationError::new(
                        format!("{param}.role"),
                        format!("role {role:?} is not one of user, assistant, system, developer (a tool's output is a function_call_output item)"),
                    ));
                }
                let text = text_of(item.get("content"), &format!("{param}.content"))?;
                let mut m = json!({"role": role, "content": text});
                if role == "assistant" && !reasoning.is_empty() {
                    m["reasoning_content"] = Value::String(std::mem::take(&mut reasoning));
                }
                out.push(m);
            }
            "function_call" => {
                let field = |k: &str| {
                    item.get(k).and_then(Value::as_str).ok_or_else(|| {
                        ValidationError::new(format!("{param}.{k}"), format!("a function_call needs {k}"))
                    })
                };
                let call = json!({"id": field("call_id")?, "type": "function",
                                  "function": {"name": field("name")?, "arguments": field("arguments")?}});
                // calls right after an assistant message (or other calls) belong to it
                // (a reasoning item between them starts a message of its own, unless that one
                // has none)
                let joins = |last: &Value| {
                    last["role"] == "assistant"
                        && (reasoning.is_empty() || last.get("reasoning_content").is_none())
                };
                match out.last_mut() {
                    Some(last) if joins(last) => {
                        if !reasoning.is_empty() {
                            last["reasoning_content"] = Value::String(std::mem::take(&mut reasoning));
                        }
                        let calls = last.as_object_mut().expect("a message object");
                        let calls = calls.entry("tool_calls").or_insert_with(|| json!([]));
                        calls.as_array_mut().expect("a list of calls").push(call);
                    }
                    _ => {
                        let mut m = json!({"role": "assistant", "content": "", "tool_calls": [call]});
                        if !reasoning.is_empty() {
                            m["reasoning_content"] = Value::String(std::mem::take(&mut reasoning));
                        }
                        out.push(m);
                    }
                }
            }
            "function_call_output" => {
                let id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                    ValidationError::new(format!("{param}.call_id"), "a function_call_output needs call_id")
                })?;
                let output = text_of(item.get("output"), &format!("{param}.output"))?;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
            }
            "reasoning" => {
                // its text, else its summary
                let listed = |k: &str| item.get(k).and_then(Value::as_array).filter(|p| !p.is_empty());
                let parts = listed("content").or_else(|| listed("summary"));
                for part in parts.into_iter().flatten() {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        reasoning.push_str(text);
                    }
                }
            }
            other => {
                return Err(ValidationError::new(
                    param,
                    format!("input items of type {other:?} are not supported (message, function_call, function_call_output, reasoning)"),
                ))
            }
        }
    }
    Ok(out)
}

/// A message's or an output's text: a string, or text parts joined.
fn text_of(content: Option<&Value>, param: &str) -> Result<String, ValidationError> {
    match content {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text" | "refusal") => {
                        let t = part.get("text").or_else(|| part.get("refusal"));
                        text.push_str(t.and_then(Value::as_str).unwrap_or(""));
                    }
                    other => {
                        return Err(ValidationError::new(
                            param,
                            format!(
                                "content parts of type {other:?} are not supported (text only)"
                            ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ValidationError::new(
            param,
            "must be a string or a list of text parts",
        )),
    }
}

/// Function tools in the chat form.
fn chat_tools(tools: &Value) -> Result<Value, ValidationError> {
    let list = tools
        .as_array()
        .ok_or_else(|| ValidationError::new("tools", "tools must be a list"))?;
    let mut out = Vec::new();
    for (i, tool) in list.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ValidationError::new(
                format!("tools[{i}].type"),
                "only function tools are supported",
            ));
        }
        let mut function = tool.as_object().cloned().unwrap_or_default();
        function.shift_remove("type");
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ValidationError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").cloned().unwrap_or(Value::Null);
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(ValidationError::new(
            "tool_choice",
            "tool_choice must be auto, none, required or a function",
        )),
    }
}

/// `text.format` as a chat `response_format` (None for plain text).
fn response_format(format: &Value) -> Result<Option<Value>, ValidationError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = format.as_object().cloned().unwrap_or_default();
            schema.shift_remove("type");
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(ValidationError::new(
            "text.format",
            "text.format must be of type text, json_object or json_schema",
        )),
    }
}

#[cfg(test)]
#[path = "responses_tests.rs"]
mod tests;
