//! The events of a response run in the background and streamed (`background` with `stream`),
//! kept with the stored response: the task appends them as it writes them, and each reader (the
//! POST's own stream, `GET /v1/responses/{id}?stream=true&starting_after=N`) reads the log from
//! where it is and then waits for more, so a slow or late reader misses nothing and a reader
//! leaving stops nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};
use serde_json::Value;
use tokio::sync::Notify;

use crate::http::sse::{typed, NamedEvents};
use crate::http::ApiError;

/// Most bytes of events one log keeps (a long answer with logprobs runs to many): past it the
/// oldest go, and a reader that had not read them is told so instead of skipping them. The
/// last event, with the whole response, always stays.
pub(super) const MAX_LOG_BYTES: usize = 16 << 20;

/// Most events, and bytes of them, one read takes: the log's lock is held while they are
/// picked out (each a cheap `Arc` clone), and a reader from 0 would otherwise take them all.
const READ_EVENTS: usize = 256;
const READ_BYTES: usize = 1 << 20;

/// One response's events, serialized and named by their type, in sequence-number order.
#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<Inner>,
    grew: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// `events[i]` has sequence number `first + i`.
    events: VecDeque<Arc<(String, String)>>,
    first: u64,
    bytes: usize,
    /// No event comes after these.
    ended: bool,
}

impl EventLog {
    /// Appends `events` (the next sequence numbers, in order) and wakes the readers.
    pub fn extend(&self, events: Vec<Value>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for event in events {
            let logged = Arc::new(typed(&event));
            inner.bytes += logged.1.len();
            inner.events.push_back(logged);
        }
        while inner.bytes > MAX_LOG_BYTES && inner.events.len() > 1 {
            if let Some(gone) = inner.events.pop_front() {
                inner.bytes -= gone.1.len();
                inner.first += 1;
            }
        }
        drop(inner);
        self.grew.notify_waiters();
    }

    /// Marks the log whole: readers end once they have read it.
    pub fn end(&self) {
        self.lock().ended = true;
        self.grew.notify_waiters();
    }

    /// Appends `event`, numbered after the last one logged (its builder may have lost count,
    /// as a task that panicked has), and ends the log; one already ended is left as it is.
    pub fn end_with(&self, mut event: Value) {
        let mut inner = self.lock();
        if inner.ended {
            return;
        }
        event["sequence_number"] = Value::from(inner.first + inner.events.len() as u64);
        let logged = Arc::new(typed(&event));
        inner.bytes += logged.1.len();
        inner.events.push_back(logged);
        inner.ended = true;
        drop(inner);
        self.grew.notify_waiters();
    }

    /// Bytes of the events kept.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// What the store counts for the log: its bytes as they stand. A log still growing is
    /// counted again as it ends ([`super::ResponseStore::end_log`]); meanwhile its own bound
    /// holds it, rather than a charge at that bound, which would evict the responses of other
    /// clients (running ones among them) whenever a few dozen streams ran at once.
    pub fn charge(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The events after sequence number `after` (all when `None`), then each new one until the
    /// log ends.
    pub fn follow(self: Arc<Self>, after: Option<u64>) -> NamedEvents {
        let next = after.map_or(0, |n| n.saturating_add(1));
        stream::unfold(Some((self, next)), |reading| async move {
            let (log, next) = reading?;
            loop {
                // made before the look, so that an append between the look and the wait wakes it
                let grew = log.grew.notified();
                let read = match log.read(next) {
                    Read::Wait => {
                        grew.await;
                        continue;
                    }
                    read => read,
                };
                drop(grew);
                return match read {
                    Read::Events(batch) => {
                        let next = next + batch.len() as u64;
                        // copied out of the log here, outside its lock
                        let batch = batch.iter().map(|e| Ok(e.as_ref().clone())).collect();
                        Some((batch, Some((log, next))))
                    }
                    Read::Lost(first) => {
                        let msg = format!(
                            "events {next} to {} are no longer kept (a response keeps its last \
                             {MAX_LOG_BYTES} bytes of events): GET the response for its state",
                            first - 1
                        );
                        Some((vec![Err(ApiError::Internal(msg))], None))
                    }
                    Read::Ended | Read::Wait => None,
                };
            }
        })
        .flat_map(stream::iter)
        .boxed()
    }

    /// What a reader at sequence number `next` finds (a batch of at most `READ_EVENTS` events
    /// and `READ_BYTES` bytes, one at least).
    fn read(&self, next: u64) -> Read {
        let inner = self.lock();
        if next < inner.first {
            return Read::Lost(inner.first);
        }
        let at = usize::try_from(next - inner.first).unwrap_or(usize::MAX);
        if at < inner.events.len() {
            let mut bytes = 0;
            let batch = inner.events.range(at..).take(READ_EVENTS).enumerate();
            let batch = batch.take_while(|(i, e)| {
                bytes += e.1.len();
                *i == 0 || bytes <= READ_BYTES
            });
            return Read::Events(batch.map(|(_, e)| e.clone()).collect());
        }
        if inner.ended {
            Read::Ended
        } else {
            Read::Wait
        }
    }
}

enum Read {
    /// The events from the one asked for on (not all of them, past a batch's bounds).
    Events(Vec<Arc<(String, String)>>),
    /// Those from the one asked for are gone: the log starts at this one.
    Lost(u64),
    Ended,
    Wait,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn numbers(events: Vec<Result<(String, String), ApiError>>) -> Vec<u64> {
        events
            .into_iter()
            .map(|e| {
                let v: Value = serde_json::from_str(&e.expect("an event").1).expect("json");
                v["sequence_number"].as_u64().expect("number")
            })
            .collect()
    }

    #[tokio::test]
    async fn a_reader_gets_what_was_logged_after_its_start_then_the_rest_live() {
        let log = Arc::new(EventLog::default());
        log.extend((0..3).map(|n| json!({"sequence_number": n})).collect());
        let all = tokio::spawn(log.clone().follow(None).collect::<Vec<_>>());
        let late = tokio::spawn(log.clone().follow(Some(1)).collect::<Vec<_>>());
        tokio::task::yield_now().await;
        log.extend(vec![json!({"sequence_number": 3})]);
        log.end();
        assert_eq!(numbers(all.await.expect("joined")), [0, 1, 2, 3]);
        assert_eq!(numbers(late.await.expect("joined")), [2, 3]);
        assert!(log.follow(Some(3)).collect::<Vec<_>>().await.is_empty());
    }

    #[tokio::test]
    async fn a_reader_behind_what_the_log_keeps_is_told_so() {
        let log = Arc::new(EventLog::default());
        let big = "x".repeat(MAX_LOG_BYTES / 2);
        let events = (0..3).map(|n| json!({"sequence_number": n, "pad": big}));
        log.extend(events.collect());
        log.end();
        let read: Vec<_> = log.clone().follow(None).collect().await;
        assert!(matches!(read.as_slice(), [Err(ApiError::Internal(_))]));
        assert_eq!(numbers(log.follow(Some(1)).collect().await), [2]);
    }

    #[tokio::test]
    async fn a_read_shares_the_logged_events_and_takes_a_bounded_batch() {
        let log = Arc::new(EventLog::default());
        let many = 3 * READ_EVENTS as u64;
        log.extend((0..many).map(|n| json!({"sequence_number": n})).collect());
        let Read::Events(batch) = log.read(0) else {
            panic!("events")
        };
        assert_eq!(batch.len(), READ_EVENTS);
        assert!(Arc::ptr_eq(&batch[0], &log.lock().events[0]));
        let big = "x".repeat(READ_BYTES / 2 + 1);
        let events = (many..many + 3).map(|n| json!({"sequence_number": n, "pad": big}));
        log.extend(events.collect());
        let Read::Events(batch) = log.read(many) else {
            panic!("events")
        };
        assert_eq!(batch.len(), 1);
        log.end();
        let all = numbers(log.clone().follow(None).collect().await);
        assert_eq!(all, (0..many + 3).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn ending_with_an_event_numbers_it_after_the_last_logged() {
        let log = Arc::new(EventLog::default());
        log.extend((0..2).map(|n| json!({"sequence_number": n})).collect());
        log.end_with(json!({"type": "response.failed"}));
        log.end_with(json!({"type": "twice"}));
        assert_eq!(numbers(log.clone().follow(Some(0)).collect().await), [1, 2]);
        assert_eq!(log.charge(), log.bytes());
    }
}
