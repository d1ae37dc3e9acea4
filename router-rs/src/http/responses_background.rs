//! `background: true`: the response is stored `in_progress` and a task runs it on, storing it
//! again as it ends. Streamed too, its events go to a log kept with it, which readers follow
//! (response_events.rs); none of them holds the request, so one leaving stops nothing.

use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;

use super::{AppState, ChoiceStream, EventBuilder, EventLog, Input, Output};

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
    tokio::spawn(async move {
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
                        output.error = Some(err.to_string());
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
        state
            .responses
            .end_background(&id, input, last, log.clone());
        if let Some(log) = &log {
            publish(&mut output, Some(log));
            log.end();
        }
        task.done.notify_waiters();
    });
    first
}

/// Moves the events written so far to `log` (without one, nobody reads them).
fn publish(output: &mut Output, log: Option<&EventLog>) {
    let events = output.take_events();
    if let Some(log) = log {
        log.extend(events);
    }
}
