//! SGLang's `/abort_request` through the real router: a client's id (SGLang's `rid`, or an
//! `X-Request-Id`) names the requests to stop; `abort_all` stops every one. The load routes.

mod http_support;

use std::time::{Duration, Instant};

use http_support::{setup_with, FakeWorker, Server};
use serde_json::{json, Value};

/// Starts a slow SGLang `/generate` named `rid` in the background; the task ends with its answer.
fn start_generate(server: &Server, rid: &str) -> tokio::task::JoinHandle<Value> {
    let url = format!("{}/generate", server.url);
    let client = server.client.clone();
    let body = json!({"text": "hi", "rid": rid, "sampling_params": {"max_new_tokens": 64}});
    tokio::spawn(async move {
        let answer = client.post(url).json(&body).send().await.expect("answers");
        answer.json().await.expect("json")
    })
}

/// The finish of an SGLang answer, once it comes (within 5 s).
async fn finish_of(task: tokio::task::JoinHandle<Value>) -> Value {
    let answer = tokio::time::timeout(Duration::from_secs(5), task).await;
    let answer = answer.expect("ends in time").expect("joins");
    answer["meta_info"]["finish_reason"]["type"].clone()
}

/// Waits until the worker has been sent `n` requests; their worker ids by client id order.
async fn sent(worker: &FakeWorker, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker.requests().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.requests().iter().map(|r| r.rid.clone()).collect()
}

async fn aborted(worker: &FakeWorker, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker.aborts.lock().expect("lock").len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut rids = worker.aborts.lock().expect("lock").clone();
    rids.sort();
    rids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rid_aborts_its_own_requests_and_abort_all_the_rest() {
    let slow = |s: &mut http_support::Script| s.delay = Duration::from_millis(100);
    let (_model, worker, server) =
        setup_with("a long answer that takes many steps", &[], slow).await;
    let job1_task = start_generate(&server, "job-1");
    let job1 = sent(&worker, 1).await;
    let job2_task = start_generate(&server, "job-2");
    let rids = sent(&worker, 2).await;
    assert_eq!(rids.len(), 2);
    // an id the server never saw is no error, and stops nothing
    let (status, _) = server.post("/abort_request", json!({"rid": "job-9"})).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(worker.aborts.lock().expect("lock").is_empty());
    let (status, _) = server.post("/abort_request", json!({"rid": "job-1"})).await;
    assert_eq!(status, 200);
    assert_eq!(aborted(&worker, 1).await, job1);
    // its answer ends there, with an abort finish; the other runs on
    assert_eq!(finish_of(job1_task).await, "abort");
    assert!(!job2_task.is_finished());
    let (status, _) = server
        .post("/abort_request", json!({"abort_all": true}))
        .await;
    assert_eq!(status, 200);
    let all = aborted(&worker, 2).await;
    let mut expected = rids.clone();
    expected.sort();
    assert_eq!(all, expected, "each request asked to stop once");
    assert_eq!(finish_of(job2_task).await, "abort");
    let metrics = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await;
    let text = metrics.expect("answers").text().await.expect("text");
    assert!(
        text.contains("glm47_request_finish_total{reason=\"abort\"} 2"),
        "{text}"
    );
    let (_, load) = server.get("/load").await;
    assert_eq!(load["server_load"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x_request_id_names_a_request_for_abort() {
    let slow = |s: &mut http_support::Script| s.delay = Duration::from_millis(100);
    let (_model, worker, server) =
        setup_with("a long answer that takes many steps", &[], slow).await;
    let routes = [
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 64}),
            "/choices/0/finish_reason",
        ),
        (
            "/generate",
            json!({"text": "hi"}),
            "/meta_info/finish_reason/type",
        ),
    ];
    for (n, (route, body, finish)) in routes.into_iter().enumerate() {
        let id = format!("mine-{n}");
        let (url, client, header) = (
            format!("{}{route}", server.url),
            server.client.clone(),
            id.clone(),
        );
        let task = tokio::spawn(async move {
            let answer = client
                .post(url)
                .header("x-request-id", header)
                .json(&body)
                .send()
                .await;
            answer
                .expect("answers")
                .json::<Value>()
                .await
                .expect("json")
        });
        let rids = sent(&worker, n + 1).await;
        assert!(
            rids[n].starts_with(&format!("{id}-")),
            "the worker's logs name it: {rids:?}"
        );
        let (status, _) = server.post("/abort_request", json!({ "rid": id })).await;
        assert_eq!(status, 200);
        assert_eq!(aborted(&worker, n + 1).await.len(), n + 1);
        let answer = tokio::time::timeout(Duration::from_secs(5), task).await;
        let answer = answer.expect("ends in time").expect("joins");
        assert_eq!(
            answer.pointer(finish),
            Some(&json!("abort")),
            "{route}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_abort_bodies_and_sglang_rids_are_refused() {
    let (_model, worker, server) = setup_with("x", &[], |_| {}).await;
    for (body, param) in [
        (json!({}), "rid"),
        (json!({"rid": ""}), "rid"),
        (json!({"rid": 3}), "rid"),
        (json!({"abort_all": "yes"}), "abort_all"),
    ] {
        let (status, answer) = server.post("/abort_request", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}");
    }
    for rid in [json!(""), json!(["a", "b"]), json!(7)] {
        let body = json!({"text": "hi", "rid": rid});
        let (status, answer) = server.post("/generate", body).await;
        assert_eq!(status, 400, "{rid}: {answer}");
        assert_eq!(answer["error"]["param"], "rid");
    }
    // the client's rid names the answer
    let body = json!({"text": ["a", "b"], "rid": ["r-a", "r-b"]});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<&Value> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["meta_info"]["id"])
        .collect();
    assert_eq!(ids, [&json!("r-a"), &json!("r-b")]);
    // and leads the worker's ids (its logs)
    let mut sent: Vec<String> = worker.requests().iter().map(|r| r.rid.clone()).collect();
    sent.sort();
    assert!(
        sent[0].starts_with("r-a-") && sent[1].starts_with("r-b-"),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_routes_count_the_requests_in_flight() {
    let slow = |s: &mut http_support::Script| s.delay = Duration::from_millis(100);
    let (_model, worker, server) =
        setup_with("a long answer that takes many steps", &[], slow).await;
    let (_, idle) = server.get("/load").await;
    assert_eq!(idle, json!({"server_load": 0}));
    let task = start_generate(&server, "busy");
    sent(&worker, 1).await;
    let (_, busy) = server.get("/load").await;
    assert_eq!(busy, json!({"server_load": 1}));
    let (status, loads) = server.get("/get_load").await;
    assert_eq!(status, 200, "{loads}");
    let one = &loads.as_array().expect("a list")[0];
    assert_eq!((&one["dp_rank"], &one["in_flight"]), (&json!(0), &json!(1)));
    for key in ["num_reqs", "num_waiting_reqs", "num_tokens"] {
        assert!(one[key].is_u64(), "{key}: {one}");
    }
    let (status, _) = server.post("/abort_request", json!({"rid": "busy"})).await;
    assert_eq!(status, 200);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_probe_is_not_the_clients_load() {
    let ignore = |s: &mut http_support::Script| s.probes = http_support::Probes::Ignore;
    let (_model, worker, server) =
        setup_with("x", &["--health-generate-timeout", "1"], ignore).await;
    let url = format!("{}/health_generate", server.url);
    let client = server.client.clone();
    let probe = tokio::spawn(async move { client.get(url).send().await });
    sent(&worker, 1).await; // the probe reached the worker, which leaves it unanswered
    let (_, load) = server.get("/load").await;
    assert_eq!(load, json!({"server_load": 0}));
    let (_, loads) = server.get("/get_load").await;
    assert_eq!(loads[0]["in_flight"], 0);
    let answer = probe.await.expect("joins").expect("answers");
    assert_eq!(answer.status(), 503);
}
