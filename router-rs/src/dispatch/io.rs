//! The dispatcher's I/O thread: owns the ZeroMQ sockets, the request table and the probes.
//!
//! One loop turn: poll (wakeup + every worker socket), take queued commands, read every waiting
//! worker message, flush one `submit` and one `abort` per worker, then run the probe timers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Command, DispatchError, DispatchOptions, RequestEvent, Shared, Submitted, WorkerInfo};
use crate::wire::{self, ErrorCode, Message};

/// At most this many messages are read from one worker per loop turn, so one busy worker cannot
/// starve the others or the command queue.
const MAX_READS_PER_TURN: usize = 256;
/// Longest sleep in `poll` when no timer is due sooner.
const MAX_POLL: Duration = Duration::from_millis(100);

static PAIR_ID: AtomicU64 = AtomicU64::new(0);

fn zmq_err(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> DispatchError {
    let context = context.into();
    move |source| DispatchError::Zmq { context, source }
}

/// An in-process PAIR: (sending end for callers, receiving end for the I/O thread).
pub(super) fn wake_pair(ctx: &zmq::Context) -> Result<(zmq::Socket, zmq::Socket), DispatchError> {
    let endpoint = format!(
        "inproc://glm47-dispatch-wake-{}",
        PAIR_ID.fetch_add(1, Ordering::Relaxed)
    );
    let rx = ctx.socket(zmq::PAIR).map_err(zmq_err("wake socket"))?;
    rx.bind(&endpoint).map_err(zmq_err("wake socket bind"))?;
    let tx = ctx.socket(zmq::PAIR).map_err(zmq_err("wake socket"))?;
    tx.connect(&endpoint)
        .map_err(zmq_err("wake socket connect"))?;
    Ok((tx, rx))
}

/// A DEALER connected to a worker: queues only on live connections, never lingers on close,
/// and never drops what the worker sends.
pub(super) fn connect_dealer(ctx: &zmq::Context, addr: &str) -> Result<zmq::Socket, DispatchError> {
    let sock = ctx.socket(zmq::DEALER).map_err(zmq_err("dealer socket"))?;
    let setup = || -> Result<(), zmq::Error> {
        sock.set_linger(0)?;
        sock.set_immediate(true)?;
        sock.set_rcvhwm(0)?;
        sock.set_sndhwm(100_000)?;
        sock.set_reconnect_ivl(100)?;
        sock.set_reconnect_ivl_max(1000)?;
        sock.connect(addr)
    };
    setup().map_err(zmq_err(format!("worker address {addr:?}")))?;
    Ok(sock)
}

/// The I/O thread's view of one worker.
struct Link {
    sock: zmq::Socket,
    last_heard: Instant,
    last_hello: Option<Instant>,
    pending_submit: Vec<wire::Request>,
    pending_abort: Vec<String>,
}

/// A request the I/O thread routes outputs for.
struct Tracked {
    worker: usize,
    events: mpsc::UnboundedSender<RequestEvent>,
    submitted: Instant,
    last_token: Option<Instant>,
}

pub(super) struct IoLoop {
    shared: Arc<Shared>,
    wake: zmq::Socket,
    links: Vec<Link>,
    table: HashMap<String, Tracked>,
    options: DispatchOptions,
}

impl IoLoop {
    pub(super) fn new(
        shared: Arc<Shared>,
        wake: zmq::Socket,
        sockets: Vec<zmq::Socket>,
        options: DispatchOptions,
    ) -> Self {
        let now = Instant::now();
        let links = sockets
            .into_iter()
            .map(|sock| Link {
                sock,
                last_heard: now,
                last_hello: None,
                pending_submit: Vec::new(),
                pending_abort: Vec::new(),
            })
            .collect();
        Self {
            shared,
            wake,
            links,
            table: HashMap::new(),
            options,
        }
    }

    pub(super) fn run(mut self) {
        self.tick(Instant::now());
        loop {
            let readable = match self.poll() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("dispatch poll failed: {e}");
                    break;
                }
            };
            if readable[0] {
                while self.wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
            }
            self.shared.wake_pending.store(false, Ordering::SeqCst);
            if !self.apply_commands() {
                break;
            }
            for (w, ready) in readable[1..].iter().enumerate() {
                if *ready {
                    self.receive(w);
                }
            }
            self.flush();
            self.tick(Instant::now());
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        self.fail_where(|_| true, "the router is shutting down");
    }

    /// Waits for a wakeup or a worker message; returns readability, wakeup first.
    fn poll(&self) -> Result<Vec<bool>, zmq::Error> {
        let mut items = Vec::with_capacity(self.links.len() + 1);
        items.push(self.wake.as_poll_item(zmq::POLLIN));
        items.extend(self.links.iter().map(|l| l.sock.as_poll_item(zmq::POLLIN)));
        let timeout = self.options.probe_interval.min(MAX_POLL);
        zmq::poll(&mut items, timeout.as_millis() as i64)?;
        Ok(items.iter().map(|i| i.is_readable()).collect())
    }

    /// Applies queued commands; false on shutdown.
    fn apply_commands(&mut self) -> bool {
        for cmd in self.shared.take_commands() {
            match cmd {
                Command::Submit { worker, reqs } => self.admit(worker, reqs),
                Command::Abort { worker, rid } => self.abort(worker, rid),
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn admit(&mut self, worker: usize, reqs: Vec<Submitted>) {
        let now = Instant::now();
        let ready = self.shared.workers[worker].ready.load(Ordering::SeqCst);
        for Submitted { req, events } in reqs {
            let rid = req.rid.clone();
            let tracked = Tracked {
                worker,
                events,
                submitted: now,
                last_token: None,
            };
            self.table.insert(rid.clone(), tracked);
            if ready {
                self.links[worker].pending_submit.push(req);
            } else {
                let addr = &self.shared.workers[worker].addr;
                let event = RequestEvent::Error {
                    code: ErrorCode::Internal,
                    message: format!("worker {addr} became unavailable"),
                };
                self.finish(&rid, event, "error");
            }
        }
        self.publish_in_flight();
    }

    fn abort(&mut self, worker: usize, rid: String) {
        if self.table.remove(&rid).is_none() {
            return;
        }
        self.shared.workers[worker]
            .in_flight
            .fetch_sub(1, Ordering::SeqCst);
        self.shared.metrics.inc_finish("abort");
        self.publish_in_flight();
        let link = &mut self.links[worker];
        let before = link.pending_submit.len();
        link.pending_submit.retain(|r| r.rid != rid);
        if link.pending_submit.len() == before {
            link.pending_abort.push(rid);
        }
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
        let addr = self.shared.workers[worker].addr.clone();
        match msg {
            Message::Ready(ready) => self.on_ready(worker, ready),
            Message::Step(step) => {
                for out in step.outs {
                    self.route(out);
                }
                self.shared.metrics.set_worker_stats(&addr, &step.stats);
            }
            Message::Error(err) => match err.rid {
                Some(rid) => {
                    let event = RequestEvent::Error {
                        code: err.code,
                        message: err.message,
                    };
                    self.finish(&rid, event, "error");
                }
                None if err.fatal => {
                    self.lose(worker, &format!("worker {addr} failed: {}", err.message));
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
        if changed || !slot.ready.load(Ordering::SeqCst) {
            tracing::info!(
                "worker {} ready: model {:?}, id {:?}, max_req_total_len {}, capacity {} requests / {} tokens, mtp_step {}",
                slot.addr, info.model, info.worker_id, info.max_req_total_len,
                info.max_running_requests, info.kv_capacity_tokens, info.mtp_step
            );
        }
        *slot.info.write().unwrap_or_else(|e| e.into_inner()) = Some(info);
        slot.ready.store(true, Ordering::SeqCst);
        self.shared.metrics.set_worker_ready(&slot.addr, true);
    }

    /// Hands one output to its request's handle and records its metrics.
    fn route(&mut self, out: wire::Output) {
        let Some(tracked) = self.table.get_mut(&out.rid) else {
            return;
        };
        let metrics = &self.shared.metrics;
        let now = Instant::now();
        if let Some(prompt) = out.prompt_tokens {
            metrics.add_prompt_tokens(u64::from(prompt), u64::from(out.cached_tokens.unwrap_or(0)));
        }
        if !out.ids.is_empty() {
            match tracked.last_token {
                None => metrics
                    .ttft
                    .observe((now - tracked.submitted).as_secs_f64()),
                Some(prev) => {
                    let gap = (now - prev).as_secs_f64() / out.ids.len() as f64;
                    for _ in 0..out.ids.len() {
                        metrics.itl.observe(gap);
                    }
                }
            }
            tracked.last_token = Some(now);
            let accepted = u64::from(out.spec_accepted.unwrap_or(0));
            metrics.add_generation_tokens(out.ids.len() as u64, accepted);
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

    /// Delivers a request's final event and forgets it.
    fn finish(&mut self, rid: &str, event: RequestEvent, reason: &str) {
        let Some(tracked) = self.table.remove(rid) else {
            return;
        };
        let _ = tracked.events.send(event);
        self.shared.workers[tracked.worker]
            .in_flight
            .fetch_sub(1, Ordering::SeqCst);
        let metrics = &self.shared.metrics;
        metrics
            .e2e
            .observe(tracked.submitted.elapsed().as_secs_f64());
        metrics.inc_finish(reason);
        self.publish_in_flight();
    }

    /// Fails every tracked request matching `which` with an `internal` error.
    fn fail_where(&mut self, which: impl Fn(&Tracked) -> bool, message: &str) {
        let rids: Vec<String> = self
            .table
            .iter()
            .filter(|(_, t)| which(t))
            .map(|(rid, _)| rid.clone())
            .collect();
        for rid in rids {
            let event = RequestEvent::Error {
                code: ErrorCode::Internal,
                message: message.to_owned(),
            };
            self.finish(&rid, event, "error");
        }
    }

    /// Marks a worker not ready and fails its in-flight requests. Those already sent are also
    /// aborted, in case the worker is alive after all and would keep computing them.
    fn lose(&mut self, worker: usize, reason: &str) {
        let slot = &self.shared.workers[worker];
        if slot.ready.swap(false, Ordering::SeqCst) {
            tracing::warn!("worker {} is not ready: {reason}", slot.addr);
        }
        self.shared.metrics.set_worker_ready(&slot.addr, false);
        let unsent: HashSet<String> = self.links[worker]
            .pending_submit
            .drain(..)
            .map(|r| r.rid)
            .collect();
        let sent: Vec<String> = self
            .table
            .iter()
            .filter(|(rid, t)| t.worker == worker && !unsent.contains(*rid))
            .map(|(rid, _)| rid.clone())
            .collect();
        self.fail_where(|t| t.worker == worker, reason);
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
                        let event = RequestEvent::Error {
                            code: ErrorCode::Internal,
                            message: msg.clone(),
                        };
                        self.finish(&rid, event, "error");
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
                let hello = Message::Hello(wire::Hello {
                    client: Some(self.options.client_name.clone()),
                });
                // An unreachable worker rejects the send; it stays not ready and is probed again.
                let _ = self.send(worker, &hello);
                self.links[worker].last_hello = Some(now);
            }
        }
    }

    fn publish_in_flight(&self) {
        self.shared.metrics.set_in_flight(self.table.len() as u64);
    }
}
