//! `POST /v1/completions`.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};

use super::prepare::{
    max_new_tokens, plain_pipeline, prompt_ids, prompt_pieces, prompt_text, ready_worker,
    wire_requests,
};
use super::run::{collect, drive, merge, start, ChoiceDelta, ChoiceStream};
use super::{logprobs, sse, ApiError, AppState, JsonBody, Meta};
use crate::protocol::completions::{
    Completion, CompletionChoice, CompletionRequest, DEFAULT_MAX_TOKENS,
};
use crate::protocol::openai::{CompletionLogprobs, FinishReason, Usage};
use crate::state::{Collected, Delta, Finish, PromptLogprobs, TokenInfo};
use crate::tokenizer::Tokenizer;

/// What a choice starts with under `echo`: the prompt's text and, when its logprobs are asked
/// for too, its ids and the text each adds (else both empty).
#[derive(Debug, Clone, Default)]
struct Echo {
    text: String,
    ids: Vec<u32>,
    pieces: Vec<String>,
}

impl Echo {
    /// The choice's logprobs: the echoed prompt's (when scored), then those of `tokens`.
    fn logprobs(
        &self,
        tokenizer: &Tokenizer,
        scores: Option<&PromptLogprobs>,
        tokens: &[TokenInfo],
        offset: &mut usize,
    ) -> CompletionLogprobs {
        logprobs::echoed_prompt(tokenizer, &self.ids, &self.pieces, scores, tokens, offset)
    }
}

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
            let echo = if req.sampling.prompt_logprobs.is_some() {
                let pieces = prompt_pieces(&state, ids.clone()).await?;
                Echo {
                    text: pieces.concat(),
                    ids: ids.clone(),
                    pieces,
                }
            } else {
                Echo {
                    text: prompt_text(&state, ids.clone()).await?,
                    ..Echo::default()
                }
            };
            echoes.push(echo);
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
    let mut stream = merge(streams);
    if req.score_only {
        stream = stream
            .map(|item| {
                item.map(|ChoiceDelta { index, delta }| ChoiceDelta {
                    index,
                    delta: prompt_only(delta),
                })
            })
            .boxed();
    }
    // Choice `i` answers prompt `i / n`; its text starts with that prompt under `echo`.
    let echo: Vec<Echo> = (0..prompts.len() * req.n as usize)
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
        // Token texts for logprobs are decoded one token at a time: off the async threads.
        let answer = tokio::task::spawn_blocking(move || {
            answer(&state, &meta, &req, collected, echo, prompt_tokens)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Json(answer).into_response())
    }
}

/// A delta of a `score_only` request: the token the worker had to sample is left out, and the
/// choice ends as `max_tokens: 0` asked (length, no completion tokens; an abort stays one).
fn prompt_only(mut delta: Delta) -> Delta {
    delta.content.clear();
    delta.tokens.clear();
    if let Some(f) = &mut delta.finish {
        if f.reason != FinishReason::Abort {
            f.reason = FinishReason::Length;
        }
        f.completion_tokens = 0;
        f.accepted_draft_tokens = 0;
    }
    delta
}

/// The non-streaming answer: choice `i` is `echo[i]` followed by its generated text.
fn answer(
    state: &AppState,
    meta: &Meta,
    req: &CompletionRequest,
    collected: Vec<Collected>,
    echo: Vec<Echo>,
    prompt_tokens: u32,
) -> Completion {
    let tokenizer = &state.model.tokenizer;
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
            let mut offset = 0;
            let scores = c.prompt_logprobs.as_ref();
            let logprobs = (req.sampling.logprobs >= 0).then(|| {
                if echo.pieces.is_empty() {
                    offset = echo.text.chars().count();
                }
                echo.logprobs(tokenizer, scores, &c.tokens, &mut offset)
            });
            CompletionChoice {
                index,
                text: echo.text + &c.content,
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
/// An echo with prompt logprobs waits for them: it leads the choice's first delta.
fn chunks(
    state: Arc<AppState>,
    meta: Meta,
    req: &CompletionRequest,
    echo: Vec<Echo>,
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
        .filter(|(e, _)| !e.text.is_empty() && e.pieces.is_empty())
        .map(|(e, index)| {
            let choice = CompletionChoice {
                index,
                text: e.text.clone(),
                logprobs: None,
                finish_reason: None,
            };
            sse::json(&completion(&meta, vec![choice], usage_field.clone()))
        })
        .collect();
    let mut offsets: Vec<usize> = echo
        .iter()
        .map(|e| {
            if e.pieces.is_empty() {
                e.text.chars().count()
            } else {
                0
            }
        })
        .collect();
    // The scored echoes not yet sent, by choice.
    let mut waiting: Vec<Option<Echo>> = echo
        .into_iter()
        .map(|e| (!e.pieces.is_empty()).then_some(e))
        .collect();
    let usage = Arc::new(Mutex::new(Usage::new(prompt_tokens, 0, 0)));
    let (tail_meta, tail_usage) = (meta.clone(), usage.clone());
    // The offsets advance as deltas are taken; an echo's logprobs (a decode per prompt token
    // and alternative) are built on the blocking pool.
    let body = stream.then(move |item| {
        let taken = item.map(|ChoiceDelta { index, delta }| {
            if let Some(f) = delta.finish {
                let mut u = usage.lock().unwrap_or_else(|e| e.into_inner());
                *u = add_choice(&u, &f, (index % n == 0).then_some(f.cached_tokens));
            }
            let head = waiting.get_mut(index as usize).and_then(Option::take);
            let start = offsets.get_mut(index as usize).map(|offset| {
                let from = *offset;
                let pieces = head
                    .iter()
                    .flat_map(|e| &e.pieces)
                    .map(|p| p.chars().count());
                let tokens = delta.tokens.iter().map(|t| t.text.chars().count());
                *offset += pieces.sum::<usize>() + tokens.sum::<usize>();
                from
            });
            (index, delta, head, start)
        });
        let (state, meta, usage_field) = (state.clone(), meta.clone(), usage_field.clone());
        async move {
            let (index, delta, head, start) = taken?;
            let tokenizer = state.model.tokenizer.clone();
            let (logprobs, delta, head) = match (start, head) {
                (Some(mut offset), Some(echo)) => tokio::task::spawn_blocking(move || {
                    let scores = delta.prompt_logprobs.as_ref();
                    let lp = echo.logprobs(&tokenizer, scores, &delta.tokens, &mut offset);
                    (Some(lp), delta, Some(echo))
                })
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?,
                (Some(mut offset), None) if want_logprobs => {
                    let lp = logprobs::completion(&tokenizer, &delta.tokens, &mut offset);
                    (Some(lp), delta, None)
                }
                (_, head) => (None, delta, head),
            };
            let text = match head {
                Some(echo) => echo.text + &delta.content,
                None => delta.content,
            };
            let choice = CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: delta.finish.map(|f| f.reason),
            };
            sse::json(&completion(&meta, vec![choice], usage_field))
        }
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
