//! `GET /v1/responses/{id}/input_items` through the real router: a response's own input items
//! in OpenAI's shapes, ordered and paged as OpenAI pages them.

mod http_support;

use std::time::Duration;

use http_support::{setup, setup_with, Server};
use serde_json::{json, Value};

/// Posts `body` to `/v1/responses` and returns the response's id.
async fn respond(server: &Server, body: Value) -> String {
    let (status, answer) = server.post("/v1/responses", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().expect("id").to_owned()
}

/// GETs the input items of `id` with `query`; asserts a 200.
async fn items(server: &Server, id: &str, query: &str) -> Value {
    let (status, list) = server
        .get(&format!("/v1/responses/{id}/input_items{query}"))
        .await;
    assert_eq!(status, 200, "{list}");
    list
}

fn ids(list: &Value) -> Vec<String> {
    let data = list["data"].as_array().expect("data");
    let id = |item: &Value| item["id"].as_str().expect("an id").to_owned();
    data.iter().map(id).collect()
}

/// A continued conversation: the second request's five items, one with its own id.
async fn conversation(server: &Server) -> (String, String) {
    let first = respond(server, json!({"input": "first question"})).await;
    let input = json!([
        {"role": "user", "content": "second question"},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "It is sunny."}]},
        {"type": "message", "id": "msg_given", "role": "user",
         "content": [{"type": "input_text", "text": "and tomorrow?"}]},
    ]);
    let body = json!({"input": input, "previous_response_id": first});
    let second = respond(server, body).await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_requests_own_items_are_listed_in_openai_shapes() {
    let (_model, _worker, server) = setup("hello there", 4, &[]).await;
    let (first, second) = conversation(&server).await;
    let list = items(&server, &first, "").await;
    let suffix = first.strip_prefix("resp_").expect("resp_ id");
    let want = json!({"object": "list", "has_more": false,
        "first_id": format!("msg_{suffix}_0"), "last_id": format!("msg_{suffix}_0"),
        "data": [{"type": "message", "id": format!("msg_{suffix}_0"), "role": "user",
                  "content": [{"type": "input_text", "text": "first question"}],
                  "status": "completed"}]});
    assert_eq!(list, want);
    // not the first's input and output that the second continued from
    let list = items(&server, &second, "?order=asc").await;
    let data = list["data"].as_array().expect("data");
    let kinds: Vec<&str> = data.iter().map(|i| i["type"].as_str().unwrap()).collect();
    let want = [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
    ];
    assert_eq!(kinds, want, "{list}");
    assert_eq!(data[0]["content"][0]["text"], "second question");
    assert_eq!(data[1]["call_id"], "c1");
    assert_eq!(data[1]["status"], "completed");
    assert_eq!(data[2]["output"], "sunny");
    assert_eq!(data[3]["role"], "assistant");
    assert_eq!(data[3]["content"][0]["type"], "output_text");
    assert_eq!(data[4]["id"], "msg_given");
    assert_eq!(data[4]["content"][0]["type"], "input_text");
    assert_eq!(list["first_id"], data[0]["id"]);
    assert_eq!(list["last_id"], "msg_given");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_are_newest_first_unless_asc_with_the_same_ids_every_time() {
    let (_model, _worker, server) = setup("hello there", 4, &[]).await;
    let (_, second) = conversation(&server).await;
    let asc = ids(&items(&server, &second, "?order=asc").await);
    let mut desc = ids(&items(&server, &second, "").await);
    assert_eq!(desc, ids(&items(&server, &second, "?order=desc").await));
    desc.reverse();
    assert_eq!(asc, desc);
    assert_eq!(asc, ids(&items(&server, &second, "?order=asc").await));
    let suffix = second.strip_prefix("resp_").expect("resp_ id");
    let made = [("msg", 0), ("fc", 1), ("fco", 2), ("msg", 3)];
    let made = made.map(|(prefix, i)| format!("{prefix}_{suffix}_{i}"));
    assert_eq!(asc[..4], made);
    assert_eq!(asc[4], "msg_given");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_and_after_walk_every_item_a_page_at_a_time() {
    let (_model, _worker, server) = setup("hello there", 4, &[]).await;
    let (_, second) = conversation(&server).await;
    for order in ["asc", "desc"] {
        let all = ids(&items(&server, &second, &format!("?order={order}")).await);
        let (mut walked, mut after, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let query = format!("?order={order}&limit=2{after}");
            let page = items(&server, &second, &query).await;
            let got = ids(&page);
            assert_eq!(page["first_id"], json!(got.first()));
            assert_eq!(page["last_id"], json!(got.last()));
            walked.extend(got.clone());
            pages += 1;
            if page["has_more"] == false {
                break;
            }
            assert_eq!(got.len(), 2);
            after = format!("&after={}", got[1]);
        }
        assert_eq!((walked, pages), (all.clone(), 3), "{order}");
        // after the last item, nothing is left
        let last = all.last().expect("items");
        let rest = items(&server, &second, &format!("?order={order}&after={last}")).await;
        let want = json!({"object": "list", "data": [], "first_id": null, "last_id": null,
                          "has_more": false});
        assert_eq!(rest, want);
    }
    let page = items(&server, &second, "?limit=5").await;
    assert_eq!(page["has_more"], false);
    let page = items(
        &server,
        &second,
        "?limit=4&include[]=message.output_text.logprobs",
    )
    .await;
    assert_eq!(page["has_more"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_query_is_a_400_and_an_unknown_response_a_404() {
    let (_model, _worker, server) = setup("hello there", 4, &[]).await;
    let id = respond(&server, json!({"input": "hi"})).await;
    let cases = [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("order=newest", "order"),
        ("after=msg_unknown", "after"),
    ];
    for (query, param) in cases {
        let (status, body) = server
            .get(&format!("/v1/responses/{id}/input_items?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let (status, body) = server.get("/v1/responses/resp_nope/input_items").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["type"], "not_found_error");
    let (status, _) = server.delete(&format!("/v1/responses/{id}")).await;
    assert_eq!(status, 200);
    let (status, _) = server.get(&format!("/v1/responses/{id}/input_items")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_responses_items_are_listed_while_it_runs_and_after() {
    let slow = |s: &mut http_support::Script| s.delay = Duration::from_millis(30);
    let (_model, _worker, server) = setup_with("a longer answer", &[], slow).await;
    let first = respond(&server, json!({"input": "hi"})).await;
    let body = json!({"input": "go on", "background": true, "previous_response_id": first});
    let (status, started) = server.post("/v1/responses", body).await;
    assert_eq!((status, &started["status"]), (200, &json!("in_progress")));
    let id = started["id"].as_str().expect("id");
    let running = items(&server, id, "").await;
    assert_eq!(
        running["data"].as_array().map(Vec::len),
        Some(1),
        "{running}"
    );
    assert_eq!(running["data"][0]["content"][0]["text"], "go on");
    let mut status = json!("in_progress");
    for _ in 0..500 {
        let (_, polled) = server.get(&format!("/v1/responses/{id}")).await;
        status = polled["status"].clone();
        if status != "in_progress" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "completed");
    assert_eq!(items(&server, id, "").await, running);
}
