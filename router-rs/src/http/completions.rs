//! `POST /v1/completions`.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};

use super::logprobs::{self, Names};
use super::prepare::{
    check_sequences, max_new_tokens, plain_pipeline, ready_worker, submit, wire_requests,
};
use super::prompt::{prompt_ids, prompt_pieces, prompt_text, PromptUse};
use super::run::{
    collect, drive, merge, share_prompt_scores, start, ChoiceDelta, ChoiceStream, RunningUsage,
};
use super::{sse, ApiError, AppState, JsonBody, Meta};
use crate::protocol::completions::{
    Completion, CompletionChoice, CompletionRequest, DEFAULT_MAX_TOKENS,
};
use crate::protocol::openai::{CompletionLogprobs, FinishReason, PromptLogprobList, Usage};
use crate::state::{Collected, Delta, Finish, PromptLogprobs, TokenInfo};

/// What a choice's answer starts with: the echoed prompt (under `echo`) and, when the prompt is
/// scored (an echo with `logprobs`, vLLM's `prompt_logprobs`), its ids. A scored lead waits for
/// the choice's first delta, which brings the scores.
#[derive(Debug, Clone, Default)]
struct Lead {
    /// The echoed prompt's text (empty without `echo`).
    text: String,
    /// The prompt's ids when it is scored, else empty.
    ids: Vec<u32>,
    /// The text each prompt token adds to the echo, when the echo's logprobs are asked for (else
    /// empty).
    pieces: Vec<String>,
    /// Alternatives per position in the echo's logprobs.
    echo_top: usize,
    /// Alternatives per position in vLLM's `prompt_logprobs`; `None` when not asked for.
    listed_top: Option<usize>,
    /// The prompt's ids when vLLM's `return_token_ids` asks for them.
    returned_ids: Option<Vec<u32>>,
}

impl Lead {
    /// The lead of the choices of prompt `ids` (the echo's text decoded on the blocking pool).
    async fn new(
        state: &Arc<AppState>,
        req: &CompletionRequest,
        ids: &[u32],
    ) -> Result<Self, ApiError> {
        let echo_top = usize::try_from(req.sampling.logprobs).ok();
        let (text, pieces) = match (req.echo, echo_top) {
            (true, Some(_)) => {
                let pieces = prompt_pieces(state, ids.to_vec()).await?;
                (pieces.concat(), pieces)
            }
            (true, None) => (prompt_text(state, ids.to_vec()).await?, Vec::new()),
            (false, _) => (String::new(), Vec::new()),
        };
        let scored = req.sampling.score_prompt.is_some();
        Ok(Self {
            text,
            ids: if scored { ids.to_vec() } else { Vec::new() },
            pieces,
            echo_top: echo_top.unwrap_or(0),
            listed_top: req.sampling.prompt_logprobs.map(|k| k as usize),
            returned_ids: req.sampling.return_token_ids.then(|| ids.to_vec()),
        })
    }

    /// True when the lead waits for the prompt's scores.
    fn is_scored(&self) -> bool {
        !self.ids.is_empty()
    }

    /// The choice's logprobs: the echoed prompt's (when scored), then those of `tokens`.
    fn logprobs(
        &self,
        names: Names<'_>,
        scores: Option<&PromptLogprobs>,
        tokens: &[TokenInfo],
        offset: &mut usize,
    ) -> CompletionLogprobs {
        let (ids, pieces, top) = (&self.ids, &self.pieces, self.echo_top);
        logprobs::echoed_prompt(names, ids, pieces, scores, top, tokens, offset)
    }

    /// The choice's `prompt_logprobs`, when asked for.
    fn listed(
        &self,
        names: Names<'_>,
        scores: Option<&PromptLogprobs>,
    ) -> Option<PromptLogprobList> {
        let top = self.listed_top?;
        Some(logprobs::prompt_list(names, &self.ids, scores, top))
    }
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = CompletionRequest::from_json(&body)?;
    super::request_id::adopt(&body)?;
    let worker = ready_worker(&state)?;
    check_sequences(&worker, req.prompts.len() * req.n as usize)?;
    let prompts = prompt_ids(
        &state,
        req.prompts.clone(),
        "prompt",
        PromptUse::generating(&req.sampling),
    )
    .await?;
    let requested = req.sampling.max_new_tokens;
    let budgets = prompts
        .iter()
        .map(|ids| {
            let room = max_new_tokens(&state, &worker, ids.len(), &req.sampling, "prompt")?;
            Ok(requested.map_or(room.min(DEFAULT_MAX_TOKENS), |_| room))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut leads = Vec::with_capacity(prompts.len());
    for ids in &prompts {
        leads.push(Lead::new(&state, &req, ids).await?);
    }
    let mut streams = Vec::with_capacity(prompts.len());
    for ((ids, budget), p) in prompts.iter().zip(budgets).zip(0u32..) {
        let reqs = wire_requests(&state, ids, &req.sampling, budget, req.n);
        let handles = submit(&state, reqs)?;
        let pipelines = (0..req.n)
            .map(|_| plain_pipeline(&state, &req.sampling, ids.len()))
            .collect();
        streams.push(drive(handles, pipelines, p * req.n));
    }
    let mut stream = merge(streams);
    if req.sampling.score_prompt.is_some() {
        stream = share_prompt_scores(stream, req.n);
    }
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
    // Choice `i` answers prompt `i / n`: it starts with that prompt's lead.
    let leads: Vec<Lead> = (0..prompts.len() * req.n as usize)
        .map(|i| leads.get(i / req.n as usize).cloned().unwrap_or_default())
        .collect();
    let prompt_tokens: u32 = prompts.iter().map(|p| p.len() as u32).sum();
    let choice_prompts = leads
        .iter()
        .enumerate()
        .map(|(i, _)| prompts[i / req.n as usize].len() as u32)
        .collect();
    let meta = Meta::new(&state, "cmpl-");
    if req.stream {
        let stream = start(stream).await?;
        Ok(sse::respond(
            chunks(state, meta, &req, leads, choice_prompts, stream),
            true,
        ))
    } else {
        let collected = collect(stream, leads.len()).await?;
        // Token texts for logprobs are decoded one token at a time: off the async threads.
        let answer = tokio::task::spawn_blocking(move || {
            answer(&state, &meta, &req, collected, leads, prompt_tokens)
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

/// The non-streaming answer: choice `i` is `leads[i]` followed by its generated text.
fn answer(
    state: &AppState,
    meta: &Meta,
    req: &CompletionRequest,
    collected: Vec<Collected>,
    leads: Vec<Lead>,
    prompt_tokens: u32,
) -> Completion {
    let names = Names::new(&state.model.tokenizer, req.sampling.tokens_as_ids);
    let mut usage = Usage::new(prompt_tokens, 0, 0);
    let choices = collected
        .into_iter()
        .zip(leads)
        .zip(0u32..)
        .map(|((c, lead), index)| {
            if let Some(f) = &c.finish {
                let cached = (index % req.n == 0).then_some(f.cached_tokens);
                usage = add_choice(&usage, f, cached);
            }
            let mut offset = 0;
            let scores = c.prompt_logprobs.as_ref();
            let logprobs = (req.sampling.logprobs >= 0).then(|| {
                if lead.pieces.is_empty() {
                    offset = lead.text.chars().count();
                }
                lead.logprobs(names, scores, &c.tokens, &mut offset)
            });
            let want_ids = req.sampling.return_token_ids;
            CompletionChoice {
                index,
                prompt_logprobs: lead.listed(names, scores),
                prompt_token_ids: lead.returned_ids.clone(),
                token_ids: want_ids.then(|| c.tokens.iter().map(|t| t.id).collect()),
                text: lead.text + &c.content,
                logprobs,
                finish_reason: c.finish.as_ref().map(|f| f.reason),
                stop_reason: c.finish.and_then(|f| f.stop_reason),
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
/// A scored lead waits for the prompt's scores: it leads the choice's first delta, with the
/// echo's logprobs and `prompt_logprobs` as asked for.
fn chunks(
    state: Arc<AppState>,
    meta: Meta,
    req: &CompletionRequest,
    leads: Vec<Lead>,
    choice_prompts: Vec<u32>,
    stream: ChoiceStream,
) -> sse::JsonEvents {
    let prompt_tokens = (0..choice_prompts.len())
        .step_by(req.n as usize)
        .map(|i| choice_prompts[i])
        .sum();
    let mut running = req
        .continuous_usage
        .then(|| RunningUsage::new(choice_prompts));
    let include_usage = req.include_usage;
    let want_logprobs = req.sampling.logprobs >= 0;
    let as_ids = req.sampling.tokens_as_ids;
    let usage_field = include_usage.then_some(None);
    let n = req.n;
    let want_ids = req.sampling.return_token_ids;
    // the prompt's ids go in each choice's first chunk
    let mut unsent_ids: Vec<Option<Vec<u32>>> =
        leads.iter().map(|l| l.returned_ids.clone()).collect();
    let heads: Vec<_> = leads
        .iter()
        .zip(0u32..)
        .filter(|(lead, _)| !lead.text.is_empty() && !lead.is_scored())
        .map(|(lead, index)| {
            let choice = CompletionChoice {
                index,
                text: lead.text.clone(),
                logprobs: None,
                finish_reason: None,
                stop_reason: None,
                prompt_logprobs: None,
                prompt_token_ids: unsent_ids[index as usize].take(),
                token_ids: want_ids.then(Vec::new),
            };
            let usage = match &running {
                Some(r) => Some(Some(r.of(index))),
                None => usage_field.clone(),
            };
            sse::json(&completion(&meta, vec![choice], usage))
        })
        .collect();
    let mut offsets: Vec<usize> = leads
        .iter()
        .map(|lead| {
            if lead.pieces.is_empty() {
                lead.text.chars().count()
            } else {
                0
            }
        })
        .collect();
    // The scored leads not yet sent, by choice.
    let mut waiting: Vec<Option<Lead>> = leads
        .into_iter()
        .map(|lead| lead.is_scored().then_some(lead))
        .collect();
    let usage = Arc::new(Mutex::new(Usage::new(prompt_tokens, 0, 0)));
    let (tail_meta, tail_usage) = (meta.clone(), usage.clone());
    // The offsets advance as deltas are taken; a prompt's logprobs (a decode per prompt token
    // and alternative) are built on the blocking pool.
    let body = stream.then(move |item| {
        let taken = item.map(|ChoiceDelta { index, delta }| {
            if let Some(f) = &delta.finish {
                let mut u = usage.lock().unwrap_or_else(|e| e.into_inner());
                *u = add_choice(&u, f, (index % n == 0).then_some(f.cached_tokens));
            }
            let head = waiting.get_mut(index as usize).and_then(Option::take);
            let start = offsets.get_mut(index as usize).map(|offset| {
                let from = *offset;
                let pieces = head
                    .iter()
                    .flat_map(|lead| &lead.pieces)
                    .map(|p| p.chars().count());
                let tokens = delta.tokens.iter().map(|t| t.text.chars().count());
                *offset += pieces.sum::<usize>() + tokens.sum::<usize>();
                from
            });
            let so_far = running.as_mut().map(|r| {
                r.add(index, &delta);
                Some(r.of(index))
            });
            let prompt_ids = unsent_ids.get_mut(index as usize).and_then(Option::take);
            (index, delta, head, start, so_far, prompt_ids)
        });
        let (state, meta, usage_field) = (state.clone(), meta.clone(), usage_field.clone());
        async move {
            let (index, delta, head, start, so_far, prompt_token_ids) = taken?;
            let token_ids = want_ids.then(|| delta.tokens.iter().map(|t| t.id).collect());
            let tokenizer = state.model.tokenizer.clone();
            let (logprobs, listed, delta, head) = match (start, head) {
                (Some(mut offset), Some(lead)) => tokio::task::spawn_blocking(move || {
                    let names = Names::new(&tokenizer, as_ids);
                    let scores = delta.prompt_logprobs.as_ref();
                    let lp = want_logprobs
                        .then(|| lead.logprobs(names, scores, &delta.tokens, &mut offset));
                    let listed = lead.listed(names, scores);
                    (lp, listed, delta, Some(lead))
                })
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?,
                (Some(mut offset), None) if want_logprobs => {
                    let names = Names::new(&tokenizer, as_ids);
                    let lp = logprobs::completion(names, &delta.tokens, &mut offset);
                    (Some(lp), None, delta, None)
                }
                (_, head) => (None, None, delta, head),
            };
            let text = match head {
                Some(lead) => lead.text + &delta.content,
                None => delta.content,
            };
            let choice = CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: delta.finish.as_ref().map(|f| f.reason),
                stop_reason: delta.finish.and_then(|f| f.stop_reason),
                prompt_logprobs: listed,
                prompt_token_ids,
                token_ids,
            };
            sse::json(&completion(&meta, vec![choice], so_far.or(usage_field)))
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
