//! `POST /v1/completions`.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};

use super::prepare::{
    max_new_tokens, plain_pipeline, prompt_ids, prompt_text, ready_worker, wire_requests,
};
use super::run::{collect, drive, merge, start, ChoiceDelta, ChoiceStream};
use super::{logprobs, sse, ApiError, AppState, JsonBody, Meta};
use crate::protocol::completions::{
    Completion, CompletionChoice, CompletionRequest, DEFAULT_MAX_TOKENS,
};
use crate::protocol::openai::Usage;
use crate::state::{Collected, Finish};

pub async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = CompletionRequest::from_json(&body)?;
    let worker = ready_worker(&state)?;
    let prompts = prompt_ids(&state, req.prompts.clone(), "prompt").await?;
    let requested = req.sampling.max_new_tokens;
    let budgets = prompts
        .iter()
        .map(|ids| {
            let room = max_new_tokens(&state, &worker, ids.len(), &req.sampling, "prompt")?;
            Ok(requested.map_or(room.min(DEFAULT_MAX_TOKENS), |_| room))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut echoes = Vec::new();
    if req.echo {
        for ids in &prompts {
            echoes.push(prompt_text(&state, ids.clone()).await?);
        }
    }
    let mut streams = Vec::with_capacity(prompts.len());
    for ((ids, budget), p) in prompts.iter().zip(budgets).zip(0u32..) {
        let handles = state.dispatcher.submit_many(wire_requests(
            &state,
            ids,
            &req.sampling,
            budget,
            req.n,
        ))?;
        let pipelines = (0..req.n)
            .map(|_| plain_pipeline(&state, &req.sampling, ids.len()))
            .collect();
        streams.push(drive(handles, pipelines, p * req.n));
    }
    let stream = merge(streams);
    // Choice `i` answers prompt `i / n`; its text starts with that prompt under `echo`.
    let echo: Vec<String> = (0..prompts.len() * req.n as usize)
        .map(|i| echoes.get(i / req.n as usize).cloned().unwrap_or_default())
        .collect();
    let prompt_tokens: u32 = prompts.iter().map(|p| p.len() as u32).sum();
    let meta = Meta::new(&state, "cmpl-");
    if req.stream {
        let stream = start(stream).await?;
        Ok(sse::respond(
            chunks(state, meta, &req, echo, prompt_tokens, stream),
            true,
        ))
    } else {
        let collected = collect(stream, echo.len()).await?;
        let answer = answer(&state, &meta, &req, collected, echo, prompt_tokens);
        Ok(Json(answer).into_response())
    }
}

/// The non-streaming answer: choice `i` is `echo[i]` followed by its generated text.
fn answer(
    state: &AppState,
    meta: &Meta,
    req: &CompletionRequest,
    collected: Vec<Collected>,
    echo: Vec<String>,
    prompt_tokens: u32,
) -> Completion {
    let mut usage = Usage::new(prompt_tokens, 0, 0);
    let choices = collected
        .into_iter()
        .zip(echo)
        .zip(0u32..)
        .map(|((c, echo), index)| {
            if let Some(f) = c.finish {
                let cached = (index % req.n == 0).then_some(f.cached_tokens);
                usage = add_choice(&usage, &f, cached);
            }
            let mut offset = echo.len();
            let logprobs = (req.sampling.logprobs >= 0)
                .then(|| logprobs::completion(&state.model.tokenizer, &c.tokens, &mut offset));
            CompletionChoice {
                index,
                text: echo + &c.content,
                logprobs,
                finish_reason: c.finish.map(|f| f.reason),
            }
        })
        .collect();
    completion(meta, choices, Some(Some(usage)))
}

/// `usage` plus one finished choice (`cached` only for the first choice of each prompt).
fn add_choice(usage: &Usage, f: &Finish, cached: Option<u32>) -> Usage {
    let cached_total = usage.prompt_tokens_details.cached_tokens + cached.unwrap_or(0);
    Usage {
        completion_tokens_details: usage.completion_tokens_details.clone(),
        ..Usage::new(
            usage.prompt_tokens,
            usage.completion_tokens + f.completion_tokens,
            cached_total,
        )
    }
    .with_accepted_drafts(f.accepted_draft_tokens)
}

/// Streamed chunks: the echoed prompt first (under `echo`), a chunk per delta, then the usage.
fn chunks(
    state: Arc<AppState>,
    meta: Meta,
    req: &CompletionRequest,
    echo: Vec<String>,
    prompt_tokens: u32,
    stream: ChoiceStream,
) -> sse::JsonEvents {
    let include_usage = req.include_usage;
    let want_logprobs = req.sampling.logprobs >= 0;
    let usage_field = include_usage.then_some(None);
    let n = req.n;
    let heads: Vec<_> = echo
        .iter()
        .zip(0u32..)
        .filter(|(text, _)| !text.is_empty())
        .map(|(text, index)| {
            let choice = CompletionChoice {
                index,
                text: text.clone(),
                logprobs: None,
                finish_reason: None,
            };
            sse::json(&completion(&meta, vec![choice], usage_field.clone()))
        })
        .collect();
    let mut offsets: Vec<usize> = echo.iter().map(String::len).collect();
    let usage = Arc::new(Mutex::new(Usage::new(prompt_tokens, 0, 0)));
    let (tail_meta, tail_usage) = (meta.clone(), usage.clone());
    let body = stream.map(move |item| {
        let ChoiceDelta { index, delta } = item?;
        if let Some(f) = delta.finish {
            let mut u = usage.lock().unwrap_or_else(|e| e.into_inner());
            *u = add_choice(&u, &f, (index % n == 0).then_some(f.cached_tokens));
        }
        let logprobs = match offsets.get_mut(index as usize) {
            Some(offset) if want_logprobs => Some(logprobs::completion(
                &state.model.tokenizer,
                &delta.tokens,
                offset,
            )),
            _ => None,
        };
        let finish_reason = delta.finish.map(|f| f.reason);
        let choice = CompletionChoice {
            index,
            text: delta.content,
            logprobs,
            finish_reason,
        };
        sse::json(&completion(&meta, vec![choice], usage_field.clone()))
    });
    let tail = stream::once(async move {
        let usage = tail_usage.lock().unwrap_or_else(|e| e.into_inner()).clone();
        sse::json(&completion(&tail_meta, Vec::new(), Some(Some(usage))))
    })
    .filter(move |_| futures::future::ready(include_usage));
    stream::iter(heads).chain(body).chain(tail).boxed()
}

fn completion(
    meta: &Meta,
    choices: Vec<CompletionChoice>,
    usage: Option<Option<Usage>>,
) -> Completion {
    Completion {
        id: meta.id.clone(),
        object: "text_completion",
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage,
    }
}
