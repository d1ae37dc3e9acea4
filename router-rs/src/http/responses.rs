//! `POST /v1/responses`: the chat pipeline (protocol/responses.rs reads the request as a chat
//! request), its output as output items (`reasoning`, `message` with `output_text`,
//! `function_call`), streamed as the Responses API's events. A background response
//! (responses_background.rs) is built by the same [`Output`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use serde_json::{json, Map, Value};

use super::logprobs::{self, Names};
use super::prepare::{chat_prompt, max_new_tokens, ready_worker, submit_one_choice};
use super::prompt::PromptUse;
use super::response_store::{resolved_input, EventLog, Input};
use super::run::{built_events, start, written_order, ChoiceStream, EventBuilder, Piece};
use super::{sse, ApiError, AppState, JsonBody, Meta};
use crate::protocol::openai::{random_id, FinishReason, ToolCallDelta};
use crate::protocol::responses::ResponsesRequest;
use crate::protocol::ValidationError;
use crate::state::{Delta, Finish};
use crate::tokenizer::Tokenizer;

pub async fn responses(
    State(state): State<Arc<AppState>>,
    JsonBody(mut body): JsonBody,
) -> Result<Response, ApiError> {
    let previous = body.get("previous_response_id").cloned();
    let input = resolved_input(&state, &mut body)?;
    let store = body.get("store").and_then(Value::as_bool).unwrap_or(true) && state.responses.on();
    let mut req = ResponsesRequest::from_json(&body)?;
    if req.background && !store {
        return Err(ApiError::Invalid(ValidationError::new(
            "background",
            "a background response is kept to be polled: this server stores none \
             (--max-stored-responses 0)",
        )));
    }
    req.echo.insert("store".into(), Value::Bool(store));
    req.echo
        .insert("background".into(), Value::Bool(req.background));
    req.echo.insert(
        "previous_response_id".into(),
        previous.unwrap_or(Value::Null),
    );
    let chat = &req.chat;
    let worker = ready_worker(&state)?;
    let prompt = chat_prompt(&state, chat, PromptUse::generating(&chat.sampling)).await?;
    let max_new = max_new_tokens(&state, &worker, prompt.ids.len(), &chat.sampling, "input")?;
    let stream = submit_one_choice(&state, chat, &prompt, max_new)?;
    let mut output = Output::new(Meta::unique(&state, "resp_"), req.echo);
    if chat.sampling.logprobs >= 0 {
        output.logprobs = Some(state.model.tokenizer.clone());
    }
    if req.background {
        // streamed, its events are logged for every reader: the answer is one of them
        let log = req.chat.stream.then(|| Arc::new(EventLog::default()));
        let first = background::run(state, output, stream, input, log.clone());
        return Ok(match log {
            Some(log) => sse::respond_typed(log.follow(None)),
            None => Json(first).into_response(),
        });
    }
    output.keep = store.then(|| (state.clone(), input));
    if req.chat.stream {
        let stream = start(stream).await?;
        Ok(sse::respond_typed(events(output, stream)))
    } else {
        let mut output = output;
        let mut stream = stream;
        while let Some(item) = stream.next().await {
            output.delta(item?.delta);
        }
        Ok(Json(output.response()).into_response())
    }
}

/// The events of a streamed response: created and in progress, the items' events as the
/// deltas come, then completed (or incomplete).
fn events(mut output: Output, stream: ChoiceStream) -> sse::NamedEvents {
    output.opening();
    let first: Vec<_> = output.take_events().into_iter().map(Ok).collect();
    stream::iter(first)
        .chain(built_events(output, stream))
        .map(|e| Ok(sse::typed(&e?)))
        .boxed()
}

impl EventBuilder for Output {
    fn delta(&mut self, delta: Delta) {
        Output::delta(self, delta);
    }

    fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// [`Output::fail`], then `response.failed` with the response as it stood.
    fn failed(&mut self, err: &ApiError) -> Option<Vec<Value>> {
        self.fail(err);
        self.stop();
        Some(self.take_events())
    }
}

/// The output item being written.
enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        args: String,
        index: usize,
    },
}

/// A response built from the deltas of its one choice, with the events that tell it.
struct Output {
    meta: Meta,
    echo: Map<String, Value>,
    /// Output items done, in order.
    items: Vec<Value>,
    open: Option<Open>,
    finish: Option<Finish>,
    /// Answer text of whitespace alone, not yet in a message.
    held: String,
    /// Events not sent yet, and the next one's sequence number.
    events: Vec<Value>,
    sequence: u64,
    /// Where the finished response is stored, with the input items it answered (`store`).
    keep: Option<(Arc<AppState>, Input)>,
    /// With logprobs asked for (`top_logprobs`, `include`), the tokenizer naming the tokens.
    logprobs: Option<Arc<Tokenizer>>,
    /// The logprobs of the answer tokens of the delta being read, and of the open message.
    pending_logprobs: Vec<Value>,
    message_logprobs: Vec<Value>,
    /// The output ends at the token budget: the item it cuts off is incomplete (a call only
    /// where the output ended inside it, `inside_call`).
    cut: bool,
    inside_call: bool,
    /// A background response stopped by `cancel` before it finished.
    cancelled: bool,
    /// Why a background response failed before it finished.
    error: Option<String>,
}

impl Output {
    fn new(meta: Meta, echo: Map<String, Value>) -> Self {
        Output {
            meta,
            echo,
            items: Vec::new(),
            open: None,
            finish: None,
            held: String::new(),
            events: Vec::new(),
            sequence: 0,
            keep: None,
            logprobs: None,
            pending_logprobs: Vec::new(),
            message_logprobs: Vec::new(),
            cut: false,
            inside_call: false,
            cancelled: false,
            error: None,
        }
    }

    fn emit(&mut self, kind: &str, mut event: Value) {
        event["type"] = Value::from(kind);
        event["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        self.events.push(event);
    }

    fn opening(&mut self) {
        let response = self.response();
        self.emit("response.created", json!({"response": response}));
        let response = self.response();
        self.emit("response.in_progress", json!({"response": response}));
    }

    /// The index the open item has (or the next item will have).
    fn index(&self) -> usize {
        self.items.len()
    }

    /// One delta's text, in the order it was written: the open call's last fragments (a
    /// delta's text after a call ends the call), reasoning, answer text, then new calls.
    fn delta(&mut self, mut delta: Delta) {
        // a delta's tokens go with its answer text: those of text, and those held (a split
        // character, a stop string's start) outside reasoning and calls
        let answer = delta.reasoning.is_empty()
            && delta.tool_calls.is_empty()
            && (!delta.content.is_empty()
                || matches!(self.open, None | Some(Open::Message { .. })));
        if let Some(tokenizer) = self.logprobs.as_ref().filter(|_| answer) {
            let lps = logprobs::chat(Names::new(tokenizer, false), &delta.tokens).content;
            let lps = lps.iter().filter_map(|l| serde_json::to_value(l).ok());
            self.pending_logprobs.extend(lps);
        }
        let open_call = match &self.open {
            Some(Open::Call { index, .. }) => Some(*index),
            _ => None,
        };
        for piece in written_order(&mut delta, open_call) {
            match piece {
                Piece::Call(call) => self.call(call),
                Piece::Reasoning(text) => self.reasoning(&text),
                Piece::Text(text) => self.text(&text),
            }
        }
        if let Some(finish) = delta.finish {
            if !self.held.is_empty() && self.items.is_empty() && self.open.is_none() {
                self.open_message(); // an answer of whitespace alone is still the answer
                self.text("");
            }
            // a call the token budget cut off is incomplete (and not continued from); an abort
            // (`/abort_request`) cuts the open item as a cancel does
            self.cut = finish.reason == FinishReason::Length;
            self.inside_call = finish.inside_call;
            self.cancelled |= finish.reason == FinishReason::Abort;
            self.close();
            self.finish = Some(finish);
            self.end();
        }
    }

    /// A failure before the finish: the open item closed as incomplete and an `error` event
    /// (the `response.failed` after it is [`Output::stop`]'s).
    fn fail(&mut self, err: &ApiError) {
        self.error = Some(err.to_string());
        self.close();
        let body = err.body();
        let code = body["error"]["type"].clone();
        self.emit(
            "error",
            json!({"code": code, "message": err.to_string(), "param": body["error"]["param"]}),
        );
    }

    /// Ends a response that stops before its finish (cancelled, or failed): the open item is
    /// closed with what it has, as incomplete, and the last event tells the status.
    fn stop(&mut self) {
        if self.finish.is_some() {
            return;
        }
        if !self.cancelled && self.error.is_none() {
            self.error = Some("the request ended without finishing".into());
        }
        self.cut = true;
        self.inside_call = true;
        self.close();
        self.end();
    }

    /// The last event: `response.completed`, `.incomplete`, `.failed` or `.cancelled`, with the
    /// whole response (stored first when `keep` says so).
    fn end(&mut self) {
        let response = self.response();
        let status = response["status"]
            .as_str()
            .unwrap_or("completed")
            .to_owned();
        if let Some((state, input)) = self.keep.take().filter(|_| status != "failed") {
            state
                .responses
                .insert(self.meta.id.clone(), input, response.clone());
        }
        self.emit(&format!("response.{status}"), json!({"response": response}));
    }

    fn reasoning(&mut self, piece: &str) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close();
            let id = random_id("rs_");
            let item = json!({"type": "reasoning", "id": id, "summary": [], "content": [],
                              "status": "in_progress"});
            let index = self.index();
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            let part = json!({"type": "reasoning_text", "text": ""});
            let event =
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
            self.emit("response.content_part.added", event);
            self.open = Some(Open::Reasoning {
                id,
                text: String::new(),
            });
        }
        let index = self.index();
        if let Some(Open::Reasoning { id, text }) = &mut self.open {
            text.push_str(piece);
            let event = json!({"item_id": id, "output_index": index, "content_index": 0,
                               "delta": piece});
            self.emit("response.reasoning_text.delta", event);
        }
    }

    /// Answer text; whitespace alone (as between two calls) waits for more text to open a
    /// message with (or for the end, where the output has nothing else).
    fn text(&mut self, piece: &str) {
        self.held.push_str(piece);
        if !matches!(self.open, Some(Open::Message { .. })) {
            if self.held.trim().is_empty() {
                return;
            }
            self.open_message();
        }
        let piece = std::mem::take(&mut self.held);
        let index = self.index();
        let lps = std::mem::take(&mut self.pending_logprobs);
        if let Some(Open::Message { id, text }) = &mut self.open {
            text.push_str(&piece);
            let event = json!({"item_id": id, "output_index": index, "content_index": 0,
                               "delta": piece, "logprobs": lps});
            self.message_logprobs.extend(lps);
            self.emit("response.output_text.delta", event);
        }
    }

    fn open_message(&mut self) {
        self.close();
        let id = random_id("msg_");
        let item = json!({"type": "message", "id": id, "role": "assistant", "content": [],
                          "status": "in_progress"});
        let index = self.index();
        self.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        let part = json!({"type": "output_text", "text": "", "annotations": []});
        let event = json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
        self.emit("response.content_part.added", event);
        self.open = Some(Open::Message {
            id,
            text: String::new(),
        });
    }

    fn call(&mut self, call: ToolCallDelta) {
        if !matches!(&self.open, Some(Open::Call { index, .. }) if *index == call.index) {
            // the tokens held since the last text (the call's opening tag and name, whitespace
            // before it) are the call's, not the message's it closes
            self.pending_logprobs.clear();
            self.close();
            self.held.clear(); // whitespace before a call is no message
            let id = random_id("fc_");
            let call_id = call.id.clone().unwrap_or_else(|| random_id("call_"));
            let name = call.function.name.clone().unwrap_or_default();
            let item = json!({"type": "function_call", "id": id, "call_id": call_id,
                              "name": name, "arguments": "", "status": "in_progress"});
            let index = self.index();
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            self.open = Some(Open::Call {
                id,
                call_id,
                name,
                args: String::new(),
                index: call.index,
            });
        }
        let index = self.index();
        if let (Some(Open::Call { id, args, .. }), Some(fragment)) =
            (&mut self.open, call.function.arguments)
        {
            if !fragment.is_empty() {
                args.push_str(&fragment);
                let event = json!({"item_id": id, "output_index": index, "delta": fragment});
                self.emit("response.function_call_arguments.delta", event);
            }
        }
    }

    /// Ends the open item: its closing events, and the item among the done ones.
    fn close(&mut self) {
        let index = self.index();
        // an item cut off (by the token budget, a cancel or a failure) is incomplete; a call
        // whose `</tool_call>` came is whole, even as the last tokens of the budget
        let status = if self.cancelled || self.error.is_some() || self.cut {
            "incomplete"
        } else {
            "completed"
        };
        let item = match self.open.take() {
            None => return,
            Some(Open::Reasoning { id, text }) => {
                let event =
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text});
                self.emit("response.reasoning_text.done", event);
                let part = json!({"type": "reasoning_text", "text": text});
                let event =
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
                self.emit("response.content_part.done", event);
                json!({"type": "reasoning", "id": id, "summary": [], "status": status,
                       "content": [part]})
            }
            Some(Open::Message { id, text }) => {
                let mut lps = std::mem::take(&mut self.message_logprobs);
                lps.append(&mut self.pending_logprobs); // of text still held, if any
                let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": lps});
                let event = json!({"item_id": id, "output_index": index, "content_index": 0, "text": text,
                                   "logprobs": lps});
                self.emit("response.output_text.done", event);
                let event =
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
                self.emit("response.content_part.done", event);
                json!({"type": "message", "id": id, "role": "assistant", "status": status,
                       "content": [part]})
            }
            Some(Open::Call {
                id,
                call_id,
                name,
                args,
                ..
            }) => {
                let event =
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": args});
                self.emit("response.function_call_arguments.done", event);
                let cut = self.cut && !self.inside_call && !self.cancelled && self.error.is_none();
                let status = if cut { "completed" } else { status };
                json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
                       "arguments": args, "status": status})
            }
        };
        self.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.items.push(item);
    }

    /// The response object as it stands.
    fn response(&self) -> Value {
        let (status, incomplete) = match &self.finish {
            None if self.cancelled => ("cancelled", Value::Null),
            None if self.error.is_some() => ("failed", Value::Null),
            None => ("in_progress", Value::Null),
            Some(f) if f.reason == FinishReason::Length => {
                ("incomplete", json!({"reason": "max_output_tokens"}))
            }
            // stopped by `/abort_request`, as a cancel stops it
            Some(f) if f.reason == FinishReason::Abort => ("cancelled", Value::Null),
            Some(_) => ("completed", Value::Null),
        };
        let usage = self.finish.as_ref().map(|f| {
            json!({"input_tokens": f.prompt_tokens,
                   "input_tokens_details": {"cached_tokens": f.cached_tokens},
                   "output_tokens": f.completion_tokens,
                   "output_tokens_details": {"reasoning_tokens": f.reasoning_tokens},
                   "total_tokens": f.prompt_tokens + f.completion_tokens})
        });
        let mut r = json!({
            "id": self.meta.id, "object": "response", "created_at": self.meta.created,
            "model": self.meta.model, "status": status, "incomplete_details": incomplete,
            "error": (status == "failed").then(|| json!({"code": "server_error",
                "message": self.error.as_deref()
                    .unwrap_or("the request was aborted before it finished")})),
            "output": self.items, "usage": usage, "store": false,
            "previous_response_id": null, "truncation": "disabled", "parallel_tool_calls": true,
            "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            "instructions": null, "metadata": {}, "temperature": null, "top_p": null,
            "max_output_tokens": null, "reasoning": null,
        });
        for (k, v) in &self.echo {
            r[k.as_str()] = v.clone();
        }
        r
    }
}

#[path = "responses_background.rs"]
mod background;

#[cfg(test)]
#[path = "responses_tests.rs"]
mod tests;
