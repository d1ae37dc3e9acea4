//! Server-sent events: one JSON object per `data:` line, an error object if the request fails
//! mid-stream, and (for the OpenAI endpoints) a final `data: [DONE]`.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, StreamExt};
use serde::Serialize;

use super::ApiError;

/// A stream of JSON events, already serialized.
pub type JsonEvents = BoxStream<'static, Result<String, ApiError>>;

/// A stream of events with their names (`event:` lines), already serialized.
pub type NamedEvents = BoxStream<'static, Result<(String, String), ApiError>>;

/// Answers with named `events` (Anthropic's stream: `event:` and `data:` lines, no end marker);
/// a failure mid-stream is an `error` event (Anthropic's error object) and the last.
pub fn respond_named(events: NamedEvents) -> Response {
    named(events, |e| e.anthropic_body().to_string())
}

/// Answers with named `events` as the Responses API streams them (each named by its type,
/// [`typed`]); a failure mid-stream is an `error` event (the OpenAI error object) and the last.
pub fn respond_typed(events: NamedEvents) -> Response {
    named(events, |e| e.body().to_string())
}

/// An event serialized and named by its `type` (`message`, SSE's default name, where it has
/// none): `event: response.created`, then its `data:` line.
pub fn typed(event: &serde_json::Value) -> (String, String) {
    let name = event["type"].as_str().unwrap_or("message").to_owned();
    (name, event.to_string())
}

/// Named events up to the first failure, which `error_body` tells as the last event.
fn named(events: NamedEvents, error_body: fn(&ApiError) -> String) -> Response {
    let body = events
        .scan(false, move |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            let (name, data) = match item {
                Ok(event) => event,
                Err(e) => {
                    *failed = true;
                    ("error".to_owned(), error_body(&e))
                }
            };
            futures::future::ready(Some(name_event(name, data)))
        })
        .map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn name_event(name: String, data: String) -> Event {
    Event::default().event(name).data(data)
}

/// Serializes `value` for a `data:` line.
pub fn json<T: Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Answers with `events`; stops at the first error (sent as an OpenAI error object) and ends with
/// `data: [DONE]` when `done_marker` is set.
pub fn respond(events: JsonEvents, done_marker: bool) -> Response {
    let body = events
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            let data = match item {
                Ok(data) => data,
                Err(e) => {
                    *failed = true;
                    e.body().to_string()
                }
            };
            futures::future::ready(Some(data))
        })
        .chain(stream::iter(done_marker.then(|| "[DONE]".to_owned())))
        .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}
