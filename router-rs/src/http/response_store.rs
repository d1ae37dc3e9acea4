//! Stored responses of `/v1/responses` (`store`, true unless the request says false): a
//! response's input items and the response itself, kept in memory so that a later request can
//! continue it (`previous_response_id`: its input and output come before the new input) and
//! `GET` / `DELETE /v1/responses/{id}` find it, and `GET /v1/responses/{id}/input_items` its
//! request's own items (response_items.rs). The oldest are dropped past a count or a size
//! (`--max-stored-responses`; nothing survives a restart). A background response that was
//! streamed keeps its events too (response_events.rs), for `GET ?stream=true` to replay.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::{sse, ApiError, AppState};
use crate::protocol::ValidationError;

#[path = "response_events.rs"]
mod events;
pub use events::EventLog;

#[path = "response_items.rs"]
mod items;
pub use items::input_items;

/// Most bytes (of the stored JSON and event logs) kept, whatever the count allows.
const MAX_BYTES: usize = 256 << 20;

/// The input items a response answers: those of the response it continues (its input and
/// output), then the request's own.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub items: Vec<Value>,
    /// How many of the last `items` the request gave: `input_items` lists those alone.
    pub own: usize,
}

/// One stored response.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The input items it answered (a previous response's included).
    pub input: Vec<Value>,
    /// How many of the last `input` items its request gave.
    own: usize,
    /// The response object.
    pub response: Value,
    /// The events of a background response that was streamed.
    pub events: Option<Arc<EventLog>>,
}

impl Stored {
    /// The input items its request gave, without those of the response it continued.
    pub fn own_input(&self) -> &[Value] {
        &self.input[self.input.len() - self.own..]
    }
}

/// The stored responses, oldest first, and the background ones still running.
#[derive(Debug)]
pub struct ResponseStore {
    capacity: usize,
    inner: Mutex<Inner>,
    running: Mutex<HashMap<String, Arc<Background>>>,
}

/// A background response's task: `cancel` asks it to stop, `done` tells when it has stored its
/// last state.
#[derive(Debug, Default)]
pub struct Background {
    pub cancel: Notify,
    pub done: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    order: VecDeque<String>,
    /// The sum of the entries' `base` and `logged`.
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    stored: Arc<Stored>,
    /// Bytes of its input items and response.
    base: usize,
    /// What its event log is counted for ([`EventLog::charge`]), as of the last count.
    logged: usize,
}

impl Inner {
    /// Drops the oldest entries past `capacity` or `MAX_BYTES`.
    fn evict(&mut self, capacity: usize) {
        while self.order.len() > capacity || self.bytes > MAX_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.by_id.remove(&oldest) {
                self.bytes -= gone.base + gone.logged;
            }
        }
    }
}

impl ResponseStore {
    /// A store of at most `capacity` responses (0: none is stored).
    pub fn new(capacity: usize) -> Self {
        ResponseStore {
            capacity,
            inner: Mutex::new(Inner::default()),
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn insert(&self, id: String, input: Input, response: Value) {
        self.insert_with_events(id, input, response, None);
    }

    /// Stores a response with its event log (which goes when the response does).
    pub fn insert_with_events(
        &self,
        id: String,
        input: Input,
        mut response: Value,
        events: Option<Arc<EventLog>>,
    ) {
        if self.capacity == 0 {
            return;
        }
        // logprobs are kept out: one JSON value per byte of every token would dwarf the text
        for item in response["output"].as_array_mut().into_iter().flatten() {
            for part in item["content"].as_array_mut().into_iter().flatten() {
                if part.get("logprobs").is_some() {
                    part["logprobs"] = json!([]);
                }
            }
        }
        // a log still growing is counted as it stands ([`Self::end_log`] counts it as it ends)
        let logged = events.as_ref().map_or(0, |log| log.charge());
        let base = input.items.iter().map(json_len).sum::<usize>() + json_len(&response);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let stored = Arc::new(Stored {
            own: input.own.min(input.items.len()),
            input: input.items,
            response,
            events,
        });
        let entry = Entry {
            stored,
            base,
            logged,
        };
        if let Some(old) = inner.by_id.insert(id.clone(), entry) {
            inner.bytes -= old.base + old.logged;
            inner.order.retain(|o| *o != id);
        }
        inner.order.push_back(id);
        inner.bytes += base + logged;
        inner.evict(self.capacity);
    }

    /// Ends `log`, the event log of the response `id`, and counts it at its final size (its
    /// last events come after the response is stored as it ended).
    pub fn end_log(&self, id: &str, log: &Arc<EventLog>) {
        log.end();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = inner.by_id.get_mut(id) else {
            return;
        };
        if !entry
            .stored
            .events
            .as_ref()
            .is_some_and(|e| Arc::ptr_eq(e, log))
        {
            return;
        }
        let (old, new) = (entry.logged, log.charge());
        entry.logged = new;
        inner.bytes = inner.bytes - old + new;
        inner.evict(self.capacity);
    }

    /// Whether responses are stored at all.
    pub fn on(&self) -> bool {
        self.capacity > 0
    }

    pub fn get(&self, id: &str) -> Option<Arc<Stored>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_id.get(id).map(|entry| entry.stored.clone())
    }

    /// Registers a running background response.
    pub fn start_background(&self, id: &str) -> Arc<Background> {
        let entry = Arc::new(Background::default());
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(id.to_owned(), entry.clone());
        entry
    }

    /// Stores the last state of the background response `id` and forgets its task, unless it
    /// was deleted while it ran (`remove`): then it stays deleted.
    pub fn end_background(
        &self,
        id: &str,
        input: Input,
        last: Value,
        events: Option<Arc<EventLog>>,
    ) {
        // held across the store: `remove` cannot fall between the check and it
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.remove(id).is_some() {
            self.insert_with_events(id.to_owned(), input, last, events);
        }
    }

    /// The running background response `id`, if any.
    pub fn background(&self, id: &str) -> Option<Arc<Background>> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.get(id).cloned()
    }

    /// Deletes the response `id`; one running in the background is cancelled and not stored
    /// again as it ends. Whether there was one (running counts: the store may have dropped it
    /// meanwhile, past its count).
    pub fn remove(&self, id: &str) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let task = running.remove(id);
        drop(running);
        if let Some(task) = &task {
            task.cancel.notify_one();
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.by_id.remove(id) {
            Some(gone) => {
                inner.bytes -= gone.base + gone.logged;
                inner.order.retain(|o| o != id);
                true
            }
            None => task.is_some(),
        }
    }
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

/// The input items of a request body: `input` as items (a string is one user message), after
/// the input and output of the response `previous_response_id` names, when it names one
/// (unknown: a 400). The body's `input` is replaced by them.
pub fn resolved_input(state: &AppState, body: &mut Value) -> Result<Input, ApiError> {
    let own = match body.get("input") {
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => items.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => {
            let msg = "input must be a string or a list of items";
            return Err(ValidationError::new("input", msg).into());
        }
    };
    let previous = body
        .as_object_mut()
        .and_then(|o| o.remove("previous_response_id"))
        .filter(|v| !v.is_null());
    let Some(previous) = previous else {
        let own_count = own.len();
        return Ok(Input {
            items: own,
            own: own_count,
        });
    };
    let id = previous.as_str().unwrap_or("");
    let stored = state.responses.get(id).ok_or_else(|| {
        let msg =
            format!("no stored response {previous} (stored responses do not outlive the server)");
        ValidationError::new("previous_response_id", msg)
    })?;
    if matches!(
        stored.response["status"].as_str(),
        Some("in_progress" | "queued")
    ) {
        let msg = format!("previous response {previous} is still in progress: continue from it once it has finished");
        return Err(ValidationError::new("previous_response_id", msg).into());
    }
    let mut input = stored.input.clone();
    if let Some(output) = stored.response["output"].as_array() {
        // a call cut off by the token budget has no whole arguments to continue from (a message
        // or reasoning cut off is continued from as it stands)
        let whole =
            |item: &&Value| item["type"] != "function_call" || item["status"] != "incomplete";
        input.extend(output.iter().filter(whole).cloned());
    }
    let own_count = own.len();
    input.extend(own);
    body["input"] = Value::Array(input.clone());
    Ok(Input {
        items: input,
        own: own_count,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::NoSuchObject(format!(
        "Response with id '{id}' not found (responses are stored while the server runs, and not \
         with store false)"
    ))
}

/// The query of `GET /v1/responses/{id}`.
#[derive(Debug, Default, PartialEq)]
struct Retrieve {
    stream: bool,
    starting_after: Option<u64>,
}

impl Retrieve {
    /// Reads `stream` and `starting_after` (the last of each given; others, such as `include`,
    /// change nothing) into an OpenAI error naming the one that is wrong, where axum's own
    /// `Query` would answer a plain-text 400.
    fn parse(query: &[(String, String)]) -> Result<Self, ValidationError> {
        let mut retrieve = Retrieve::default();
        for (key, value) in query {
            match key.as_str() {
                "stream" => {
                    retrieve.stream = value.parse().map_err(|_| {
                        let msg = format!("stream must be true or false, not {value}");
                        ValidationError::new("stream", msg)
                    })?;
                }
                "starting_after" => {
                    let n = value.parse().map_err(|_| {
                        let msg = format!("starting_after must be a sequence number, not {value}");
                        ValidationError::new("starting_after", msg)
                    })?;
                    retrieve.starting_after = Some(n);
                }
                _ => {}
            }
        }
        Ok(retrieve)
    }
}

/// `GET /v1/responses/{id}`; with `stream=true`, the events of a background response that was
/// streamed, after sequence number `starting_after` (all without it), then the new ones until
/// it ends. Only those have their events kept: any other is a 400.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = Retrieve::parse(&query)?;
    let stored = state.responses.get(&id).ok_or_else(|| not_found(&id))?;
    if !query.stream {
        return Ok(Json(stored.response.clone()).into_response());
    }
    let log = stored.events.clone().ok_or_else(|| {
        let msg = format!(
            "response {id} was not created with background and stream both true: it has no \
             events to stream (GET it without stream)"
        );
        ValidationError::new("stream", msg)
    })?;
    Ok(sse::respond_typed(log.follow(query.starting_after)))
}

/// How long `cancel` waits for a background response to store its last state.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// `POST /v1/responses/{id}/cancel`: a running background response stops (its request is
/// aborted in the worker) and is stored `cancelled` with what it had written; a finished
/// background response is answered as it is; any other is a 400.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(task) = state.responses.background(&id) {
        let done = task.done.notified();
        task.cancel.notify_one();
        // it may have ended between the lookup and `notified`: then nothing is left to wait for
        let running = state.responses.background(&id).is_some();
        if running && tokio::time::timeout(CANCEL_WAIT, done).await.is_err() {
            tracing::warn!("background response {id} did not stop within {CANCEL_WAIT:?}");
        }
    }
    let stored = state.responses.get(&id).ok_or_else(|| not_found(&id))?;
    if stored.response["background"] != json!(true) {
        return Err(ApiError::Invalid(ValidationError::new(
            "response_id",
            format!("response {id} was not created in the background: only those can be cancelled"),
        )));
    }
    Ok(Json(stored.response.clone()))
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.responses.remove(&id) {
        return Err(not_found(&id));
    }
    Ok(Json(
        json!({"id": id, "object": "response.deleted", "deleted": true}),
    ))
}

#[cfg(test)]
#[path = "response_store_tests.rs"]
mod tests;
