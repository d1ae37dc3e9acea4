//! SGLang's native `/generate` shape through the real router and a scripted worker.

mod http_support;

use http_support::{json_events, setup};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_generate_answers_in_its_own_shape() {
    let (model, worker, server) = setup("Hello world", 2, &[]).await;
    let reply = model.encode("Hello world");
    let body = json!({"text": "hi", "sampling_params": {"max_new_tokens": 50, "temperature": 0,
                      "stop_token_ids": [7]}, "return_logprob": true});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["text"], "Hello world");
    assert_eq!(answer["output_ids"], json!(reply));
    let meta = &answer["meta_info"];
    assert_eq!(meta["prompt_tokens"], model.encode("hi").len());
    assert_eq!(meta["completion_tokens"], reply.len());
    assert_eq!(meta["finish_reason"]["type"], "stop");
    assert!(meta["finish_reason"]["matched"].is_null(), "{meta}");
    assert_eq!(meta["output_token_logprobs"][0][1], reply[0]);
    assert_eq!(worker.requests()[0].max_new_tokens, 50);
    assert_eq!(worker.requests()[0].stop_token_ids, vec![7]);
    // a list of prompts: a list of answers; a stream: the text so far, then [DONE]
    let body = json!({"input_ids": [[1, 2], [3]], "sampling_params": {"max_new_tokens": 1}});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer.as_array().map(Vec::len), Some(2));
    assert_eq!(answer[1]["meta_info"]["finish_reason"]["type"], "length");
    // one sampling_params per prompt
    let body = json!({"input_ids": [[1, 2], [3]],
                      "sampling_params": [{"max_new_tokens": 2}, {"max_new_tokens": 3}]});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    let mut budgets: Vec<u32> = worker.requests()[3..]
        .iter()
        .map(|r| r.max_new_tokens)
        .collect();
    budgets.sort_unstable();
    assert_eq!(budgets, [2, 3]);
    let body = json!({"text": "hi", "stream": true});
    let (_, events) = server.post_stream("/generate", body).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = json_events(&events);
    let last = chunks.last().unwrap();
    assert_eq!(last["text"], "Hello world");
    assert_eq!(last["meta_info"]["finish_reason"]["type"], "stop");
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["meta_info"]["finish_reason"].is_null()));
    for (body, param) in [
        (
            json!({"text": "a", "sampling_params": {"bogus": 1}}),
            "sampling_params.bogus",
        ),
        (
            json!({"text": "a", "sampling_params": {"n": 2}}),
            "sampling_params.n",
        ),
        (
            json!({"text": "a", "sampling_params": {"temperature": 9}}),
            "sampling_params.temperature",
        ),
        (json!({"text": "a", "input_ids": [1]}), "text"),
        (
            json!({"text": ["a", "b", "c"], "sampling_params": [{}, {}]}),
            "sampling_params",
        ),
    ] {
        let (status, answer) = server.post("/generate", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eos_token_that_ends_the_output_is_what_matched() {
    let (model, _worker, server) = setup("Hi<|endoftext|>", 2, &[]).await;
    let body = json!({"text": "hi", "sampling_params": {"max_new_tokens": 50}});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    let finish = &answer["meta_info"]["finish_reason"];
    assert_eq!(
        finish,
        &json!({"type": "stop", "matched": model.eos}),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprob_options_not_served_are_refused_not_ignored() {
    let (_model, worker, server) = setup("Hi", 2, &[]).await;
    let base = json!({"text": "hi", "return_logprob": true});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    for (key, value) in [
        ("logprob_start_len", json!(0)),
        ("return_text_in_logprobs", json!(true)),
    ] {
        let (status, answer) = server.post("/generate", with(key, value)).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], key, "{answer}");
    }
    assert!(worker.requests().is_empty());
    // their defaults are what is served
    for (key, value) in [
        ("logprob_start_len", json!(-1)),
        ("return_text_in_logprobs", json!(false)),
    ] {
        let (status, answer) = server.post("/generate", with(key, value)).await;
        assert_eq!(status, 200, "{answer}");
    }
}
