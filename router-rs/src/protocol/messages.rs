//! `POST /v1/messages` (Anthropic's Messages API, as coding agents send it), read as the chat
//! request it amounts to: `system` a system message, each message's content blocks chat
//! messages (`text`; `tool_use` an assistant message's tool calls; `tool_result` tool messages;
//! `thinking` the assistant message's reasoning), `tools` with their `input_schema` as chat
//! functions, `tool_choice` (`auto`, `any`, `tool`, `none`, `disable_parallel_tool_use`),
//! `stop_sequences`, `thinking` (off unless `enabled`). Images and documents stand as a
//! placeholder (the model reads text only).

use serde_json::{json, Map, Value};

use super::chat::ChatRequest;
use super::ValidationError;

/// Fields passed to the chat request as they are.
const PASSED: [&str; 6] = [
    "model",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
];

/// A validated messages request: the chat request it amounts to.
#[derive(Debug, Clone)]
pub struct MessagesRequest {
    pub chat: ChatRequest,
}

impl MessagesRequest {
    pub fn from_json(body: &Value) -> Result<Self, ValidationError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ValidationError::new("", "the body must be a JSON object"))?;
        let mut chat = Map::new();
        for field in PASSED {
            if let Some(v) = obj.get(field).filter(|v| !v.is_null()) {
                chat.insert(field.into(), v.clone());
            }
        }
        let mut messages = merged(messages(obj)?);
        if messages.last().is_some_and(|m| m["role"] == "assistant") {
            // a last assistant message is a prefill the answer continues; an empty one is none
            let last = &messages[messages.len() - 1];
            if last.get("tool_calls").is_some() {
                let msg = "a last assistant turn is a prefill to continue: it cannot hold tool_use";
                return Err(ValidationError::new("messages", msg));
            }
            if prefill_is_empty(last) {
                messages.pop();
            } else {
                chat.insert("continue_final_message".into(), Value::Bool(true));
            }
        }
        chat.insert("messages".into(), Value::Array(messages));
        if let Some(stop) = obj.get("stop_sequences").filter(|v| !v.is_null()) {
            chat.insert("stop".into(), stop.clone());
        }
        if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
            chat.insert("tools".into(), chat_tools(tools)?);
        }
        if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
            let (choice, parallel) = chat_tool_choice(choice)?;
            chat.insert("tool_choice".into(), choice);
            if !parallel {
                chat.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
        // as Anthropic's models: no thinking unless asked for
        match obj
            .get("thinking")
            .and_then(|t| t.get("type"))
            .and_then(Value::as_str)
        {
            None | Some("disabled") => {
                chat.insert(
                    "chat_template_kwargs".into(),
                    json!({"enable_thinking": false}),
                );
            }
            Some("enabled" | "adaptive") => {
                let budget = obj["thinking"]
                    .get("budget_tokens")
                    .filter(|b| !b.is_null());
                if let Some(budget) = budget {
                    chat.insert("thinking_budget".into(), budget.clone());
                }
            }
            Some(other) => {
                return Err(ValidationError::new(
                    "thinking.type",
                    format!("thinking type {other:?} is not supported (enabled, disabled)"),
                ))
            }
        }
        let chat = ChatRequest::from_json(&Value::Object(chat)).map_err(|e| ValidationError {
            param: messages_param(&e.param),
            message: e.message,
        })?;
        Ok(Self { chat })
    }
}

/// The name a chat field has in a messages request.
fn messages_param(chat: &str) -> String {
    if chat.starts_with("tools") {
        return chat
            .replacen(".function.parameters", ".input_schema", 1)
            .replacen(".function", "", 1);
    }
    match chat {
        "stop" => "stop_sequences".into(),
        "thinking_budget" => "thinking.budget_tokens".into(),
        "max_completion_tokens" => "max_tokens".into(),
        other if other.starts_with("messages") => "messages".into(),
        other => other.into(),
    }
}

/// `system` and `messages` as chat messages.
fn messages(obj: &Map<String, Value>) -> Result<Vec<Value>, ValidationError> {
    let mut out = Vec::new();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            let text = text_of(system, "system", "\n\n")?;
            out.push(json!({"role": "system", "content": text}));
        }
    }
    let list = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ValidationError::new("messages", "messages must be a non-empty list"))?;
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str);
        let content = m.get("content").unwrap_or(&Value::Null);
        let last_assistant = i + 1 == list.len() && role == Some("assistant");
        check_not_empty(content, &param, last_assistant)?;
        match role {
            Some("user") => user(content, &param, &mut out)?,
            Some("assistant") => out.push(assistant(content, &param)?),
            _ => {
                return Err(ValidationError::new(
                    format!("{param}.role"),
                    "role must be user or assistant",
                ))
            }
        }
    }
    Ok(out)
}

/// Consecutive user messages, and consecutive assistant messages, as one (Anthropic combines
/// consecutive turns of one role): texts joined by a blank line, reasoning joined, tool calls
/// in order.
fn merged(messages: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(messages.len());
    for m in messages {
        let role = m["role"].as_str().unwrap_or("");
        let prev = out
            .last_mut()
            .filter(|p| p["role"] == role && matches!(role, "user" | "assistant"));
        let Some(prev) = prev else {
            out.push(m);
            continue;
        };
        for key in ["content", "reasoning_content"] {
            if let Some(more) = m.get(key).and_then(Value::as_str) {
                let mut text = prev
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                join(&mut text, more, "\n\n");
                prev[key] = Value::String(text);
            }
        }
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            match prev.get_mut("tool_calls") {
                Some(Value::Array(have)) => have.extend(calls.iter().cloned()),
                _ => prev["tool_calls"] = Value::Array(calls.clone()),
            }
        }
    }
    out
}

/// A last assistant message that gives nothing to continue.
fn prefill_is_empty(m: &Value) -> bool {
    let blank = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .is_empty()
    };
    blank("content") && blank("reasoning_content") && m.get("tool_calls").is_none()
}

/// Anthropic's rules: every message has content, but for a final assistant message (which the
/// answer continues), and no text block is empty.
fn check_not_empty(
    content: &Value,
    param: &str,
    last_assistant: bool,
) -> Result<(), ValidationError> {
    let empty = match content {
        Value::String(text) => text.is_empty(),
        Value::Array(blocks) => blocks.is_empty(),
        _ => false, // not content at all: the message's reader says so
    };
    if empty && !last_assistant {
        let msg = "all messages must have non-empty content except for the optional final assistant message";
        return Err(ValidationError::new(format!("{param}.content"), msg));
    }
    for (j, block) in content.as_array().into_iter().flatten().enumerate() {
        if block.get("type").and_then(Value::as_str) == Some("text")
            && block.get("text").and_then(Value::as_str) == Some("")
        {
            let at = format!("{param}.content[{j}].text");
            return Err(ValidationError::new(
                at,
                "text content blocks must be non-empty",
            ));
        }
    }
    Ok(())
}

/// A user message: its tool results as tool messages, then its text.
fn user(content: &Value, param: &str, out: &mut Vec<Value>) -> Result<(), ValidationError> {
    let blocks = match content {
        Value::String(text) => {
            out.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ValidationError::new(
                param,
                "content must be a string or a list of blocks",
            ))
        }
    };
    let mut text = String::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{param}.content[{j}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => join(
                &mut text,
                block.get("text").and_then(Value::as_str).unwrap_or(""),
                "\n\n",
            ),
            Some(kind @ ("image" | "document")) => join(&mut text, &omitted(kind), "\n\n"),
            Some("tool_result") => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ValidationError::new(
                            format!("{at}.tool_use_id"),
                            "a tool_result needs tool_use_id",
                        )
                    })?;
                let result = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(c) => text_of(c, &format!("{at}.content"), "\n")?,
                };
                let error = block.get("is_error") == Some(&Value::Bool(true));
                let result = if error {
                    format!("Error: {result}")
                } else {
                    result
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
            }
            other => return Err(unsupported(&at, other)),
        }
    }
    if !text.is_empty() {
        out.push(json!({"role": "user", "content": text}));
    }
    Ok(())
}

/// An assistant message: its text, thinking as reasoning, tool uses as tool calls.
fn assistant(content: &Value, param: &str) -> Result<Value, ValidationError> {
    let blocks = match content {
        Value::String(text) => return Ok(json!({"role": "assistant", "content": text})),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ValidationError::new(
                param,
                "content must be a string or a list of blocks",
            ))
        }
    };
    let (mut text, mut thinking, mut calls) = (String::new(), String::new(), Vec::new());
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{param}.content[{j}]");
        let field = |k: &str| block.get(k).and_then(Value::as_str);
        match field("type") {
            Some("text") => text.push_str(field("text").unwrap_or("")),
            Some("thinking") => thinking.push_str(field("thinking").unwrap_or("")),
            Some("redacted_thinking") => {}
            Some("tool_use") => {
                let (Some(id), Some(name)) = (field("id"), field("name")) else {
                    return Err(ValidationError::new(at, "a tool_use needs id and name"));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": input.to_string()}}));
            }
            other => return Err(unsupported(&at, other)),
        }
    }
    let mut m = json!({"role": "assistant", "content": text});
    if !thinking.is_empty() {
        m["reasoning_content"] = Value::String(thinking);
    }
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(m)
}

fn unsupported(at: &str, kind: Option<&str>) -> ValidationError {
    let kind = kind.map_or("without a type".to_owned(), |k| format!("of type {k}"));
    ValidationError::new(
        at,
        format!("content blocks {kind} are not supported (text, image, document, tool_use, tool_result, thinking)"),
    )
}

/// What stands for an image or a document: the model reads text only, and an agent keeps
/// what it was given in its history (a refusal would fail every later request).
fn omitted(kind: &str) -> String {
    format!("[{kind} omitted: this model reads text only]")
}

/// `text` and `more`, `sep` between them when both have text.
fn join(text: &mut String, more: &str, sep: &str) {
    if !text.is_empty() && !more.is_empty() {
        text.push_str(sep);
    }
    text.push_str(more);
}

/// A string, or the text of a list of text blocks (images and documents as a placeholder),
/// joined by `sep`.
fn text_of(v: &Value, param: &str, sep: &str) -> Result<String, ValidationError> {
    match v {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (j, b) in blocks.iter().enumerate() {
                match (
                    b.get("type").and_then(Value::as_str),
                    b.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some("")) => {
                        let at = format!("{param}[{j}].text");
                        return Err(ValidationError::new(
                            at,
                            "text content blocks must be non-empty",
                        ));
                    }
                    (Some("text"), Some(t)) => join(&mut text, t, sep),
                    (Some(kind @ ("image" | "document")), _) => {
                        join(&mut text, &omitted(kind), sep)
                    }
                    (other, _) => return Err(unsupported(param, other)),
                }
            }
            Ok(text)
        }
        _ => Err(ValidationError::new(
            param,
            "must be a string or a list of text blocks",
        )),
    }
}

/// Tools in the chat form (`input_schema` as the parameters).
fn chat_tools(tools: &Value) -> Result<Value, ValidationError> {
    let list = tools
        .as_array()
        .ok_or_else(|| ValidationError::new("tools", "tools must be a list"))?;
    let mut out = Vec::new();
    for (i, tool) in list.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str);
        if !matches!(kind, None | Some("custom")) || tool.get("input_schema").is_none() {
            return Err(ValidationError::new(
                format!("tools[{i}]"),
                "only client tools with an input_schema are supported",
            ));
        }
        // in the order OpenAI clients write a function: name, description, parameters
        let mut function = Map::new();
        function.insert(
            "name".into(),
            tool.get("name").cloned().unwrap_or(Value::Null),
        );
        if let Some(d) = tool.get("description") {
            function.insert("description".into(), d.clone());
        }
        function.insert("parameters".into(), tool["input_schema"].clone());
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

/// The chat `tool_choice`, and whether several calls may come.
fn chat_tool_choice(choice: &Value) -> Result<(Value, bool), ValidationError> {
    let parallel = choice.get("disable_parallel_tool_use") != Some(&Value::Bool(true));
    let chat = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => json!({"type": "function",
                               "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}}),
        _ => {
            return Err(ValidationError::new(
                "tool_choice",
                "tool_choice must be of type auto, any, tool or none",
            ))
        }
    };
    Ok((chat, parallel))
}

#[cfg(test)]
#[path = "messages_tests.rs"]
mod tests;
