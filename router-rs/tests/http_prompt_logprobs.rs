//! vLLM's `prompt_logprobs` on `/v1/completions` and `/v1/chat/completions`, through the real
//! router in front of the scripted worker, which scores prompt token i (i >= 1) -0.25 * i with
//! rank 1, its best two alternatives being the token itself and the next id (-3.0).

mod http_support;

use http_support::{json_events, setup, ModelDir};
use serde_json::{json, Value};

/// The entry `prompt_logprobs` gives prompt token `id` of logprob `logprob` and rank `rank`.
fn entry(model: &ModelDir, id: u32, logprob: f64, rank: u32) -> (String, Value) {
    let text = model.tokenizer.decode(&[id], false).expect("decodes");
    let value = json!({"logprob": logprob, "rank": rank, "decoded_token": text});
    (id.to_string(), value)
}

/// What the scripted worker's scores of `ids` look like as `prompt_logprobs` with top `k`.
fn expected(model: &ModelDir, ids: &[u32], k: usize) -> Value {
    let mut list = vec![Value::Null];
    for (&id, i) in ids[1..].iter().zip(1u32..) {
        let own = entry(model, id, -0.25 * f64::from(i), 1);
        let next = entry(model, id + 1, -3.0, 2);
        let position: serde_json::Map<String, Value> =
            [own, next].into_iter().take(k.max(1)).collect();
        list.push(Value::Object(position));
    }
    Value::Array(list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_lists_each_prompt_token_with_its_rank_and_alternatives() {
    let (model, worker, server) = setup(" world", 2, &[]).await;
    let ids = model.encode("hello");
    for k in [0usize, 1, 2] {
        let body = json!({"prompt": "hello", "max_tokens": 3, "prompt_logprobs": k});
        let (status, answer) = server.post("/v1/completions", body).await;
        assert_eq!(status, 200, "{answer}");
        let choice = &answer["choices"][0];
        assert_eq!(
            choice["prompt_logprobs"],
            expected(&model, &ids, k),
            "k = {k}"
        );
        assert_eq!(choice["text"], " wo", "no echo asked for");
        assert_eq!(choice["logprobs"], Value::Null);
    }
    let sent: Vec<i32> = worker
        .requests()
        .iter()
        .map(|r| r.prompt_logprobs)
        .collect();
    assert_eq!(sent, vec![0, 1, 2]);
    let first = &expected(&model, &ids, 2)[1];
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(keys, [&ids[1].to_string(), &(ids[1] + 1).to_string()]);

    let body = json!({"prompt": "hello", "max_tokens": 3});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["choices"][0].get("prompt_logprobs").is_none());
    assert_eq!(worker.requests().last().unwrap().prompt_logprobs, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_echo_the_larger_top_is_scored_and_each_part_shows_its_own() {
    let (model, worker, server) = setup(" world", 2, &[]).await;
    let ids = model.encode("hello");
    // (echo's logprobs, prompt_logprobs, the echo's alternatives at position 1): the worker
    // scores the larger top, 2, both times
    let cases = [
        (1, 2, json!({"e": -0.25})),
        (2, 0, json!({"e": -0.25, "f": -3.0})),
    ];
    for (i, (echo_top, listed, echo_alternatives)) in cases.into_iter().enumerate() {
        let body = json!({"prompt": "hello", "echo": true, "logprobs": echo_top, "max_tokens": 2,
                          "prompt_logprobs": listed});
        let (status, answer) = server.post("/v1/completions", body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(worker.requests()[i].prompt_logprobs, 2);
        let choice = &answer["choices"][0];
        assert_eq!(choice["text"], "hello w");
        assert_eq!(choice["logprobs"]["top_logprobs"][1], echo_alternatives);
        assert_eq!(choice["prompt_logprobs"], expected(&model, &ids, listed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_puts_prompt_logprobs_in_each_choices_first_chunk() {
    let (model, worker, server) = setup(" world", 2, &[]).await;
    let ids = model.encode("hello");
    let body = json!({"prompt": "hello", "echo": true, "max_tokens": 6, "n": 2,
                      "stream": true, "prompt_logprobs": 1});
    let (status, events) = server.post_stream("/v1/completions", body).await;
    assert_eq!(status, 200);
    let chunks = json_events(&events);
    for index in [0, 1] {
        let own: Vec<&Value> = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|c| c["index"] == index)
            .collect();
        assert!(own.len() > 1, "{chunks:?}");
        assert_eq!(own[0]["prompt_logprobs"], expected(&model, &ids, 1));
        assert_eq!(own[0]["text"], "hello w", "the echo waits for the scores");
        assert!(own[1..].iter().all(|c| c.get("prompt_logprobs").is_none()));
        let text: String = own.iter().filter_map(|c| c["text"].as_str()).collect();
        assert_eq!(text, "hello world");
    }
    let scored: Vec<i32> = worker
        .requests()
        .iter()
        .map(|r| r.prompt_logprobs)
        .collect();
    assert_eq!(
        scored,
        [1, -1],
        "the second choice shares the first one's scores"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_prompt_is_scored_once_and_its_choices_share_the_scores() {
    let (model, worker, server) = setup(" world", 2, &[]).await;
    let prompts = ["hello", "hi there"];
    let body = json!({"prompt": prompts, "n": 2, "max_tokens": 2, "echo": true, "logprobs": 0,
                      "prompt_logprobs": 1});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (choice, i) in choices.iter().zip(0usize..) {
        let ids = model.encode(prompts[i / 2]);
        assert_eq!(choice["index"], i);
        assert_eq!(
            choice["prompt_logprobs"],
            expected(&model, &ids, 1),
            "choice {i}"
        );
        let echoed = &choice["logprobs"]["token_logprobs"];
        assert_eq!(echoed[0], Value::Null, "choice {i}");
        assert_eq!(
            echoed[1],
            json!(-0.25),
            "choice {i}: the echo's logprobs are shared too"
        );
    }
    for prompt in prompts {
        let ids = model.encode(prompt);
        let scored: Vec<i32> = worker
            .requests()
            .iter()
            .filter(|r| r.input_ids == ids)
            .map(|r| r.prompt_logprobs)
            .collect();
        assert_eq!(scored.len(), 2);
        assert_eq!(
            scored.iter().filter(|&&k| k == 1).count(),
            1,
            "{prompt}: {scored:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_answer_lists_the_rendered_prompt_and_a_chat_stream_is_refused() {
    let (model, worker, server) = setup("ok", 1, &[]).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let body = json!({"messages": messages, "max_tokens": 2, "prompt_logprobs": 2, "n": 2});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let ids = worker.requests()[0].input_ids.clone();
    assert_eq!(ids, model.encode("<|user|>hi<|assistant|><think>"));
    assert_eq!(worker.requests()[0].prompt_logprobs, 2);
    assert_eq!(
        worker.requests()[1].prompt_logprobs,
        -1,
        "one choice scores the prompt"
    );
    assert_eq!(answer["prompt_logprobs"], expected(&model, &ids, 2));
    assert_eq!(
        answer["prompt_logprobs"][1][ids[1].to_string()]["decoded_token"],
        "h"
    );
    assert!(answer["choices"][0].get("prompt_logprobs").is_none());

    let body = json!({"messages": messages, "prompt_logprobs": 1, "stream": true});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    assert_eq!(answer["error"]["param"], "prompt_logprobs");
    assert_eq!(
        worker.requests().len(),
        2,
        "the refused stream reached no worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_logprobs_outside_0_to_20_are_400_naming_the_field() {
    let (_model, worker, server) = setup("ok", 1, &[]).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    for bad in [json!(-1), json!(21), json!("2"), json!(1.5)] {
        let cases = [
            (
                "/v1/completions",
                json!({"prompt": "x", "prompt_logprobs": bad}),
            ),
            (
                "/v1/chat/completions",
                json!({"messages": messages, "prompt_logprobs": bad}),
            ),
        ];
        for (path, body) in cases {
            let (status, answer) = server.post(path, body).await;
            assert_eq!(status, 400, "{path} {bad}: {answer}");
            assert_eq!(answer["error"]["type"], "invalid_request_error");
            assert_eq!(answer["error"]["param"], "prompt_logprobs");
        }
    }
    assert!(worker.requests().is_empty());
    let body = json!({"prompt": "x", "max_tokens": 1, "prompt_logprobs": null});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(worker.requests()[0].prompt_logprobs, -1);
}
