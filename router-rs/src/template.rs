//! The chat template: renders OpenAI-style messages into the prompt text, byte-identical to
//! transformers' `apply_chat_template`.
//!
//! transformers renders with Jinja2 (`trim_blocks`, `lstrip_blocks`), a `tojson` filter that is
//! Python's `json.dumps(x, ensure_ascii=False)`, and the globals `raise_exception` and
//! `strftime_now`. [`ChatTemplate`] sets minijinja up the same way: Python string and dict methods
//! from minijinja-contrib's pycompat, our own `tojson`, and a formatter that prints values as
//! Python's `str()` does (`None`, `True`, `{'a': 1}`).
//!
//! Before rendering, messages are converted to template values with object keys in their given
//! order and integers kept exact, and assistant tool-call `arguments` given as a JSON string
//! (OpenAI style) are parsed into an object, since the template iterates `arguments.items()`.

mod clock;
mod pyjson;

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::{Map, Value as Json};

use pyjson::{BigInt, DumpOptions};

const TEMPLATE_NAME: &str = "chat_template";

/// Why a prompt could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source is not valid Jinja.
    #[error("chat template does not compile: {0}")]
    Compile(String),
    /// Rendering failed: the template raised an exception or used a value the wrong way.
    #[error("chat template rendering failed: {0}")]
    Render(String),
    /// `messages` is not a non-empty list of objects.
    #[error("messages must be a non-empty list of objects")]
    InvalidMessages,
    /// An assistant tool call's `arguments` string is not a JSON object.
    #[error("messages[{message}].tool_calls[{call}]: arguments must be a JSON object: {reason}")]
    InvalidToolArguments {
        message: usize,
        call: usize,
        reason: String,
    },
}

/// A compiled chat template; `Send + Sync`, render from any number of threads at once.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

impl ChatTemplate {
    /// Compiles `source`; fails with [`TemplateError::Compile`] on a syntax error.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(|state, value, method, args| {
            // Python strips its own whitespace, which has \x1c-\x1f beyond Unicode's
            if let (Some(text), []) = (value.as_str(), args) {
                match method {
                    "strip" => return Ok(Value::from(py_strip(text))),
                    "lstrip" => return Ok(Value::from(text.trim_start_matches(py_space))),
                    "rstrip" => return Ok(Value::from(text.trim_end_matches(py_space))),
                    _ => {}
                }
            }
            minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
        });
        env.set_formatter(|out, _state, value| {
            let text = pyjson::python_str(value)?;
            out.write_str(&text)
                .map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
        });
        env.add_filter("tojson", tojson);
        // In Python `None` is not iterable, so `visible_text(None)` prints "None".
        env.add_test("iterable", |v: &Value| !v.is_none() && v.try_iter().is_ok());
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: &str| clock::strftime_now(format));
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| TemplateError::Compile(format!("{e:#}")))?;
        Ok(Self { env })
    }

    /// Renders the prompt.
    ///
    /// `messages` is the OpenAI message list, `tools` the tool list (passed as `none` when
    /// absent), and `kwargs` extra template variables such as `enable_thinking`; `messages`,
    /// `tools` and `add_generation_prompt` take precedence over keys of the same name in
    /// `kwargs`. Fails with [`TemplateError::InvalidMessages`] when `messages` is not a non-empty
    /// list of objects, [`TemplateError::InvalidToolArguments`] when a tool call's arguments string does
    /// not parse to a JSON object, and [`TemplateError::Render`] when the template raises.
    pub fn render(
        &self,
        messages: &Json,
        tools: Option<&Json>,
        add_generation_prompt: bool,
        kwargs: &Map<String, Json>,
    ) -> Result<String, TemplateError> {
        let messages = prepare_messages(messages)?;
        let mut ctx: Vec<(String, Value)> = kwargs
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect();
        ctx.push(("messages".into(), messages));
        ctx.push(("tools".into(), tools.map_or(Value::from(()), json_value)));
        ctx.push(("documents".into(), Value::from(())));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        let ctx: Value = ctx.into_iter().collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        template
            .render(ctx)
            .map_err(|e| TemplateError::Render(e.to_string()))
    }
}

/// Where a prompt that continues its last message ends: `rendered` (the messages rendered
/// without a generation prompt) cut after the last message's text as the template writes it
/// (stripped; reasoning written inline as `<think>…</think>` split off as the template splits
/// it), or after its reasoning when it has no text, so the model goes on from there. Only the
/// part of `rendered` past `before` (the messages before the last, rendered alike) is searched,
/// so an earlier message with the same text is never taken for it. `None` when the template did
/// not write that text.
pub fn continued_end(rendered: &str, before: &str, last: &Json) -> Option<usize> {
    let field = |k: &str| last.get(k).and_then(Json::as_str).unwrap_or("");
    let (mut content, mut reasoning) = (field("content"), field("reasoning_content"));
    if last
        .get("reasoning_content")
        .and_then(Json::as_str)
        .is_none()
    {
        if let Some((head, tail)) = content.split_once("</think>") {
            let head = head.trim_end_matches('\n');
            reasoning = head.rsplit("<think>").next().unwrap_or(head);
            content = tail.rsplit("</think>").next().unwrap_or(tail);
        }
    }
    let tail = [py_strip(content), py_strip(reasoning)]
        .into_iter()
        .find(|t| !t.is_empty())?;
    let from = common_prefix(rendered, before);
    rendered[from..]
        .rfind(tail)
        .map(|at| from + at + tail.len())
}

/// Whether Python's `str.isspace` holds for `c`: Unicode's white space and the separators
/// \x1c-\x1f.
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `text.strip()` as Python strips it.
pub fn py_strip(text: &str) -> &str {
    text.trim_matches(py_space)
}

/// The length of the longest common prefix of `a` and `b`, at a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// Converts messages to template values, parsing tool-call `arguments` strings into objects.
fn prepare_messages(messages: &Json) -> Result<Value, TemplateError> {
    let list = messages
        .as_array()
        .filter(|list| !list.is_empty())
        .ok_or(TemplateError::InvalidMessages)?;
    let mut out = Vec::with_capacity(list.len());
    for (index, message) in list.iter().enumerate() {
        let object = message.as_object().ok_or(TemplateError::InvalidMessages)?;
        match object.get("tool_calls") {
            Some(Json::Array(calls)) => {
                let mut object = object.clone();
                let calls = parse_call_arguments(index, calls)?;
                object.insert("tool_calls".into(), Json::Array(calls));
                out.push(json_value(&Json::Object(object)));
            }
            _ => out.push(json_value(message)),
        }
    }
    Ok(Value::from(out))
}

/// Replaces each `arguments` string (at `function.arguments`, or `arguments` for a flat call)
/// by the object it encodes; an empty string stands for no arguments.
fn parse_call_arguments(message: usize, calls: &[Json]) -> Result<Vec<Json>, TemplateError> {
    let mut out = calls.to_vec();
    for (call, entry) in out.iter_mut().enumerate() {
        let holder = match entry.get_mut("function") {
            Some(f @ Json::Object(_)) => f,
            _ => entry,
        };
        let Some(Json::String(text)) = holder.get("arguments") else {
            continue;
        };
        let parsed = if text.trim().is_empty() {
            Json::Object(Map::new())
        } else {
            serde_json::from_str::<Json>(text).map_err(|e| TemplateError::InvalidToolArguments {
                message,
                call,
                reason: e.to_string(),
            })?
        };
        if !parsed.is_object() {
            return Err(TemplateError::InvalidToolArguments {
                message,
                call,
                reason: "not an object".into(),
            });
        }
        if let Some(obj) = holder.as_object_mut() {
            obj.insert("arguments".into(), parsed);
        }
    }
    Ok(out)
}

/// A JSON object as a template map that keeps its keys in their given order.
#[derive(Debug)]
struct OrderedMap(Vec<(Value, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| k.clone()).collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

/// Converts JSON to a template value as Python's `json.loads` would see it: integers exact
/// (beyond 128 bits as [`BigInt`]), numbers with a fraction or exponent as floats, object keys in
/// order.
pub(crate) fn json_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => number_value(&n.to_string()),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(json_value).collect::<Vec<_>>()),
        Json::Object(map) => Value::from_object(OrderedMap(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_value(v)))
                .collect(),
        )),
    }
}

fn number_value(text: &str) -> Value {
    if !text.contains(['.', 'e', 'E']) {
        if let Ok(n) = text.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = text.parse::<i128>() {
            return Value::from(n);
        }
        if let Ok(n) = text.parse::<u128>() {
            return Value::from(n);
        }
        return Value::from_object(BigInt(text.to_string()));
    }
    Value::from(text.parse::<f64>().unwrap_or(f64::NAN))
}

/// `tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let mut opts = DumpOptions::default();
    if let Some(ensure_ascii) = kwargs.get::<Option<bool>>("ensure_ascii")? {
        opts.ensure_ascii = ensure_ascii;
    }
    let indent: Option<Value> = kwargs.get("indent")?;
    if let Some(indent) = indent.filter(|v| !v.is_none()) {
        opts.indent = Some(match indent.as_str() {
            Some(unit) => unit.to_string(),
            None => " ".repeat(usize::try_from(indent.as_i64().unwrap_or(0)).unwrap_or(0)),
        });
        opts.item_sep = ",".to_string();
    }
    let separators: Option<Value> = kwargs.get("separators")?;
    if let Some(seps) = separators.filter(|v| !v.is_none()) {
        let item = seps.get_item_by_index(0)?;
        let key = seps.get_item_by_index(1)?;
        match (item.as_str(), key.as_str()) {
            (Some(item), Some(key)) => {
                opts.item_sep = item.to_string();
                opts.key_sep = key.to_string();
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "separators must be a pair of strings",
                ))
            }
        }
    }
    if let Some(sort_keys) = kwargs.get::<Option<bool>>("sort_keys")? {
        opts.sort_keys = sort_keys;
    }
    kwargs.assert_all_used()?;
    pyjson::dumps(value, &opts).map(Value::from)
}

/// `raise_exception(message)`: aborts rendering with `message`.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// The chat template of a model directory: chat_template.jinja, else tokenizer_config.json's
/// `chat_template` (one string, or the one named "default" of a list).
pub(crate) fn read_from_dir(
    dir: &std::path::Path,
    tokenizer_config: Option<&(std::path::PathBuf, Json)>,
) -> Result<String, crate::tokenizer::TokenizerError> {
    let path = dir.join("chat_template.jinja");
    if path.exists() {
        return std::fs::read_to_string(&path)
            .map_err(|source| crate::tokenizer::TokenizerError::Io { path, source });
    }
    // Either one template string or a list of `{"name", "template"}`, of which "default" is used.
    let source = match tokenizer_config.and_then(|(_, json)| json.get("chat_template")) {
        Some(Json::String(source)) => Some(source.as_str()),
        Some(Json::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str),
        _ => None,
    };
    source.map(str::to_string).ok_or_else(|| {
        crate::tokenizer::TokenizerError::MissingChatTemplate {
            dir: dir.to_path_buf(),
        }
    })
}

#[cfg(test)]
#[path = "template/tests.rs"]
mod tests;
