//! `POST /v1/messages` and `/v1/messages/count_tokens`: the chat pipeline (protocol/messages.rs
//! reads the request as a chat request), its output as Anthropic content blocks (`thinking`,
//! `text`, `tool_use`), streamed as the Messages API's named events.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::error::AnthropicError;
use super::prepare::{chat_prompt, max_new_tokens, ready_worker, submit_one_choice};
use super::prompt::PromptUse;
use super::run::{built_events, start, written_order, ChoiceStream, EventBuilder, Piece};
use super::{sse, ApiError, AppState, JsonBody, Meta};
use crate::protocol::messages::MessagesRequest;
use crate::protocol::openai::{FinishReason, StopReason, ToolCallDelta};
use crate::protocol::ValidationError;
use crate::state::{Delta, Finish};

/// Why an aborted request has no answer.
const ABORTED: &str = "the request was aborted before it finished";

pub async fn messages(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, AnthropicError> {
    let JsonBody(body) = body?;
    let chat = MessagesRequest::from_json(&body)?.chat;
    if body.get("max_tokens").is_none_or(Value::is_null) {
        // as Anthropic asks for it (count_tokens, which reads the same body, does not)
        let missing = ValidationError::new("max_tokens", "Field required");
        return Err(ApiError::Invalid(missing).into());
    }
    let worker = ready_worker(&state)?;
    let prompt = chat_prompt(&state, &chat, PromptUse::generating(&chat.sampling)).await?;
    // `max_tokens` past the room the prompt leaves is cut to it (agents ask for 32K and more)
    let mut open = chat.sampling.clone();
    open.max_new_tokens = None;
    let room = max_new_tokens(&state, &worker, prompt.ids.len(), &open, "messages")?;
    let max_new = chat.sampling.max_new_tokens.map_or(room, |n| n.min(room));
    let stream = submit_one_choice(&state, &chat, &prompt, max_new)?;
    let mut blocks = Blocks::new(Meta::new(&state, "msg_"), prompt.ids.len() as u32);
    if chat.stream {
        let stream = start(stream).await?;
        Ok(sse::respond_named(events(blocks, stream)))
    } else {
        let mut stream = stream;
        while let Some(item) = stream.next().await {
            blocks.delta(item?.delta);
        }
        if blocks.aborted() {
            return Err(ApiError::Internal(ABORTED.into()).into());
        }
        Ok(Json(blocks.message()).into_response())
    }
}

/// `{"input_tokens": N}`: the prompt's tokens, as `/v1/messages` would render it.
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, AnthropicError> {
    let JsonBody(body) = body?;
    let chat = MessagesRequest::from_json(&body)?.chat;
    let prompt = chat_prompt(&state, &chat, PromptUse::Listing).await?;
    Ok(Json(json!({"input_tokens": prompt.ids.len()})).into_response())
}

/// The events of a streamed message: message_start, each block's start, deltas and stop,
/// message_delta with the stop reason and usage, message_stop.
fn events(blocks: Blocks, stream: ChoiceStream) -> sse::NamedEvents {
    let start = json!({"type": "message_start", "message": blocks.message()});
    stream::once(async move { Ok(start) })
        .chain(built_events(blocks, stream))
        .map(|e| named(e?))
        .boxed()
}

/// An event under its `type`.
fn named(event: Value) -> Result<(String, String), ApiError> {
    let name = event["type"].as_str().unwrap_or("message").to_owned();
    Ok((name, sse::json(&event)?))
}

impl EventBuilder for Blocks {
    fn delta(&mut self, delta: Delta) {
        Blocks::delta(self, delta);
    }

    fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }
}

/// The block being written.
enum Open {
    Thinking {
        text: String,
    },
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        json: String,
        index: usize,
    },
}

/// A message built from the deltas of its one choice, with the events that tell it.
struct Blocks {
    meta: Meta,
    input_tokens: u32,
    content: Vec<Value>,
    open: Option<Open>,
    /// Answer text of whitespace alone, not yet in a block.
    held: String,
    finish: Option<Finish>,
    events: Vec<Value>,
}

impl Blocks {
    fn new(meta: Meta, input_tokens: u32) -> Self {
        Blocks {
            meta,
            input_tokens,
            content: Vec::new(),
            open: None,
            held: String::new(),
            finish: None,
            events: Vec::new(),
        }
    }

    /// Whether the request ended without an answer (aborted in the worker).
    fn aborted(&self) -> bool {
        self.finish
            .as_ref()
            .is_some_and(|f| f.reason == FinishReason::Abort)
    }

    /// The index the open block has (or the next block will have).
    fn index(&self) -> usize {
        self.content.len()
    }

    /// One delta's text in the order it was written (see http/responses.rs).
    fn delta(&mut self, mut delta: Delta) {
        let open_call = match &self.open {
            Some(Open::ToolUse { index, .. }) => Some(*index),
            _ => None,
        };
        for piece in written_order(&mut delta, open_call) {
            match piece {
                Piece::Call(call) => self.tool_use(call),
                Piece::Reasoning(text) => self.thinking(text),
                Piece::Text(text) => self.text(&text),
            }
        }
        if let Some(finish) = delta.finish {
            if !self.held.is_empty() && self.content.is_empty() && self.open.is_none() {
                self.text(""); // an answer of whitespace alone is still the answer
            }
            self.close();
            self.finish = Some(finish);
            if self.aborted() {
                let error = json!({"type": "api_error", "message": ABORTED});
                self.events.push(json!({"type": "error", "error": error}));
                return;
            }
            let m = self.message();
            let delta =
                json!({"stop_reason": m["stop_reason"], "stop_sequence": m["stop_sequence"]});
            let event = json!({"type": "message_delta", "delta": delta, "usage": m["usage"]});
            self.events.push(event);
            self.events.push(json!({"type": "message_stop"}));
        }
    }

    fn thinking(&mut self, piece: String) {
        if !matches!(self.open, Some(Open::Thinking { .. })) {
            self.begin(json!({"type": "thinking", "thinking": "", "signature": ""}));
            self.open = Some(Open::Thinking {
                text: String::new(),
            });
        }
        if let Some(Open::Thinking { text }) = &mut self.open {
            text.push_str(&piece);
        }
        self.piece(json!({"type": "thinking_delta", "thinking": piece}));
    }

    fn text(&mut self, piece: &str) {
        self.held.push_str(piece);
        if !matches!(self.open, Some(Open::Text { .. })) {
            if self.held.trim().is_empty() && !piece.is_empty() {
                return; // whitespace alone (as between two calls) waits for more text
            }
            self.begin(json!({"type": "text", "text": ""}));
            self.open = Some(Open::Text {
                text: String::new(),
            });
        }
        let piece = std::mem::take(&mut self.held);
        if let Some(Open::Text { text }) = &mut self.open {
            text.push_str(&piece);
        }
        self.piece(json!({"type": "text_delta", "text": piece}));
    }

    fn tool_use(&mut self, call: ToolCallDelta) {
        if !matches!(&self.open, Some(Open::ToolUse { index, .. }) if *index == call.index) {
            self.held.clear(); // whitespace before a call is no text block
            let id = call
                .id
                .clone()
                .unwrap_or_else(|| crate::protocol::openai::random_id("toolu_"));
            let name = call.function.name.clone().unwrap_or_default();
            self.begin(json!({"type": "tool_use", "id": id, "name": name, "input": {}}));
            self.open = Some(Open::ToolUse {
                id,
                name,
                json: String::new(),
                index: call.index,
            });
        }
        if let Some(fragment) = call.function.arguments.filter(|f| !f.is_empty()) {
            if let Some(Open::ToolUse { json, .. }) = &mut self.open {
                json.push_str(&fragment);
            }
            self.piece(json!({"type": "input_json_delta", "partial_json": fragment}));
        }
    }

    /// Closes the open block and starts one.
    fn begin(&mut self, block: Value) {
        self.close();
        let event =
            json!({"type": "content_block_start", "index": self.index(), "content_block": block});
        self.events.push(event);
    }

    fn piece(&mut self, delta: Value) {
        let event = json!({"type": "content_block_delta", "index": self.index(), "delta": delta});
        self.events.push(event);
    }

    fn close(&mut self) {
        let block = match self.open.take() {
            None => return,
            Some(Open::Thinking { text }) => {
                // as Anthropic's API streams it: the block's signature last, before its stop
                let signature = thinking_signature(&text);
                self.piece(json!({"type": "signature_delta", "signature": signature}));
                json!({"type": "thinking", "thinking": text, "signature": signature})
            }
            Some(Open::Text { text }) => json!({"type": "text", "text": text}),
            Some(Open::ToolUse { id, name, json, .. }) => {
                let input: Value = serde_json::from_str(&json).unwrap_or_else(|_| json!({}));
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        };
        self.events
            .push(json!({"type": "content_block_stop", "index": self.index()}));
        self.content.push(block);
    }

    /// The message as it stands.
    fn message(&self) -> Value {
        let (reason, sequence) = match &self.finish {
            None => (Value::Null, Value::Null),
            Some(f) => match (f.reason, &f.stop_reason) {
                (FinishReason::Length, _) => (json!("max_tokens"), Value::Null),
                (FinishReason::ToolCalls, _) => (json!("tool_use"), Value::Null),
                (_, Some(StopReason::Text(s))) => (json!("stop_sequence"), json!(s)),
                _ => (json!("end_turn"), Value::Null),
            },
        };
        let (input, output, cached) = self.finish.as_ref().map_or((self.input_tokens, 0, 0), |f| {
            (f.prompt_tokens, f.completion_tokens, f.cached_tokens)
        });
        json!({
            "id": self.meta.id, "type": "message", "role": "assistant", "model": self.meta.model,
            "content": self.content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": {"input_tokens": input - cached.min(input), "output_tokens": output,
                      "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0},
        })
    }
}

/// A thinking block's `signature`: clients keep it and send the block back with it (some drop a
/// block without one). Nothing is secret here, so it is a digest of the text, not a key's
/// signature, and blocks sent back are taken as they come.
fn thinking_signature(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("glm47-{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::{Blocks, Meta};
    use crate::protocol::openai::{FinishReason, ToolCallDelta};
    use crate::state::{Delta, Finish};

    fn finish(reason: FinishReason) -> Delta {
        Delta {
            finish: Some(Finish {
                reason,
                stop_reason: None,
                prompt_tokens: 5,
                completion_tokens: 9,
                cached_tokens: 2,
                accepted_draft_tokens: 0,
                inside_call: false,
                called_tool: false,
                reasoning_tokens: 0,
            }),
            ..Delta::default()
        }
    }

    fn blocks() -> Blocks {
        let meta = Meta {
            id: "msg_x".into(),
            created: 0,
            model: "m".into(),
        };
        Blocks::new(meta, 5)
    }

    #[test]
    fn a_delta_ending_one_call_and_starting_another_keeps_each_call_whole() {
        let mut b = blocks();
        b.delta(Delta {
            reasoning: "Think.".into(),
            ..Delta::default()
        });
        b.delta(Delta {
            content: "Checking.".into(),
            tool_calls: vec![ToolCallDelta::fragment(0, Some("w"), "{\"city\": \"Pa")],
            ..Delta::default()
        });
        b.delta(Delta {
            content: "\n".into(),
            tool_calls: vec![
                ToolCallDelta::fragment(0, None, "ris\"}"),
                ToolCallDelta::fragment(1, Some("w"), "{}"),
            ],
            ..Delta::default()
        });
        b.delta(finish(FinishReason::ToolCalls));
        let m = b.message();
        let kinds: Vec<&str> = m["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["thinking", "text", "tool_use", "tool_use"]);
        assert_eq!(m["content"][2]["input"]["city"], "Paris");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["usage"]["input_tokens"], 3); // the prompt less what the cache held
        let types: Vec<Value> = b.events.iter().map(|e| e["type"].clone()).collect();
        assert_eq!(
            types.iter().filter(|t| *t == "content_block_start").count(),
            4
        );
        assert_eq!(
            types.iter().filter(|t| *t == "content_block_stop").count(),
            4
        );
        assert_eq!(&types[types.len() - 2..], ["message_delta", "message_stop"]);
    }

    #[test]
    fn an_aborted_request_ends_its_stream_with_an_error() {
        let mut b = blocks();
        b.delta(Delta {
            content: "Half".into(),
            ..Delta::default()
        });
        b.delta(finish(FinishReason::Abort));
        assert!(b.aborted());
        let last = b.events.last().unwrap();
        assert_eq!(last["type"], "error");
        assert!(!b.events.iter().any(|e| e["type"] == "message_stop"));
    }
}
