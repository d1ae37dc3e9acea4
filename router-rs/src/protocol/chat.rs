//! `POST /v1/chat/completions`: request validation and response shapes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::openai::{
    ChatLogprobs, FinishReason, PromptLogprobList, ToolCall, ToolCallDelta, Usage,
};
use super::sampling::{OpenAiSampling, SamplingParams, MAX_TOP_LOGPROBS};
use super::{
    check_best_of, check_range, check_stream_options, from_value, output_constraint, StreamOptions,
    ValidationError,
};
use crate::parsers::glm47_name::MAX_NAME_BYTES;

/// How the model may use the request's tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Tools are not offered to the model.
    None,
    /// The model decides.
    Auto,
    /// The model must call some tool.
    Required,
    /// The model must call this function.
    Named(String),
}

/// A validated chat request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// Messages as the chat template reads them: text parts joined, tool-call arguments as objects.
    pub messages: Value,
    /// The tool list given to the template and the tool parser (empty when `tool_choice` is none).
    pub tools: Vec<Value>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Every chunk carries its choice's usage so far (vLLM's `continuous_usage_stats`).
    pub continuous_usage: bool,
    /// Extra variables for the chat template (`enable_thinking`, `clear_thinking`, ...).
    pub template_kwargs: Map<String, Value>,
    /// The prompt ends in the template's generation prompt (an opened assistant turn).
    pub add_generation_prompt: bool,
    /// The prompt ends inside the last message, an assistant's, which the model continues
    /// (vLLM's `continue_final_message`; the Messages API's prefill).
    pub continue_final_message: bool,
    /// The reasoning the prompt opens is closed after this many tokens (SGLang's
    /// `thinking_budget`; the Messages API's `thinking.budget_tokens`).
    pub thinking_budget: Option<u32>,
    /// vLLM's `echo`: the last message's text, an assistant's, leads each choice's content.
    pub echo: Option<String>,
    pub n: u32,
    pub sampling: SamplingParams,
}

#[derive(Debug, Deserialize)]
struct RawChat {
    model: Option<String>,
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    chat_template_kwargs: Option<Map<String, Value>>,
    echo: Option<bool>,
    best_of: Option<u32>,
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    thinking_budget: Option<u32>,
    reasoning_effort: Option<String>,
}

impl ChatRequest {
    /// Reads and validates a chat request body.
    pub fn from_json(body: &Value) -> Result<Self, ValidationError> {
        let raw: RawChat = from_value(body)?;
        let sampling: OpenAiSampling = from_value(body)?;
        let n = sampling.n.unwrap_or(1);
        let logprobs = chat_logprobs(raw.logprobs, raw.top_logprobs)?;
        let mut sampling = sampling.validate(logprobs)?;
        if raw.stream == Some(true) && sampling.prompt_logprobs.is_some() {
            // A chat stream has no place for them (vLLM refuses the pair too).
            return Err(ValidationError::new(
                "prompt_logprobs",
                "prompt_logprobs is not available with stream: true on chat completions",
            ));
        }
        sampling.output_constraint = output_constraint(body)?;
        check_stream_options(raw.stream_options.as_ref(), raw.stream)?;
        check_best_of(raw.best_of, n)?;
        let messages = normalize_messages(raw.messages)?;
        let continue_final_message = raw.continue_final_message.unwrap_or(false);
        let add_generation_prompt = match raw.add_generation_prompt {
            Some(true) if continue_final_message => {
                return Err(ValidationError::new(
                    "add_generation_prompt",
                    "add_generation_prompt and continue_final_message exclude each other",
                ))
            }
            given => given.unwrap_or(!continue_final_message),
        };
        if continue_final_message {
            check_continued(&messages)?;
        }
        // vLLM's chat `echo`: a last assistant message leads each choice's content
        let echo = match messages.last() {
            Some(last) if raw.echo == Some(true) && last["role"] == "assistant" => {
                last["content"].as_str().map(str::to_owned)
            }
            _ => None,
        };
        let tools = raw.tools.unwrap_or_default();
        check_tools(&tools)?;
        let tool_choice = parse_tool_choice(raw.tool_choice.as_ref(), &tools)?;
        let forced = matches!(tool_choice, ToolChoice::Required | ToolChoice::Named(_));
        if forced && sampling.output_constraint.is_some() {
            return Err(ValidationError::new(
                "tool_choice",
                "a forced tool call and a JSON response_format exclude each other",
            ));
        }
        let tools = if tool_choice == ToolChoice::None {
            Vec::new()
        } else {
            tools
        };
        let (include_usage, continuous_usage) = StreamOptions::usage(raw.stream_options.as_ref());
        Ok(Self {
            model: raw.model,
            messages: Value::Array(messages),
            tools,
            tool_choice,
            parallel_tool_calls: raw.parallel_tool_calls.unwrap_or(true),
            stream: raw.stream.unwrap_or(false),
            include_usage,
            continuous_usage,
            template_kwargs: with_effort(
                raw.chat_template_kwargs.unwrap_or_default(),
                raw.reasoning_effort.as_deref(),
            )?,
            add_generation_prompt,
            continue_final_message,
            thinking_budget: raw.thinking_budget,
            echo,
            n,
            sampling,
        })
    }
}

fn chat_logprobs(logprobs: Option<bool>, top: Option<u32>) -> Result<i32, ValidationError> {
    check_range("top_logprobs", top, 0, MAX_TOP_LOGPROBS)?;
    match (logprobs.unwrap_or(false), top) {
        (true, top) => Ok(top.unwrap_or(0) as i32),
        (false, Some(t)) if t > 0 => Err(ValidationError::new(
            "top_logprobs",
            "top_logprobs requires logprobs to be true",
        )),
        (false, _) => Ok(-1),
    }
}

/// OpenAI's `reasoning_effort` as the template reads it: `none` or `minimal` turns thinking off
/// (unless `chat_template_kwargs` says otherwise); `low`, `medium` and `high` leave it on.
fn with_effort(
    mut kwargs: Map<String, Value>,
    effort: Option<&str>,
) -> Result<Map<String, Value>, ValidationError> {
    match effort {
        None | Some("low" | "medium" | "high") => {}
        Some("none" | "minimal") => {
            kwargs
                .entry("enable_thinking")
                .or_insert(Value::Bool(false));
        }
        Some(other) => {
            let msg = format!(
                "reasoning_effort {other:?} is not one of none, minimal, low, medium, high"
            );
            return Err(ValidationError::new("reasoning_effort", msg));
        }
    }
    Ok(kwargs)
}

/// A message the model can continue: the last, an assistant's without tool calls, with text or
/// reasoning to continue.
fn check_continued(messages: &[Value]) -> Result<(), ValidationError> {
    let last = messages.last().unwrap_or(&Value::Null);
    let at = format!("messages[{}]", messages.len().saturating_sub(1));
    let text =
        |k: &str| crate::template::py_strip(last.get(k).and_then(Value::as_str).unwrap_or(""));
    let refuse = |why: &str| {
        let msg = format!("continue_final_message needs {why}");
        Err(ValidationError::new(at.clone(), msg))
    };
    if last.get("role").and_then(Value::as_str) != Some("assistant") {
        return refuse("the last message to be an assistant's");
    }
    if last
        .get("tool_calls")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
    {
        return refuse("a last message without tool calls");
    }
    if text("content").is_empty() && text("reasoning_content").is_empty() {
        return refuse("a last message with content or reasoning_content");
    }
    Ok(())
}

/// Joins text parts into strings and parses assistant tool-call arguments into objects.
fn normalize_messages(messages: Vec<Value>) -> Result<Vec<Value>, ValidationError> {
    if messages.is_empty() {
        return Err(ValidationError::new(
            "messages",
            "messages must not be empty",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| normalize_message(i, m))
        .collect()
}

fn normalize_message(i: usize, message: Value) -> Result<Value, ValidationError> {
    let Value::Object(mut m) = message else {
        return Err(ValidationError::new(
            format!("messages[{i}]"),
            "a message must be an object",
        ));
    };
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("system" | "user" | "assistant" | "tool")) => r.to_owned(),
        Some("developer") => "system".to_owned(),
        _ => {
            return Err(ValidationError::new(
                format!("messages[{i}].role"),
                "role must be one of system, developer, user, assistant, tool",
            ))
        }
    };
    m.insert("role".into(), Value::String(role));
    if let Some(content) = m.remove("content") {
        m.insert("content".into(), content_text(i, content)?);
    }
    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
        for (j, call) in calls.iter_mut().enumerate() {
            parse_call_arguments(i, j, call)?;
        }
    }
    Ok(Value::Object(m))
}

fn content_text(i: usize, content: Value) -> Result<Value, ValidationError> {
    let parts = match content {
        Value::String(_) => return Ok(content),
        // An assistant turn with tool calls and `content: null`: no text (the template would
        // otherwise render the null).
        Value::Null => return Ok(Value::String(String::new())),
        Value::Array(parts) => parts,
        _ => {
            return Err(ValidationError::new(
                format!("messages[{i}].content"),
                "content must be a string or a list of text parts",
            ))
        }
    };
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str);
        match (kind, part.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(t)) => text.push_str(t),
            _ => {
                return Err(ValidationError::new(
                    format!("messages[{i}].content[{j}]"),
                    "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                ))
            }
        }
    }
    Ok(Value::String(text))
}

fn parse_call_arguments(i: usize, j: usize, call: &mut Value) -> Result<(), ValidationError> {
    let Some(args) = call
        .get_mut("function")
        .and_then(|f| f.get_mut("arguments"))
    else {
        return Ok(());
    };
    if let Value::String(text) = args {
        if text.trim().is_empty() {
            *text = "{}".to_owned(); // some clients send "" for a call without arguments
        }
        let parsed: Value = serde_json::from_str(text).map_err(|e| {
            ValidationError::new(
                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                format!("arguments must be a JSON object: {e}"),
            )
        })?;
        *args = parsed;
    }
    if !args.is_object() {
        return Err(ValidationError::new(
            format!("messages[{i}].tool_calls[{j}].function.arguments"),
            "arguments must be a JSON object",
        ));
    }
    Ok(())
}

/// The function name of an OpenAI tools entry.
pub fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function")?.get("name")?.as_str()
}

fn check_tools(tools: &[Value]) -> Result<(), ValidationError> {
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ValidationError::new(
                format!("tools[{i}].type"),
                "tool type must be function",
            ));
        }
        let Some(name) = tool_name(tool) else {
            return Err(ValidationError::new(
                format!("tools[{i}].function.name"),
                "a tool needs a function name",
            ));
        };
        let parameters = tool.get("function").and_then(|f| f.get("parameters"));
        if parameters.is_some_and(|p| !p.is_null() && !p.is_object()) {
            return Err(ValidationError::new(
                format!("tools[{i}].function.parameters"),
                "parameters must be a JSON Schema object",
            ));
        }
        if let Some(why) = unmatchable_name(name) {
            return Err(ValidationError::new(
                format!("tools[{i}].function.name"),
                format!("function name {name:?} {why}"),
            ));
        }
    }
    Ok(())
}

/// Why the model's calls to a function of this name could never be recognised (the name ends at
/// the first `<` or newline, is trimmed and must fit `MAX_NAME_BYTES`), or None.
fn unmatchable_name(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        Some("is blank".into())
    } else if name.trim() != name {
        Some("has leading or trailing whitespace".into())
    } else if name.contains(['<', '\n']) {
        Some("contains '<' or a newline".into())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!("is longer than {MAX_NAME_BYTES} bytes"))
    } else {
        None
    }
}

fn parse_tool_choice(
    choice: Option<&Value>,
    tools: &[Value],
) -> Result<ToolChoice, ValidationError> {
    let bad = |msg: &str| ValidationError::new("tool_choice", msg);
    let choice = match choice {
        None | Some(Value::Null) => return Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => {
                return Err(bad(
                    "tool_choice must be none, auto, required or a named function",
                ))
            }
        },
        Some(v) => match v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => ToolChoice::Named(name.to_owned()),
            None => return Err(bad("a named tool_choice needs function.name")),
        },
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => Err(bad("tool_choice required needs tools")),
        ToolChoice::Named(name) if !tools.iter().any(|t| tool_name(t) == Some(name)) => Err(bad(
            &format!("tool_choice names {name:?}, which is not in tools"),
        )),
        _ => Ok(choice),
    }
}

/// The assistant message of a non-streaming answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: Option<String>,
    /// Always present (`null` without reasoning), as clients read it as an attribute.
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReason>,
    /// vLLM's: the stop string or stop token id that ended the choice (null otherwise).
    pub stop_reason: Option<crate::protocol::openai::StopReason>,
    /// vLLM's `return_token_ids`: the choice's token ids (a chunk's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// The body of a non-streaming chat answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    /// vLLM's `prompt_logprobs` of the rendered prompt, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobList>,
    /// vLLM's `return_token_ids`: the prompt's token ids (on a stream, in the first chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

/// The `delta` of a streamed chat chunk; empty fields are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReason>,
    /// vLLM's: the stop string or stop token id that ended the choice (null otherwise).
    pub stop_reason: Option<crate::protocol::openai::StopReason>,
    /// vLLM's `return_token_ids`: the choice's token ids (a chunk's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// One streamed chat chunk (`object: chat.completion.chunk`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// `null` on every chunk but the last when usage was asked for; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    /// vLLM's `return_token_ids`: the prompt's token ids (on a stream, in the first chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[cfg(test)]
#[path = "chat_tests.rs"]
mod tests;
