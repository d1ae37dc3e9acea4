//! `POST /v1/completions`: request validation and response shapes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{CompletionLogprobs, FinishReason, PromptLogprobList, Usage};
use super::sampling::{OpenAiSampling, SamplingParams, MAX_TOP_LOGPROBS};
use super::{
    check_best_of, check_range, check_stream_options, from_value, output_constraint, token_ids,
    StreamOptions, ValidationError,
};

/// Output budget of a completion when `max_tokens` is not given (OpenAI's default).
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// One prompt: text to tokenize, or token ids to send as they are.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

impl PromptInput {
    /// Reads `prompt` (or `inputs`): a string, a list of strings, token ids, or lists of token ids.
    pub fn list_from(value: &Value, param: &str) -> Result<Vec<PromptInput>, ValidationError> {
        let bad = || {
            ValidationError::new(
                param,
                format!(
                    "{param} must be a string, a list of strings, token ids or lists of token ids"
                ),
            )
        };
        let prompts = match value {
            Value::String(s) => vec![PromptInput::Text(s.clone())],
            Value::Array(items) if items.is_empty() => return Err(bad()),
            Value::Array(items) if items[0].is_number() => {
                vec![PromptInput::Ids(token_ids(value).ok_or_else(bad)?)]
            }
            Value::Array(items) => items
                .iter()
                .map(|item| Self::one_of_list(item).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        };
        if prompts.iter().any(PromptInput::is_empty) {
            return Err(ValidationError::new(
                param,
                format!("{param} must not be empty"),
            ));
        }
        Ok(prompts)
    }

    fn one_of_list(item: &Value) -> Option<PromptInput> {
        match item {
            Value::String(s) => Some(PromptInput::Text(s.clone())),
            Value::Array(_) => token_ids(item).map(PromptInput::Ids),
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            PromptInput::Text(s) => s.is_empty(),
            PromptInput::Ids(ids) => ids.is_empty(),
        }
    }
}

/// A validated completions request.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompts: Vec<PromptInput>,
    /// Return the prompt text before the completion.
    pub echo: bool,
    /// `echo` with `max_tokens: 0`: only the echoed prompt (and its logprobs) is returned. The
    /// worker still samples one token (its budget is at least 1), which the answer leaves out.
    pub score_only: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Every chunk carries its choice's usage so far (vLLM's `continuous_usage_stats`).
    pub continuous_usage: bool,
    pub n: u32,
    pub sampling: SamplingParams,
}

#[derive(Debug, Deserialize)]
struct RawCompletion {
    model: Option<String>,
    prompt: Option<Value>,
    echo: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<u32>,
    suffix: Option<String>,
    best_of: Option<u32>,
}

impl CompletionRequest {
    /// Reads and validates a completions request body.
    pub fn from_json(body: &Value) -> Result<Self, ValidationError> {
        let raw: RawCompletion = from_value(body)?;
        let mut sampling: OpenAiSampling = from_value(body)?;
        check_stream_options(raw.stream_options.as_ref(), raw.stream)?;
        let score_only = raw.echo == Some(true)
            && sampling.max_completion_tokens.or(sampling.max_tokens) == Some(0);
        if score_only {
            if sampling.min_tokens.unwrap_or(0) > 0 {
                return Err(ValidationError::new(
                    "min_tokens",
                    "min_tokens must be 0 when max_tokens is 0",
                ));
            }
            sampling.max_tokens = Some(1);
            sampling.max_completion_tokens = None;
        }
        let n = sampling.n.unwrap_or(1);
        check_range("logprobs", raw.logprobs, 0, MAX_TOP_LOGPROBS)?;
        let logprobs = raw.logprobs.map_or(-1, |k| k as i32);
        let mut sampling = sampling.validate(logprobs)?;
        sampling.output_constraint = output_constraint(body)?;
        if raw.suffix.is_some_and(|s| !s.is_empty()) {
            return Err(ValidationError::new("suffix", "suffix is not supported"));
        }
        check_best_of(raw.best_of, n)?;
        if raw.echo == Some(true) {
            // The echoed prompt carries its tokens' logprobs too (the first token's is null); the
            // worker scores the larger top k of this and `prompt_logprobs`.
            sampling.score_prompt = sampling.score_prompt.max(raw.logprobs);
        }
        let prompt = raw
            .prompt
            .ok_or_else(|| ValidationError::new("prompt", "prompt is required"))?;
        let (include_usage, continuous_usage) = StreamOptions::usage(raw.stream_options.as_ref());
        Ok(Self {
            model: raw.model,
            prompts: PromptInput::list_from(&prompt, "prompt")?,
            echo: raw.echo.unwrap_or(false),
            score_only,
            stream: raw.stream.unwrap_or(false),
            include_usage,
            continuous_usage,
            n,
            sampling,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<FinishReason>,
    /// vLLM's: the stop string or stop token id that ended the choice (null otherwise).
    pub stop_reason: Option<crate::protocol::openai::StopReason>,
    /// vLLM's `prompt_logprobs`, when asked for (on a stream, in the choice's first chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobList>,
    /// vLLM's `return_token_ids`: the prompt's token ids (on a stream, in the first chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
    /// vLLM's `return_token_ids`: the choice's token ids (a chunk's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// The body of a completions answer, and of each streamed chunk (`object: text_completion`).
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Always present on a non-streaming answer; on chunks, as for chat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_takes_every_openai_form() {
        let cases = [
            (json!("hi"), vec![PromptInput::Text("hi".into())]),
            (
                json!(["a", "b"]),
                vec![PromptInput::Text("a".into()), PromptInput::Text("b".into())],
            ),
            (json!([1, 2]), vec![PromptInput::Ids(vec![1, 2])]),
            (
                json!([[1], [2, 3]]),
                vec![PromptInput::Ids(vec![1]), PromptInput::Ids(vec![2, 3])],
            ),
        ];
        for (prompt, want) in cases {
            let req = CompletionRequest::from_json(&json!({"prompt": prompt})).unwrap();
            assert_eq!(req.prompts, want);
        }
    }

    #[test]
    fn bad_prompts_name_the_prompt_field() {
        for prompt in [
            json!(3),
            json!([]),
            json!([1, "a"]),
            json!([-1]),
            json!(""),
            json!([[]]),
        ] {
            let err = CompletionRequest::from_json(&json!({"prompt": prompt})).unwrap_err();
            assert_eq!(err.param, "prompt", "{prompt}");
        }
    }

    #[test]
    fn options_that_would_be_ignored_are_refused() {
        let best_of = json!({"prompt": "hi", "best_of": 3});
        let err = CompletionRequest::from_json(&best_of).unwrap_err();
        assert_eq!(err.param, "best_of");
        assert!(
            CompletionRequest::from_json(&json!({"prompt": "hi", "best_of": 2, "n": 2})).is_ok()
        );
        for (field, value, param) in [
            (
                "response_format",
                json!({"type": "json_schema", "json_schema": {"schema": {"minimum": 1}}}),
                "response_format.json_schema.schema",
            ),
            ("guided_choice", json!([]), "guided_choice"),
            ("guided_choice", json!(["yes", 3]), "guided_choice"),
            ("guided_json", json!("{not json"), "guided_json"),
            ("guided_regex", json!("[a-z"), "guided_regex"),
            (
                "guided_grammar",
                json!("root ::= root \"a\""),
                "guided_grammar",
            ),
            ("guided_grammar", json!("  "), "guided_grammar"),
            ("ebnf", json!("start ::= \"a\""), "ebnf"),
            (
                "structured_outputs",
                json!({"grammar": "root ::= \"a\"", "regex": "a"}),
                "structured_outputs",
            ),
            (
                "structural_tag",
                json!({"structures": []}),
                "structural_tag",
            ),
        ] {
            let body = json!({"prompt": "hi", field: value});
            let err = CompletionRequest::from_json(&body).unwrap_err();
            assert_eq!(err.param, param, "{field}");
            let chat = json!({"messages": [{"role": "user", "content": "hi"}], field: value});
            let err = crate::protocol::chat::ChatRequest::from_json(&chat).unwrap_err();
            assert_eq!(err.param, param, "chat {field}");
        }
        let text =
            json!({"prompt": "hi", "response_format": {"type": "text"}, "guided_json": null});
        assert!(CompletionRequest::from_json(&text).is_ok());
        // JSON output, in each spelling; a schema may come as its JSON text
        for (field, value) in [
            ("response_format", json!({"type": "json_object"})),
            ("guided_json", json!({"type": "object"})),
            ("guided_json", json!("{\"type\": \"object\"}")),
            ("json_schema", json!("{\"type\": \"object\"}")),
            ("structured_outputs", json!({"json": {"type": "object"}})),
            (
                "structured_outputs",
                json!({"json_object": true, "disable_fallback": true}),
            ),
            ("guided_choice", json!(["a", "b"])),
            ("structured_outputs", json!({"choice": ["a", "b"]})),
            ("guided_regex", json!("a|b")),
            ("regex", json!("a|b")),
            ("structured_outputs", json!({"regex": "a|b"})),
            ("guided_grammar", json!("root ::= \"a\" | \"b\"")),
            ("ebnf", json!("root ::= \"a\" | \"b\"")),
            (
                "structured_outputs",
                json!({"grammar": "root ::= \"a\" | \"b\""}),
            ),
        ] {
            let req = CompletionRequest::from_json(&json!({"prompt": "hi", field: value})).unwrap();
            let json = req.sampling.output_constraint.expect("json output");
            if json.ebnf.is_some() {
                assert_eq!(
                    json.ebnf.as_deref(),
                    Some("root ::= \"a\" | \"b\""),
                    "{field}"
                );
            } else if json.regex.is_some() {
                assert_eq!(json.regex.as_deref(), Some("a|b"), "{field}");
            } else if json.choices.is_some() {
                assert_eq!(json.choices, Some(vec!["a".to_string(), "b".into()]));
                assert_eq!(json.schema, None);
            } else if field == "response_format" || value.get("json_object").is_some() {
                assert_eq!(
                    json,
                    crate::protocol::OutputConstraint::default(),
                    "{field}"
                );
            } else {
                assert_eq!(
                    json.schema.as_deref(),
                    Some(r#"{"type":"object"}"#),
                    "{field}"
                );
            }
        }
    }

    #[test]
    fn a_structural_tag_is_taken_in_each_spelling_and_refused_where_it_cannot_be_kept() {
        let tag = json!({"structures": [{"begin": "<f=a>", "schema": {"type": "object"},
                                         "end": "</f>"}], "triggers": ["<f="]});
        let mut format = tag.clone();
        format["type"] = json!("structural_tag");
        for (field, value) in [
            ("response_format", format.clone()),
            ("structural_tag", json!(tag.to_string())),
            (
                "structured_outputs",
                json!({"structural_tag": tag.to_string()}),
            ),
        ] {
            let req = CompletionRequest::from_json(&json!({"prompt": "hi", field: value}))
                .unwrap_or_else(|e| panic!("{field}: {e}"));
            let constraint = req.sampling.output_constraint.expect("a constraint");
            let sent: Value = serde_json::from_str(&constraint.structural_tag.unwrap()).unwrap();
            assert_eq!(sent["triggers"], json!(["<f="]), "{field}");
            assert_eq!(constraint.schema, None);
        }
        format["triggers"] = json!(["<g="]);
        let err = CompletionRequest::from_json(&json!({"prompt": "hi", "response_format": format}))
            .unwrap_err();
        assert_eq!(err.param, "response_format");
        assert!(
            err.message.contains("exactly one trigger"),
            "{}",
            err.message
        );
        let err = CompletionRequest::from_json(&json!({"prompt": "hi", "structural_tag": "{x"}))
            .unwrap_err();
        assert_eq!(err.param, "structural_tag");
    }

    #[test]
    fn max_tokens_zero_is_a_scoring_request_with_echo_only() {
        let req = |body: Value| CompletionRequest::from_json(&body);
        let score = req(json!({"prompt": "hi", "echo": true, "logprobs": 1, "max_tokens": 0}))
            .expect("valid");
        assert!(score.score_only);
        assert_eq!(score.sampling.max_new_tokens, Some(1));
        let plain = req(json!({"prompt": "hi", "echo": true, "max_tokens": 3})).expect("valid");
        assert!(!plain.score_only);
        let err = req(json!({"prompt": "hi", "max_tokens": 0})).unwrap_err();
        assert_eq!(err.param, "max_tokens");
        let err = req(json!({"prompt": "hi", "echo": true, "max_tokens": 0, "min_tokens": 1}))
            .unwrap_err();
        assert_eq!(err.param, "min_tokens");
    }

    #[test]
    fn only_an_echo_with_logprobs_or_prompt_logprobs_scores_the_prompt() {
        let prompt_logprobs = |body: Value| {
            CompletionRequest::from_json(&body)
                .expect("valid")
                .sampling
                .score_prompt
        };
        let echo = json!({"prompt": "hi", "echo": true, "logprobs": 2});
        assert_eq!(prompt_logprobs(echo), Some(2));
        assert_eq!(prompt_logprobs(json!({"prompt": "hi", "echo": true})), None);
        assert_eq!(
            prompt_logprobs(json!({"prompt": "hi", "logprobs": 1})),
            None
        );
        let echo_off = json!({"prompt": "hi", "echo": false, "logprobs": 0});
        assert_eq!(prompt_logprobs(echo_off), None);
        let listed = json!({"prompt": "hi", "prompt_logprobs": 0});
        assert_eq!(prompt_logprobs(listed), Some(0));
        // Both: the larger top k is scored, each part of the answer takes its own.
        let both = json!({"prompt": "hi", "echo": true, "logprobs": 3, "prompt_logprobs": 1});
        assert_eq!(prompt_logprobs(both.clone()), Some(3));
        let req = CompletionRequest::from_json(&both).expect("valid");
        assert_eq!(
            (req.sampling.logprobs, req.sampling.prompt_logprobs),
            (3, Some(1))
        );
        let both = json!({"prompt": "hi", "echo": true, "logprobs": 0, "prompt_logprobs": 4});
        assert_eq!(prompt_logprobs(both), Some(4));
        let err = CompletionRequest::from_json(&json!({"prompt": "hi", "prompt_logprobs": 21}))
            .unwrap_err();
        assert_eq!(err.param, "prompt_logprobs");
    }
}
