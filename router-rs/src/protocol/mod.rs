//! Request and response shapes of the HTTP API, with validation.
//!
//! Requests are read in two passes from one parsed `serde_json::Value`: the endpoint's own fields
//! and the shared sampling fields ([`sampling::OpenAiSampling`]). Numbers never go through untagged
//! enums or `flatten` (serde_json's `arbitrary_precision` breaks both), so polymorphic fields such as
//! `prompt` and `inputs` are read as `Value` and interpreted here.

pub mod chat;
pub mod completions;
pub mod generate;
pub mod messages;
pub mod openai;
mod output_constraint;
pub mod responses;
pub mod sampling;
pub mod sglang;

pub use output_constraint::{output_constraint, OutputConstraint};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// A client error in one request field: becomes HTTP 400 with `param` set to `param`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// The offending field, as a dotted path (`messages.0.content`), or empty for the whole body.
    pub param: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// `stream_options` of chat and completions.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// vLLM's usage in every chunk (with `include_usage`).
    pub continuous_usage_stats: Option<bool>,
}

impl StreamOptions {
    /// Whether the stream ends with the usage (`include_usage`), and whether every chunk also
    /// carries its choice's usage so far (`continuous_usage_stats` beside it, as vLLM reads it).
    pub fn usage(options: Option<&StreamOptions>) -> (bool, bool) {
        let include = options.and_then(|o| o.include_usage).unwrap_or(false);
        let every = options
            .and_then(|o| o.continuous_usage_stats)
            .unwrap_or(false);
        (include, include && every)
    }
}

/// `stream_options` only with a stream.
pub fn check_stream_options(
    options: Option<&StreamOptions>,
    stream: Option<bool>,
) -> Result<(), ValidationError> {
    if options.is_some() && stream != Some(true) {
        return Err(ValidationError::new(
            "stream_options",
            "stream_options is only allowed with stream: true",
        ));
    }
    Ok(())
}

/// `best_of` is not implemented beyond its trivial value, `n`: anything else is refused.
pub fn check_best_of(best_of: Option<u32>, n: u32) -> Result<(), ValidationError> {
    if best_of.is_some_and(|b| b != n) {
        return Err(ValidationError::new(
            "best_of",
            "best_of is not supported (only best_of equal to n)",
        ));
    }
    Ok(())
}

/// Top-level fields of whole numbers, where a float without a fraction (`5.0`) is read as its
/// integer, as vLLM's request models read it.
const WHOLE_FIELDS: [&str; 16] = [
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "max_new_tokens",
    "min_tokens",
    "top_k",
    "seed",
    "n",
    "best_of",
    "logprobs",
    "top_logprobs",
    "prompt_logprobs",
    "truncate_prompt_tokens",
    "priority",
    "thinking_budget",
    "max_thinking_tokens",
];

/// `body` with its [`WHOLE_FIELDS`] written as floats without a fraction made integers; None
/// when it has none.
fn whole_numbers(body: &Value) -> Option<Value> {
    let whole = |v: &Value| {
        let n = v.as_number().filter(|n| n.is_f64())?.as_f64()?;
        (n.fract() == 0.0 && n.abs() <= 9.0e15).then_some(n as i64)
    };
    let obj = body.as_object()?;
    if !WHOLE_FIELDS
        .iter()
        .any(|f| obj.get(*f).and_then(whole).is_some())
    {
        return None;
    }
    let mut fixed = obj.clone();
    for field in WHOLE_FIELDS {
        if let Some(n) = fixed.get(field).and_then(whole) {
            fixed.insert(field.to_owned(), Value::from(n));
        }
    }
    Some(Value::Object(fixed))
}

/// Deserializes `T` from `body`, naming the field that is missing or has the wrong type.
pub fn from_value<T: DeserializeOwned>(body: &Value) -> Result<T, ValidationError> {
    let fixed = whole_numbers(body);
    let body = fixed.as_ref().unwrap_or(body);
    serde_path_to_error::deserialize(body).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let mut message = err.into_inner().to_string();
        if message == "invalid number" {
            message = format!("{path} must be a whole number within its range");
        }
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let param = match missing {
            Some(field) if path.is_empty() => field.to_owned(),
            Some(field) => format!("{path}.{field}"),
            None => path,
        };
        ValidationError::new(param, message)
    })
}

/// Checks that `value` lies in `[lo, hi]`, naming `param` otherwise.
pub fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    param: &str,
    value: Option<T>,
    lo: T,
    hi: T,
) -> Result<(), ValidationError> {
    match value {
        Some(v) if !(v >= lo && v <= hi) => Err(ValidationError::new(
            param,
            format!("{param} must be between {lo} and {hi}, got {v}"),
        )),
        _ => Ok(()),
    }
}

/// Reads a token id list (`[1, 2, 3]`) from `value`, or `None` when it is not an array of ints.
pub fn token_ids(value: &Value) -> Option<Vec<u32>> {
    let items = value.as_array()?;
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}
