//! `X-Request-Id`: a client's id for its request. It names the answer (`chatcmpl-<id>`, as vLLM
//! names it), leads the worker request ids (so the worker's logs show it), and comes back in the
//! response's `X-Request-Id` header; without one the header carries the answer's own id.

use std::cell::RefCell;
use std::future::Future;

use axum::http::{HeaderMap, HeaderValue};

use crate::protocol::ValidationError;

/// The header, lower-case as HTTP/2 and axum spell it.
pub const HEADER: &str = "x-request-id";

/// Longest id taken from a client.
const MAX_LEN: usize = 128;

tokio::task_local! {
    /// The id of the request this task answers: the client's, or once the answer is named, its id.
    static CURRENT: RefCell<Current>;
}

#[derive(Default)]
struct Current {
    given: Option<String>,
    named: Option<String>,
}

/// The client's id: printable ASCII without spaces, at most `MAX_LEN` long; others are ignored.
pub fn given(headers: &HeaderMap) -> Option<String> {
    let id = headers.get(HEADER)?.to_str().ok()?;
    valid(id).then(|| id.to_owned())
}

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// vLLM's `request_id` body field (chat and completions): the client's id where no
/// `X-Request-Id` header gave one (the header wins). Any string names the answer, as in vLLM;
/// an empty one is no id; one that could not be a header's leaves the header to the answer's
/// id; a value that is not a string is a 400.
pub fn adopt(body: &serde_json::Value) -> Result<(), ValidationError> {
    let id = match body.get("request_id") {
        None | Some(serde_json::Value::Null) => return Ok(()),
        Some(serde_json::Value::String(id)) if id.is_empty() => return Ok(()),
        Some(serde_json::Value::String(id)) => id,
        Some(_) => {
            return Err(ValidationError::new(
                "request_id",
                "request_id must be a string",
            ));
        }
    };
    let _ = CURRENT.try_with(|c| {
        c.borrow_mut().given.get_or_insert_with(|| id.clone());
    });
    Ok(())
}

/// Runs `answer` with `given` as the request's id; returns its output and the id the response
/// header carries (the given one where it can be a header's, else the answer's, if it named
/// one).
pub async fn scoped<F: Future>(given: Option<String>, answer: F) -> (F::Output, Option<String>) {
    let cell = RefCell::new(Current { given, named: None });
    CURRENT
        .scope(cell, async move {
            let out = answer.await;
            let current = CURRENT.with(|c| {
                let c = c.borrow();
                let header = |id: &String| header_value(id).is_some();
                c.given
                    .clone()
                    .filter(header)
                    .or_else(|| c.named.clone().filter(header))
            });
            (out, current)
        })
        .await
}

/// The answer's id: `prefix` and the client's id, or `prefix` and random characters.
pub fn answer_id(prefix: &str) -> String {
    let given = CURRENT
        .try_with(|c| c.borrow().given.clone())
        .ok()
        .flatten();
    let id = match given {
        Some(given) => format!("{prefix}{given}"),
        None => crate::protocol::openai::random_id(prefix),
    };
    named(id)
}

/// Records `id` as the answer's (the first one named stands) and returns it.
fn named(id: String) -> String {
    let _ = CURRENT.try_with(|c| {
        c.borrow_mut().named.get_or_insert_with(|| id.clone());
    });
    id
}

/// An answer id of `prefix` and random characters even where the client gave an id (ids a
/// server keeps, such as stored responses', must not repeat); the response header carries it
/// where the client gave none.
pub fn unique_answer_id(prefix: &str) -> String {
    named(crate::protocol::openai::random_id(prefix))
}

/// The client's id of the request this task answers, if it gave one.
pub fn given_id() -> Option<String> {
    CURRENT
        .try_with(|c| c.borrow().given.clone())
        .ok()
        .flatten()
}

/// What leads the worker request ids: the client's id where it is made of letters, digits and
/// `._:-` and at most 64 long (it reaches the worker's logs), else nothing.
pub fn wire_prefix() -> String {
    given_id().and_then(|id| loggable(&id)).unwrap_or_default()
}

/// `id` where it may lead worker request ids (see [`wire_prefix`]).
pub fn loggable(id: &str) -> Option<String> {
    let ok = id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    ok.then(|| id.to_owned())
}

/// The header value of `id` (always valid: printable ASCII).
pub fn header_value(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(id).ok()
}
