//! Chat options through the real router and a scripted worker: continued messages and echo,
//! reasoning budgets, per-chunk usage, request ids, SageMaker's routes and model lookup.

mod http_support;

use glm47_router::wire;
use http_support::{json_events, setup, streamed_content};
use serde_json::{json, Value};

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continued_last_message_is_the_end_of_the_prompt() {
    let parsers = ["--reasoning-parser", "glm45"];
    let (model, worker, server) = setup(" more</think>Done", 2, &parsers).await;
    let ask = |last: Value| {
        json!({"messages": [{"role": "user", "content": "hi"}, last],
               "continue_final_message": true})
    };
    // the answer goes on from the prefill; its reasoning stays open in the prompt
    let last = json!({"role": "assistant", "content": "<think>I think "});
    let (status, answer) = server.post("/v1/chat/completions", ask(last)).await;
    assert_eq!(status, 200, "{answer}");
    let prompt = model.encode("<|user|>hi<|assistant|><think>I think");
    assert_eq!(worker.requests()[0].input_ids, prompt);
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], " more");
    assert_eq!(message["content"], "Done");
    assert_eq!(answer["usage"]["prompt_tokens"], prompt.len());
    // a template that does not write the reasoning cannot continue it
    let thought = json!({"role": "assistant", "content": "", "reasoning_content": "Hm"});
    let (status, answer) = server.post("/v1/chat/completions", ask(thought)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "continue_final_message");
    // without a generation prompt the messages end the prompt
    let body = json!({"messages": [{"role": "user", "content": "hi"}],
                      "add_generation_prompt": false});
    let (status, answer) = server.post("/tokenize", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tokens"], json!(model.encode("<|user|>hi")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thinking_budget_bounds_the_reasoning_the_prompt_opens() {
    let (model, worker, server) = setup("x", 1, &["--reasoning-parser", "glm45"]).await;
    let close = model.encode("</think>");
    assert_eq!(close.len(), 1);
    let body = json!({"messages": user("hi"), "thinking_budget": 7});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let budget = wire::ReasoningBudget {
        tokens: 7,
        end_id: close[0],
    };
    assert_eq!(worker.requests()[0].reasoning_budget, Some(budget));
    // thinking off: no reasoning to bound
    let body = json!({"messages": user("hi"), "thinking_budget": 7,
                      "chat_template_kwargs": {"enable_thinking": false}});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(worker.requests()[1].reasoning_budget, None);
    // the Messages API's thinking.budget_tokens
    let body = json!({"max_tokens": 50, "messages": user("hi"),
                      "thinking": {"type": "enabled", "budget_tokens": 1024}});
    let (status, answer) = server.post("/v1/messages", body).await;
    assert_eq!(status, 200, "{answer}");
    let budget = wire::ReasoningBudget {
        tokens: 1024,
        end_id: close[0],
    };
    assert_eq!(worker.requests()[2].reasoning_budget, Some(budget));
    let body = json!({"messages": user("hi"), "thinking_budget": -1});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "thinking_budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_usage_puts_each_choices_usage_so_far_in_every_chunk() {
    let (model, _worker, server) = setup("Hello world", 2, &[]).await;
    let replied = model.encode("Hello world").len() as u64;
    let prompt = model.encode("<|user|>hi<|assistant|><think>").len() as u64;
    let options = json!({"include_usage": true, "continuous_usage_stats": true});
    let body = json!({"messages": user("hi"), "stream": true, "n": 2, "stream_options": options});
    let (_, events) = server.post_stream("/v1/chat/completions", body).await;
    let chunks = json_events(&events);
    let mut seen = [0u64; 2];
    for c in &chunks[..chunks.len() - 1] {
        let usage = &c["usage"];
        let index = c["choices"][0]["index"].as_u64().unwrap() as usize;
        let done = usage["completion_tokens"].as_u64().unwrap();
        assert_eq!(usage["prompt_tokens"], prompt, "{c}");
        assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + done);
        assert!(done >= seen[index], "{c}");
        seen[index] = done;
    }
    assert_eq!(seen, [replied; 2]);
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 2 * replied);
    // completions: a choice's own prompt
    let body = json!({"prompt": ["a", "b c d"], "stream": true, "max_tokens": 20,
                      "stream_options": options});
    let (_, events) = server.post_stream("/v1/completions", body).await;
    for c in json_events(&events)
        .iter()
        .filter(|c| !c["choices"][0].is_null())
    {
        let index = c["choices"][0]["index"].as_u64().unwrap();
        let text = if index == 0 { "a" } else { "b c d" };
        assert_eq!(c["usage"]["prompt_tokens"], model.encode(text).len(), "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_id_names_the_answer_and_comes_back_in_the_header() {
    let (_model, worker, server) = setup("x", 1, &[]).await;
    let post = |id: Option<&str>| {
        let mut req = server
            .client
            .post(format!("{}/v1/chat/completions", server.url))
            .json(&json!({"messages": user("hi")}));
        if let Some(id) = id {
            req = req.header("X-Request-Id", id);
        }
        req.send()
    };
    let answer = post(Some("job-7.a")).await.expect("answers");
    assert_eq!(answer.headers()["x-request-id"], "job-7.a");
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["id"], "chatcmpl-job-7.a");
    assert!(worker.requests()[0].rid.starts_with("job-7.a-"));
    // without one, the header names the answer; an id with a space is not taken
    for id in [None, Some("has space")] {
        let answer = post(id).await.expect("answers");
        let header = answer.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["id"], header.as_str());
        assert!(
            header.starts_with("chatcmpl-") && header.len() > 20,
            "{header}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_request_id_names_the_answer_unless_a_header_does() {
    let (_model, worker, server) = setup("x", 1, &[]).await;
    let url = |route: &str| format!("{}{route}", server.url);
    let chat = json!({"messages": user("hi"), "request_id": "body-1"});
    let answer = server
        .client
        .post(url("/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["x-request-id"], "body-1");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-body-1");
    assert!(worker.requests()[0].rid.starts_with("body-1-"));
    let completion = json!({"prompt": "hi", "max_tokens": 1, "request_id": "body-2"});
    let (_, body) = server.post("/v1/completions", completion.clone()).await;
    assert_eq!(body["id"], "cmpl-body-2");
    let answer = server
        .client
        .post(url("/v1/completions"))
        .header("X-Request-Id", "head-3")
        .json(&completion)
        .send()
        .await
        .unwrap();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["id"], "cmpl-head-3");
    for bad in [json!(5), json!(["a"]), json!({"id": "a"})] {
        let body = json!({"messages": user("hi"), "request_id": bad});
        let (status, answer) = server.post("/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], "request_id");
    }
    // any string names the answer, as in vLLM; the header carries it where it can
    let post = |id: &str| {
        let body = json!({"messages": user("hi"), "request_id": id});
        server
            .client
            .post(url("/v1/chat/completions"))
            .json(&body)
            .send()
    };
    let answer = post("has space").await.unwrap();
    assert_eq!(answer.headers()["x-request-id"], "has space");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-has space");
    let answer = post("naïve\nid").await.unwrap();
    assert!(!answer.headers().contains_key("x-request-id"), "{answer:?}");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-naïve\nid");
    // an empty one is no id: the answer is named at random
    let answer = post("").await.unwrap();
    let header = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = answer.json().await.unwrap();
    assert!(
        header.starts_with("chatcmpl-") && header.len() > 20,
        "{header}"
    );
    assert_eq!(body["id"], header.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagemaker_invocations_route_by_the_body_and_ping_answers() {
    let (_model, _worker, server) = setup("x", 1, &[]).await;
    let (status, answer) = server
        .post("/invocations", json!({"messages": user("hi")}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    let (status, answer) = server
        .post("/invocations", json!({"prompt": "hi", "max_tokens": 2}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "text_completion");
    let (status, _) = server.post("/invocations", json!({"input": "hi"})).await;
    assert_eq!(status, 400);
    let ping = server.client.get(format!("{}/ping", server.url)).send();
    assert_eq!(ping.await.expect("answers").status(), 200);
    // one model, by its listed name
    let get = |path: String| server.client.get(format!("{}{path}", server.url)).send();
    let list: Value = get("/v1/models".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let name = list["data"][0]["id"].as_str().unwrap().to_owned();
    let one = get(format!("/v1/models/{name}")).await.unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<Value>().await.unwrap()["id"], name.as_str());
    assert_eq!(get("/v1/models/other".into()).await.unwrap().status(), 404);
    // an unknown route under the Messages API answers in its shape
    let (status, answer) = server.post("/v1/messages/batches", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(answer["error"]["type"], "not_found_error");
    assert_eq!(answer["type"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_leads_the_answer_with_the_continued_message() {
    let (_model, _worker, server) = setup(" 42.", 2, &[]).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "The answer is"}],
                      "continue_final_message": true, "echo": true});
    let (status, answer) = server.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "The answer is 42."
    );
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, events) = server.post_stream("/v1/chat/completions", streamed).await;
    let text = streamed_content(&json_events(&events));
    assert_eq!(text, "The answer is 42.");
    // the last message a user's: nothing to echo
    let body = json!({"messages": user("hi"), "echo": true});
    let (_, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(answer["choices"][0]["message"]["content"], " 42.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_name_with_a_slash_is_found() {
    let (_model, _worker, server) = setup("x", 1, &["--served-model-name", "org/model"]).await;
    let get = |path: &str| server.client.get(format!("{}{path}", server.url)).send();
    let one = get("/v1/models/org/model").await.expect("answers");
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<Value>().await.unwrap()["id"], "org/model");
    assert_eq!(get("/v1/models/org").await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_salt_reaches_the_worker_and_an_empty_one_is_refused() {
    let (_model, worker, server) = setup("ok", 1, &[]).await;
    let routes = [
        ("/v1/chat/completions", json!({"messages": user("hi")})),
        ("/v1/completions", json!({"prompt": "hi"})),
        ("/v1/responses", json!({"input": "hi"})),
    ];
    for (route, body) in &routes {
        let mut salted = body.clone();
        salted["cache_salt"] = json!("tenant-1");
        let (status, answer) = server.post(route, salted).await;
        assert_eq!(status, 200, "{route}: {answer}");
        let sent = worker.requests().pop().expect("a request");
        assert_eq!(sent.cache_salt.as_deref(), Some("tenant-1"), "{route}");
        let mut empty = body.clone();
        empty["cache_salt"] = json!("");
        let (status, answer) = server.post(route, empty).await;
        assert_eq!(status, 400, "{route}: {answer}");
        assert_eq!(answer["error"]["param"], "cache_salt", "{route}");
    }
    let (status, _) = server
        .post("/v1/completions", json!({"prompt": "hi"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(worker.requests().pop().expect("a request").cache_salt, None);
}
