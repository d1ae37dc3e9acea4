//! The dispatcher's failure paths against a fake worker: request errors, fatal errors, silence,
//! protocol mismatch and shutdown. No handle may wait forever.

mod dispatch_support;

use std::time::Duration;

use dispatch_support::*;
use glm47_router::dispatch::{DispatchError, Dispatcher, RequestEvent};
use glm47_router::metrics::Metrics;
use glm47_router::wire::{self, ErrorCode, FinishReason, Message, WorkerError};

fn error_code(event: Option<RequestEvent>) -> ErrorCode {
    match event {
        Some(RequestEvent::Error { code, .. }) => code,
        other => panic!("expected an error event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_error_ends_only_that_request() {
    let (worker, d, metrics, id) = ready_pair(Duration::from_secs(30));
    let mut bad = d.submit(request("bad")).expect("submitted");
    let mut good = d.submit(request("good")).expect("submitted");
    worker.recv_requests(2);
    let err = WorkerError {
        rid: Some(bad.rid().to_owned()),
        code: ErrorCode::QueueFull,
        message: "waiting queue is full".into(),
        fatal: false,
    };
    worker.send(&id, &Message::Error(err));
    assert_eq!(error_code(next_event(&mut bad).await), ErrorCode::QueueFull);
    assert!(bad.is_finished());
    assert_eq!(next_event(&mut bad).await, None);
    worker.step(
        &id,
        vec![output(good.rid(), vec![4], Some(FinishReason::Stop))],
    );
    assert!(matches!(
        next_event(&mut good).await,
        Some(RequestEvent::Output(_))
    ));
    assert!(d.is_ready());
    assert!(metrics
        .render()
        .contains("glm47_request_finish_total{reason=\"error\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_output_fails_its_request_and_the_rest_of_the_step_arrives() {
    use rmpv::Value as V;
    let (worker, d, _metrics, id) = ready_pair(Duration::from_secs(30));
    let mut bad = d.submit(request("bad")).expect("submitted");
    let mut good = d.submit(request("good")).expect("submitted");
    worker.recv_requests(2);
    let map =
        |fields: Vec<(&str, V)>| V::Map(fields.into_iter().map(|(k, v)| (V::from(k), v)).collect());
    let outs = V::Array(vec![
        map(vec![
            ("rid", V::from(bad.rid())),
            ("ids", V::Array(vec![V::from(-3)])),
        ]),
        map(vec![
            ("rid", V::from(good.rid())),
            ("ids", V::Array(vec![V::from(4)])),
            ("finish", V::from("stop")),
        ]),
    ]);
    let step = V::Array(vec![
        V::from("step"),
        V::from(1),
        map(vec![
            ("outs", outs),
            ("stats", map(vec![("waiting", V::from(-5))])),
        ]),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &step).expect("encodes");
    worker.send_raw(&id, &bytes);
    match next_event(&mut good).await {
        Some(RequestEvent::Output(out)) => assert_eq!(out.ids, vec![4]),
        other => panic!("expected the good output, got {other:?}"),
    }
    assert_eq!(error_code(next_event(&mut bad).await), ErrorCode::Protocol);
    // the worker is asked to stop what nobody reads now
    assert_eq!(worker.recv_abort(), vec![bad.rid().to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_fails_every_request_until_the_worker_is_ready_again() {
    let (worker, d, _, id) = ready_pair(Duration::from_secs(30));
    let mut handles = d
        .submit_many(vec![request("x"), request("y")])
        .expect("submitted");
    worker.recv_submit();
    let err = WorkerError {
        rid: None,
        code: ErrorCode::Internal,
        message: "model failure".into(),
        fatal: true,
    };
    worker.send(&id, &Message::Error(err));
    for h in &mut handles {
        assert_eq!(error_code(next_event(h).await), ErrorCode::Internal);
    }
    assert!(!d.is_ready());
    assert!(matches!(
        d.submit(request("z")),
        Err(DispatchError::NoWorkerReady)
    ));
    // The failed requests are aborted in case the worker still runs them.
    let mut aborted = worker.recv_abort();
    aborted.sort();
    let mut rids: Vec<String> = handles.iter().map(|h| h.rid().to_owned()).collect();
    rids.sort();
    assert_eq!(aborted, rids);
    worker.handshake("tiny");
    wait_until("ready again", || d.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_lost_and_its_requests_fail() {
    let (worker, d, metrics, id) = ready_pair(Duration::from_millis(300));
    let mut handle = d.submit(request("stuck")).expect("submitted");
    worker.recv_submit();
    assert_eq!(
        error_code(next_event(&mut handle).await),
        ErrorCode::Internal
    );
    assert!(!d.is_ready());
    // a step it sends late tells no load while it is not ready
    worker.step(&id, vec![output(handle.rid(), vec![4], None)]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(metrics.worker_stats(&worker.addr).running, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_fails_its_requests_at_once_and_can_come_back() {
    let worker = FakeWorker::bind();
    let addr = worker.addr.clone();
    // A long silence timeout: only the closed connection can end the request in time.
    let (d, _) = start(vec![addr.clone()], Duration::from_secs(60));
    worker.handshake("tiny");
    wait_until("ready", || d.is_ready());
    let mut orphan = d.submit(request("orphan")).expect("submitted");
    worker.recv_submit();
    drop(worker);
    assert_eq!(
        error_code(next_event(&mut orphan).await),
        ErrorCode::Internal
    );
    assert!(!d.is_ready());
    let restarted = FakeWorker::bind_at(&addr);
    restarted.handshake("tiny");
    wait_until("ready after the restart", || d.is_ready());
    let _again = d.submit(request("again")).expect("submitted");
    assert_eq!(restarted.recv_submit().1.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_speaking_another_version_is_not_used() {
    let worker = FakeWorker::bind();
    let (d, _) = start(vec![worker.addr.clone()], Duration::from_secs(30));
    let (id, _) = worker.recv();
    let body = rmp_serde::to_vec_named(&("ready", 2u32, ready("future"))).expect("encodes");
    worker.send_raw(&id, &body);
    let mut newer = ready("future");
    newer.protocol = 2;
    worker.send(&id, &Message::Ready(newer));
    // Garbage is logged and skipped; the connection keeps working.
    worker.send_raw(&id, b"\xc1not msgpack");
    worker.expect_no_work(Duration::from_millis(200));
    assert!(!d.is_ready());
    worker.send(&id, &Message::Ready(ready("tiny")));
    wait_until("ready with the right version", || d.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_fails_unfinished_requests_and_later_submits() {
    let worker = FakeWorker::bind();
    let (d, _) = start(vec![worker.addr.clone()], Duration::from_secs(30));
    worker.handshake("tiny");
    wait_until("ready", || d.is_ready());
    let mut handle = d.submit(request("pending")).expect("submitted");
    worker.recv_submit();
    d.shutdown();
    assert_eq!(
        error_code(next_event(&mut handle).await),
        ErrorCode::Internal
    );
    assert!(matches!(
        d.submit(request("late")),
        Err(DispatchError::Closed)
    ));
}

#[test]
fn start_rejects_an_empty_list_and_a_malformed_address() {
    let metrics = std::sync::Arc::new(Metrics::new());
    assert!(matches!(
        Dispatcher::start(vec![], metrics.clone()),
        Err(DispatchError::NoWorkers)
    ));
    assert!(matches!(
        Dispatcher::start(vec!["nonsense".into()], metrics),
        Err(DispatchError::Zmq { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_worker_is_simply_not_ready() {
    let (d, _) = start(vec!["tcp://127.0.0.1:1".into()], Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!d.is_ready());
    assert!(d.ready_worker().is_none());
    assert!(matches!(
        d.submit(wire::Request::new("", vec![1], 1)),
        Err(DispatchError::NoWorkerReady)
    ));
}
