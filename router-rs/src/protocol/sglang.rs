//! SGLang's native `POST /generate`: `{"text" or "input_ids", "sampling_params", "stream",
//! "return_logprob", "top_logprobs_num"}` (one prompt or a list), answered as SGLang answers it:
//! `{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
//! "completion_tokens", "cached_tokens", ...}}` per prompt.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::completions::PromptInput;
use super::sampling::{SamplingParams, StopField, MAX_TOP_LOGPROBS};
use super::{check_range, from_value, output_constraint, ValidationError};

/// SGLang's default output budget.
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 128;

/// Whether a `/generate` body is SGLang's (`text` or `input_ids`) rather than LightLLM's
/// (`inputs`).
pub fn is_sglang(body: &Value) -> bool {
    body.get("inputs").is_none() && (body.get("text").is_some() || body.get("input_ids").is_some())
}

/// A validated SGLang `/generate` request.
#[derive(Debug, Clone)]
pub struct SglangRequest {
    pub prompts: Vec<PromptInput>,
    /// The prompt came as a list: the answer is a list too.
    pub batched: bool,
    pub stream: bool,
    /// The sampling settings of each prompt (one `sampling_params` object shared, or one per
    /// prompt).
    pub sampling: Vec<SamplingParams>,
    /// The client's id of each prompt (`rid`: `meta_info.id`, what `/abort_request` names).
    pub rids: Option<Vec<String>>,
}

/// SGLang's `sampling_params`; a key not named here is a 400. The constrained-output keys and
/// `spaces_between_special_tokens` are named for that check alone (the first are read from the
/// JSON by `output_constraint`, the last has no effect here).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawSampling {
    max_new_tokens: Option<u32>,
    min_new_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    stop: Option<StopField>,
    stop_token_ids: Option<Vec<u32>>,
    ignore_eos: Option<bool>,
    skip_special_tokens: Option<bool>,
    /// SGLang's: keep a matched stop string in the text.
    no_stop_trim: Option<bool>,
    sampling_seed: Option<i64>,
    n: Option<u32>,
    json_schema: Option<Value>,
    regex: Option<Value>,
    ebnf: Option<Value>,
    structural_tag: Option<Value>,
    spaces_between_special_tokens: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawGenerate {
    text: Option<Value>,
    input_ids: Option<Value>,
    sampling_params: Option<Value>,
    stream: Option<bool>,
    return_logprob: Option<bool>,
    top_logprobs_num: Option<u32>,
    rid: Option<Value>,
    /// Only the defaults are taken (-1: no prompt logprobs; no token text in the entries): a
    /// client asking for more gets a 400 rather than an answer without it.
    logprob_start_len: Option<i64>,
    return_text_in_logprobs: Option<bool>,
}

impl SglangRequest {
    /// The sampling settings of prompt `i`.
    pub fn sampling_of(&self, i: usize) -> &SamplingParams {
        &self.sampling[i.min(self.sampling.len() - 1)]
    }

    pub fn from_json(body: &Value) -> Result<Self, ValidationError> {
        let raw: RawGenerate = from_value(body)?;
        let (value, param) = match (&raw.text, &raw.input_ids) {
            (Some(t), None) => (t, "text"),
            (None, Some(ids)) => (ids, "input_ids"),
            _ => {
                let msg = "give text or input_ids, one of them";
                return Err(ValidationError::new("text", msg));
            }
        };
        let prompts = PromptInput::list_from(value, param)?;
        let batched = match value {
            Value::Array(items) => items.first().is_some_and(|i| !i.is_number()),
            _ => false,
        };
        let params = match raw.sampling_params {
            None | Some(Value::Null) => vec![Value::Object(Map::new())],
            Some(Value::Array(list))
                if !list.is_empty() && (list.len() == 1 || list.len() == prompts.len()) =>
            {
                list
            }
            Some(Value::Array(_)) => {
                let msg = "sampling_params is one object, or a list of one per prompt";
                return Err(ValidationError::new("sampling_params", msg));
            }
            Some(other) => vec![other],
        };
        if raw.logprob_start_len.is_some_and(|start| start != -1) {
            let msg = "prompt logprobs are not served on /generate: leave logprob_start_len at \
                       -1 (/v1/completions gives them with echo or prompt_logprobs)";
            return Err(ValidationError::new("logprob_start_len", msg));
        }
        if raw.return_text_in_logprobs == Some(true) {
            let msg = "token texts in logprob entries are not served: the ids are";
            return Err(ValidationError::new("return_text_in_logprobs", msg));
        }
        let top = raw.top_logprobs_num.unwrap_or(0);
        check_range("top_logprobs_num", Some(top), 0, MAX_TOP_LOGPROBS)?;
        let logprobs = if raw.return_logprob == Some(true) {
            top as i32
        } else {
            -1
        };
        let sampling = params
            .iter()
            .map(|params| {
                let p: RawSampling = from_value(params).map_err(|e| ValidationError {
                    param: format!("sampling_params.{}", e.param)
                        .trim_end_matches('.')
                        .into(),
                    message: e.message,
                })?;
                let mut s = sampling(&p, params)?;
                s.logprobs = logprobs;
                Ok(s)
            })
            .collect::<Result<Vec<_>, ValidationError>>()?;
        let rids = match raw.rid {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if prompts.len() == 1 && !id.is_empty() => Some(vec![id]),
            Some(Value::Array(ids)) if ids.len() == prompts.len() => Some(
                ids.into_iter()
                    .map(|id| match id {
                        Value::String(id) if !id.is_empty() => Some(id),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ValidationError::new("rid", "every rid is a non-empty string")
                    })?,
            ),
            Some(_) => {
                let msg = "rid is a non-empty string for one prompt, or a list of one per prompt";
                return Err(ValidationError::new("rid", msg));
            }
        };
        Ok(Self {
            prompts,
            batched,
            stream: raw.stream.unwrap_or(false),
            sampling,
            rids,
        })
    }
}

/// The sampling settings of `p` (`params` its JSON, for the constrained output it asks for).
fn sampling(p: &RawSampling, params: &Value) -> Result<SamplingParams, ValidationError> {
    let at = |e: ValidationError| ValidationError {
        param: format!("sampling_params.{}", e.param),
        message: e.message,
    };
    let max_new_tokens = p.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS);
    if max_new_tokens == 0 {
        let msg = "max_new_tokens must be at least 1";
        return Err(ValidationError::new("sampling_params.max_new_tokens", msg));
    }
    if p.n.is_some_and(|n| n != 1) {
        let msg = "one output per prompt is supported (send the prompt n times)";
        return Err(ValidationError::new("sampling_params.n", msg));
    }
    let constrained: Map<String, Value> = ["json_schema", "regex", "ebnf", "structural_tag"]
        .into_iter()
        .filter_map(|k| {
            params
                .get(k)
                .filter(|v| !v.is_null())
                .map(|v| (k.into(), v.clone()))
        })
        .collect();
    let sampling = SamplingParams {
        max_new_tokens: Some(max_new_tokens),
        max_new_tokens_param: "sampling_params.max_new_tokens",
        min_new_tokens: p.min_new_tokens.unwrap_or(0).min(max_new_tokens),
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        min_p: p.min_p,
        presence_penalty: p.presence_penalty.unwrap_or(0.0),
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: p.repetition_penalty,
        seed: p.sampling_seed,
        stop: p.stop.clone().map(StopField::into_vec).unwrap_or_default(),
        stop_token_ids: p.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: p.ignore_eos.unwrap_or(false),
        logprobs: -1,
        skip_special_tokens: p.skip_special_tokens.unwrap_or(true),
        include_stop_str: p.no_stop_trim.unwrap_or(false),
        output_constraint: output_constraint(&Value::Object(constrained)).map_err(at)?,
        ..SamplingParams::default()
    };
    sampling.check().map_err(at)?;
    Ok(sampling)
}

/// SGLang's `meta_info.finish_reason` of a finish: `{"type": "stop", "matched": id or text}`,
/// `{"type": "length", "length": n}` or `{"type": "abort"}`; null while running. `last` is the
/// last token read: an eos token that ended the output is what matched, as SGLang reports it.
pub fn finish_reason(
    finish: Option<&crate::state::Finish>,
    last: Option<&crate::state::TokenInfo>,
) -> Value {
    use super::openai::{FinishReason, StopReason};
    let Some(f) = finish else {
        return Value::Null;
    };
    match f.reason {
        FinishReason::Length => json!({"type": "length", "length": f.completion_tokens}),
        FinishReason::Abort => json!({"type": "abort", "message": "the request was aborted"}),
        FinishReason::Stop | FinishReason::ToolCalls => {
            let matched = match &f.stop_reason {
                Some(StopReason::Token(id)) => json!(id),
                Some(StopReason::Text(text)) => json!(text),
                None => last
                    .filter(|t| t.special)
                    .map_or(Value::Null, |t| json!(t.id)),
            };
            json!({"type": "stop", "matched": matched})
        }
    }
}
