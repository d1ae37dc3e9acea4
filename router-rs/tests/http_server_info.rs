//! SGLang's server routes through the real router: `/health_generate`, `/get_model_info`,
//! `/get_server_info`.

mod http_support;

use std::time::{Duration, Instant};

use glm47_router::wire::ErrorCode;
use http_support::{setup, setup_with, FakeWorker, ModelDir, Probes, Script, Server};
use serde_json::json;

/// Waits until `cond` holds, failing the test after 5 s.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A worker that streams 40 tokens, one per 25 ms, and treats probes as `probes`.
async fn slow_worker(probes: Probes, extra: &[&str]) -> (ModelDir, FakeWorker, Server) {
    let slow = move |s: &mut Script| {
        s.delay = Duration::from_millis(25);
        s.probes = probes;
    };
    setup_with(&"a".repeat(40), extra, slow).await
}

/// `/health_generate`'s answer while a client's 40-token completion streams.
async fn health_while_streaming(worker: &FakeWorker, server: &Server) -> (u16, serde_json::Value) {
    let client = server.post("/v1/completions", json!({"prompt": "x", "max_tokens": 40}));
    let health = async {
        wait_for("the client's request is streaming", || {
            !worker.requests().is_empty()
        })
        .await;
        server.get("/health_generate").await
    };
    let ((status, answer), health) = tokio::join!(client, health);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 40);
    health
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_generate_is_ok_once_a_worker_generates_a_token() {
    let (_model, worker, server) = setup("abc", 1, &["--api-key", "k"]).await;
    let (status, body) = server.get("/health_generate").await; // open, as /health is
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    let reqs = worker.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].max_new_tokens, 1);
    assert!(reqs[0].rid.starts_with("~probe"), "{}", reqs[0].rid);
    // the probe's tokens and times are not the clients'
    let metrics = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("glm47_generation_tokens_total 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("glm47_request_finish_total{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_generate_is_503_when_the_worker_fails_the_request() {
    let failing = |s: &mut Script| s.error = Some(glm47_router::wire::ErrorCode::Internal);
    let (_model, _worker, server) = setup_with("x", &[], failing).await;
    let (status, body) = server.get("/health_generate").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_generate_is_ok_when_the_probe_waits_while_clients_get_tokens() {
    let timeout = ["--health-generate-timeout", "0.3"];
    let (_model, worker, server) = slow_worker(Probes::Ignore, &timeout).await;
    let (status, body) = health_while_streaming(&worker, &server).await;
    assert_eq!(status, 200, "{body}"); // busy, not stuck
    let reqs = worker.requests();
    assert!(reqs.iter().any(|r| r.rid.starts_with("~probe")), "no probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_generate_is_ok_when_the_probe_is_refused_while_clients_get_tokens() {
    // The refusal comes at once, before the next client token: that token must still count.
    let (_model, worker, server) = slow_worker(Probes::Refuse(ErrorCode::QueueFull), &[]).await;
    let (status, body) = health_while_streaming(&worker, &server).await;
    assert_eq!(status, 200, "{body}");
    // With nothing in flight, a refusal is a 503 at once, not after the 20 s timeout.
    let started = Instant::now();
    let (status, body) = server.get("/health_generate").await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_generate_is_503_when_no_token_comes_in_time() {
    let timeout = ["--health-generate-timeout", "0.3"];
    let ignore = |s: &mut Script| s.probes = Probes::Ignore;
    let (_model, worker, server) = setup_with("x", &timeout, ignore).await;
    let started = Instant::now();
    let (status, body) = server.get("/health_generate").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["message"], "no token generated in time");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // the abandoned probe is withdrawn from the worker
    let probe = worker.requests()[0].rid.clone();
    let aborted = || worker.aborts.lock().expect("lock").contains(&probe);
    wait_for("the probe is aborted", aborted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_and_server_info_describe_the_model_and_its_worker() {
    let (model, _worker, server) = setup("x", 1, &["--tool-call-parser", "glm47"]).await;
    let (status, info) = server.get("/get_model_info").await;
    assert_eq!(status, 200, "{info}");
    let dir = model.path.to_string_lossy().into_owned();
    assert_eq!(info["model_path"], dir.as_str());
    assert_eq!(info["is_generation"], true);
    let (status, info) = server.get("/get_server_info").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["context_length"], 4096);
    assert_eq!(info["tool_call_parser"], "glm47");
    assert!(info["reasoning_parser"].is_null());
    let workers = info["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["max_req_total_len"], 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_cache_reaches_every_ready_worker() {
    let (_model, worker, server) = setup("x", 1, &[]).await;
    let (status, body) = server.post("/flush_cache", serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["workers"], 1);
    let (status, _) = server
        .post("/reset_prefix_cache", serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server.get("/flush_cache").await; // SGLang answers GET too
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let flushes = || worker.flushes.load(std::sync::atomic::Ordering::SeqCst);
    while flushes() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(flushes(), 3);
}
