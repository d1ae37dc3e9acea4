//! The dispatcher's I/O thread: owns the ZeroMQ sockets, the request table and the probes.
//!
//! One loop turn: poll (wakeup + every worker socket), take queued commands, read every waiting
//! worker message, flush one `submit` and one `abort` per worker, then run the probe timers.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::prefix::PrefixIndex;
use super::shared::{Command, Shared, Submitted};
use super::sockets::{read_link_events, LinkEvent, WorkerSockets};
use super::table::RequestTable;
use super::{DispatchOptions, RequestEvent, WorkerInfo, BLOCK_TOKENS};
use crate::wire::{self, Message};

/// At most this many messages are read from one worker per loop turn, so one busy worker cannot
/// starve the others or the command queue.
const MAX_READS_PER_TURN: usize = 256;
/// Longest sleep in `poll` when no timer is due sooner.
const MAX_POLL: Duration = Duration::from_millis(100);

/// The I/O thread's view of one worker.
struct Link {
    sock: zmq::Socket,
    monitor: zmq::Socket,
    last_heard: Instant,
    last_hello: Option<Instant>,
    pending_submit: Vec<wire::Request>,
    pending_abort: Vec<String>,
}

/// What `poll` found: the wakeup, and per worker (message waiting, connection event waiting).
struct Readable {
    wake: bool,
    links: Vec<(bool, bool)>,
}

pub(super) struct IoLoop {
    shared: Arc<Shared>,
    wake: zmq::Socket,
    links: Vec<Link>,
    table: RequestTable,
    options: DispatchOptions,
}

impl IoLoop {
    pub(super) fn new(
        shared: Arc<Shared>,
        wake: zmq::Socket,
        sockets: Vec<WorkerSockets>,
        options: DispatchOptions,
    ) -> Self {
        let now = Instant::now();
        let links = sockets
            .into_iter()
            .map(|s| Link {
                sock: s.dealer,
                monitor: s.monitor,
                last_heard: now,
                last_hello: None,
                pending_submit: Vec::new(),
                pending_abort: Vec::new(),
            })
            .collect();
        Self {
            table: RequestTable::new(shared.clone(), options.log_requests),
            shared,
            wake,
            links,
            options,
        }
    }

    pub(super) fn run(mut self) {
        self.tick(Instant::now());
        loop {
            let ready = match self.poll() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("dispatch poll failed: {e}");
                    break;
                }
            };
            if ready.wake {
                while self.wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
            }
            self.shared.wake_pending.store(false, Ordering::SeqCst);
            if !self.apply_commands() {
                break;
            }
            for (w, (message, event)) in ready.links.into_iter().enumerate() {
                if message {
                    self.receive(w);
                }
                if event {
                    self.on_link_events(w);
                }
            }
            self.flush();
            self.tick(Instant::now());
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        for rid in self.table.rids_on(None) {
            self.table.fail(&rid, "the router is shutting down");
        }
    }

    /// Waits for a wakeup, a worker message or a connection event.
    fn poll(&self) -> Result<Readable, zmq::Error> {
        let mut items = Vec::with_capacity(2 * self.links.len() + 1);
        items.push(self.wake.as_poll_item(zmq::POLLIN));
        for link in &self.links {
            items.push(link.sock.as_poll_item(zmq::POLLIN));
            items.push(link.monitor.as_poll_item(zmq::POLLIN));
        }
        let timeout = self.options.probe_interval.min(MAX_POLL);
        zmq::poll(&mut items, timeout.as_millis() as i64)?;
        Ok(Readable {
            wake: items[0].is_readable(),
            links: items[1..]
                .chunks(2)
                .map(|pair| (pair[0].is_readable(), pair[1].is_readable()))
                .collect(),
        })
    }

    /// Probes a worker as soon as a connection is up; loses it as soon as the connection drops.
    fn on_link_events(&mut self, worker: usize) {
        for event in read_link_events(&self.links[worker].monitor) {
            match event {
                LinkEvent::Connected => {
                    tracing::debug!("connected to {}", self.shared.workers[worker].addr);
                    self.probe(worker, Instant::now());
                }
                LinkEvent::Disconnected => self.lose(worker, "the connection to the worker closed"),
            }
        }
    }

    /// The router's record of which worker was sent which prefixes.
    fn prefixes(&self) -> std::sync::MutexGuard<'_, PrefixIndex> {
        self.shared
            .prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Applies queued commands; false on shutdown.
    fn apply_commands(&mut self) -> bool {
        for cmd in self.shared.take_commands() {
            match cmd {
                Command::Submit { worker, reqs } => self.admit(worker, reqs),
                Command::Abort {
                    worker,
                    rid,
                    reason,
                } => self.abort(worker, rid, reason),
                Command::FlushCaches => self.flush_caches(),
                Command::AbortClient { client } => self.abort_client(client.as_deref()),
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn admit(&mut self, worker: usize, reqs: Vec<Submitted>) {
        let ready = self.shared.workers[worker].ready.load(Ordering::SeqCst);
        for Submitted {
            req,
            events,
            client,
        } in reqs
        {
            if self.options.log_requests {
                tracing::info!(
                    "request {} sent to {}: {} prompt tokens, max_new_tokens {}, temperature {}, \
                     top_p {}, top_k {}, seed {}, grammar {}, client id {}",
                    req.rid,
                    self.shared.workers[worker].addr,
                    req.input_ids.len(),
                    req.max_new_tokens,
                    req.temperature,
                    req.top_p,
                    req.top_k,
                    req.seed.map_or("-".into(), |s| s.to_string()),
                    req.grammar.is_some(),
                    client.as_deref().unwrap_or("-"),
                );
            }
            self.table.insert(req.rid.clone(), worker, events, client);
            if ready {
                self.links[worker].pending_submit.push(req);
            } else {
                let addr = &self.shared.workers[worker].addr;
                self.table
                    .fail(&req.rid, &format!("worker {addr} became unavailable"));
            }
        }
    }

    /// Sends what is queued, then `flush_cache`, to every ready worker: a request submitted after
    /// the flush finds none of the pages it dropped. (`Dispatcher::flush_caches` has already
    /// forgotten their prefixes; what was recorded since went out after the flush.)
    fn flush_caches(&mut self) {
        self.flush();
        for worker in 0..self.links.len() {
            if !self.shared.workers[worker].ready.load(Ordering::SeqCst) {
                continue;
            }
            if let Err(reason) = self.send(worker, &Message::FlushCache(wire::FlushCache {})) {
                let addr = &self.shared.workers[worker].addr;
                tracing::warn!("cannot send flush_cache to {addr}: {reason}");
            }
        }
    }

    fn abort(&mut self, worker: usize, rid: String, reason: &'static str) {
        if !self.table.abort(&rid, reason) {
            return;
        }
        if !self.unqueue(worker, &rid) {
            self.links[worker].pending_abort.push(rid);
        }
    }

    /// Drops `rid` from the requests queued for `worker`; false when it was not queued (it has
    /// gone out: only an `abort` stops it now).
    fn unqueue(&mut self, worker: usize, rid: &str) -> bool {
        let queued = &mut self.links[worker].pending_submit;
        let before = queued.len();
        queued.retain(|r| r.rid != rid);
        queued.len() != before
    }

    /// Asks the workers to abort the requests of `client` (every client's when `None`), leaving
    /// them tracked: the worker's `abort` finish ends each as it ends a request it stopped
    /// itself. One still queued for its worker is dropped from the queue and ended here.
    fn abort_client(&mut self, client: Option<&str>) {
        for (rid, worker) in self.table.rids_of(client) {
            if self.unqueue(worker, &rid) {
                let out = wire::Output {
                    rid: rid.clone(),
                    finish: Some(wire::FinishReason::Abort),
                    ..wire::Output::default()
                };
                self.table.finish(&rid, RequestEvent::Output(out), "abort");
            } else {
                self.links[worker].pending_abort.push(rid);
            }
        }
        tracing::info!(
            "abort asked for the requests of {}",
            client.unwrap_or("every client")
        );
    }

    /// Reads every waiting message of one worker.
    fn receive(&mut self, worker: usize) {
        for _ in 0..MAX_READS_PER_TURN {
            let bytes = match self.links[worker].sock.recv_bytes(zmq::DONTWAIT) {
                Ok(bytes) => bytes,
                Err(zmq::Error::EAGAIN) => return,
                Err(e) => {
                    tracing::warn!(
                        "receive from {} failed: {e}",
                        self.shared.workers[worker].addr
                    );
                    return;
                }
            };
            self.links[worker].last_heard = Instant::now();
            match wire::decode(&bytes) {
                Ok(msg) => self.handle(worker, msg),
                Err(wire::WireError::Version(v)) => {
                    self.lose(worker, &format!("worker speaks protocol version {v}"));
                }
                Err(e) => {
                    let addr = &self.shared.workers[worker].addr;
                    tracing::warn!("undecodable message from {addr}: {e}");
                }
            }
        }
    }

    fn handle(&mut self, worker: usize, msg: Message) {
        let addr = &self.shared.workers[worker].addr;
        match msg {
            Message::Ready(ready) => self.on_ready(worker, ready),
            Message::Step(step) => {
                for out in step.outs {
                    self.table.route(out);
                }
                // a worker given up on (silent too long) has no load until it is ready again
                if self.shared.workers[worker].ready.load(Ordering::SeqCst) {
                    self.shared.metrics.set_worker_stats(addr, &step.stats);
                }
                for (rid, reason) in step.unreadable {
                    tracing::warn!("worker {addr} sent an unreadable output of {rid:?}: {reason}");
                    let Some(rid) = rid else { continue };
                    let event = RequestEvent::Error {
                        code: wire::ErrorCode::Protocol,
                        message: format!(
                            "the worker sent an output the router cannot read: {reason}"
                        ),
                    };
                    if self.table.finish(&rid, event, "error") {
                        // its request would run on for nobody
                        self.links[worker].pending_abort.push(rid);
                    }
                }
            }
            Message::Error(err) => match err.rid {
                Some(rid) => {
                    let event = RequestEvent::Error {
                        code: err.code,
                        message: err.message,
                    };
                    self.table.finish(&rid, event, "error");
                }
                None if err.fatal => {
                    let reason = format!("worker {addr} failed: {}", err.message);
                    self.lose(worker, &reason);
                }
                None => {
                    tracing::warn!(
                        "worker {addr} reports {}: {}",
                        err.code.as_str(),
                        err.message
                    );
                }
            },
            other => tracing::warn!("worker {addr} sent a {} message", other.kind()),
        }
    }

    fn on_ready(&mut self, worker: usize, ready: wire::Ready) {
        let slot = &self.shared.workers[worker];
        if ready.protocol != wire::PROTOCOL_VERSION {
            let reason = format!("worker speaks protocol version {}", ready.protocol);
            self.lose(worker, &reason);
            return;
        }
        let info = WorkerInfo::from_ready(&slot.addr, ready);
        let changed = slot.info.read().unwrap_or_else(|e| e.into_inner()).as_ref() != Some(&info);
        let fresh = changed || !slot.ready.load(Ordering::SeqCst);
        if fresh {
            tracing::info!(
                "worker {} ready: model {:?}, id {:?}, max_req_total_len {}, capacity {} requests / {} tokens, mtp_step {}",
                slot.addr, info.model, info.worker_id, info.max_req_total_len,
                info.max_running_requests, info.kv_capacity_tokens, info.mtp_step
            );
        }
        *slot.info.write().unwrap_or_else(|e| e.into_inner()) = Some(info);
        slot.ready.store(true, Ordering::SeqCst);
        if fresh {
            self.size_prefix_record();
        }
        self.shared.metrics.set_worker_ready(&slot.addr, true);
    }

    /// Sizes the prefix record (prefix.rs) to what the ready workers' KV caches hold together.
    fn size_prefix_record(&self) {
        let tokens: u64 = self
            .shared
            .workers
            .iter()
            .filter(|w| w.ready.load(Ordering::SeqCst))
            .filter_map(|w| {
                let info = w.info.read().unwrap_or_else(|e| e.into_inner());
                info.as_ref().map(|i| i.kv_capacity_tokens)
            })
            .sum();
        let blocks = usize::try_from(tokens / BLOCK_TOKENS as u64).unwrap_or(usize::MAX);
        self.prefixes().set_capacity(blocks);
    }

    /// Marks a worker not ready and fails its in-flight requests. Those already sent are also
    /// aborted, in case the worker is alive after all and would keep computing them.
    fn lose(&mut self, worker: usize, reason: &str) {
        let slot = &self.shared.workers[worker];
        if slot.ready.swap(false, Ordering::SeqCst) {
            tracing::warn!("worker {} is not ready: {reason}", slot.addr);
            // It may come back with an empty cache.
            self.prefixes().forget(worker);
        }
        self.shared.metrics.set_worker_ready(&slot.addr, false);
        let unsent: HashSet<String> = self.links[worker]
            .pending_submit
            .drain(..)
            .map(|r| r.rid)
            .collect();
        let in_flight = self.table.rids_on(Some(worker));
        for rid in &in_flight {
            self.table.fail(rid, reason);
        }
        let sent = in_flight.into_iter().filter(|rid| !unsent.contains(rid));
        self.links[worker].pending_abort.extend(sent);
    }

    /// Sends each worker's queued requests as one `submit`, and its queued aborts as one `abort`.
    fn flush(&mut self) {
        for worker in 0..self.links.len() {
            let reqs = std::mem::take(&mut self.links[worker].pending_submit);
            if !reqs.is_empty() {
                let rids: Vec<String> = reqs.iter().map(|r| r.rid.clone()).collect();
                if let Err(reason) = self.send(worker, &Message::Submit(wire::Submit { reqs })) {
                    let msg = format!("cannot send to worker: {reason}");
                    for rid in rids {
                        self.table.fail(&rid, &msg);
                    }
                }
            }
            let rids = std::mem::take(&mut self.links[worker].pending_abort);
            if !rids.is_empty() {
                // A worker we cannot reach holds nothing of ours worth freeing.
                let _ = self.send(worker, &Message::Abort(wire::Abort { rids }));
            }
        }
    }

    fn send(&self, worker: usize, msg: &Message) -> Result<(), String> {
        let bytes = wire::encode(msg).map_err(|e| e.to_string())?;
        self.links[worker]
            .sock
            .send(bytes, zmq::DONTWAIT)
            .map_err(|e| e.to_string())
    }

    /// Probes silent workers and gives up on ready ones silent for too long.
    fn tick(&mut self, now: Instant) {
        let probe = self.options.probe_interval;
        for worker in 0..self.links.len() {
            let link = &self.links[worker];
            let silent = now.saturating_duration_since(link.last_heard);
            let ready = self.shared.workers[worker].ready.load(Ordering::SeqCst);
            if ready && silent >= self.options.silence_timeout {
                let reason = format!("no answer for {:.1} s", silent.as_secs_f64());
                self.lose(worker, &reason);
            }
            let link = &self.links[worker];
            let due = link.last_hello.is_none_or(|t| now - t >= probe);
            if due && (link.last_hello.is_none() || silent >= probe) {
                self.probe(worker, now);
            }
        }
    }

    /// Sends `hello`. An unreachable worker rejects it; it stays not ready and is probed again.
    fn probe(&mut self, worker: usize, now: Instant) {
        let hello = Message::Hello(wire::Hello {
            client: Some(self.options.client_name.clone()),
        });
        let _ = self.send(worker, &hello);
        self.links[worker].last_hello = Some(now);
    }
}
