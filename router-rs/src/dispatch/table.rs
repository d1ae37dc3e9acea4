//! The I/O thread's table of in-flight requests: routes outputs to handles, keeps each worker's
//! in-flight count, and records per-request metrics (tokens, TTFT, inter-token and end-to-end
//! latency, finish reasons).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::shared::Shared;
use super::RequestEvent;
use crate::wire::{self, ErrorCode};

/// A request the I/O thread routes outputs for.
struct Tracked {
    worker: usize,
    events: mpsc::UnboundedSender<RequestEvent>,
    submitted: Instant,
    last_token: Option<Instant>,
    /// A health probe (`PROBE_PREFIX`): left out of the metrics.
    probe: bool,
    /// The client's id for it.
    client: Option<Arc<str>>,
    /// Tokens generated for it so far.
    tokens: u64,
}

/// What leads the id of a request the router makes itself to probe a worker (`/health_generate`);
/// no client id can (they hold no `~`).
pub const PROBE_PREFIX: &str = "~probe";

pub(super) struct RequestTable {
    entries: HashMap<String, Tracked>,
    shared: Arc<Shared>,
    /// Log each request's end (`--enable-log-requests`).
    log: bool,
}

impl RequestTable {
    pub(super) fn new(shared: Arc<Shared>, log: bool) -> Self {
        Self {
            entries: HashMap::new(),
            shared,
            log,
        }
    }

    /// Starts tracking a request (its worker's in-flight count was charged at submission).
    pub(super) fn insert(
        &mut self,
        rid: String,
        worker: usize,
        events: mpsc::UnboundedSender<RequestEvent>,
        client: Option<Arc<str>>,
    ) {
        let tracked = Tracked {
            worker,
            events,
            submitted: Instant::now(),
            last_token: None,
            probe: rid.starts_with(PROBE_PREFIX),
            client,
            tokens: 0,
        };
        if tracked.probe {
            self.shared.workers[worker]
                .probes
                .fetch_add(1, Ordering::SeqCst);
        }
        self.entries.insert(rid, tracked);
        self.publish_in_flight();
    }

    /// Forgets an aborted request; false when it had already finished.
    pub(super) fn abort(&mut self, rid: &str, reason: &str) -> bool {
        let Some(tracked) = self.entries.remove(rid) else {
            return false;
        };
        self.release(rid, &tracked, reason);
        true
    }

    /// Hands one output to its request's handle (outputs of unknown ids are dropped).
    pub(super) fn route(&mut self, out: wire::Output) {
        let Some(tracked) = self.entries.get_mut(&out.rid) else {
            return;
        };
        let metrics = &self.shared.metrics;
        let now = Instant::now();
        if tracked.probe {
            // a health probe's tokens and times are not the clients'
        } else if let Some(prompt) = out.prompt_tokens {
            let cached = out.cached_tokens.unwrap_or(0);
            metrics.add_prompt_tokens(u64::from(prompt), u64::from(cached));
        }
        tracked.tokens += out.ids.len() as u64;
        if !out.ids.is_empty() && !tracked.probe {
            let n = out.ids.len();
            match tracked.last_token {
                None => metrics
                    .ttft
                    .observe((now - tracked.submitted).as_secs_f64()),
                Some(prev) => {
                    let gap = (now - prev).as_secs_f64() / n as f64;
                    (0..n).for_each(|_| metrics.itl.observe(gap));
                }
            }
            tracked.last_token = Some(now);
            let accepted = u64::from(out.spec_accepted.unwrap_or(0));
            metrics.add_generation_tokens(n as u64, accepted);
        }
        match out.finish {
            None => {
                let _ = tracked.events.send(RequestEvent::Output(out));
            }
            Some(reason) => {
                let rid = out.rid.clone();
                self.finish(&rid, RequestEvent::Output(out), reason.as_str());
            }
        }
    }

    /// Delivers a request's final event and forgets it; `reason` labels the finish metric.
    /// False when it was not tracked (already ended).
    pub(super) fn finish(&mut self, rid: &str, event: RequestEvent, reason: &str) -> bool {
        let Some(tracked) = self.entries.remove(rid) else {
            return false;
        };
        let _ = tracked.events.send(event);
        self.release(rid, &tracked, reason);
        true
    }

    /// Fails a request with an `internal` error.
    pub(super) fn fail(&mut self, rid: &str, message: &str) {
        let event = RequestEvent::Error {
            code: ErrorCode::Internal,
            message: message.to_owned(),
        };
        self.finish(rid, event, "error");
    }

    /// `(id, worker)` of the requests of `client` (every client's when `None`), probes left out.
    pub(super) fn rids_of(&self, client: Option<&str>) -> Vec<(String, usize)> {
        self.entries
            .iter()
            .filter(|(_, t)| !t.probe && client.is_none_or(|c| t.client.as_deref() == Some(c)))
            .map(|(rid, t)| (rid.clone(), t.worker))
            .collect()
    }

    /// Ids of the requests on `worker` (every worker when `None`).
    pub(super) fn rids_on(&self, worker: Option<usize>) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, t)| worker.is_none_or(|w| t.worker == w))
            .map(|(rid, _)| rid.clone())
            .collect()
    }

    fn release(&self, rid: &str, tracked: &Tracked, reason: &str) {
        if self.log {
            tracing::info!(
                "request {rid} ended ({reason}): {} tokens generated in {:.3} s",
                tracked.tokens,
                tracked.submitted.elapsed().as_secs_f64()
            );
        }
        let metrics = &self.shared.metrics;
        self.shared.workers[tracked.worker]
            .in_flight
            .fetch_sub(1, Ordering::SeqCst);
        if tracked.probe {
            self.shared.workers[tracked.worker]
                .probes
                .fetch_sub(1, Ordering::SeqCst);
        } else {
            metrics
                .e2e
                .observe(tracked.submitted.elapsed().as_secs_f64());
            metrics.inc_finish(reason);
        }
        self.publish_in_flight();
    }

    fn publish_in_flight(&self) {
        self.shared.metrics.set_in_flight(self.entries.len() as u64);
    }
}
