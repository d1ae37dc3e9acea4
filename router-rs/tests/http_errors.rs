//! Every client-visible failure: status, OpenAI error body and the field named in `param`.

mod http_support;

use std::time::Duration;

use http_support::{setup, setup_with, FakeWorker, ModelDir, Script, Server};
use serde_json::{json, Value};

fn user() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
    assert_eq!(err["code"], want_status, "{body}");
    match want_param {
        Some(p) => assert_eq!(err["param"], p, "{body}"),
        None => assert!(err["param"].is_null(), "{body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_non_object_bodies_are_400() {
    let (_model, _worker, server) = setup("x", 1, &[]).await;
    for raw in ["{\"messages\": [", "[1, 2]"] {
        let r = server
            .client
            .post(format!("{}/v1/chat/completions", server.url))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_error(status, &body, 400, None);
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_out_of_range_fields_are_400_naming_the_field() {
    let (_model, worker, server) = setup("x", 1, &[]).await;
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": user(), "temperature": "hot"}),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user(), "temperature": 3.0}),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user(), "top_p": 1.5}),
            "top_p",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user(), "max_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user(), "max_tokens": -3}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": "hi"}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user(), "response_format": {"type": "xml"}}),
            "response_format.type",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user(), "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user(), "tools": [{"type": "function", "function": {"name": "get"}}],
                "tool_choice": {"type": "function", "function": {"name": "put"}}}),
            "tool_choice",
        ),
        ("/v1/completions", json!({"prompt": 5}), "prompt"),
        ("/v1/completions", json!({"prompt": [999999]}), "prompt"),
        ("/v1/completions", json!({"prompt": "x", "n": 0}), "n"),
        (
            "/v1/completions",
            json!({"prompt": "x", "stop_token_ids": [3, 99_999_999]}),
            "stop_token_ids",
        ),
        (
            "/generate",
            json!({"inputs": "x", "parameters": {"do_sample": true, "top_k": -5}}),
            "parameters.top_k",
        ),
        ("/generate", json!({"parameters": {}}), "inputs"),
    ];
    for (path, body, param) in cases {
        let (status, answer) = server.post(path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_error(status, &answer, 400, Some(param));
    }
    assert!(
        worker.requests().is_empty(),
        "nothing invalid reaches the worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_over_max_req_total_len_are_400_and_max_tokens_is_capped_or_rejected() {
    let model = ModelDir::create();
    let worker = FakeWorker::start(Script::reply(model.encode("ok"), 1), 24);
    let server = Server::start(&model, &worker.addr, &[], true).await;
    let long = json!([{"role": "user", "content": "a much longer prompt than fits"}]);
    let (status, body) = server
        .post("/v1/chat/completions", json!({"messages": long}))
        .await;
    assert_error(status, &body, 400, Some("messages"));
    // worded as vLLM and OpenAI word it, which clients look for to shorten and retry
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("This model's maximum context length is"),
        "{message}"
    );
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"prompt": "0123456789", "max_tokens": 20}),
        )
        .await;
    assert_error(status, &body, 400, Some("max_tokens"));
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("maximum context length is 24 tokens. However, you requested 30 tokens (10 in the prompt, 20 for the completion)"), "{message}");
    let short = json!({"messages": user(), "max_completion_tokens": 100});
    let (status, body) = server.post("/v1/chat/completions", short).await;
    assert_error(status, &body, 400, Some("max_completion_tokens"));
    let (status, body) = server
        .post("/v1/completions", json!({"prompt": "0123456789"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        worker.requests()[0].max_new_tokens,
        14,
        "capped to what fits"
    );
    let flag = ["--max-req-total-len", "12"];
    let capped = Server::start(&model, &worker.addr, &flag, true).await;
    // the limit served is the router's where it is the lower
    let (_, models) = capped.get("/v1/models").await;
    assert_eq!(models["data"][0]["max_model_len"], 12, "{models}");
    let (_, info) = capped.get("/get_server_info").await;
    assert_eq!(info["context_length"], 12, "{info}");
    let (_, counted) = capped.post("/tokenize", json!({"prompt": "ab"})).await;
    assert_eq!(counted["max_model_len"], 12, "{counted}");
    let (_, models) = server.get("/v1/models").await;
    assert_eq!(models["data"][0]["max_model_len"], 24, "{models}");
    let (status, body) = capped
        .post("/generate", json!({"inputs": "0123456789abc"}))
        .await;
    assert_error(status, &body, 400, Some("inputs"));
    // a prompt far too long is refused from the counts of its first pieces
    let huge = "x".repeat(3 << 20);
    for (path, body, param) in [
        ("/v1/completions", json!({"prompt": huge}), "prompt"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": huge}]}),
            "messages",
        ),
    ] {
        let (status, body) = server.post(path, body).await;
        assert_error(status, &body, 400, Some(param));
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("maximum context length"), "{message}");
        assert!(message.contains("at least"), "{message}");
    }
    assert_eq!(
        worker.requests().len(),
        1,
        "only the capped one reached the worker"
    );
    // /tokenize lists a prompt whatever its length, as vLLM's does
    let long = "x".repeat(300_000);
    let (status, body) = server.post("/tokenize", json!({"prompt": long})).await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_and_wrong_methods_405_in_json() {
    let (_model, _worker, server) = setup("x", 1, &[]).await;
    let r = server
        .client
        .get(format!("{}/v1/nothing", server.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 404, None);
    let r = server
        .client
        .get(format!("{}/v1/chat/completions", server.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_error(status, &body, 405, None);
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_more_sequences_than_the_queue_holds_is_400() {
    let (_model, worker, server) = setup("x", 1, &[]).await;
    let prompts: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let body = json!({"prompt": prompts, "n": 4, "max_tokens": 1});
    let (status, body) = server.post("/v1/completions", body).await;
    assert_error(status, &body, 400, Some("n"));
    assert!(worker.requests().is_empty(), "nothing was queued");
    let body = json!({"prompt": prompts, "n": 3, "max_tokens": 1});
    let (status, _) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200);
    assert_eq!(worker.requests().len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_are_413() {
    let (_model, worker, server) = setup("x", 1, &["--max-body-bytes", "1000"]).await;
    let big = "y".repeat(2000);
    let (status, body) = server.post("/v1/completions", json!({"prompt": big})).await;
    assert_error(status, &body, 413, None);
    let (status, _) = server
        .post(
            "/v1/completions",
            json!({"prompt": "small", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(worker.requests().len(), 1);
    // a declared length over the limit is answered at once, before any of the body arrives
    let host = server.url.trim_start_matches("http://").to_owned();
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&host).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let head = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
             content-length: 99999999999\r\n\r\n{{"
        );
        conn.write_all(head.as_bytes()).unwrap();
        let mut answer = vec![0u8; 512];
        let n = conn.read(&mut answer).expect("answered without the body");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ready_worker_health_and_requests_are_503() {
    let model = ModelDir::create();
    let silent = zmq::Context::new().socket(zmq::ROUTER).unwrap();
    silent.bind("tcp://127.0.0.1:*").unwrap();
    let addr = silent.get_last_endpoint().unwrap().unwrap();
    let server = Server::start(&model, &addr, &[], false).await;
    let r = server
        .client
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 503, None);
    let (status, body) = server
        .post("/v1/chat/completions", json!({"messages": user()}))
        .await;
    assert_error(status, &body, 503, None);
    let (status, body) = server.post("/generate", json!({"inputs": "x"})).await;
    assert_error(status, &body, 503, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_errors_map_to_429_and_400() {
    let full = |s: &mut Script| s.error = Some(glm47_router::wire::ErrorCode::QueueFull);
    let (_model, _worker, server) = setup_with("x", &[], full).await;
    let (status, body) = server
        .post("/v1/chat/completions", json!({"messages": user()}))
        .await;
    assert_error(status, &body, 429, None);
    let stream = json!({"messages": user(), "stream": true});
    let (status, body) = server.post("/v1/chat/completions", stream).await;
    assert_error(status, &body, 429, None);
    let too_long = |s: &mut Script| s.error = Some(glm47_router::wire::ErrorCode::TooLong);
    let (_model, _worker, server) = setup_with("x", &[], too_long).await;
    let (status, body) = server.post("/generate", json!({"inputs": "x"})).await;
    assert_error(status, &body, 400, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_metrics_describe_the_server() {
    let (_model, _worker, server) = setup("ok", 1, &[]).await;
    let (status, _) = server
        .post("/v1/completions", json!({"prompt": "a", "max_tokens": 2}))
        .await;
    assert_eq!(status, 200);
    let (_, models) = server.get("/v1/models").await;
    assert_eq!(models["data"][0]["id"], "tiny-glm");
    assert_eq!(models["data"][0]["max_model_len"], 4096);
    let r = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(text.contains("/v1/completions"), "{text}");
    // Only streams count toward the time to the first chunk.
    assert!(
        text.contains("glm47_http_time_to_first_chunk_seconds_count 0"),
        "{text}"
    );
    let body = json!({"prompt": "a", "max_tokens": 2, "stream": true});
    let (status, _) = server.post_stream("/v1/completions", body).await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post_stream("/generate_stream", json!({"inputs": "a"}))
        .await;
    assert_eq!(status, 200);
    let text = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("glm47_http_time_to_first_chunk_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_error_mid_stream_ends_the_stream_with_an_error_event() {
    let fail = |s: &mut Script| {
        s.error = Some(glm47_router::wire::ErrorCode::Internal);
        s.error_after = 2;
    };
    let (_model, _worker, server) = setup_with("abcdef", &[], fail).await;
    let body = json!({"messages": user(), "stream": true});
    let (status, events) = server.post_stream("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "the stream had started");
    let payloads = http_support::json_events(&events);
    assert_eq!(http_support::streamed_content(&payloads), "ab");
    let last = payloads.last().expect("events");
    assert_eq!(last["error"]["code"], 500, "{last}");
    assert_eq!(last["error"]["message"], "scripted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_options_without_a_stream_are_refused() {
    let (_model, worker, server) = setup("Hello", 2, &[]).await;
    let options = json!({"include_usage": true});
    let chat = json!({"messages": user(), "stream_options": options});
    let (status, body) = server.post("/v1/chat/completions", chat).await;
    assert_error(status, &body, 400, Some("stream_options"));
    let completion = json!({"prompt": "hi", "stream": false, "stream_options": options});
    let (status, body) = server.post("/v1/completions", completion).await;
    assert_error(status, &body, 400, Some("stream_options"));
    assert!(worker.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_still_running_after_the_shutdown_drain_ends_with_its_error_and_done() {
    let slow = |s: &mut Script| s.delay = Duration::from_millis(150);
    let drain = ["--shutdown-timeout", "0.3"];
    let (_model, _worker, mut server) = setup_with("a b c d e f g h i j", &drain, slow).await;
    let body = json!({"messages": user(), "stream": true});
    let url = format!("{}/v1/chat/completions", server.url);
    let response = server.client.post(url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    server.begin_shutdown();
    let text = tokio::time::timeout(Duration::from_secs(5), response.text())
        .await
        .expect("the stream ends after the drain")
        .expect("body");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let error: Value = serde_json::from_str(events[events.len() - 2]).expect("json");
    assert!(error["error"]["message"].is_string(), "{text}");
    assert!(server.stopped_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ends_within_the_shutdown_drain_is_answered_whole() {
    let slow = |s: &mut Script| s.delay = Duration::from_millis(50);
    let (_model, _worker, mut server) =
        setup_with("a b c d", &["--shutdown-timeout", "5"], slow).await;
    let body = json!({"messages": user(), "stream": true});
    let url = format!("{}/v1/chat/completions", server.url);
    let response = server.client.post(url).json(&body).send().await.unwrap();
    server.begin_shutdown();
    let text = response.text().await.expect("body");
    assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    assert!(server.stopped_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_api_asks_for_max_tokens_as_anthropic_does_but_count_tokens_does_not() {
    let (_model, _worker, server) = setup("x", 1, &[]).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let (status, body) = server
        .post("/v1/messages", json!({"messages": messages}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["message"], "max_tokens: Field required");
    let (status, body) = server
        .post("/v1/messages/count_tokens", json!({"messages": messages}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post(
            "/v1/messages",
            json!({"messages": messages, "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
