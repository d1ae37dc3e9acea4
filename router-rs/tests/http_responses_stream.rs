//! `/v1/responses` with `background` and `stream` through the real router: the stream's events,
//! a client leaving it (the response runs on), `GET ?stream=true&starting_after=N` replaying
//! and following them, a cancel while streaming, and what has no events to stream.

mod http_support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use http_support::{setup, setup_with, Server};
use serde_json::{json, Value};

/// The `data:` events of a server-sent event stream, read as they come.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: String,
}

impl Events {
    fn new(r: reqwest::Response) -> Self {
        assert_eq!(r.status(), 200);
        Self {
            body: r.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed(),
            buf: String::new(),
        }
    }

    /// The next event, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..at + 2).collect();
                let data = block.lines().find_map(|l| l.strip_prefix("data:"));
                if let Some(data) = data {
                    return Some(serde_json::from_str(data.trim_start()).expect("json event"));
                }
                continue; // a keep-alive comment
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk.expect("body")).expect("utf-8"));
        }
    }

    async fn rest(mut self) -> Vec<Value> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            all.push(e);
        }
        all
    }
}

async fn start(server: &Server) -> Events {
    let body = json!({"input": "hi", "background": true, "stream": true});
    let url = format!("{}/v1/responses", server.url);
    Events::new(
        server
            .client
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("post"),
    )
}

async fn replay(server: &Server, id: &str, after: Option<u64>) -> reqwest::Response {
    let mut url = format!("{}/v1/responses/{id}?stream=true", server.url);
    if let Some(n) = after {
        url.push_str(&format!("&starting_after={n}"));
    }
    server.client.get(url).send().await.expect("get")
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn numbers(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["sequence_number"].as_u64().expect("sequence_number"))
        .collect()
}

fn slow(ms: u64) -> impl FnOnce(&mut http_support::Script) {
    move |s| s.delay = Duration::from_millis(ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_stream_tells_the_whole_response_and_stores_it() {
    let (_model, _worker, server) = setup_with("hello there", &[], slow(20)).await;
    let events = start(&server).await.rest().await;
    let kinds = kinds(&events);
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    assert_eq!(
        numbers(&events),
        (0..events.len() as u64).collect::<Vec<_>>()
    );
    assert!(kinds.contains(&"response.output_item.added"));
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "hello there");
    let last = &events.last().unwrap()["response"];
    assert_eq!(
        (&last["status"], &last["background"]),
        (&json!("completed"), &json!(true))
    );
    let id = last["id"].as_str().unwrap();
    assert_eq!(events[0]["response"]["id"], id);
    // the last event comes once the response is stored as it ended
    let (status, stored) = server.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["status"], "completed");
    assert_eq!(stored["output"], last["output"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_the_stream_stops_nothing() {
    let (_model, worker, server) = setup_with("a longer answer to leave", &[], slow(30)).await;
    let mut events = start(&server).await;
    let created = events.next().await.expect("created");
    let id = created["response"]["id"].as_str().unwrap().to_owned();
    events.next().await.expect("in progress");
    drop(events);
    let done = server.settled(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["output"][0]["content"][0]["text"],
        "a longer answer to leave"
    );
    assert!(worker.aborts.lock().expect("lock").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_replayed_after_a_sequence_number_and_followed_live() {
    // about 1.5 s of steps: the second reader surely joins before the end
    let (_model, _worker, server) = setup_with("replay me please", &[], slow(100)).await;
    let mut first = start(&server).await;
    let created = first.next().await.expect("created");
    let id = created["response"]["id"].as_str().unwrap().to_owned();
    // a second reader joins while it runs, from after event 1
    let live = Events::new(replay(&server, &id, Some(1)).await);
    // still running once it has joined: what it reads past here it followed live
    let (_, now) = server.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(now["status"], "in_progress", "{now}");
    let mut all = vec![created];
    all.extend(first.rest().await);
    let live = live.rest().await;
    assert_eq!(live, all[2..]);
    assert_eq!(kinds(&all).last(), Some(&"response.completed"));
    // once it has ended: all of them, or exactly those after N
    let again = Events::new(replay(&server, &id, None).await).rest().await;
    assert_eq!(again, all);
    let n = all.len() as u64 - 4;
    let tail = Events::new(replay(&server, &id, Some(n)).await)
        .rest()
        .await;
    assert_eq!(numbers(&tail), [n + 1, n + 2, n + 3]);
    assert_eq!(tail, all[all.len() - 3..]);
    let past = Events::new(replay(&server, &id, Some(999)).await)
        .rest()
        .await;
    assert!(past.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_streaming_ends_the_stream_cancelled() {
    let (_model, worker, server) =
        setup_with("a long answer that takes many steps", &[], slow(50)).await;
    let mut events = start(&server).await;
    let mut seen = Vec::new();
    while let Some(e) = events.next().await {
        let delta = e["type"] == "response.output_text.delta";
        seen.push(e);
        if delta {
            break;
        }
    }
    let id = seen[0]["response"]["id"].as_str().unwrap().to_owned();
    let (status, cancelled) = server
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!((status, &cancelled["status"]), (200, &json!("cancelled")));
    seen.extend(events.rest().await);
    assert_eq!(numbers(&seen), (0..seen.len() as u64).collect::<Vec<_>>());
    let kinds = kinds(&seen);
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["response.output_item.done", "response.cancelled"]
    );
    let last = &seen.last().unwrap()["response"];
    assert_eq!(last["status"], "cancelled");
    // what it had written is kept, the message cut off
    assert_eq!(last["output"][0]["status"], "incomplete");
    assert_eq!(last["output"], cancelled["output"]);
    let deadline = Instant::now() + Duration::from_secs(8);
    while worker.aborts.lock().expect("lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(worker.aborts.lock().expect("lock").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_background_stream_has_events_to_replay() {
    let (_model, _worker, server) = setup("x", 1, &[]).await;
    let (_, plain) = server.post("/v1/responses", json!({"input": "hi"})).await;
    let body = json!({"input": "hi", "background": true});
    let (_, polled) = server.post("/v1/responses", body).await;
    let polled_id = polled["id"].as_str().expect("id").to_owned();
    for answer in [plain, polled] {
        let id = answer["id"].as_str().expect("id");
        let r = replay(&server, id, None).await;
        assert_eq!(r.status(), 400);
        let error: Value = r.json().await.expect("json");
        assert_eq!(error["error"]["param"], "stream", "{error}");
        // without stream it is answered as always
        let (status, _) = server.get(&format!("/v1/responses/{id}")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(replay(&server, "resp_nope", None).await.status(), 404);
    // a bad query is an OpenAI error naming its parameter
    let id = polled_id.as_str();
    for (query, param) in [
        ("stream=maybe", "stream"),
        ("starting_after=-1", "starting_after"),
    ] {
        let (status, error) = server.get(&format!("/v1/responses/{id}?{query}")).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_tokens_are_the_tokens_between_the_think_tags_however_they_arrive() {
    for chunk in [1, 2, 5] {
        // a multi-byte character and a `<` held back while they may start a tag
        let parsers = ["--reasoning-parser", "glm45"];
        let (model, _worker, server) = setup("思考 a <b é</think>answer", chunk, &parsers).await;
        let reasoning = model.encode("思考 a <b é").len();
        let (status, r) = server
            .post("/v1/responses", json!({"input": "hi", "stream": false}))
            .await;
        assert_eq!(status, 200, "{r}");
        let usage = &r["usage"];
        assert_eq!(
            usage["output_tokens_details"]["reasoning_tokens"], reasoning,
            "chunk {chunk}: {r}"
        );
        assert_eq!(
            usage["output_tokens"],
            model.encode("思考 a <b é</think>answer").len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stream_ends_with_an_error_event_and_response_failed_in_both_modes() {
    let fail = |s: &mut http_support::Script| {
        s.error = Some(glm47_router::wire::ErrorCode::Internal);
        s.error_after = 2;
    };
    let (_model, _worker, server) = setup_with("one two three four", &[], fail).await;
    for background in [true, false] {
        let body = json!({"input": "hi", "background": background, "stream": true});
        let url = format!("{}/v1/responses", server.url);
        let r = server.client.post(url).json(&body).send().await.unwrap();
        let events = Events::new(r).rest().await;
        let kinds = kinds(&events);
        assert_eq!(
            kinds[kinds.len() - 2..],
            ["error", "response.failed"],
            "background {background}: {kinds:?}"
        );
        assert_eq!(
            numbers(&events),
            (0..events.len() as u64).collect::<Vec<_>>()
        );
        let last = &events.last().unwrap()["response"];
        assert_eq!(last["status"], "failed");
        assert_eq!(last["output"][0]["status"], "incomplete", "{last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_call_before_a_dropped_one_cut_by_the_budget_stays_completed() {
    let reply = "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>\
                 <tool_call>f<arg_key>a</arg_key><arg_value>2";
    let parsers = ["--tool-call-parser", "glm47"];
    let length = |s: &mut http_support::Script| s.finish = glm47_router::wire::FinishReason::Length;
    let (_model, _worker, server) = setup_with(reply, &parsers, length).await;
    let tool = json!({"type": "function", "name": "f",
                      "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}});
    for (parallel, statuses) in [
        (false, vec!["completed"]),
        (true, vec!["completed", "incomplete"]),
    ] {
        let body = json!({"input": "hi", "tools": [tool], "parallel_tool_calls": parallel});
        let (status, r) = server.post("/v1/responses", body).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["status"], "incomplete");
        let got: Vec<&str> = r["output"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["type"] == "function_call")
            .map(|i| i["status"].as_str().unwrap())
            .collect();
        assert_eq!(got, statuses, "parallel {parallel}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_named_by_its_type_as_the_api_streams_them() {
    let (_model, _worker, server) = setup_with("hello there", &[], slow(5)).await;
    for background in [false, true] {
        let body = json!({"input": "hi", "stream": true, "background": background});
        let url = format!("{}/v1/responses", server.url);
        let r = server.client.post(url).json(&body).send().await.unwrap();
        let text = r.text().await.unwrap();
        let blocks: Vec<&str> = text.split("\n\n").filter(|b| b.contains("data:")).collect();
        assert!(blocks.len() > 4, "{text}");
        for block in blocks {
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .expect(block);
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect(block);
            let event: Value = serde_json::from_str(data).unwrap();
            assert_eq!(event["type"], name, "{block}");
        }
    }
}
