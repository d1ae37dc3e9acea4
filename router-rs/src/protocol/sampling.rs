//! Sampling settings shared by every endpoint, validated into [`SamplingParams`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{check_range, ValidationError};

/// The validated sampling settings of one request, before model defaults are applied.
///
/// `None` means "not given by the client": the router fills it from the model's
/// `generation_config.json`, then from the wire protocol defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingParams {
    /// Output token budget; `None` lets the router use what fits in `max_req_total_len`.
    pub max_new_tokens: Option<u32>,
    /// The request field that set `max_new_tokens`, for error messages.
    pub max_new_tokens_param: &'static str,
    /// Eos and stop ids are ignored before this many tokens.
    pub min_new_tokens: u32,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// -1 or 0 disables top-k.
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    /// Strings that end the output; the matched string is not returned.
    pub stop: Vec<String>,
    /// Extra token ids that end the output.
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// -1: no logprobs; 0: sampled token only; k > 0: also the top k.
    pub logprobs: i32,
    /// vLLM's `prompt_logprobs`: the answer lists each prompt token's logprob and rank, with the
    /// top k alternatives of its position.
    pub prompt_logprobs: Option<u32>,
    /// The alternatives the worker scores at each prompt position (the wire's `prompt_logprobs`);
    /// `None`: the prompt is not scored. The most any part of the answer shows: vLLM's
    /// `prompt_logprobs`, an echo with `logprobs`.
    pub score_prompt: Option<u32>,
    /// Leave special tokens out of the returned text.
    pub skip_special_tokens: bool,
    /// Keep a matched stop string at the end of the text (vLLM's `include_stop_str_in_output`).
    pub include_stop_str: bool,
    /// `(token id, bias)` added to the logits before sampling, ids ascending.
    pub logit_bias: Vec<(u32, f32)>,
    /// JSON output the request asks for (constrained decoding); None: free text.
    pub output_constraint: Option<super::OutputConstraint>,
    /// vLLM's `truncate_prompt_tokens`: the prompt is cut to its last tokens.
    pub truncate_prompt: Option<PromptCut>,
    /// vLLM's `return_tokens_as_token_ids`: logprobs name tokens `token_id:N`.
    pub tokens_as_ids: bool,
    /// vLLM's `priority`: lower values are served first (the worker's priority policy).
    pub priority: i32,
    /// vLLM's `return_token_ids`: answers list the prompt's and the choices' token ids.
    pub return_token_ids: bool,
    /// vLLM's `allowed_token_ids`: every sampled token is one of these; empty: any.
    pub allowed_token_ids: Vec<u32>,
    /// vLLM's `bad_words`: words the output never contains (tokenized by the router).
    pub bad_words: Vec<String>,
    /// vLLM's `cache_salt`: the prompt shares cached prefixes only with prompts of this salt.
    pub cache_salt: Option<String>,
}

/// How much of a prompt `truncate_prompt_tokens` keeps: its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptCut {
    /// The last this many tokens.
    Last(u32),
    /// As many as leave room for an output token (`-1`).
    Fit,
}

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// The sampling fields the OpenAI endpoints share (plus the vLLM extras).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenAiSampling {
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub min_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub include_stop_str_in_output: Option<bool>,
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub n: Option<u32>,
    /// Signed, so that a negative value is refused by [`check_range`] under its own name.
    pub prompt_logprobs: Option<i64>,
    pub truncate_prompt_tokens: Option<i64>,
    pub return_tokens_as_token_ids: Option<bool>,
    pub allowed_token_ids: Option<Vec<u32>>,
    pub bad_words: Option<Vec<String>>,
    pub return_token_ids: Option<bool>,
    pub priority: Option<i32>,
    pub cache_salt: Option<String>,
}

/// Largest bias magnitude `logit_bias` accepts (OpenAI's range).
pub const MAX_LOGIT_BIAS: f32 = 100.0;
/// Most `logit_bias` entries one request may give (the worker applies them every step).
pub const MAX_LOGIT_BIAS_ENTRIES: usize = 1024;

/// `logit_bias`: token ids (as JSON object keys written plainly, so that no two name the same
/// id) to biases in [-100, 100].
fn logit_bias(map: Option<BTreeMap<String, f32>>) -> Result<Vec<(u32, f32)>, ValidationError> {
    let map = map.unwrap_or_default();
    if map.len() > MAX_LOGIT_BIAS_ENTRIES {
        let msg = format!(
            "at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {}",
            map.len()
        );
        return Err(ValidationError::new("logit_bias", msg));
    }
    let mut pairs = map
        .into_iter()
        .map(|(key, bias)| {
            let id = key
                .parse::<u32>()
                .ok()
                .filter(|id| id.to_string() == key)
                .ok_or_else(|| {
                    ValidationError::new("logit_bias", format!("key {key:?} is not a token id"))
                })?;
            if !(bias.is_finite() && bias.abs() <= MAX_LOGIT_BIAS) {
                let msg = format!("bias {bias} of token {id} is not in [-100, 100]");
                return Err(ValidationError::new("logit_bias", msg));
            }
            Ok((id, bias))
        })
        .collect::<Result<Vec<_>, _>>()?;
    pairs.sort_unstable_by_key(|&(id, _)| id);
    Ok(pairs)
}

/// Most `bad_words` entries, and the longest (in bytes, so at most as many tokens).
pub const MAX_BAD_WORDS: usize = 128;
pub const MAX_BAD_WORD_BYTES: usize = 64;

/// `allowed_token_ids`: given, not empty (vLLM refuses an empty list); ascending, without repeats.
pub(super) fn allowed_token_ids(ids: Option<Vec<u32>>) -> Result<Vec<u32>, ValidationError> {
    let Some(mut ids) = ids else {
        return Ok(Vec::new());
    };
    if ids.is_empty() {
        let msg = "allowed_token_ids must not be empty";
        return Err(ValidationError::new("allowed_token_ids", msg));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Longest `cache_salt` accepted, in bytes.
pub const MAX_CACHE_SALT_BYTES: usize = 1024;

/// `cache_salt`: not empty (as vLLM checks), at most `MAX_CACHE_SALT_BYTES` long.
pub(super) fn cache_salt(salt: Option<String>) -> Result<Option<String>, ValidationError> {
    match salt {
        Some(s) if s.is_empty() || s.len() > MAX_CACHE_SALT_BYTES => {
            let msg = format!(
                "cache_salt must be a non-empty string of at most {MAX_CACHE_SALT_BYTES} bytes"
            );
            Err(ValidationError::new("cache_salt", msg))
        }
        salt => Ok(salt),
    }
}

/// `bad_words`: at most `MAX_BAD_WORDS` words of text, each at most `MAX_BAD_WORD_BYTES` long.
fn bad_words(words: Option<Vec<String>>) -> Result<Vec<String>, ValidationError> {
    let words = words.unwrap_or_default();
    if words.len() > MAX_BAD_WORDS {
        let msg = format!("at most {MAX_BAD_WORDS} bad words, got {}", words.len());
        return Err(ValidationError::new("bad_words", msg));
    }
    if let Some(w) = words
        .iter()
        .find(|w| w.trim().is_empty() || w.len() > MAX_BAD_WORD_BYTES)
    {
        let msg = format!("{w:?}: a bad word has text, at most {MAX_BAD_WORD_BYTES} bytes");
        return Err(ValidationError::new("bad_words", msg));
    }
    Ok(words)
}

/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;
/// Most alternatives per position `logprobs`, `top_logprobs` and `prompt_logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: u32 = 20;

impl OpenAiSampling {
    /// Validates ranges and returns the settings; `logprobs` comes from the endpoint's own field.
    pub fn validate(self, logprobs: i32) -> Result<SamplingParams, ValidationError> {
        let (max_param, max_new_tokens) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => ("max_completion_tokens", Some(v)),
            (None, v) => ("max_tokens", v),
        };
        if max_new_tokens == Some(0) {
            return Err(ValidationError::new(
                max_param,
                format!("{max_param} must be at least 1"),
            ));
        }
        let min_new_tokens = self.min_tokens.unwrap_or(0);
        if let Some(max) = max_new_tokens {
            if min_new_tokens > max {
                return Err(ValidationError::new(
                    "min_tokens",
                    format!("min_tokens ({min_new_tokens}) must not exceed {max_param} ({max})"),
                ));
            }
        }
        check_range("n", self.n, 1, MAX_N)?;
        check_range(
            "prompt_logprobs",
            self.prompt_logprobs,
            0,
            i64::from(MAX_TOP_LOGPROBS),
        )?;
        // In range, so it fits.
        let prompt_logprobs = self.prompt_logprobs.and_then(|k| u32::try_from(k).ok());
        let truncate_prompt = match self.truncate_prompt_tokens {
            None => None,
            Some(-1) => Some(PromptCut::Fit),
            Some(k) => match u32::try_from(k) {
                Ok(k) if k > 0 => Some(PromptCut::Last(k)),
                _ => {
                    let msg = "truncate_prompt_tokens must be a positive token count, or -1";
                    return Err(ValidationError::new("truncate_prompt_tokens", msg));
                }
            },
        };
        let params = SamplingParams {
            max_new_tokens,
            max_new_tokens_param: max_param,
            min_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop: self.stop.map(StopField::into_vec).unwrap_or_default(),
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs,
            prompt_logprobs,
            score_prompt: prompt_logprobs,
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            include_stop_str: self.include_stop_str_in_output.unwrap_or(false),
            logit_bias: logit_bias(self.logit_bias)?,
            output_constraint: None,
            truncate_prompt,
            tokens_as_ids: self.return_tokens_as_token_ids.unwrap_or(false),
            return_token_ids: self.return_token_ids.unwrap_or(false),
            priority: self.priority.unwrap_or(0),
            allowed_token_ids: allowed_token_ids(self.allowed_token_ids)?,
            bad_words: bad_words(self.bad_words)?,
            cache_salt: cache_salt(self.cache_salt)?,
        };
        params.check()?;
        Ok(params)
    }
}

impl SamplingParams {
    /// Checks every range the wire protocol relies on.
    pub fn check(&self) -> Result<(), ValidationError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ValidationError::new(
                    "top_p",
                    format!("top_p must be in (0, 1], got {p}"),
                ));
            }
        }
        if let Some(k) = self.top_k {
            if k < -1 {
                return Err(ValidationError::new(
                    "top_k",
                    format!("top_k must be -1 or >= 0, got {k}"),
                ));
            }
        }
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        check_range("presence_penalty", Some(self.presence_penalty), -2.0, 2.0)?;
        check_range("frequency_penalty", Some(self.frequency_penalty), -2.0, 2.0)?;
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r.is_finite()) {
                return Err(ValidationError::new(
                    "repetition_penalty",
                    format!("repetition_penalty must be a finite number > 0, got {r}"),
                ));
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(ValidationError::new(
                "stop",
                "stop strings must not be empty",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(json: serde_json::Value) -> Result<SamplingParams, ValidationError> {
        super::super::from_value::<OpenAiSampling>(&json)?.validate(-1)
    }

    #[test]
    fn logit_bias_keys_are_token_ids_and_biases_stay_in_range() {
        let p = sampling(serde_json::json!({"logit_bias": {"42": -100, "7": 2.5}})).unwrap();
        assert_eq!(p.logit_bias, vec![(7, 2.5), (42, -100.0)]);
        for bad in [
            serde_json::json!({"logit_bias": {"x": 1}}),
            serde_json::json!({"logit_bias": {"-3": 1}}),
            serde_json::json!({"logit_bias": {"+3": 1}}),
            serde_json::json!({"logit_bias": {" 3": 1}}),
            serde_json::json!({"logit_bias": {"5": 100.5}}),
        ] {
            assert_eq!(sampling(bad).unwrap_err().param, "logit_bias");
        }
        assert!(sampling(serde_json::json!({"logit_bias": [1, 2]})).is_err());
        // One id written two ways would be biased twice.
        let twice = serde_json::json!({"logit_bias": {"7": 100, "07": 100}});
        assert_eq!(sampling(twice).unwrap_err().param, "logit_bias");
        let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_LOGIT_BIAS_ENTRIES)
            .map(|i| (i.to_string(), 1.into()))
            .collect();
        let many = serde_json::json!({ "logit_bias": many });
        assert_eq!(sampling(many).unwrap_err().param, "logit_bias");
        assert!(sampling(serde_json::json!({}))
            .unwrap()
            .logit_bias
            .is_empty());
    }

    #[test]
    fn whole_numbers_written_as_floats_are_read_as_integers() {
        let p =
            sampling(serde_json::json!({"max_tokens": 5.0, "top_k": 3.0, "seed": -2.0})).unwrap();
        assert_eq!(
            (p.max_new_tokens, p.top_k, p.seed),
            (Some(5), Some(3), Some(-2))
        );
        let e = sampling(serde_json::json!({"max_tokens": 5.5})).unwrap_err();
        assert_eq!(e.param, "max_tokens");
        assert_eq!(
            e.message,
            "max_tokens must be a whole number within its range"
        );
        let e = sampling(serde_json::json!({"max_tokens": 1e20})).unwrap_err();
        assert_eq!(e.param, "max_tokens");
        // only numbers: a temperature of 1.0 stays a float, a string stays wrong
        let p = sampling(serde_json::json!({"temperature": 1.0})).unwrap();
        assert_eq!(p.temperature, Some(1.0));
        assert_eq!(
            sampling(serde_json::json!({"n": "2"})).unwrap_err().param,
            "n"
        );
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let p = sampling(serde_json::json!({"max_tokens": 5, "max_completion_tokens": 7})).unwrap();
        assert_eq!(p.max_new_tokens, Some(7));
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        for (body, param) in [
            (serde_json::json!({"temperature": 2.5}), "temperature"),
            (serde_json::json!({"top_p": 0.0}), "top_p"),
            (serde_json::json!({"top_k": -2}), "top_k"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (serde_json::json!({"n": 0}), "n"),
            (serde_json::json!({"stop": [""]}), "stop"),
            (
                serde_json::json!({"min_tokens": 9, "max_tokens": 3}),
                "min_tokens",
            ),
        ] {
            assert_eq!(sampling(body).unwrap_err().param, param);
        }
    }

    #[test]
    fn repetition_penalty_takes_any_positive_value() {
        let p = sampling(serde_json::json!({"repetition_penalty": 3.5})).unwrap();
        assert_eq!(p.repetition_penalty, Some(3.5));
        for bad in [0.0, -1.0] {
            let err = sampling(serde_json::json!({"repetition_penalty": bad})).unwrap_err();
            assert_eq!(err.param, "repetition_penalty");
        }
    }

    #[test]
    fn prompt_logprobs_takes_0_to_20_and_scores_the_prompt() {
        for k in [0u32, 2, 20] {
            let p = sampling(serde_json::json!({ "prompt_logprobs": k })).unwrap();
            assert_eq!((p.prompt_logprobs, p.score_prompt), (Some(k), Some(k)));
        }
        let p = sampling(serde_json::json!({"prompt_logprobs": null})).unwrap();
        assert_eq!((p.prompt_logprobs, p.score_prompt), (None, None));
        for bad in [
            serde_json::json!(-1),
            serde_json::json!(21),
            serde_json::json!(1.5),
            serde_json::json!("2"),
        ] {
            let err = sampling(serde_json::json!({ "prompt_logprobs": bad })).unwrap_err();
            assert_eq!(err.param, "prompt_logprobs", "{bad}");
        }
        let err = sampling(serde_json::json!({"prompt_logprobs": -1})).unwrap_err();
        assert_eq!(
            err.message,
            "prompt_logprobs must be between 0 and 20, got -1"
        );
    }

    #[test]
    fn wrong_types_name_their_field() {
        let err = sampling(serde_json::json!({"temperature": "hot"})).unwrap_err();
        assert_eq!(err.param, "temperature");
    }

    #[test]
    fn stop_accepts_a_string_or_a_list() {
        let one = sampling(serde_json::json!({"stop": "x"})).unwrap();
        let many = sampling(serde_json::json!({"stop": ["x", "y"]})).unwrap();
        assert_eq!(one.stop, vec!["x"]);
        assert_eq!(many.stop, vec!["x", "y"]);
    }
}
