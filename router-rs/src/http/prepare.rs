//! From a validated request to wire requests: chat rendering, tokenization (on the blocking pool),
//! length limits, model sampling defaults, and the per-choice pipelines.

use std::sync::Arc;

use serde_json::Value;

use super::prompt::{below_vocab, encode_prompt, total_len_limit, PromptUse};
use super::{ApiError, AppState};
use crate::detokenize::Detokenizer;
use crate::dispatch::WorkerInfo;
use crate::grammar::{self, ToolCallSpec};
use crate::parsers::glm47_name::CALL_OPEN;
use crate::parsers::{Glm45ReasoningParser, Glm47ToolParser};
use crate::protocol::chat::{ChatRequest, ToolChoice};
use crate::protocol::sampling::SamplingParams;
use crate::protocol::ValidationError;
use crate::state::Pipeline;
use crate::stop::StopMatcher;
use crate::template::continued_end;
use crate::wire;

/// A rendered and tokenized chat prompt.
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// The prompt leaves the model inside `<think>`.
    pub in_reasoning: bool,
    /// The opened call the tool parser starts from (`<tool_call>` or `<tool_call>NAME`) when
    /// `tool_choice` forces one.
    pub tool_prefix: Option<String>,
}

/// Refuses a request of more sequences (prompts x `n`) than the worker's waiting queue holds:
/// it could never be queued whole, so waiting (a 429) would not help.
pub fn check_sequences(worker: &WorkerInfo, sequences: usize) -> Result<(), ApiError> {
    let queue = worker.max_waiting_requests as usize;
    if queue > 0 && sequences > queue {
        let msg = format!(
            "the request needs {sequences} sequences (prompts x n); the server queues at most {queue}"
        );
        return Err(ValidationError::new("n", msg).into());
    }
    Ok(())
}

/// The worker that will answer, or 503.
pub fn ready_worker(state: &AppState) -> Result<WorkerInfo, ApiError> {
    state
        .dispatcher
        .ready_worker()
        .ok_or(ApiError::NoWorkerReady)
}

/// Renders the chat template and tokenizes the prompt on the blocking pool.
///
/// A `tool_choice` of `required` or a named function is enforced in the prompt when the tool
/// parser is on: the rendered text gets `<tool_call>` (or `<tool_call>NAME`) appended, so the
/// model can only continue the call, and the tool parser starts from that prefix. When the
/// generation prompt ends inside reasoning (`<think>`, thinking on), `</think>` is appended first:
/// reasoning is skipped for a forced call, and the reasoning parser starts outside reasoning.
/// With `tool_choice` none the request carries no tools, so the template renders none and no
/// call is parsed. With `continue_final_message` the prompt ends inside the last (assistant)
/// message, after its text, or after its reasoning when it has none (the reasoning parser then
/// starts inside reasoning).
pub async fn chat_prompt(
    state: &Arc<AppState>,
    req: &ChatRequest,
    purpose: PromptUse,
) -> Result<ChatPrompt, ApiError> {
    let state = state.clone();
    let messages = req.messages.clone();
    let tools = (!req.tools.is_empty()).then(|| Value::Array(req.tools.clone()));
    let kwargs = req.template_kwargs.clone();
    let (add_generation_prompt, continued) =
        (req.add_generation_prompt, req.continue_final_message);
    let tool_prefix = forced_call(req);
    if tool_prefix.is_some() && state.options.tool_call_parser.is_none() {
        // Without the parser the call could neither be forced nor returned as a call.
        return Err(ValidationError::new(
            "tool_choice",
            "tool_choice required or a named function needs the server started with \
             --tool-call-parser glm47",
        )
        .into());
    }
    tokio::task::spawn_blocking(move || {
        let mut text =
            state
                .template
                .render(&messages, tools.as_ref(), add_generation_prompt, &kwargs)?;
        if continued {
            let list = messages.as_array().map_or(&[][..], Vec::as_slice);
            let (last, earlier) = list.split_last().unzip();
            // the messages before the last, rendered alike: the last one's text is after them
            let before = earlier
                .filter(|m| !m.is_empty())
                .and_then(|m| {
                    let earlier = Value::Array(m.to_vec());
                    state
                        .template
                        .render(&earlier, tools.as_ref(), false, &kwargs)
                        .ok()
                })
                .unwrap_or_default();
            let end = last
                .and_then(|m| continued_end(&text, &before, m))
                .ok_or_else(|| {
                    let msg = "the chat template did not write the last message's text, so it \
                           cannot be continued";
                    ValidationError::new("continue_final_message", msg)
                })?;
            text.truncate(end);
        }
        let mut in_reasoning = ends_in_reasoning(&text);
        if let Some(prefix) = &tool_prefix {
            if in_reasoning {
                // a generation prompt left at `<think>` becomes the template's turn without
                // reasoning (`</think>` alone); reasoning the prompt continues is closed
                if let Some(open) = text.strip_suffix(THINK_OPEN).map(str::len) {
                    text.truncate(open);
                }
                text.push_str(THINK_CLOSE);
                in_reasoning = false;
            }
            text.push_str(prefix);
        }
        let ids = encode_prompt(&state, &text, "messages", purpose)?;
        Ok(ChatPrompt {
            ids,
            in_reasoning,
            tool_prefix,
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Closes the reasoning a generation prompt left open, before a forced call.
const THINK_CLOSE: &str = "</think>";
/// What a generation prompt with thinking on ends with.
const THINK_OPEN: &str = "<think>";

/// The opened call that `tool_choice` forces, if any (`required`, or a function by name).
fn forced_call(req: &ChatRequest) -> Option<String> {
    if req.tools.is_empty() {
        return None;
    }
    match &req.tool_choice {
        ToolChoice::Required => Some("<tool_call>".to_owned()),
        ToolChoice::Named(name) => Some(format!("<tool_call>{name}")),
        ToolChoice::None | ToolChoice::Auto => None,
    }
}

/// True when the last think tag of `prompt` opens reasoning.
fn ends_in_reasoning(prompt: &str) -> bool {
    match (prompt.rfind("<think>"), prompt.rfind("</think>")) {
        (Some(open), Some(close)) => open > close,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The output budget for a prompt of `prompt_len` tokens: the requested one when it fits, all
/// that fits when none was requested. `param` names the prompt field in errors. Stop token ids
/// and `logit_bias` ids outside the worker's vocabulary are rejected here too, where the
/// worker's limits are known.
pub fn max_new_tokens(
    state: &AppState,
    worker: &WorkerInfo,
    prompt_len: usize,
    sampling: &SamplingParams,
    param: &str,
) -> Result<u32, ApiError> {
    let vocab = worker.vocab_size;
    // named as the request wrote them: `parameters.…` on /generate, `sampling_params.…` on SGLang's
    let within = sampling.max_new_tokens_param.rsplit_once('.');
    let named = |field: &str| within.map_or(field.to_owned(), |(at, _)| format!("{at}.{field}"));
    let stops = sampling.stop_token_ids.iter().copied();
    below_vocab(&named("stop_token_ids"), stops, vocab)?;
    let biased = sampling.logit_bias.iter().map(|&(id, _)| id);
    below_vocab(&named("logit_bias"), biased, vocab)?;
    let allowed = sampling.allowed_token_ids.iter().copied();
    below_vocab(&named("allowed_token_ids"), allowed, vocab)?;
    let (requested, max_param) = (sampling.max_new_tokens, sampling.max_new_tokens_param);
    let limit = total_len_limit(state, Some(worker));
    let prompt_len = u32::try_from(prompt_len).unwrap_or(u32::MAX);
    if prompt_len >= limit {
        let msg = format!(
            "This model's maximum context length is {limit} tokens. However, the prompt has \
             {prompt_len} tokens: at most {} fit with one output token (max_req_total_len).",
            limit.saturating_sub(1)
        );
        return Err(ValidationError::new(param, msg).into());
    }
    let room = limit - prompt_len;
    match requested {
        None => Ok(room),
        Some(n) if n <= room => Ok(n),
        Some(n) => Err(ValidationError::new(
            max_param,
            format!(
                "This model's maximum context length is {limit} tokens. However, you requested \
                 {} tokens ({prompt_len} in the prompt, {n} for the completion): {n} output \
                 tokens do not fit (max_req_total_len).",
                u64::from(prompt_len) + u64::from(n)
            ),
        )
        .into()),
    }
}

/// One wire request per choice (`seed + i` for choice `i` when a seed is given), with the model's
/// generation_config defaults filling what the client left out. Only the first choice has the
/// worker score the prompt: the others share its scores (`run::share_prompt_scores`).
pub fn wire_requests(
    state: &AppState,
    ids: &[u32],
    sampling: &SamplingParams,
    max_new_tokens: u32,
    n: u32,
) -> Vec<wire::Request> {
    let gen = &state.model.generation;
    let bad_words = bad_word_ids(state, &sampling.bad_words);
    (0..n)
        .map(|i| {
            let mut r = wire::Request::new(
                super::request_id::wire_prefix(),
                ids.to_vec(),
                max_new_tokens,
            );
            r.min_new_tokens = sampling.min_new_tokens.min(max_new_tokens);
            r.temperature = sampling
                .temperature
                .map(f64::from)
                .or(gen.temperature)
                .unwrap_or(1.0);
            r.top_p = sampling.top_p.map(f64::from).or(gen.top_p).unwrap_or(1.0);
            r.top_k = sampling
                .top_k
                .or(gen.top_k.and_then(|k| i32::try_from(k).ok()))
                .unwrap_or(-1);
            r.min_p = sampling.min_p.map_or(0.0, f64::from);
            r.presence_penalty = f64::from(sampling.presence_penalty);
            r.frequency_penalty = f64::from(sampling.frequency_penalty);
            r.repetition_penalty = sampling.repetition_penalty.map_or(1.0, f64::from);
            r.seed = sampling.seed.map(|s| s.wrapping_add(i64::from(i)));
            r.stop_token_ids = sampling.stop_token_ids.clone();
            r.ignore_eos = sampling.ignore_eos;
            r.logprobs = sampling.logprobs;
            r.prompt_logprobs = match sampling.score_prompt {
                Some(k) if i == 0 => k as i32,
                _ => -1,
            };
            r.logit_bias = sampling
                .logit_bias
                .iter()
                .map(|&(id, bias)| (id, f64::from(bias)))
                .collect();
            r.grammar = sampling.output_constraint.as_ref().map(|c| wire::Grammar {
                schema: c.schema.clone(),
                choices: c.choices.clone(),
                regex: c.regex.clone(),
                ebnf: c.ebnf.clone(),
                structural_tag: c.structural_tag.clone(),
                compact: c.compact,
                ..wire::Grammar::default()
            });
            r.priority = sampling.priority;
            r.cache_salt = sampling.cache_salt.clone();
            r.allowed_token_ids = sampling.allowed_token_ids.clone();
            r.bad_words = bad_words.clone();
            r
        })
        .collect()
}

/// The token sequences of `words` as vLLM bans them: each word (its leading spaces dropped) on
/// its own, and after a space where that tokenizes to as many tokens, the first one different
/// (the word within text).
fn bad_word_ids(state: &AppState, words: &[String]) -> Vec<Vec<u32>> {
    let encode = |text: &str| state.model.tokenizer.encode(text).unwrap_or_default();
    let mut out: Vec<Vec<u32>> = Vec::new();
    for word in words {
        let word = word.trim_start();
        let alone = encode(word);
        let spaced = encode(&format!(" {word}"));
        if spaced.len() == alone.len() && spaced.first() != alone.first() {
            out.push(spaced);
        }
        out.push(alone);
    }
    out.retain(|ids| !ids.is_empty());
    out.dedup();
    out
}

/// Where a chat prompt leaves the model inside reasoning, a JSON grammar applies from the token
/// after the one that closes it (`</think>`), as the reasoning is free text; and a
/// `thinking_budget` closes the reasoning after that many tokens (a 400 when `</think>` is not one
/// token of the vocabulary). A prompt outside reasoning has none to bound.
pub fn reasoning_bounds(
    state: &AppState,
    req: &ChatRequest,
    prompt: &ChatPrompt,
    reqs: &mut [wire::Request],
) -> Result<(), ApiError> {
    if !prompt.in_reasoning {
        return Ok(());
    }
    let close = state.model.tokenizer.token_to_id(THINK_CLOSE);
    for grammar in reqs.iter_mut().filter_map(|r| r.grammar.as_mut()) {
        grammar.start_after = close;
    }
    if let Some(tokens) = req.thinking_budget {
        let end_id = close.ok_or_else(|| {
            let msg = format!("the vocabulary has no {THINK_CLOSE} token to close reasoning with");
            ValidationError::new("thinking_budget", msg)
        })?;
        for r in reqs {
            r.reasoning_budget = Some(wire::ReasoningBudget { tokens, end_id });
        }
    }
    Ok(())
}

/// The grammar of a chat's tool calls, where it has one (grammar/tools.rs): with `tool_choice`
/// `required` or a named function, the rest of the forced call (and for `required` with
/// `parallel_tool_calls` the calls after it); with `tool_choice` auto and functions marked
/// `"strict": true` (and no JSON output asked), the calls the model opens itself, from its
/// `<tool_call>` on (after the reasoning a prompt opened), the strict functions' arguments
/// following their schemas. The worker masks every token that would leave it. Tools that give no
/// such grammar (a named function it cannot write) are a 400 on `tools`.
pub fn tool_call_grammar(
    state: &AppState,
    req: &ChatRequest,
    prompt: &ChatPrompt,
    reqs: &mut [wire::Request],
) -> Result<(), ApiError> {
    if state.options.tool_call_parser.is_none() {
        return Ok(());
    }
    let tokenizer = &state.model.tokenizer;
    let grammar = tool_call_wire_grammar(req, prompt.in_reasoning, |t| tokenizer.token_to_id(t))?;
    for r in reqs {
        r.grammar = grammar.clone().or(r.grammar.take());
    }
    Ok(())
}

/// `tool_call_grammar`'s wire grammar, if any, for a prompt that leaves the model inside
/// reasoning or not; `id_of` gives a tag's token id.
fn tool_call_wire_grammar(
    req: &ChatRequest,
    in_reasoning: bool,
    id_of: impl Fn(&str) -> Option<u32>,
) -> Result<Option<wire::Grammar>, ApiError> {
    if req.tools.is_empty() {
        return Ok(None);
    }
    let (function, open_id) = match &req.tool_choice {
        ToolChoice::Required => (None, None),
        ToolChoice::Named(name) => (Some(name.clone()), None),
        ToolChoice::Auto
            if req.sampling.output_constraint.is_none()
                && req.tools.iter().any(grammar::is_strict) =>
        {
            match id_of(CALL_OPEN) {
                Some(open) => (None, Some(open)),
                None => return Ok(None),
            }
        }
        ToolChoice::Auto | ToolChoice::None => return Ok(None),
    };
    let spec = ToolCallSpec {
        tools: req.tools.clone(),
        function,
        parallel: req.parallel_tool_calls,
        open_id,
    };
    grammar::tool_calls(&spec).map_err(|e| ValidationError::new("tools", e.to_string()))?;
    let text = serde_json::to_string(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let start_after = if open_id.is_some() && in_reasoning {
        id_of(THINK_CLOSE)
    } else {
        None
    };
    Ok(Some(wire::Grammar {
        tool_calls: Some(text),
        start_after,
        ..wire::Grammar::default()
    }))
}

/// A pipeline for one choice of a `prompt_len`-token prompt: detokenizer and stop strings, no
/// parsers.
pub fn plain_pipeline(state: &AppState, sampling: &SamplingParams, prompt_len: usize) -> Pipeline {
    let tokenizer = state.model.tokenizer.clone();
    let detok = Detokenizer::new(tokenizer.clone(), sampling.skip_special_tokens);
    let stop = StopMatcher::new(&sampling.stop).including_match(sampling.include_stop_str);
    let mut end_ids = Vec::new();
    if !sampling.include_stop_str {
        end_ids.extend_from_slice(tokenizer.eos_token_ids());
        end_ids.extend_from_slice(&sampling.stop_token_ids);
    }
    Pipeline::new(tokenizer, Box::new(detok), Box::new(stop))
        .with_prompt_tokens(u32::try_from(prompt_len).unwrap_or(u32::MAX))
        .with_stop_token_ids(&sampling.stop_token_ids)
        .with_min_tokens(sampling.min_new_tokens)
        .hiding_end_tokens(&end_ids)
}

/// A pipeline for one chat choice, with the parsers the server was started with.
pub fn chat_pipeline(state: &AppState, req: &ChatRequest, prompt: &ChatPrompt) -> Pipeline {
    let mut pipeline = plain_pipeline(state, &req.sampling, prompt.ids.len());
    if state.options.reasoning_parser.is_some() {
        pipeline = pipeline.with_reasoning(Glm45ReasoningParser::new(prompt.in_reasoning));
    }
    if state.options.tool_call_parser.is_some() && !req.tools.is_empty() {
        let prefix = prompt.tool_prefix.as_deref().unwrap_or("");
        pipeline = pipeline.with_tools(
            Glm47ToolParser::with_prefix(&req.tools, prefix),
            req.parallel_tool_calls,
        );
    }
    pipeline
}

#[cfg(test)]
#[path = "prepare_tests.rs"]
mod tests;

/// Submits `reqs` for the client of this request (its `X-Request-Id`, which `/abort_request`
/// may name).
pub fn submit(
    state: &AppState,
    reqs: Vec<wire::Request>,
) -> Result<Vec<crate::dispatch::RequestHandle>, crate::dispatch::DispatchError> {
    let client = super::request_id::given_id();
    state.dispatcher.submit_many_for(reqs, client.as_deref())
}

/// Submits the one choice of a chat request (the Responses and Messages APIs), its grammars
/// attached, and returns its deltas through the chat pipeline.
pub fn submit_one_choice(
    state: &Arc<AppState>,
    chat: &ChatRequest,
    prompt: &ChatPrompt,
    max_new: u32,
) -> Result<super::run::ChoiceStream, ApiError> {
    let mut reqs = wire_requests(state, &prompt.ids, &chat.sampling, max_new, 1);
    reasoning_bounds(state, chat, prompt, &mut reqs)?;
    tool_call_grammar(state, chat, prompt, &mut reqs)?;
    let handles = submit(state, reqs)?;
    let pipeline = chat_pipeline(state, chat, prompt);
    Ok(super::run::drive(handles, vec![pipeline], 0))
}
