//! `background: true`: the response is stored `in_progress` and a task runs it on, storing it
//! again as it ends. Streamed too, its events go to a log kept with it, which readers follow
//! (response_events.rs); none of them holds the request, so one leaving stops nothing. A task
//! that panics still ends its response, failed ([`Unfinished`]).

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Value};

use super::{AppState, ChoiceStream, EventBuilder, EventLog, Input, Output};
use crate::http::response_store::{Background, ResponseStore};

/// Stores the response `in_progress` and returns it; a task then reads its deltas and stores it
/// as it ends: completed, incomplete, failed (with the error), or cancelled (by
/// `POST /v1/responses/{id}/cancel`, which aborts the request in the worker). With `log`, every
/// event goes to it, the last one once the ended response is stored (a reader that sees it and
/// then GETs the response finds it ended).
pub(super) fn run(
    state: Arc<AppState>,
    mut output: Output,
    mut stream: ChoiceStream,
    input: Input,
    log: Option<Arc<EventLog>>,
) -> Value {
    let id = output.meta.id.clone();
    if log.is_some() {
        output.opening();
    }
    let first = output.response();
    state
        .responses
        .insert_with_events(id.clone(), input.clone(), first.clone(), log.clone());
    let task = state.responses.start_background(&id);
    let unfinished = Unfinished::new(state.clone(), &id, input, &first, log.clone(), &task);
    tokio::spawn(async move {
        let mut unfinished = unfinished;
        publish(&mut output, log.as_deref());
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(item)) => {
                        output.delta(item.delta);
                        if output.finish.is_some() {
                            break; // its last event waits for the store
                        }
                        publish(&mut output, log.as_deref());
                    }
                    Some(Err(err)) => {
                        output.fail(&err);
                        break;
                    }
                    None => break,
                },
                () = task.cancel.notified() => {
                    output.cancelled = true;
                    break;
                }
            }
        }
        drop(stream); // an unfinished request is aborted in the worker
        output.stop();
        let last = output.response();
        tracing::debug!("background response {id}: {}", last["status"]);
        let input = std::mem::take(&mut unfinished.input);
        state
            .responses
            .end_background(&id, input, last, log.clone());
        if let Some(log) = &log {
            publish(&mut output, Some(log));
            state.responses.end_log(&id, log);
        }
        task.done.notify_waiters();
        unfinished.ended = true;
    });
    first
}

impl AsRef<ResponseStore> for AppState {
    fn as_ref(&self) -> &ResponseStore {
        &self.responses
    }
}

/// Ends a background response whose task stops before it has (it panicked, and tokio dropped
/// it): otherwise its readers would wait for more events forever, its `running` entry would
/// stay and it would be stored `in_progress` for good. It is stored failed, as it started (what
/// it had written is not trusted), and its log ends with `response.failed`.
pub(super) struct Unfinished<S: AsRef<ResponseStore>> {
    /// What holds the store (the app's state; the store itself in tests).
    owner: Arc<S>,
    id: String,
    /// The input items it answers, until the task stores it as it ends.
    pub(super) input: Input,
    first: Value,
    log: Option<Arc<EventLog>>,
    task: Arc<Background>,
    /// Set once the task has stored its last state and ended its log.
    pub(super) ended: bool,
}

impl<S: AsRef<ResponseStore>> Unfinished<S> {
    pub(super) fn new(
        owner: Arc<S>,
        id: &str,
        input: Input,
        first: &Value,
        log: Option<Arc<EventLog>>,
        task: &Arc<Background>,
    ) -> Self {
        let (id, first, task) = (id.to_owned(), first.clone(), task.clone());
        Unfinished {
            owner,
            id,
            input,
            first,
            log,
            task,
            ended: false,
        }
    }
}

impl<S: AsRef<ResponseStore>> Drop for Unfinished<S> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let id = &self.id;
        tracing::error!("background response {id}: its task stopped before the response ended");
        let mut failed = std::mem::take(&mut self.first);
        failed["status"] = json!("failed");
        let message = "the response stopped on an internal error before it ended";
        failed["error"] = json!({"code": "server_error", "message": message});
        let store = (*self.owner).as_ref();
        let input = std::mem::take(&mut self.input);
        store.end_background(id, input, failed.clone(), self.log.clone());
        if let Some(log) = &self.log {
            log.end_with(json!({"type": "response.failed", "response": failed}));
            store.end_log(id, log);
        }
        self.task.done.notify_waiters();
    }
}

/// Moves the events written so far to `log` (without one, nobody reads them).
fn publish(output: &mut Output, log: Option<&EventLog>) {
    let events = output.take_events();
    if let Some(log) = log {
        log.extend(events);
    }
}
