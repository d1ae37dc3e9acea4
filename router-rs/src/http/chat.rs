//! `POST /v1/chat/completions`.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};

use super::logprobs::{self, Names};
use super::prepare::{
    chat_pipeline, chat_prompt, max_new_tokens, ready_worker, reasoning_bounds, submit,
    tool_call_grammar, wire_requests,
};
use super::prompt::PromptUse;
use super::run::{collect, drive, start, ChoiceDelta, ChoiceStream, RunningUsage};
use super::{sse, ApiError, AppState, JsonBody, Meta};
use crate::protocol::chat::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatDelta, ChatMessage, ChatRequest,
};
use crate::protocol::openai::{FunctionCall, ToolCall, Usage};
use crate::state::{Collected, Finish, TokenInfo};

pub async fn chat(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = ChatRequest::from_json(&body)?;
    super::request_id::adopt(&body)?;
    let worker = ready_worker(&state)?;
    let prompt = chat_prompt(&state, &req, PromptUse::generating(&req.sampling)).await?;
    let max_new = max_new_tokens(&state, &worker, prompt.ids.len(), &req.sampling, "messages")?;
    let mut reqs = wire_requests(&state, &prompt.ids, &req.sampling, max_new, req.n);
    reasoning_bounds(&state, &req, &prompt, &mut reqs)?;
    tool_call_grammar(&state, &req, &prompt, &mut reqs)?;
    let handles = submit(&state, reqs)?;
    let pipelines = (0..req.n)
        .map(|_| chat_pipeline(&state, &req, &prompt))
        .collect();
    let stream = drive(handles, pipelines, 0);
    let meta = Meta::new(&state, "chatcmpl-");
    if req.stream {
        let stream = start(stream).await?;
        Ok(sse::respond(
            chunks(state, meta, &req, &prompt.ids, stream),
            true,
        ))
    } else {
        let collected = collect(stream, req.n as usize).await?;
        // Token texts for logprobs are decoded one token at a time: off the async threads.
        let answer =
            tokio::task::spawn_blocking(move || answer(&state, meta, &req, &prompt.ids, collected))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Json(answer).into_response())
    }
}

/// The non-streaming answer; `prompt_logprobs` (refused on streams) lists the scores of
/// `prompt_ids` that the first choice brought (every choice's prompt is scored alike).
fn answer(
    state: &AppState,
    meta: Meta,
    req: &ChatRequest,
    prompt_ids: &[u32],
    collected: Vec<Collected>,
) -> ChatCompletion {
    let names = Names::new(&state.model.tokenizer, req.sampling.tokens_as_ids);
    let prompt_logprobs = req.sampling.prompt_logprobs.map(|k| {
        let scores = collected.iter().find_map(|c| c.prompt_logprobs.as_ref());
        logprobs::prompt_list(names, prompt_ids, scores, k as usize)
    });
    let mut usage = Usage::default();
    let choices = collected
        .into_iter()
        .zip(0u32..)
        .map(|(c, index)| {
            if let Some(f) = &c.finish {
                usage = add_choice(&usage, f);
            }
            let tool_calls: Vec<ToolCall> = c
                .tool_calls
                .into_iter()
                .map(|(id, name, arguments)| ToolCall {
                    id,
                    kind: "function",
                    function: FunctionCall { name, arguments },
                })
                .collect();
            // Null when the message is all tool calls or all reasoning (as vLLM writes it).
            let only_else = !tool_calls.is_empty() || !c.reasoning.is_empty();
            let text = match &req.echo {
                Some(lead) => format!("{lead}{}", c.content),
                None => c.content,
            };
            let content = (!text.is_empty() || !only_else).then_some(text);
            let logprobs = (req.sampling.logprobs >= 0).then(|| logprobs::chat(names, &c.tokens));
            let token_ids = returned_ids(req, &c.tokens);
            ChatChoice {
                index,
                message: ChatMessage {
                    role: "assistant",
                    content,
                    reasoning_content: (!c.reasoning.is_empty()).then_some(c.reasoning),
                    tool_calls,
                },
                logprobs,
                finish_reason: c.finish.as_ref().map(Finish::chat_reason),
                stop_reason: c.finish.and_then(|f| f.stop_reason),
                token_ids,
            }
        })
        .collect();
    ChatCompletion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices,
        usage,
        prompt_logprobs,
        prompt_token_ids: req.sampling.return_token_ids.then(|| prompt_ids.to_vec()),
    }
}

/// The ids of `tokens` when the request asks for them (vLLM's `return_token_ids`).
fn returned_ids(req: &ChatRequest, tokens: &[TokenInfo]) -> Option<Vec<u32>> {
    req.sampling
        .return_token_ids
        .then(|| tokens.iter().map(|t| t.id).collect())
}

/// `usage` plus one finished choice (every choice of a chat request shares its prompt).
fn add_choice(usage: &Usage, f: &Finish) -> Usage {
    Usage {
        completion_tokens_details: usage.completion_tokens_details.clone(),
        ..Usage::new(
            f.prompt_tokens,
            usage.completion_tokens + f.completion_tokens,
            f.cached_tokens,
        )
    }
    .with_accepted_drafts(f.accepted_draft_tokens)
}

/// The chunks of a streamed answer: a role chunk per choice, a chunk per delta, then (with
/// `stream_options.include_usage`) a chunk with no choices and the usage.
fn chunks(
    state: Arc<AppState>,
    meta: Meta,
    req: &ChatRequest,
    prompt_ids: &[u32],
    stream: ChoiceStream,
) -> sse::JsonEvents {
    let prompt_tokens = prompt_ids.len() as u32;
    let want_ids = req.sampling.return_token_ids;
    let include_usage = req.include_usage;
    let want_logprobs = req.sampling.logprobs >= 0;
    let as_ids = req.sampling.tokens_as_ids;
    let usage_field = include_usage.then_some(None);
    let mut running = req
        .continuous_usage
        .then(|| RunningUsage::new(vec![prompt_tokens; req.n as usize]));
    let usage_of = |running: &Option<RunningUsage>, index: u32| match running {
        Some(r) => Some(Some(r.of(index))),
        None => usage_field.clone(),
    };
    let roles: Vec<_> = (0..req.n)
        .map(|index| {
            let delta = ChatDelta {
                role: Some("assistant"),
                content: Some(req.echo.clone().unwrap_or_default()),
                ..Default::default()
            };
            let choice = ChatChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: None,
                stop_reason: None,
                token_ids: want_ids.then(Vec::new),
            };
            let mut first = chunk(&meta, vec![choice], usage_of(&running, index));
            first.prompt_token_ids = want_ids.then(|| prompt_ids.to_vec());
            sse::json(&first)
        })
        .collect();
    let usage = Arc::new(Mutex::new(Usage::default()));
    let (tail_meta, tail_usage) = (meta.clone(), usage.clone());
    // Tokens held back by the parsers (a partial tag, a value still being read) add nothing to
    // send unless their logprobs were asked for.
    let body = stream.map(move |item| {
        let so_far = match (&mut running, &item) {
            (Some(r), Ok(ChoiceDelta { index, delta })) => {
                r.add(*index, delta);
                Some(Some(r.of(*index)))
            }
            _ => None,
        };
        (item, so_far)
    });
    let body = body.filter(move |(item, _)| {
        futures::future::ready(match item {
            Ok(ChoiceDelta { delta, .. }) => !delta.is_silent(want_logprobs || want_ids),
            Err(_) => true,
        })
    });
    let body = body.map(move |(item, so_far)| {
        let ChoiceDelta { index, delta } = item?;
        if let Some(f) = &delta.finish {
            let mut u = usage.lock().unwrap_or_else(|e| e.into_inner());
            *u = add_choice(&u, f);
        }
        let logprobs = want_logprobs
            .then(|| logprobs::chat(Names::new(&state.model.tokenizer, as_ids), &delta.tokens));
        let token_ids = want_ids.then(|| delta.tokens.iter().map(|t| t.id).collect());
        let choice = ChatChunkChoice {
            index,
            delta: ChatDelta {
                role: None,
                content: (!delta.content.is_empty()).then_some(delta.content),
                reasoning_content: (!delta.reasoning.is_empty()).then_some(delta.reasoning),
                tool_calls: delta.tool_calls,
            },
            logprobs,
            finish_reason: delta.finish.as_ref().map(Finish::chat_reason),
            stop_reason: delta.finish.and_then(|f| f.stop_reason),
            token_ids,
        };
        sse::json(&chunk(&meta, vec![choice], so_far.or(usage_field.clone())))
    });
    let tail = stream::once(async move {
        let usage = tail_usage.lock().unwrap_or_else(|e| e.into_inner()).clone();
        sse::json(&chunk(&tail_meta, Vec::new(), Some(Some(usage))))
    })
    .filter(move |_| futures::future::ready(include_usage));
    stream::iter(roles).chain(body).chain(tail).boxed()
}

fn chunk(meta: &Meta, choices: Vec<ChatChunkChoice>, usage: Option<Option<Usage>>) -> ChatChunk {
    ChatChunk {
        id: meta.id.clone(),
        object: "chat.completion.chunk",
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage,
        prompt_token_ids: None,
    }
}
