//! The dispatcher's normal path against a fake worker: handshake, batching, routing, aborts,
//! replicas.

mod dispatch_support;

use std::sync::Arc;
use std::time::Duration;

use dispatch_support::*;
use glm47_router::dispatch::{BalancePolicy, DispatchError, Dispatcher, RequestEvent};
use glm47_router::metrics::Metrics;
use glm47_router::wire::{self, FinishReason, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_ready_only_after_answering_hello() {
    let worker = FakeWorker::bind();
    let (d, metrics) = start(vec![worker.addr.clone()], Duration::from_secs(30));
    assert!(!d.is_ready());
    assert!(matches!(
        d.submit(request("early")),
        Err(DispatchError::NoWorkerReady)
    ));
    let (id, hello) = worker.recv();
    let Message::Hello(hello) = hello else {
        panic!("the first message is not hello: {hello:?}");
    };
    assert_eq!(hello.client.as_deref(), Some("dispatch-test"));
    worker.send(&id, &Message::Ready(ready("tiny")));
    wait_until("the worker is ready", || d.is_ready());
    let info = d.ready_worker().expect("a ready worker");
    assert_eq!(info.model, "tiny");
    assert_eq!(info.addr, worker.addr);
    assert_eq!(info.max_req_total_len, 4096);
    assert_eq!(info.eos_token_ids, vec![2, 3]);
    assert!(metrics.render().contains(&format!(
        "glm47_worker_ready{{worker=\"{}\"}} 1",
        worker.addr
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_submitted_together_travel_in_one_message_in_order() {
    let worker = FakeWorker::bind();
    let (d, _) = start(vec![worker.addr.clone()], Duration::from_secs(30));
    worker.handshake("tiny");
    wait_until("ready", || d.is_ready());
    let handles = d
        .submit_many(vec![request("a"), request("b"), request("")])
        .expect("submitted");
    let (_, reqs) = worker.recv_submit();
    let sent: Vec<&str> = reqs.iter().map(|r| r.rid.as_str()).collect();
    let handed: Vec<&str> = handles.iter().map(|h| h.rid()).collect();
    assert_eq!(sent, handed);
    assert!(sent[0].starts_with("a-") && sent[1].starts_with("b-"));
    assert_ne!(sent[0], sent[2]);
    assert_eq!(reqs[0].input_ids, vec![7]);
    assert_eq!(d.in_flight(), vec![3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_reach_their_own_handles_until_the_finish() {
    let (worker, d, metrics, id) = ready_pair(Duration::from_secs(30));
    let mut a = d.submit(request("a")).expect("submitted");
    let mut b = d.submit(request("b")).expect("submitted");
    worker.recv_requests(2);
    let mut first_b = output(b.rid(), vec![10], None);
    first_b.prompt_tokens = Some(1);
    first_b.cached_tokens = Some(0);
    worker.step(
        &id,
        vec![first_b.clone(), output(a.rid(), vec![20, 21], None)],
    );
    worker.step(
        &id,
        vec![output(a.rid(), vec![22], Some(FinishReason::Length))],
    );
    worker.step(&id, vec![output(b.rid(), vec![], Some(FinishReason::Stop))]);

    assert_eq!(
        next_event(&mut b).await,
        Some(RequestEvent::Output(first_b))
    );
    let Some(RequestEvent::Output(out)) = next_event(&mut a).await else {
        panic!("a's first event is not an output");
    };
    assert_eq!(out.ids, vec![20, 21]);
    let Some(RequestEvent::Output(out)) = next_event(&mut a).await else {
        panic!("a's second event is not an output");
    };
    assert_eq!(
        (out.ids, out.finish),
        (vec![22], Some(FinishReason::Length))
    );
    assert!(a.is_finished());
    assert_eq!(next_event(&mut a).await, None);
    let Some(RequestEvent::Output(out)) = next_event(&mut b).await else {
        panic!("b's last event is not an output");
    };
    assert_eq!(out.finish, Some(FinishReason::Stop));
    wait_until("nothing in flight", || d.in_flight() == vec![0]);
    let text = metrics.render();
    assert!(text.contains("glm47_generation_tokens_total 4"), "{text}");
    assert!(text.contains("glm47_request_finish_total{reason=\"length\"} 1"));
    assert!(text.contains("glm47_time_to_first_token_seconds_count 2"));
    assert!(text.contains("glm47_e2e_request_latency_seconds_count 2"));
    assert!(text.contains("glm47_num_requests_running{worker="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_unfinished_handle_aborts_its_request() {
    let (worker, d, _, id) = ready_pair(Duration::from_secs(30));
    let mut handle = d.submit(request("gone")).expect("submitted");
    let rid = handle.rid().to_owned();
    worker.recv_submit();
    worker.step(&id, vec![output(&rid, vec![5], None)]);
    assert!(matches!(
        next_event(&mut handle).await,
        Some(RequestEvent::Output(_))
    ));
    drop(handle);
    assert_eq!(worker.recv_abort(), vec![rid.clone()]);
    wait_until("nothing in flight", || d.in_flight() == vec![0]);
    // The worker's final abort output for a forgotten request is ignored.
    worker.step(&id, vec![output(&rid, vec![], Some(FinishReason::Abort))]);

    let mut explicit = d.submit(request("explicit")).expect("submitted");
    worker.recv_submit();
    explicit.abort();
    assert_eq!(worker.recv_abort(), vec![explicit.rid().to_owned()]);
    assert_eq!(next_event(&mut explicit).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_handle_sends_no_abort_when_dropped() {
    let (worker, d, _, id) = ready_pair(Duration::from_secs(30));
    let mut handle = d.submit(request("done")).expect("submitted");
    worker.recv_submit();
    worker.step(
        &id,
        vec![output(handle.rid(), vec![1], Some(FinishReason::Stop))],
    );
    assert!(matches!(
        next_event(&mut handle).await,
        Some(RequestEvent::Output(_))
    ));
    drop(handle);
    worker.expect_no_work(Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_load_by_in_flight_count() {
    let w0 = FakeWorker::bind();
    let w1 = FakeWorker::bind();
    let (d, _) = start(
        vec![w0.addr.clone(), w1.addr.clone()],
        Duration::from_secs(30),
    );
    let id0 = w0.handshake("tiny");
    w1.handshake("tiny");
    wait_until("both ready", || d.ready_workers().len() == 2);
    let handles: Vec<_> = (0..4)
        .map(|i| d.submit(request(&format!("r{i}"))).expect("submitted"))
        .collect();
    let on_w0 = handles
        .iter()
        .filter(|h| h.worker_addr() == w0.addr)
        .count();
    assert_eq!(on_w0, 2);
    assert_eq!(d.in_flight(), vec![2, 2]);
    // Finishing w0's requests sends the next two submissions there.
    for h in handles.iter().filter(|h| h.worker_addr() == w0.addr) {
        w0.step(
            &id0,
            vec![output(h.rid(), vec![1], Some(FinishReason::Stop))],
        );
    }
    wait_until("w0 is idle", || d.in_flight() == vec![0, 2]);
    let more: Vec<_> = (0..2)
        .map(|i| d.submit(request(&format!("s{i}"))).expect("submitted"))
        .collect();
    assert!(more.iter().all(|h| h.worker_addr() == w0.addr));
}

/// A prompt of `len` tokens of its own.
fn prompt(conversation: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| conversation * 10_000 + i).collect()
}

/// Two fake workers, both ready, behind a dispatcher balancing by `policy`.
fn two_balanced(policy: BalancePolicy) -> (FakeWorker, FakeWorker, Arc<Dispatcher>, Arc<Metrics>) {
    let (w0, w1) = (FakeWorker::bind(), FakeWorker::bind());
    let metrics = Arc::new(Metrics::new());
    let mut opts = options(Duration::from_secs(30));
    opts.balance.policy = policy;
    let addrs = vec![w0.addr.clone(), w1.addr.clone()];
    let d = Dispatcher::start_with(addrs, metrics.clone(), opts).expect("dispatcher starts");
    w0.handshake("tiny");
    w1.handshake("tiny");
    wait_until("both ready", || d.ready_workers().len() == 2);
    (w0, w1, d, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_follows_its_prefix_to_the_worker_that_was_sent_it() {
    let (w0, w1, d, metrics) = two_balanced(BalancePolicy::Prefix);
    let submit = |ids: Vec<u32>| {
        d.submit(wire::Request::new("c", ids, 4))
            .expect("submitted")
    };
    // First turns of two conversations and an unrelated prompt: spread by load.
    let a1 = submit(prompt(1, 100));
    let b1 = submit(prompt(2, 100));
    let _x = submit(prompt(9, 100));
    assert_eq!(
        (a1.worker_addr(), b1.worker_addr()),
        (&w0.addr[..], &w1.addr[..])
    );
    assert_eq!(d.in_flight(), vec![2, 1]);
    // The next turn of the first conversation (its 100 tokens and 40 more) goes where its
    // prefix went, though that worker is the busier one.
    let mut turn = prompt(1, 100);
    turn.extend(500..540);
    let a2 = submit(turn.clone());
    assert_eq!(a2.worker_addr(), w0.addr);
    let mut b_turn = prompt(2, 100);
    b_turn.extend(600..640);
    let b2 = submit(b_turn);
    assert_eq!(b2.worker_addr(), w1.addr);
    // 240 tokens, of which the 128 of the last turn's full blocks match: more than half.
    turn.extend(800..900);
    let a3 = submit(turn);
    assert_eq!(a3.worker_addr(), w0.addr);
    assert_eq!(d.in_flight(), vec![4, 2]);
    assert!(metrics.render().contains("glm47_prefix_routed_total 3"));
    // A prompt that shares only its first 32 tokens with anything goes by load.
    let mut c = prompt(1, 32);
    c.extend(&prompt(3, 100)[32..]);
    let c = submit(c);
    assert_eq!(c.worker_addr(), w1.addr);
    // So does a prompt whose logprobs are asked for: it is computed whole wherever it goes.
    let mut scored = wire::Request::new("s", prompt(1, 100), 4);
    scored.prompt_logprobs = 0;
    assert_eq!(d.submit(scored).expect("submitted").worker_addr(), w1.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_loaded_policy_ignores_prefixes() {
    let (_w0, _w1, d, _) = two_balanced(BalancePolicy::LeastLoaded);
    let submit = |ids: Vec<u32>| {
        d.submit(wire::Request::new("c", ids, 4))
            .expect("submitted")
    };
    let first = submit(prompt(1, 100));
    let again = submit(prompt(1, 100));
    assert_ne!(first.worker_addr(), again.worker_addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_takes_far_less_than_the_idle_poll_period() {
    let (worker, d, _, id) = ready_pair(Duration::from_secs(30));
    let rounds = 50;
    let started = std::time::Instant::now();
    for i in 0..rounds {
        let mut handle = d.submit(request(&format!("rt{i}"))).expect("submitted");
        let (_, reqs) = worker.recv_submit();
        worker.step(
            &id,
            vec![output(&reqs[0].rid, vec![1], Some(FinishReason::Stop))],
        );
        assert!(matches!(
            next_event(&mut handle).await,
            Some(RequestEvent::Output(_))
        ));
    }
    let mean = started.elapsed() / rounds;
    // The I/O thread sleeps up to 50 ms here when idle; woken by events it answers at once.
    assert!(mean < Duration::from_millis(10), "mean round trip {mean:?}");
}
