//! Prompts as token ids: text tokenized (on the blocking pool) within the length limit, or
//! cut to its last tokens (`truncate_prompt_tokens`); ids checked against the vocabulary; and
//! back to text.

use std::sync::Arc;

use super::{ApiError, AppState};
use crate::detokenize::Detokenizer;
use crate::dispatch::WorkerInfo;
use crate::protocol::completions::PromptInput;
use crate::protocol::sampling::{PromptCut, SamplingParams};
use crate::protocol::ValidationError;
use crate::tokenizer::Bounded;

/// What a prompt is tokenized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptUse {
    /// To generate from: a prompt surely over `max_req_total_len` is refused early.
    Generation,
    /// To generate from, cut to its end first (`truncate_prompt_tokens`); the second field is
    /// the output room a cut to fit leaves.
    Truncated(PromptCut, u32),
    /// Only to list its ids (`/tokenize`): tokenized whole, whatever its length, as vLLM does.
    Listing,
}

impl PromptUse {
    /// Generation, with the cut the request asks for.
    pub fn generating(sampling: &SamplingParams) -> Self {
        // a cut to fit leaves the output asked for, or `FIT_ROOM` tokens
        let room = sampling.max_new_tokens.unwrap_or(FIT_ROOM).max(1);
        sampling
            .truncate_prompt
            .map_or(PromptUse::Generation, |cut| PromptUse::Truncated(cut, room))
    }
}

/// The output room a prompt cut to fit leaves when the request gives no `max_tokens` (the
/// completions default).
const FIT_ROOM: u32 = 16;

/// `ids` cut to their last tokens as `cut` says; a cut to fit leaves `room` of `limit` for the
/// output (at least one prompt token is kept).
fn cut_ids(mut ids: Vec<u32>, cut: PromptCut, limit: u32, room: u32) -> Vec<u32> {
    let keep = match cut {
        PromptCut::Last(k) => k as usize,
        PromptCut::Fit => limit.saturating_sub(room).max(1) as usize,
    };
    ids.drain(..ids.len().saturating_sub(keep));
    ids
}

/// The prompt's ids; for generation, a prompt surely longer than `max_req_total_len` allows is
/// refused before all of it is tokenized (`Tokenizer::encode_within`), unless it is to be cut. `param` names the prompt
/// in the error.
pub(super) fn encode_prompt(
    state: &AppState,
    text: &str,
    param: &str,
    purpose: PromptUse,
) -> Result<Vec<u32>, ApiError> {
    let whole = || {
        let ids = state.model.tokenizer.encode(text);
        ids.map_err(|e| ApiError::Internal(e.to_string()))
    };
    let limit = total_len_limit(state, state.dispatcher.ready_worker().as_ref());
    let fits = limit.saturating_sub(1) as usize;
    match purpose {
        PromptUse::Listing => return whole(),
        // a cut longer than fits is refused by the output budget check, naming the length
        PromptUse::Truncated(cut, room) => return Ok(cut_ids(whole()?, cut, limit, room)),
        PromptUse::Generation => {}
    }
    match state.model.tokenizer.encode_within(text, fits) {
        Ok(Bounded::Ids(ids)) => Ok(ids),
        Ok(Bounded::TooLong(at_least)) => {
            let msg = format!(
                "This model's maximum context length is {limit} tokens. However, the prompt has \
                 at least {at_least} tokens: at most {fits} fit with one output token \
                 (max_req_total_len)."
            );
            Err(ValidationError::new(param, msg).into())
        }
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// `max_req_total_len`: the router's flag where set, at most the worker's (u32::MAX before a
/// worker is ready and without the flag).
pub(super) fn total_len_limit(state: &AppState, worker: Option<&WorkerInfo>) -> u32 {
    let worker_limit = worker.map_or(u32::MAX, |w| w.max_req_total_len);
    state
        .options
        .max_req_total_len
        .map_or(worker_limit, |l| l.min(worker_limit))
}

/// The context length served (`total_len_limit` of a ready worker), None before one is ready:
/// what `/v1/models`, `/get_server_info` and `/tokenize` report.
pub(super) fn context_length(state: &AppState) -> Option<u32> {
    let worker = state.dispatcher.ready_worker()?;
    Some(total_len_limit(state, Some(&worker)))
}

/// Tokenizes text prompts (ids pass through, checked against the vocabulary) on the blocking pool.
pub async fn prompt_ids(
    state: &Arc<AppState>,
    prompts: Vec<PromptInput>,
    param: &'static str,
    purpose: PromptUse,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let vocab = state.model.tokenizer.vocab_size();
        prompts
            .into_iter()
            .map(|p| match p {
                PromptInput::Text(text) => encode_prompt(&state, &text, param, purpose),
                PromptInput::Ids(ids) if ids.iter().any(|&id| id as usize >= vocab) => Err(
                    ValidationError::new(param, format!("token ids must be below {vocab}")).into(),
                ),
                PromptInput::Ids(ids) => match purpose {
                    PromptUse::Truncated(cut, room) => {
                        let limit =
                            total_len_limit(&state, state.dispatcher.ready_worker().as_ref());
                        Ok(cut_ids(ids, cut, limit, room))
                    }
                    _ => Ok(ids),
                },
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Decodes a prompt back to text (for `echo`) on the blocking pool.
pub async fn prompt_text(state: &Arc<AppState>, ids: Vec<u32>) -> Result<String, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || state.model.tokenizer.decode(&ids, false))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A 400 naming `param` when one of `ids` is not below `vocab`.
pub(super) fn below_vocab(
    param: &str,
    mut ids: impl Iterator<Item = u32>,
    vocab: u32,
) -> Result<(), ApiError> {
    match ids.find(|&id| id >= vocab) {
        Some(id) => {
            let msg = format!("token id {id} is not below the vocabulary size {vocab}");
            Err(ValidationError::new(param, msg).into())
        }
        None => Ok(()),
    }
}

/// The text each prompt token adds to the prompt's text, decoded incrementally on the blocking
/// pool (special tokens kept, as in [`prompt_text`]); their concatenation is the prompt's text.
pub async fn prompt_pieces(state: &Arc<AppState>, ids: Vec<u32>) -> Result<Vec<String>, ApiError> {
    let tokenizer = state.model.tokenizer.clone();
    let pieces = tokio::task::spawn_blocking(move || {
        let mut detok = Detokenizer::new(tokenizer, false);
        let mut pieces = ids
            .iter()
            .map(|&id| detok.push(&[id]))
            .collect::<Result<Vec<_>, _>>()?;
        let tail = detok.finish()?;
        if let Some(last) = pieces.last_mut() {
            last.push_str(&tail);
        }
        Ok::<_, crate::tokenizer::TokenizerError>(pieces)
    });
    pieces
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))
}
