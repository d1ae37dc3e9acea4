//! State shared by the callers of the dispatcher and its I/O thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use super::prefix::{block_hashes, choose, BalanceOptions, BalancePolicy, PrefixIndex};
use super::{DispatchError, RequestEvent, WorkerInfo};
use crate::metrics::Metrics;
use crate::wire;

/// A request's route from the caller to the I/O thread.
pub(super) struct Submitted {
    pub req: wire::Request,
    pub events: mpsc::UnboundedSender<RequestEvent>,
    /// The client's id for it (`X-Request-Id`, SGLang's `rid`), which `/abort_request` names.
    pub client: Option<Arc<str>>,
}

/// Work for the I/O thread.
pub(super) enum Command {
    /// Send these requests to `worker` (in one `submit` with anything else queued for it).
    Submit { worker: usize, reqs: Vec<Submitted> },
    /// Stop a request if it has not finished.
    /// Stop a request; `reason` is what the finish metrics count (`abort`, or `stop` when a stop
    /// string ended the answer before the worker did).
    Abort {
        worker: usize,
        rid: String,
        reason: &'static str,
    },
    /// Tell every ready worker to drop its unreferenced prefix-cache pages (after anything
    /// already queued for it).
    FlushCaches,
    /// Abort the in-flight requests of this client id (every client's when `None`; never the
    /// health probes): each ends with an `abort` finish, as the worker reports it.
    AbortClient { client: Option<String> },
    /// Fail every in-flight request and end the thread.
    Shutdown,
}

/// The state of one worker shared between callers and the I/O thread.
pub(super) struct WorkerSlot {
    pub addr: String,
    pub ready: AtomicBool,
    /// Requests submitted to this worker and not finished.
    pub in_flight: AtomicUsize,
    /// Of those, the router's own health probes.
    pub probes: AtomicUsize,
    pub info: RwLock<Option<WorkerInfo>>,
}

/// Everything callers and the I/O thread share.
pub(super) struct Shared {
    pub workers: Vec<WorkerSlot>,
    pub queue: Mutex<Vec<Command>>,
    /// The sending end of the wakeup pair; the I/O thread owns the receiving end.
    pub wake: Mutex<zmq::Socket>,
    /// True while a wakeup is on its way and not yet consumed.
    pub wake_pending: AtomicBool,
    pub closed: AtomicBool,
    pub next_rid: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub balance: BalanceOptions,
    /// The prompts sent to each worker, for prefix-aware balancing.
    pub prefixes: Mutex<PrefixIndex>,
}

impl Shared {
    /// Queues a command and wakes the I/O thread unless a wakeup is already pending.
    pub fn push(&self, cmd: Command) -> Result<(), DispatchError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(DispatchError::Closed);
        }
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cmd);
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
            // A full pipe means wakeups are already queued; nothing is lost by dropping this one.
            let _ = wake.send(&[] as &[u8], zmq::DONTWAIT);
        }
        Ok(())
    }

    /// Takes every queued command, oldest first.
    pub fn take_commands(&self) -> Vec<Command> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The worker for `n` requests of one prompt under the balance policy (prefix.rs), charged
    /// with them; the prompt is recorded as sent there. A prompt that is not `cacheable` (its
    /// worker will compute it whole) goes by load alone, and is recorded all the same. Prompts
    /// of another `salt` (the workers' caches share nothing across salts) never match.
    pub fn pick_worker(
        &self,
        prompt: &[u32],
        salt: Option<&str>,
        cacheable: bool,
        n: usize,
    ) -> Option<usize> {
        let loads: Vec<Option<usize>> = self
            .workers
            .iter()
            .map(|w| {
                w.ready
                    .load(Ordering::SeqCst)
                    .then(|| w.in_flight.load(Ordering::SeqCst))
            })
            .collect();
        let by_prefix = self.balance.policy == BalancePolicy::Prefix && self.workers.len() > 1;
        let best = if by_prefix {
            let hashes = block_hashes(prompt, salt);
            let mut index = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            let mut matched = index.matches(&hashes, self.workers.len());
            if !cacheable {
                matched.fill(0);
            }
            let (best, by_match) = choose(&loads, &matched, prompt.len(), &self.balance)?;
            index.insert(&hashes, best);
            if by_match {
                self.metrics.inc_prefix_routed();
            }
            best
        } else {
            choose(&loads, &[], prompt.len(), &self.balance)?.0
        };
        self.workers[best].in_flight.fetch_add(n, Ordering::SeqCst);
        Some(best)
    }

    pub fn fresh_rid(&self, prefix: &str) -> String {
        let n = self.next_rid.fetch_add(1, Ordering::Relaxed);
        if prefix.is_empty() {
            format!("r{n}")
        } else {
            format!("{prefix}-{n}")
        }
    }
}
