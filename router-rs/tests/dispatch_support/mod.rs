//! A scripted fake worker (a ZeroMQ ROUTER socket) for the dispatcher tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use glm47_router::dispatch::{
    BalanceOptions, DispatchOptions, Dispatcher, RequestEvent, RequestHandle,
};
use glm47_router::metrics::Metrics;
use glm47_router::wire::{self, Message};

/// How long any single expectation may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// A worker that binds a ROUTER socket on a free local port and answers only what the test says.
pub struct FakeWorker {
    pub addr: String,
    sock: zmq::Socket,
    _ctx: zmq::Context,
}

impl FakeWorker {
    pub fn bind() -> Self {
        Self::bind_at("tcp://127.0.0.1:*")
    }

    /// Binds at `endpoint` (a worker restarting at the address it had).
    pub fn bind_at(endpoint: &str) -> Self {
        let ctx = zmq::Context::new();
        let sock = ctx.socket(zmq::ROUTER).expect("router socket");
        sock.set_linger(0).expect("linger");
        sock.set_rcvtimeo(PATIENCE.as_millis() as i32)
            .expect("rcvtimeo");
        sock.bind(endpoint).expect("bind");
        let addr = sock
            .get_last_endpoint()
            .expect("endpoint")
            .expect("utf-8 endpoint");
        Self {
            addr,
            sock,
            _ctx: ctx,
        }
    }

    /// The next message from any router, with the connection's identity.
    pub fn recv(&self) -> (Vec<u8>, Message) {
        let frames = self
            .sock
            .recv_multipart(0)
            .expect("a message within the patience");
        assert_eq!(frames.len(), 2, "one identity frame and one payload frame");
        let msg = wire::decode(&frames[1]).expect("the router sends valid messages");
        (frames[0].clone(), msg)
    }

    /// The next message that is not a `hello` probe.
    pub fn recv_work(&self) -> (Vec<u8>, Message) {
        loop {
            let (id, msg) = self.recv();
            if !matches!(msg, Message::Hello(_)) {
                return (id, msg);
            }
        }
    }

    /// The next `submit`'s requests.
    pub fn recv_submit(&self) -> (Vec<u8>, Vec<wire::Request>) {
        match self.recv_work() {
            (id, Message::Submit(s)) => (id, s.reqs),
            (_, other) => panic!("expected submit, got {other:?}"),
        }
    }

    /// Reads `submit`s until `n` requests have come; returns them in order.
    pub fn recv_requests(&self, n: usize) -> Vec<wire::Request> {
        let mut reqs = Vec::new();
        while reqs.len() < n {
            reqs.extend(self.recv_submit().1);
        }
        reqs
    }

    /// The next `abort`'s request ids.
    pub fn recv_abort(&self) -> Vec<String> {
        match self.recv_work() {
            (_, Message::Abort(a)) => a.rids,
            (_, other) => panic!("expected abort, got {other:?}"),
        }
    }

    /// Asserts that nothing but probes arrives for `quiet`.
    pub fn expect_no_work(&self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if self
                .sock
                .poll(zmq::POLLIN, left.as_millis() as i64)
                .expect("poll")
                == 0
            {
                return;
            }
            let (_, msg) = self.recv();
            assert!(matches!(msg, Message::Hello(_)), "unexpected {msg:?}");
        }
    }

    pub fn send(&self, id: &[u8], msg: &Message) {
        let bytes = wire::encode(msg).expect("encodes");
        self.sock.send_multipart([id, &bytes[..]], 0).expect("send");
    }

    pub fn send_raw(&self, id: &[u8], bytes: &[u8]) {
        self.sock.send_multipart([id, bytes], 0).expect("send");
    }

    /// Waits for a `hello`, answers `ready`, and returns the router's identity.
    pub fn handshake(&self, model: &str) -> Vec<u8> {
        loop {
            let (id, msg) = self.recv();
            if matches!(msg, Message::Hello(_)) {
                self.send(&id, &Message::Ready(ready(model)));
                return id;
            }
        }
    }

    /// Sends one `step` holding `outs`.
    pub fn step(&self, id: &[u8], outs: Vec<wire::Output>) {
        let step = wire::Step {
            outs,
            stats: wire::Stats {
                running: Some(1),
                ..wire::Stats::default()
            },
            ..wire::Step::default()
        };
        self.send(id, &Message::Step(step));
    }
}

pub fn ready(model: &str) -> wire::Ready {
    wire::Ready {
        protocol: 1,
        model: model.to_owned(),
        vocab_size: 1000,
        eos_token_ids: vec![2, 3],
        max_req_total_len: 4096,
        max_running_requests: 8,
        max_waiting_requests: 0,
        kv_capacity_tokens: 65536,
        mtp_step: 0,
        worker_id: format!("{model}-worker"),
    }
}

/// Fast probes so tests run in milliseconds.
pub fn options(silence_timeout: Duration) -> DispatchOptions {
    DispatchOptions {
        probe_interval: Duration::from_millis(50),
        silence_timeout,
        client_name: "dispatch-test".into(),
        balance: BalanceOptions::default(),
        log_requests: true, // the log lines run in every dispatch test
    }
}

pub fn start(addrs: Vec<String>, silence_timeout: Duration) -> (Arc<Dispatcher>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let d = Dispatcher::start_with(addrs, metrics.clone(), options(silence_timeout))
        .expect("dispatcher starts");
    (d, metrics)
}

/// A fake worker and a dispatcher for it (`silence_timeout`), the handshake done and the
/// dispatcher ready; the last item is the dispatcher's identity at the worker.
pub fn ready_pair(
    silence_timeout: Duration,
) -> (FakeWorker, Arc<Dispatcher>, Arc<Metrics>, Vec<u8>) {
    let worker = FakeWorker::bind();
    let (d, metrics) = start(vec![worker.addr.clone()], silence_timeout);
    let id = worker.handshake("tiny");
    wait_until("ready", || d.is_ready());
    (worker, d, metrics, id)
}

/// Blocks until `cond` holds, failing the test after the patience.
pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn output(rid: &str, ids: Vec<u32>, finish: Option<wire::FinishReason>) -> wire::Output {
    wire::Output {
        rid: rid.to_owned(),
        ids,
        finish,
        ..wire::Output::default()
    }
}

/// The next event of a handle, failing the test after the patience.
pub async fn next_event(handle: &mut RequestHandle) -> Option<RequestEvent> {
    tokio::time::timeout(PATIENCE, handle.next())
        .await
        .expect("an event within the patience")
}

/// A prompt of one token with a small budget.
pub fn request(tag: &str) -> wire::Request {
    wire::Request::new(tag, vec![7], 4)
}
