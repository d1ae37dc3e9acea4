//! `POST /generate` and `POST /generate_stream` (LightLLM / TGI style).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};

use super::prepare::{max_new_tokens, plain_pipeline, ready_worker, wire_requests};
use super::prompt::{prompt_ids, PromptUse};
use super::run::{collect, drive, start, ChoiceDelta, ChoiceStream};
use super::{sse, ApiError, AppState, JsonBody};
use crate::protocol::generate::{
    GenerateDetails, GenerateRequest, GenerateResponse, GenerateStreamEvent, GenerateToken,
};
use crate::state::TokenInfo;

/// Validates, tokenizes and submits one `/generate` request; returns its choice stream and
/// prompt length.
async fn submit(
    state: &Arc<AppState>,
    req: &GenerateRequest,
) -> Result<(ChoiceStream, u32), ApiError> {
    let worker = ready_worker(state)?;
    let mut prompts = prompt_ids(
        state,
        vec![req.input.clone()],
        "inputs",
        PromptUse::generating(&req.sampling),
    )
    .await?;
    let ids = prompts.pop().unwrap_or_default();
    let budget = max_new_tokens(state, &worker, ids.len(), &req.sampling, "inputs")?;
    let reqs = wire_requests(state, &ids, &req.sampling, budget, 1);
    let handles = super::prepare::submit(state, reqs)?;
    let pipeline = plain_pipeline(state, &req.sampling, ids.len());
    Ok((drive(handles, vec![pipeline], 0), ids.len() as u32))
}

fn token(info: &TokenInfo, count_output_tokens: u32, prompt_tokens: u32) -> GenerateToken {
    GenerateToken {
        id: info.id,
        text: info.text.clone(),
        logprob: info.logprob,
        special: info.special,
        count_output_tokens,
        prompt_tokens,
    }
}

pub async fn generate(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    if crate::protocol::sglang::is_sglang(&body) {
        return super::sglang::generate(state, body).await;
    }
    let req = GenerateRequest::from_json(&body)?;
    let (stream, prompt_tokens) = submit(&state, &req).await?;
    let choice = collect(stream, 1).await?.pop().unwrap_or_default();
    let count = choice
        .finish
        .as_ref()
        .map_or(choice.tokens.len() as u32, |f| f.completion_tokens);
    let details = req.return_details.then(|| GenerateDetails {
        tokens: choice
            .tokens
            .iter()
            .zip(1u32..)
            .map(|(t, k)| token(t, k, prompt_tokens))
            .collect(),
        cached_tokens: choice.finish.as_ref().map_or(0, |f| f.cached_tokens),
    });
    Ok(Json(GenerateResponse {
        generated_text: choice.content,
        count_output_tokens: count,
        finish_reason: choice.finish.map(|f| f.reason.as_str()),
        prompt_tokens,
        details,
    })
    .into_response())
}

/// Streams one event per generated token; the last carries `finished`, the reason and the whole
/// text (after stop strings).
pub async fn generate_stream(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = GenerateRequest::from_json(&body)?;
    let (stream, prompt_tokens) = submit(&state, &req).await?;
    let stream = start(stream).await?;
    let mut text = String::new();
    let mut count = 0u32;
    let mut last = TokenInfo {
        id: 0,
        text: String::new(),
        logprob: None,
        top: Vec::new(),
        special: false,
    };
    let events = stream.flat_map(move |item| {
        let ChoiceDelta { delta, .. } = match item {
            Ok(d) => d,
            Err(e) => return stream::iter(vec![Err(e)]),
        };
        text.push_str(&delta.content);
        let mut out = Vec::with_capacity(delta.tokens.len() + 1);
        let n = delta.tokens.len();
        for (k, info) in delta.tokens.into_iter().enumerate() {
            count += 1;
            let last_of_choice = k + 1 == n && delta.finish.is_some();
            out.push(event(
                token(&info, count, prompt_tokens),
                &text,
                last_of_choice,
                &delta.finish,
            ));
            last = TokenInfo {
                text: String::new(),
                ..info
            };
        }
        if n == 0 && delta.finish.is_some() {
            out.push(event(
                token(&last, count, prompt_tokens),
                &text,
                true,
                &delta.finish,
            ));
        }
        stream::iter(out)
    });
    Ok(sse::respond(events.boxed(), false))
}

fn event(
    token: GenerateToken,
    text: &str,
    finished: bool,
    finish: &Option<crate::state::Finish>,
) -> Result<String, ApiError> {
    sse::json(&GenerateStreamEvent {
        token,
        generated_text: finished.then(|| text.to_owned()),
        finished,
        finish_reason: if finished {
            finish.as_ref().map(|f| f.reason.as_str())
        } else {
            None
        },
        details: None,
    })
}
