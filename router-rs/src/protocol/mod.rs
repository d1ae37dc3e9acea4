//! Request and response shapes of the HTTP API, with validation.
//!
//! Requests are read in two passes from one parsed `serde_json::Value`: the endpoint's own fields
//! and the shared sampling fields ([`sampling::OpenAiSampling`]). Numbers never go through untagged
//! enums or `flatten` (serde_json's `arbitrary_precision` breaks both), so polymorphic fields such as
//! `prompt` and `inputs` are read as `Value` and interpreted here.

pub mod chat;
pub mod completions;
pub mod generate;
pub mod openai;
pub mod sampling;

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

/// Fields of constrained decoding (vLLM's and SGLang's extras), which is not implemented: a request
/// asking for it is refused rather than answered unconstrained.
const CONSTRAINED: [&str; 9] = [
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "structured_outputs",
    "regex",
    "ebnf",
    "json_schema",
];

/// Refuses a chat or completions body that asks for constrained decoding: one of `CONSTRAINED`,
/// or a `response_format` other than text.
pub fn refuse_constrained(body: &Value) -> Result<(), ValidationError> {
    if let Some(field) = CONSTRAINED
        .iter()
        .find(|f| body.get(**f).is_some_and(|v| !v.is_null()))
    {
        return Err(ValidationError::new(
            *field,
            format!("{field} is not supported: constrained decoding is not implemented"),
        ));
    }
    let Some(format) = body.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(()),
        Some(other) => Err(ValidationError::new(
            "response_format.type",
            format!("response_format type {other:?} is not supported (only text)"),
        )),
        None => Err(ValidationError::new(
            "response_format",
            "response_format needs a type",
        )),
    }
}

/// `stream_options` of chat and completions.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// vLLM's usage in every chunk: not implemented, refused.
    pub continuous_usage_stats: Option<bool>,
}

/// `stream_options` only with a stream, and without what is not implemented.
pub fn check_stream_options(
    options: Option<&StreamOptions>,
    stream: Option<bool>,
) -> Result<(), ValidationError> {
    let Some(options) = options else {
        return Ok(());
    };
    if stream != Some(true) {
        return Err(ValidationError::new(
            "stream_options",
            "stream_options is only allowed with stream: true",
        ));
    }
    if options.continuous_usage_stats == Some(true) {
        return Err(ValidationError::new(
            "stream_options.continuous_usage_stats",
            "continuous_usage_stats is not supported (include_usage gives the usage at the end)",
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

/// Deserializes `T` from `body`, naming the field that is missing or has the wrong type.
pub fn from_value<T: DeserializeOwned>(body: &Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(body).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = err.into_inner().to_string();
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
