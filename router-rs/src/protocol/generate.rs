//! `POST /generate` and `POST /generate_stream` (LightLLM / TGI shapes).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::completions::PromptInput;
use super::sampling::{allowed_token_ids, PromptCut, SamplingParams, StopField};
use super::{from_value, output_constraint, OutputConstraint, ValidationError};

/// Output budget when `max_new_tokens` is not given (LightLLM's default).
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 16;

/// A validated `/generate` request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub input: PromptInput,
    /// Return per-token details in the answer.
    pub return_details: bool,
    pub sampling: SamplingParams,
}

#[derive(Debug, Default, Deserialize)]
struct RawParameters {
    max_new_tokens: Option<u32>,
    min_new_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    do_sample: Option<bool>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    stop_sequences: Option<StopField>,
    ignore_eos: Option<bool>,
    seed: Option<i64>,
    return_details: Option<bool>,
    skip_special_tokens: Option<bool>,
    /// TGI's constrained decoding: `{"type": "json" | "json_schema" | "regex", "value": ...}`.
    grammar: Option<Value>,
    /// LightLLM's constrained decoding: a regular expression, an EBNF grammar, a JSON Schema.
    regular_constraint: Option<Value>,
    guided_grammar: Option<Value>,
    guided_json: Option<Value>,
    allowed_token_ids: Option<Vec<u32>>,
    /// TGI's `truncate`: the prompt is cut to its last this many tokens.
    truncate: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RawGenerate {
    inputs: Value,
    parameters: Option<RawParameters>,
}

impl GenerateRequest {
    /// Reads and validates a `/generate` body. As in LightLLM, sampling is greedy unless
    /// `do_sample` is true.
    pub fn from_json(body: &Value) -> Result<Self, ValidationError> {
        let raw: RawGenerate = from_value(body)?;
        let mut inputs = PromptInput::list_from(&raw.inputs, "inputs")?;
        if inputs.len() != 1 {
            return Err(ValidationError::new(
                "inputs",
                "inputs must be one string or one id list",
            ));
        }
        let p = raw.parameters.unwrap_or_default();
        let max_new_tokens = p.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS);
        if max_new_tokens == 0 {
            return Err(ValidationError::new(
                "parameters.max_new_tokens",
                "max_new_tokens must be at least 1",
            ));
        }
        let min_new_tokens = p.min_new_tokens.unwrap_or(0);
        if min_new_tokens > max_new_tokens {
            return Err(ValidationError::new(
                "parameters.min_new_tokens",
                format!("min_new_tokens ({min_new_tokens}) must not exceed max_new_tokens ({max_new_tokens})"),
            ));
        }
        let constraint = constraint(&p)?;
        let greedy = !p.do_sample.unwrap_or(false);
        let mut sampling = SamplingParams {
            max_new_tokens: Some(max_new_tokens),
            max_new_tokens_param: "parameters.max_new_tokens",
            min_new_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            presence_penalty: p.presence_penalty.unwrap_or(0.0),
            frequency_penalty: p.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: p.repetition_penalty,
            seed: p.seed,
            stop: p
                .stop_sequences
                .map(StopField::into_vec)
                .unwrap_or_default(),
            stop_token_ids: Vec::new(),
            ignore_eos: p.ignore_eos.unwrap_or(false),
            logprobs: 0,
            prompt_logprobs: None,
            score_prompt: None,
            skip_special_tokens: p.skip_special_tokens.unwrap_or(true),
            include_stop_str: true, // as LightLLM and TGI: the text ends with the stop
            logit_bias: Vec::new(),
            output_constraint: constraint,
            truncate_prompt: match p.truncate {
                Some(0) => {
                    let msg = "truncate must be a positive token count";
                    return Err(ValidationError::new("parameters.truncate", msg));
                }
                k => k.map(PromptCut::Last),
            },
            tokens_as_ids: false,
            return_token_ids: false,
            priority: 0,
            allowed_token_ids: allowed_token_ids(p.allowed_token_ids).map_err(at_parameters)?,
            bad_words: Vec::new(),
            cache_salt: None,
        };
        sampling.check().map_err(at_parameters)?;
        if greedy {
            // Checked as given first: an invalid temperature is refused even when unused.
            sampling.temperature = Some(0.0);
        }
        Ok(Self {
            input: inputs.remove(0),
            return_details: p.return_details.unwrap_or(false),
            sampling,
        })
    }
}

fn at_parameters(e: ValidationError) -> ValidationError {
    ValidationError::new(format!("parameters.{}", e.param), e.message)
}

/// The constrained output `p` asks for (one way at a time), read by the chat reader's rules under
/// the names those rules know: TGI's `grammar` as a schema or a pattern, LightLLM's
/// `regular_constraint` as a pattern, `guided_grammar` and `guided_json` as they are. Errors
/// name the parameter as the request gave it.
fn constraint(p: &RawParameters) -> Result<Option<OutputConstraint>, ValidationError> {
    let set = |v: &Option<Value>| v.clone().filter(|v| !v.is_null());
    // (the request's name, the reader's name, the value)
    let mut given: Vec<(&str, &str, Value)> = [
        ("regular_constraint", "regex", set(&p.regular_constraint)),
        ("guided_grammar", "guided_grammar", set(&p.guided_grammar)),
        ("guided_json", "guided_json", set(&p.guided_json)),
    ]
    .into_iter()
    .filter_map(|(name, key, v)| v.map(|v| (name, key, v)))
    .collect();
    if let Some(grammar) = set(&p.grammar) {
        given.push(tgi_grammar(&grammar)?);
    }
    let (name, key, value) = match given.len() {
        0 => return Ok(None),
        1 => given.remove(0),
        _ => {
            let names: Vec<_> = given.iter().map(|g| g.0).collect();
            let msg = format!("one constraint at a time, got {}", names.join(" and "));
            return Err(at_parameters(ValidationError::new(names[1], msg)));
        }
    };
    let body = serde_json::json!({ key: value });
    output_constraint(&body).map_err(|e| {
        let rest = e.param.strip_prefix(key).unwrap_or_default();
        at_parameters(ValidationError::new(format!("{name}{rest}"), e.message))
    })
}

/// TGI's `grammar` as (its name, the reader's name, the value): `{"type": "json" (or
/// "json_object"), "value": schema}`, `{"type": "json_schema", "value": {"name"?, "schema"}}`,
/// `{"type": "regex", "value": pattern}`; a schema as an object or its JSON text.
fn tgi_grammar(grammar: &Value) -> Result<(&'static str, &'static str, Value), ValidationError> {
    let value = grammar.get("value").filter(|v| !v.is_null());
    let kind = grammar.get("type").and_then(Value::as_str);
    let need = |param: &str, what: &str| {
        at_parameters(ValidationError::new(
            format!("grammar.{param}"),
            format!("grammar {what}"),
        ))
    };
    match (kind, value) {
        (Some("json" | "json_object" | "json_schema" | "regex"), None) => {
            Err(need("value", "needs a value"))
        }
        (Some("json" | "json_object"), Some(schema)) => {
            Ok(("grammar.value", "json_schema", schema.clone()))
        }
        (Some("json_schema"), Some(config)) => match config.get("schema") {
            Some(schema) if !schema.is_null() => {
                Ok(("grammar.value.schema", "json_schema", schema.clone()))
            }
            _ => Err(need("value.schema", "json_schema needs value.schema")),
        },
        (Some("regex"), Some(pattern)) => Ok(("grammar.value", "guided_regex", pattern.clone())),
        _ => Err(need(
            "type",
            "type is json, json_object, json_schema or regex",
        )),
    }
}

/// One generated token as `/generate_stream` and `details` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerateToken {
    pub id: u32,
    pub text: String,
    pub logprob: Option<f32>,
    pub special: bool,
    pub count_output_tokens: u32,
    pub prompt_tokens: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateDetails {
    pub tokens: Vec<GenerateToken>,
    pub cached_tokens: u32,
}

/// The body of a `/generate` answer (TGI's string `generated_text`; LightLLM itself wraps it in a
/// one-element list).
#[derive(Debug, Clone, Serialize)]
pub struct GenerateResponse {
    pub generated_text: String,
    pub count_output_tokens: u32,
    pub finish_reason: Option<&'static str>,
    pub prompt_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<GenerateDetails>,
}

/// One `/generate_stream` event; the last one has `finished` and the whole `generated_text`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateStreamEvent {
    pub token: GenerateToken,
    pub generated_text: Option<String>,
    pub finished: bool,
    pub finish_reason: Option<&'static str>,
    pub details: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generate_is_greedy_unless_do_sample() {
        let greedy =
            GenerateRequest::from_json(&json!({"inputs": "x", "parameters": {"temperature": 0.7}}))
                .unwrap();
        assert_eq!(greedy.sampling.temperature, Some(0.0));
        let body = json!({"inputs": [5, 6], "parameters": {"do_sample": true, "temperature": 0.7}});
        let sampled = GenerateRequest::from_json(&body).unwrap();
        assert_eq!(sampled.sampling.temperature, Some(0.7));
        assert_eq!(sampled.input, PromptInput::Ids(vec![5, 6]));
    }

    #[test]
    fn invalid_parameters_are_refused_even_when_greedy_leaves_them_unused() {
        for (parameters, param) in [
            (json!({"temperature": -1.0}), "parameters.temperature"),
            (json!({"top_p": 0.0}), "parameters.top_p"),
            (
                json!({"max_new_tokens": 4, "min_new_tokens": 50}),
                "parameters.min_new_tokens",
            ),
            (
                json!({"grammar": {"type": "xml", "value": "<a/>"}}),
                "parameters.grammar.type",
            ),
            (
                json!({"grammar": {"type": "xml"}}),
                "parameters.grammar.type",
            ),
            (
                json!({"grammar": {"type": "json_schema", "value": {"name": "a"}}}),
                "parameters.grammar.value.schema",
            ),
            (
                json!({"grammar": {"type": "json_schema", "value": {"schema": {"not": {}}}}}),
                "parameters.grammar.value.schema",
            ),
            (
                json!({"regular_constraint": "a", "grammar": {"type": "json", "value": {}}}),
                "parameters.grammar.value",
            ),
            (
                json!({"guided_grammar": "root ::= ("}),
                "parameters.guided_grammar",
            ),
            (
                json!({"grammar": {"type": "regex"}}),
                "parameters.grammar.value",
            ),
            (
                json!({"grammar": {"type": "json", "value": "{not json"}}),
                "parameters.grammar.value",
            ),
            (
                json!({"grammar": {"type": "json", "value": {"type": "object", "not": {}}}}),
                "parameters.grammar.value",
            ),
            (
                json!({"regular_constraint": 7}),
                "parameters.regular_constraint",
            ),
            (
                json!({"allowed_token_ids": []}),
                "parameters.allowed_token_ids",
            ),
        ] {
            let body = json!({"inputs": "x", "parameters": parameters});
            assert_eq!(GenerateRequest::from_json(&body).unwrap_err().param, param);
        }
    }

    #[test]
    fn tgi_and_lightllm_constraints_are_read() {
        let read = |parameters: Value| {
            let body = json!({"inputs": "x", "parameters": parameters});
            GenerateRequest::from_json(&body).unwrap().sampling
        };
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let text = Value::String(schema.to_string());
        for grammar in [
            json!({"type": "json", "value": schema}),
            json!({"type": "json_object", "value": text}),
            json!({"type": "json_schema", "value": {"name": "a", "schema": schema}}),
        ] {
            let s = read(json!({ "grammar": grammar }));
            let c = s.output_constraint.expect("a schema");
            assert_eq!(
                serde_json::from_str::<Value>(c.schema.as_deref().unwrap()).unwrap(),
                schema
            );
        }
        let s = read(json!({"grammar": {"type": "regex", "value": "[0-9]+"}}));
        assert_eq!(
            s.output_constraint.unwrap().regex.as_deref(),
            Some("[0-9]+")
        );
        let s = read(json!({"regular_constraint": "a|b", "allowed_token_ids": [7, 3, 7]}));
        assert_eq!(s.output_constraint.unwrap().regex.as_deref(), Some("a|b"));
        assert_eq!(s.allowed_token_ids, vec![3, 7]);
        let s = read(json!({"guided_grammar": "root ::= \"yes\""}));
        assert!(s.output_constraint.unwrap().ebnf.is_some());
        let s = read(json!({"guided_json": schema}));
        assert!(s.output_constraint.unwrap().schema.is_some());
        let two =
            json!({"inputs": "x", "parameters": {"regular_constraint": "a", "guided_json": {}}});
        assert!(
            GenerateRequest::from_json(&two).is_err(),
            "one way at a time"
        );
    }

    #[test]
    fn parameter_errors_carry_the_parameters_prefix() {
        let body = json!({"inputs": "x", "parameters": {"do_sample": true, "top_p": 3.0}});
        assert_eq!(
            GenerateRequest::from_json(&body).unwrap_err().param,
            "parameters.top_p"
        );
        let body = json!({"inputs": "x", "parameters": {"max_new_tokens": "many"}});
        assert_eq!(
            GenerateRequest::from_json(&body).unwrap_err().param,
            "parameters.max_new_tokens"
        );
    }
}
