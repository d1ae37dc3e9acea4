//! The caller's end of one request.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::shared::{Command, Shared};
use super::RequestEvent;

/// The caller's end of one request. Dropping it before the request finished aborts the request.
pub struct RequestHandle {
    rid: String,
    worker: usize,
    events: mpsc::UnboundedReceiver<RequestEvent>,
    done: bool,
    shared: Arc<Shared>,
}

impl RequestHandle {
    pub(super) fn new(
        rid: String,
        worker: usize,
        events: mpsc::UnboundedReceiver<RequestEvent>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            rid,
            worker,
            events,
            done: false,
            shared,
        }
    }

    /// Marks the handle finished without aborting (its submission never went out).
    pub(super) fn disarm(&mut self) {
        self.done = true;
    }

    /// The request id sent to the worker.
    pub fn rid(&self) -> &str {
        &self.rid
    }

    /// The address of the worker serving this request.
    pub fn worker_addr(&self) -> &str {
        &self.shared.workers[self.worker].addr
    }

    /// The next event, in order; `None` after the final event (or after [`RequestHandle::abort`]
    /// once buffered events are read).
    pub async fn next(&mut self) -> Option<RequestEvent> {
        let event = self.events.recv().await;
        match &event {
            Some(RequestEvent::Output(out)) if out.finish.is_none() => {}
            _ => self.done = true,
        }
        event
    }

    /// True once the final event was read or the request was aborted.
    pub fn is_finished(&self) -> bool {
        self.done
    }

    /// Aborts the request now (the worker frees its resources). No further event is produced
    /// beyond those already received by the dispatcher. Does nothing after the final event.
    pub fn abort(&mut self) {
        self.stop_with("abort");
    }

    /// Stops the request because the answer is complete on the router's side (a stop string
    /// matched): the same as [`RequestHandle::abort`], counted as a `stop` finish.
    pub fn stop_early(&mut self) {
        self.stop_with("stop");
    }

    fn stop_with(&mut self, reason: &'static str) {
        if !self.done {
            self.done = true;
            let _ = self.shared.push(Command::Abort {
                worker: self.worker,
                rid: self.rid.clone(),
                reason,
            });
        }
    }
}

impl Drop for RequestHandle {
    /// Dropped before its final event: nothing reads the answer any more (the client went away,
    /// or another choice of the same request failed and the request was answered with that
    /// error), so the worker is told to stop, and the log says so.
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(
                rid = %self.rid,
                "request cancelled before it finished: the client disconnected, or another \
                 choice of its request failed"
            );
            self.abort();
        }
    }
}
