//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): the router's tokenizer and chat
//! template, without generating anything. They answer while no worker is ready;
//! `max_model_len` is then null.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::prepare::chat_prompt;
use super::prompt::{prompt_ids, prompt_text, PromptUse};
use super::{ApiError, AppState, JsonBody};
use crate::protocol::chat::ChatRequest;
use crate::protocol::completions::PromptInput;
use crate::protocol::{from_value, token_ids, ValidationError};

#[derive(Debug, Deserialize)]
struct RawTokenize {
    prompt: Option<String>,
    messages: Option<Value>,
    /// Also return each token's text.
    #[serde(default)]
    return_token_strs: bool,
}

/// `{"prompt": str}` or a chat body (`messages`, `tools`, `chat_template_kwargs`: rendered as
/// for `/v1/chat/completions`, generation prompt included) → `{"count", "max_model_len",
/// "tokens"}`, plus `token_strs` when `return_token_strs`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let raw: RawTokenize = from_value(&body)?;
    let ids = match (raw.prompt, raw.messages.is_some()) {
        (Some(_), true) => {
            let msg = "give either prompt or messages, not both";
            return Err(ValidationError::new("messages", msg).into());
        }
        (Some(text), false) => only(
            prompt_ids(
                &state,
                vec![PromptInput::Text(text)],
                "prompt",
                PromptUse::Listing,
            )
            .await?,
        ),
        (None, true) => {
            chat_prompt(&state, &ChatRequest::from_json(&body)?, PromptUse::Listing)
                .await?
                .ids
        }
        (None, false) => {
            return Err(ValidationError::new("prompt", "prompt or messages is required").into())
        }
    };
    let mut answer = json!({
        "count": ids.len(),
        "max_model_len": super::prompt::context_length(&state),
        "tokens": ids,
    });
    if raw.return_token_strs {
        let tokenizer = state.model.tokenizer.clone();
        let strs = tokio::task::spawn_blocking(move || {
            ids.iter()
                .map(|&id| tokenizer.decode(&[id], false))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        answer["token_strs"] = json!(strs);
    }
    Ok(Json(answer))
}

/// `{"tokens": [ids]}` → `{"prompt": text}` (special tokens kept).
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let bad = || ValidationError::new("tokens", "tokens must be a list of token ids");
    let ids = token_ids(body.get("tokens").ok_or_else(bad)?).ok_or_else(bad)?;
    let ids = only(
        prompt_ids(
            &state,
            vec![PromptInput::Ids(ids)],
            "tokens",
            PromptUse::Listing,
        )
        .await?,
    );
    Ok(Json(json!({"prompt": prompt_text(&state, ids).await?})))
}

/// The one prompt of a one-prompt list.
fn only(mut prompts: Vec<Vec<u32>>) -> Vec<u32> {
    prompts.pop().unwrap_or_default()
}
