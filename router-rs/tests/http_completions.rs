//! `/v1/completions`, `/generate` and `/generate_stream` through the real router.

mod http_support;

use http_support::{json_events, setup};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_echoes_the_prompt_and_reports_offsets() {
    let (model, worker, server) = setup(" world", 2, &[]).await;
    let body = json!({"prompt": "hello", "echo": true, "max_tokens": 10});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(answer["object"], "text_completion");
    let choice = &answer["choices"][0];
    assert_eq!(choice["text"], "hello world");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(worker.requests()[0].input_ids, model.encode("hello"));
    assert_eq!(worker.requests()[0].prompt_logprobs, -1);
    let body = json!({"prompt": "hello", "logprobs": 1, "max_tokens": 10});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["text"], " world");
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(lp["text_offset"], json!([0, 1, 2, 3, 4, 5]));
    assert_eq!(lp["token_logprobs"][0], -0.5);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(answer["usage"]["prompt_tokens"], 5);
    assert_eq!(answer["usage"]["completion_tokens"], 6);
}

/// The scripted worker scores prompt token i (i >= 1) -0.25 * i, with itself and the next id as
/// the top two; the generated tokens get -0.5, -1.0, ...
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_with_logprobs_scores_the_prompt_tokens() {
    let (_model, worker, server) = setup(" world", 2, &[]).await;
    let body = json!({"prompt": "hello", "echo": true, "logprobs": 1, "max_tokens": 10});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(worker.requests()[0].prompt_logprobs, 1);
    assert_eq!(worker.requests()[0].logprobs, 1);
    let choice = &answer["choices"][0];
    assert_eq!(choice["text"], "hello world");
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), "hello world");
    assert_eq!(lp["text_offset"], json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
    assert_eq!(
        lp["token_logprobs"],
        json!([null, -0.25, -0.5, -0.75, -1.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0])
    );
    assert_eq!(lp["top_logprobs"][0], Value::Null);
    // Top alternatives: the prompt's own token (then the next id, "f" in this byte vocab).
    assert_eq!(lp["top_logprobs"][1], json!({"e": -0.25}));
    assert_eq!(answer["usage"]["prompt_tokens"], 5);
    assert_eq!(answer["usage"]["completion_tokens"], 6);

    // Offsets count characters: "é" is two byte tokens here, the first adding no text.
    let body = json!({"prompt": "héllo", "echo": true, "logprobs": 0, "max_tokens": 1});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let lp = &answer["choices"][0]["logprobs"];
    assert_eq!(answer["choices"][0]["text"], "héllo ");
    assert_eq!(lp["text_offset"], json!([0, 1, 1, 2, 3, 4, 5]));
    assert_eq!(lp["token_logprobs"][2], -0.5);

    // `max_tokens: 0` with echo: the prompt and its scores only.
    let body = json!({"prompt": "hello", "echo": true, "logprobs": 0, "max_tokens": 0});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["text"], "hello");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(
        choice["logprobs"]["token_logprobs"],
        json!([null, -0.25, -0.5, -0.75, -1.0])
    );
    assert_eq!(answer["usage"]["completion_tokens"], 0);
    let body = json!({"prompt": "hello", "echo": true, "logprobs": 0, "max_tokens": 0,
                      "stream": true, "stream_options": {"include_usage": true}});
    let (status, events) = server.post_stream("/v1/completions", body).await;
    assert_eq!(status, 200);
    let chunks = json_events(&events);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "hello");
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("length"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 0);
    let streamed_lp: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(
        streamed_lp,
        json!([null, -0.25, -0.5, -0.75, -1.0])
            .as_array()
            .unwrap()
            .clone()
    );

    // Streamed: the echo waits for the scores and leads the first chunk.
    let body = json!({"prompt": "hello", "echo": true, "logprobs": 0, "max_tokens": 10,
                      "stream": true});
    let (status, events) = server.post_stream("/v1/completions", body).await;
    assert_eq!(status, 200);
    let chunks = json_events(&events);
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["text"], "hello w");
    assert_eq!(
        first["logprobs"]["token_logprobs"],
        json!([null, -0.25, -0.5, -0.75, -1.0, -0.5, -1.0])
    );
    assert_eq!(
        first["logprobs"]["text_offset"],
        json!([0, 1, 2, 3, 4, 5, 6])
    );
    let offsets: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["text_offset"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(offsets, (0..11).map(Value::from).collect::<Vec<_>>());
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_token_id_prompts_gives_one_choice_per_prompt() {
    let (_model, worker, server) = setup("x", 1, &[]).await;
    let body = json!({"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 1});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(
        (choices[0]["index"].clone(), choices[1]["index"].clone()),
        (json!(0), json!(1))
    );
    let mut inputs: Vec<Vec<u32>> = worker.requests().into_iter().map(|r| r.input_ids).collect();
    inputs.sort();
    assert_eq!(inputs, vec![vec![1, 2, 3], vec![4, 5]]);
    assert_eq!(answer["usage"]["prompt_tokens"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_completion_ends_with_the_reason_and_done() {
    let (_model, _worker, server) = setup("abcdef", 2, &[]).await;
    let body = json!({"prompt": "p", "stream": true, "max_tokens": 4});
    let (status, events) = server.post_stream("/v1/completions", body).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = json_events(&events);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "abcd");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_answers_in_the_lightllm_shape() {
    let (model, worker, server) = setup("généré", 1, &[]).await;
    let body = json!({"inputs": "q", "parameters": {"max_new_tokens": 50, "return_details": true}});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    let reply_len = model.encode("généré").len();
    assert_eq!(answer["generated_text"], "généré");
    assert_eq!(answer["count_output_tokens"], reply_len);
    assert_eq!(answer["finish_reason"], "stop");
    assert_eq!(answer["prompt_tokens"], 1);
    assert_eq!(
        answer["details"]["tokens"].as_array().unwrap().len(),
        reply_len
    );
    assert_eq!(
        worker.requests()[0].temperature,
        0.0,
        "greedy without do_sample"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_stops_at_max_new_tokens_with_length() {
    let (_model, _worker, server) = setup("abcdef", 2, &[]).await;
    let body = json!({"inputs": [7, 8], "parameters": {"max_new_tokens": 3}});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["generated_text"], "abc");
    assert_eq!(answer["finish_reason"], "length");
    assert_eq!(answer["count_output_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_keeps_the_stop_sequence_and_its_tokens_spell_the_text() {
    let (_model, _worker, server) = setup("abcdef", 2, &[]).await;
    let body =
        json!({"inputs": "q", "parameters": {"max_new_tokens": 9, "stop_sequences": ["cd"]}});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["generated_text"], "abcd");
    assert_eq!(answer["finish_reason"], "stop");
    let (status, events) = server.post_stream("/generate_stream", body_of("cd")).await;
    assert_eq!(status, 200);
    let events: Vec<Value> = json_events(&events);
    let text: String = events
        .iter()
        .filter_map(|e| e["token"]["text"].as_str())
        .collect();
    assert_eq!(text, "abcd");
    assert_eq!(events.last().unwrap()["generated_text"], "abcd");
}

fn body_of(stop: &str) -> Value {
    json!({"inputs": "q", "parameters": {"max_new_tokens": 9, "stop_sequences": [stop]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_stream_sends_one_event_per_token_and_the_text_at_the_end() {
    let (_model, _worker, server) = setup("ab😀", 2, &[]).await;
    let body =
        json!({"inputs": "q", "parameters": {"max_new_tokens": 20, "stop_sequences": ["zz"]}});
    let (status, events) = server.post_stream("/generate_stream", body).await;
    assert_eq!(status, 200);
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let events: Vec<Value> = json_events(&events);
    assert_eq!(events.len(), 6, "a, b and the four bytes of the emoji");
    let text: String = events
        .iter()
        .filter_map(|e| e["token"]["text"].as_str())
        .collect();
    assert_eq!(text, "ab😀", "no token text splits a character");
    let last = events.last().unwrap();
    assert_eq!(last["finished"], true);
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["generated_text"], "ab😀");
    assert_eq!(last["token"]["count_output_tokens"], 6);
    assert!(events[..5]
        .iter()
        .all(|e| e["finished"] == false && e["generated_text"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_without_max_tokens_gets_sixteen() {
    let (_model, worker, server) = setup("x", 1, &[]).await;
    let (status, answer) = server.post("/v1/completions", json!({"prompt": "p"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(worker.requests()[0].max_new_tokens, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_is_kept_when_asked_to() {
    let (_model, _worker, server) = setup(" world, and more", 2, &[]).await;
    let cut = |include: bool| {
        json!({"prompt": "p", "max_tokens": 20, "stop": ["ld,"],
                                     "include_stop_str_in_output": include})
    };
    let (status, answer) = server.post("/v1/completions", cut(false)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["text"], " wor");
    let (_, answer) = server.post("/v1/completions", cut(true)).await;
    assert_eq!(answer["choices"][0]["text"], " world,");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_is_cut_to_its_last_tokens_when_asked_to() {
    let (model, worker, server) = setup("x", 1, &[]).await;
    let body = json!({"prompt": "hello world", "max_tokens": 1, "truncate_prompt_tokens": 3});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let ids = model.encode("hello world");
    assert_eq!(worker.requests()[0].input_ids, ids[ids.len() - 3..]);
    assert_eq!(answer["usage"]["prompt_tokens"], 3);
    // -1: as much as fits (the fake worker's 4096 less one output token), ids too
    let long: Vec<u32> = (0..5000).map(|i| 1 + i % 50).collect();
    let body = json!({"prompt": long, "max_tokens": 1, "truncate_prompt_tokens": -1});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(worker.requests()[1].input_ids, long[5000 - 4095..]);
    // the room left is the max_tokens asked for
    let body = json!({"prompt": long, "max_tokens": 100, "truncate_prompt_tokens": -1});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(worker.requests()[2].input_ids, long[5000 - 3996..]);
    // TGI's `truncate` on /generate
    let body = json!({"inputs": "hello world", "parameters": {"truncate": 2}});
    let (status, answer) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(worker.requests()[3].input_ids, ids[ids.len() - 2..]);
    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"prompt": "a", "truncate_prompt_tokens": 0}),
            "truncate_prompt_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "truncate_prompt_tokens": -2}),
            "truncate_prompt_tokens",
        ),
        (
            "/generate",
            json!({"inputs": "a", "parameters": {"truncate": 0}}),
            "parameters.truncate",
        ),
    ] {
        let (status, answer) = server.post(path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_name_tokens_by_id_when_asked_to() {
    let (model, _worker, server) = setup("ab", 1, &[]).await;
    let body = json!({"prompt": "hi", "logprobs": 1, "max_tokens": 5,
                      "return_tokens_as_token_ids": true});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let ids = model.encode("ab");
    let lp = &answer["choices"][0]["logprobs"];
    let named: Vec<String> = ids.iter().map(|id| format!("token_id:{id}")).collect();
    assert_eq!(lp["tokens"], json!(named));
    let top = lp["top_logprobs"][0].as_object().unwrap();
    assert!(top.keys().all(|k| k.starts_with("token_id:")), "{top:?}");
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true,
                      "top_logprobs": 1, "return_tokens_as_token_ids": true, "stream": true});
    let (_, events) = server.post_stream("/v1/chat/completions", body).await;
    let tokens: Vec<String> = json_events(&events)
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .map(|t| t["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens, named);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_ids_and_bad_words_reach_the_worker_as_ids() {
    let (model, worker, server) = setup("x", 1, &[]).await;
    let body = json!({"prompt": "hi", "max_tokens": 2, "allowed_token_ids": [9, 4, 9],
                      "bad_words": ["  hello", "x y"], "priority": -3});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let req = &worker.requests()[0];
    assert_eq!(req.allowed_token_ids, vec![4, 9]);
    assert_eq!(req.priority, -3);
    // each word alone, and after a space where that is as many tokens
    for word in ["hello", "x y"] {
        assert!(req.bad_words.contains(&model.encode(word)), "{word}");
        let spaced = model.encode(&format!(" {word}"));
        if spaced.len() == model.encode(word).len() {
            assert!(req.bad_words.contains(&spaced), "{word}");
        }
    }
    let too_long = "w".repeat(65);
    for (body, param) in [
        (
            json!({"prompt": "a", "allowed_token_ids": []}),
            "allowed_token_ids",
        ),
        (
            json!({"prompt": "a", "allowed_token_ids": [99_999_999]}),
            "allowed_token_ids",
        ),
        (json!({"prompt": "a", "bad_words": [" "]}), "bad_words"),
        (json!({"prompt": "a", "bad_words": [too_long]}), "bad_words"),
    ] {
        let (status, answer) = server.post("/v1/completions", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ids_come_back_when_asked_for() {
    let (model, _worker, server) = setup("Hello world", 2, &[]).await;
    let reply = model.encode("Hello world");
    let prompt = model.encode("hi");
    let body = json!({"prompt": "hi", "max_tokens": 20, "return_token_ids": true});
    let (status, answer) = server.post("/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["prompt_token_ids"], json!(prompt));
    assert_eq!(answer["choices"][0]["token_ids"], json!(reply));
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, events) = server.post_stream("/v1/completions", streamed).await;
    let chunks = json_events(&events);
    assert_eq!(chunks[0]["choices"][0]["prompt_token_ids"], json!(prompt));
    assert!(chunks[1..]
        .iter()
        .all(|c| c["choices"][0].get("prompt_token_ids").is_none()));
    let ids: Vec<Value> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["token_ids"].as_array().cloned().unwrap())
        .collect();
    assert_eq!(json!(ids), json!(reply));
    // chat: the rendered prompt's ids at the top, each choice's (or chunk's) own
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "return_token_ids": true});
    let (status, answer) = server.post("/v1/chat/completions", chat.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let rendered = model.encode("<|user|>hi<|assistant|><think>");
    assert_eq!(answer["prompt_token_ids"], json!(rendered));
    assert_eq!(answer["choices"][0]["token_ids"], json!(reply));
    let mut streamed = chat;
    streamed["stream"] = json!(true);
    let (_, events) = server.post_stream("/v1/chat/completions", streamed).await;
    let chunks = json_events(&events);
    assert_eq!(chunks[0]["prompt_token_ids"], json!(rendered));
    let ids: Vec<Value> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["token_ids"].as_array().cloned().unwrap())
        .collect();
    assert_eq!(json!(ids), json!(reply));
    // not asked for: not there
    let (_, answer) = server
        .post("/v1/completions", json!({"prompt": "hi", "max_tokens": 3}))
        .await;
    assert!(answer["choices"][0].get("token_ids").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_constraints_reach_the_worker_as_grammars() {
    let (_model, worker, server) = setup("7", 1, &[]).await;
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let bodies = [
        json!({"grammar": {"type": "json", "value": schema}}),
        json!({"grammar": {"type": "regex", "value": "[0-9]"}}),
        json!({"regular_constraint": "[0-9]", "allowed_token_ids": [5, 2]}),
        json!({"guided_grammar": "root ::= [0-9]"}),
    ];
    for parameters in &bodies {
        let body = json!({"inputs": "q", "parameters": parameters});
        let (status, answer) = server.post("/generate", body).await;
        assert_eq!(status, 200, "{parameters}: {answer}");
    }
    let sent = worker.requests();
    let grammar = |i: usize| sent[i].grammar.clone().expect("a grammar");
    let sent_schema: Value = serde_json::from_str(&grammar(0).schema.unwrap()).unwrap();
    assert_eq!(sent_schema, schema);
    assert_eq!(grammar(1).regex.as_deref(), Some("[0-9]"));
    assert_eq!(grammar(2).regex.as_deref(), Some("[0-9]"));
    assert_eq!(sent[2].allowed_token_ids, vec![2, 5]);
    assert_eq!(grammar(3).ebnf.as_deref(), Some("root ::= [0-9]"));
    for (parameters, param) in [
        (
            json!({"grammar": {"type": "regex", "value": "("}}),
            "parameters.grammar.value",
        ),
        (
            json!({"allowed_token_ids": [99_999_999]}),
            "parameters.allowed_token_ids",
        ),
    ] {
        let body = json!({"inputs": "q", "parameters": parameters});
        let (status, answer) = server.post("/generate", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], param);
    }
}
