//! The ZeroMQ client of the workers: batching, replicas, aborts and health (docs/wire.md).
//!
//! A [`Dispatcher`] owns one `DEALER` socket per worker address on a dedicated I/O thread (ZeroMQ
//! sockets must stay on one thread). Async code talks to that thread through a command queue and an
//! in-process wakeup socket, so submitting never blocks and the I/O thread sleeps in `zmq::poll`
//! until a command or a worker message arrives.
//!
//! Life of a request:
//! 1. [`Dispatcher::submit`] picks a ready worker (several worker addresses are data-parallel
//!    replicas): the one that was sent the longest prefix of the prompt while the load is
//!    balanced, else the one with the fewest in-flight requests (prefix.rs), and returns a
//!    [`RequestHandle`] at once. It fails with
//!    [`DispatchError::NoWorkerReady`] when no worker has answered `hello` (HTTP 503).
//! 2. The I/O thread sends every request queued since its last turn to a worker as one `submit`.
//! 3. [`RequestHandle::next`] yields the request's outputs in order. The last event is an output with
//!    `finish` set or a [`RequestEvent::Error`]; after it `next` returns `None`.
//! 4. Dropping a handle whose request has not finished sends `abort` for it, which frees its KV cache
//!    in the worker. That is how a client disconnect ends a request.
//!
//! Health: the dispatcher sends `hello` as soon as a connection is up and whenever a worker has been
//! silent for [`DispatchOptions::probe_interval`]; a worker is ready once it answers `ready`. A
//! worker whose connection drops (its process exited), that stays silent for
//! [`DispatchOptions::silence_timeout`], reports a fatal error, or speaks another protocol version
//! is marked not ready and each of its in-flight requests gets an error event, so no handle waits
//! forever. Probing continues and the worker comes back on its next `ready`.

mod handle;
mod io;
mod prefix;
mod shared;
mod sockets;
mod table;

pub use table::PROBE_PREFIX;

pub use handle::RequestHandle;
pub use prefix::{BalanceOptions, BalancePolicy, BLOCK_TOKENS};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::wire::{self, ErrorCode};
use prefix::PrefixIndex;
use shared::{Command, Shared, Submitted, WorkerSlot};

/// Why the dispatcher could not start or accept a request.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No worker address was given.
    #[error("no worker address given")]
    NoWorkers,
    /// No worker is ready (none has answered `hello`, or all were lost); HTTP 503.
    #[error("no worker is ready")]
    NoWorkerReady,
    /// The dispatcher has shut down.
    #[error("the dispatcher has shut down")]
    Closed,
    /// A ZeroMQ call failed at start-up (for example a malformed worker address).
    #[error("zeromq error on {context}: {source}")]
    Zmq {
        context: String,
        #[source]
        source: zmq::Error,
    },
    /// The I/O thread could not be spawned.
    #[error("cannot start the dispatch thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Timing of the health probes.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// Send `hello` to a worker that has been silent this long (and at most this often).
    pub probe_interval: Duration,
    /// A ready worker silent this long is considered lost: not ready, its requests fail.
    pub silence_timeout: Duration,
    /// The `client` string sent in `hello`.
    pub client_name: String,
    /// How requests are spread over several workers.
    pub balance: BalanceOptions,
    /// Log every request as it is sent and as it ends (`--enable-log-requests`).
    pub log_requests: bool,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            silence_timeout: Duration::from_secs(60),
            client_name: format!("glm47-router {}", env!("CARGO_PKG_VERSION")),
            balance: BalanceOptions::default(),
            log_requests: false,
        }
    }
}

/// What a ready worker told us in its `ready` message.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// The address the router connects to.
    pub addr: String,
    /// The worker's name for logs and metrics.
    pub worker_id: String,
    /// The model name served (for `/v1/models`).
    pub model: String,
    /// Size of the logits.
    pub vocab_size: u32,
    /// Ids that finish a request with `stop`.
    pub eos_token_ids: Vec<u32>,
    /// Longest prompt + output the worker accepts.
    pub max_req_total_len: u32,
    /// Capacity of the running batch.
    pub max_running_requests: u32,
    /// Capacity of the waiting queue (0: not stated).
    pub max_waiting_requests: u32,
    /// Tokens the KV cache holds.
    pub kv_capacity_tokens: u64,
    /// Draft tokens per step (0: no speculation).
    pub mtp_step: u32,
}

impl WorkerInfo {
    fn from_ready(addr: &str, ready: wire::Ready) -> Self {
        Self {
            addr: addr.to_owned(),
            worker_id: ready.worker_id,
            model: ready.model,
            vocab_size: ready.vocab_size,
            eos_token_ids: ready.eos_token_ids,
            max_req_total_len: ready.max_req_total_len,
            max_running_requests: ready.max_running_requests,
            max_waiting_requests: ready.max_waiting_requests,
            kv_capacity_tokens: ready.kv_capacity_tokens,
            mtp_step: ready.mtp_step,
        }
    }
}

/// One piece of news about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestEvent {
    /// New tokens; the request's last output has `finish` set (`prompt_tokens` and
    /// `cached_tokens` come on the first).
    Output(wire::Output),
    /// The request failed and is over. `code` maps to HTTP: `queue_full` 429, `invalid_request` and
    /// `too_long` 400, the rest 500. A lost worker gives `internal`.
    Error { code: ErrorCode, message: String },
}

/// The router's connection to its workers. Cheap to share as `Arc<Dispatcher>`; dropping the last
/// reference stops the I/O thread, and every unfinished handle then gets an error event.
pub struct Dispatcher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Dispatcher {
    /// Connects to every worker address (`tcp://host:port`, `ipc://path`) with default probe
    /// timing. Fails only on an empty list, a malformed address or a failing thread spawn; an
    /// unreachable worker is simply not ready until it answers.
    pub fn start(addrs: Vec<String>, metrics: Arc<Metrics>) -> Result<Arc<Self>, DispatchError> {
        Self::start_with(addrs, metrics, DispatchOptions::default())
    }

    /// As [`Dispatcher::start`], with explicit probe timing.
    pub fn start_with(
        addrs: Vec<String>,
        metrics: Arc<Metrics>,
        options: DispatchOptions,
    ) -> Result<Arc<Self>, DispatchError> {
        if addrs.is_empty() {
            return Err(DispatchError::NoWorkers);
        }
        let ctx = zmq::Context::new();
        let (wake_tx, wake_rx) = sockets::wake_pair(&ctx)?;
        let sockets = addrs
            .iter()
            .map(|addr| sockets::connect_worker(&ctx, addr))
            .collect::<Result<Vec<_>, _>>()?;
        for addr in &addrs {
            metrics.set_worker_ready(addr, false);
        }
        let shared = Arc::new(Shared {
            workers: addrs
                .into_iter()
                .map(|addr| WorkerSlot {
                    addr,
                    ready: AtomicBool::new(false),
                    in_flight: AtomicUsize::new(0),
                    probes: AtomicUsize::new(0),
                    info: RwLock::new(None),
                })
                .collect(),
            queue: Mutex::new(Vec::new()),
            wake: Mutex::new(wake_tx),
            wake_pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            next_rid: AtomicU64::new(0),
            metrics,
            prefixes: Mutex::new(PrefixIndex::new(prefix::DEFAULT_CAPACITY)),
            balance: options.balance.clone(),
        });
        let io_loop = io::IoLoop::new(shared.clone(), wake_rx, sockets, options);
        let thread = std::thread::Builder::new()
            .name("glm47-dispatch".into())
            .spawn(move || {
                let _ctx = ctx;
                io_loop.run();
            })?;
        Ok(Arc::new(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Submits one request; see [`Dispatcher::submit_many`].
    pub fn submit(&self, req: wire::Request) -> Result<RequestHandle, DispatchError> {
        let mut handles = self.submit_many(vec![req])?;
        handles.pop().ok_or(DispatchError::Closed)
    }

    /// Submits requests to one worker, in one `submit` message, and returns their handles in the
    /// same order. Never blocks. Each request's `rid` is replaced by a fresh id unique for this
    /// dispatcher (the given `rid`, if any, becomes its prefix, for logs); read it back with
    /// [`RequestHandle::rid`]. Fails with [`DispatchError::NoWorkerReady`] when no worker is ready.
    pub fn submit_many(
        &self,
        reqs: Vec<wire::Request>,
    ) -> Result<Vec<RequestHandle>, DispatchError> {
        self.submit_many_for(reqs, None)
    }

    /// [`Dispatcher::submit_many`] for the client that calls them `client`: that id aborts them
    /// ([`Dispatcher::abort_client`]).
    pub fn submit_many_for(
        &self,
        reqs: Vec<wire::Request>,
        client: Option<&str>,
    ) -> Result<Vec<RequestHandle>, DispatchError> {
        let client: Option<Arc<str>> = client.map(Arc::from);
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(DispatchError::Closed);
        }
        let n = reqs.len();
        let prompt = reqs.first().map_or(&[][..], |r| &r.input_ids[..]);
        // A prompt whose logprobs are asked for is computed whole: no cache can serve it.
        let cacheable = reqs.first().is_some_and(|r| r.prompt_logprobs < 0);
        let salt = reqs.first().and_then(|r| r.cache_salt.as_deref());
        let worker = self
            .shared
            .pick_worker(prompt, salt, cacheable, n)
            .ok_or(DispatchError::NoWorkerReady)?;
        let mut handles = Vec::with_capacity(n);
        let mut submitted = Vec::with_capacity(n);
        for mut req in reqs {
            req.rid = self.shared.fresh_rid(&req.rid);
            let (tx, rx) = mpsc::unbounded_channel();
            handles.push(RequestHandle::new(
                req.rid.clone(),
                worker,
                rx,
                self.shared.clone(),
            ));
            submitted.push(Submitted {
                req,
                events: tx,
                client: client.clone(),
            });
        }
        let pushed = self.shared.push(Command::Submit {
            worker,
            reqs: submitted,
        });
        if let Err(e) = pushed {
            self.shared.workers[worker]
                .in_flight
                .fetch_sub(n, Ordering::SeqCst);
            for h in &mut handles {
                h.disarm();
            }
            return Err(e);
        }
        Ok(handles)
    }

    /// The description of a ready worker (the first one, when several are), or `None` while no
    /// worker is ready. Use it for `/health`, `/v1/models`, the length limit and the eos ids.
    pub fn ready_worker(&self) -> Option<WorkerInfo> {
        self.shared
            .workers
            .iter()
            .filter(|w| w.ready.load(Ordering::SeqCst))
            .find_map(|w| w.info.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Every ready worker, in the order of the addresses given to `start`.
    pub fn ready_workers(&self) -> Vec<WorkerInfo> {
        self.shared
            .workers
            .iter()
            .filter(|w| w.ready.load(Ordering::SeqCst))
            .filter_map(|w| w.info.read().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// True when at least one worker is ready.
    pub fn is_ready(&self) -> bool {
        self.shared
            .workers
            .iter()
            .any(|w| w.ready.load(Ordering::SeqCst))
    }

    /// Requests in flight on each worker, in the order of the addresses given to `start`.
    pub fn in_flight(&self) -> Vec<usize> {
        self.shared
            .workers
            .iter()
            .map(|w| w.in_flight.load(Ordering::SeqCst))
            .collect()
    }

    /// The workers' addresses, in the order they were given.
    pub fn worker_addrs(&self) -> Vec<String> {
        self.shared.workers.iter().map(|w| w.addr.clone()).collect()
    }

    /// The clients' requests in flight (the router's health probes left out), by worker address.
    pub fn client_load(&self) -> std::collections::HashMap<String, usize> {
        let workers = &self.shared.workers;
        let counts = workers.iter().map(|w| {
            let all = w.in_flight.load(Ordering::SeqCst);
            all.saturating_sub(w.probes.load(Ordering::SeqCst))
        });
        workers.iter().map(|w| w.addr.clone()).zip(counts).collect()
    }

    /// The metrics this dispatcher records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Asks every ready worker to drop the prefix-cache pages no request holds, and forgets the
    /// prefixes recorded for them, so a request submitted once this returns is balanced as if
    /// they held none; returns how many were asked (0: none ready, or the dispatcher is closed).
    pub fn flush_caches(&self) -> usize {
        let ready: Vec<usize> = (0..self.shared.workers.len())
            .filter(|&w| self.shared.workers[w].ready.load(Ordering::SeqCst))
            .collect();
        if ready.is_empty() {
            return 0;
        }
        // Here, not on the I/O thread: a submit right after this call would otherwise still be
        // pinned by the prefixes until that thread's next turn. Held across the push, so that a
        // prompt recorded after the forget is submitted after the flush.
        let mut index = self
            .shared
            .prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.shared.push(Command::FlushCaches).is_err() {
            return 0;
        }
        ready.iter().for_each(|&w| index.forget(w));
        ready.len()
    }

    /// Aborts the in-flight requests submitted for `client` (every client's when `None`): each
    /// ends with an `abort` finish once its worker has freed it. False when the dispatcher is
    /// closed.
    pub fn abort_client(&self, client: Option<&str>) -> bool {
        let client = client.map(str::to_owned);
        self.shared.push(Command::AbortClient { client }).is_ok()
    }

    /// Stops the I/O thread: in-flight requests get an error event, later submits fail with
    /// [`DispatchError::Closed`]. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let _ = self.shared.push(Command::Shutdown);
        self.shared.closed.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the dispatch thread panicked");
            }
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}
