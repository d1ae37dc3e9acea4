//! Output tags marked special in tokenizer.json still reach the parsers, while control tokens are
//! still dropped from the answer.

mod http_support;

use glm47_router::tokenizer::ModelFiles;
use http_support::{json_events, streamed_content, FakeWorker, ModelDir, Script, Server, TAGS};
use serde_json::{json, Value};

/// Rewrites the model directory's tokenizer.json with every output tag marked `"special": true`.
fn mark_tags_special(model: &ModelDir) {
    let path = model.path.join("tokenizer.json");
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let added = json["added_tokens"].as_array_mut().expect("added tokens");
    let mut marked = 0;
    for token in added.iter_mut() {
        if TAGS.contains(&token["content"].as_str().unwrap_or("")) {
            token["special"] = json!(true);
            marked += 1;
        }
    }
    assert_eq!(marked, TAGS.len());
    std::fs::write(&path, json.to_string()).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_marked_special_are_parsed_and_control_tokens_are_dropped() {
    let model = ModelDir::create();
    mark_tags_special(&model);
    let loaded = ModelFiles::load(&model.path).expect("loads");
    let tok = &loaded.tokenizer;
    for tag in TAGS {
        let id = tok.token_to_id(tag).expect("tag id");
        assert!(tok.is_special(id), "{tag} is special in this tokenizer");
        assert!(!tok.output_skip_ids().contains(&id), "{tag} is kept");
    }
    let user = tok.token_to_id("<|user|>").expect("user id");
    assert!(tok.output_skip_ids().contains(&user));

    let reply = "<think>r</think>c<|user|><tool_call>get<arg_key>city</arg_key>\
        <arg_value>Rome</arg_value></tool_call><|endoftext|>";
    let worker = FakeWorker::start(Script::reply(model.encode(reply), 2), 4096);
    let parsers = ["--tool-call-parser", "glm47", "--reasoning-parser", "glm45"];
    let server = Server::start(&model, &worker.addr, &parsers, true).await;
    let tools = json!([{"type": "function", "function": {"name": "get", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let body = json!({"messages": [{"role": "user", "content": "go"}], "tools": tools});
    let (status, answer) = server.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "r");
    assert_eq!(message["content"], "c", "<|user|> and eos are dropped");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get");
    let args = message["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .expect("arguments");
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"city": "Rome"})
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, events) = server.post_stream("/v1/chat/completions", streamed).await;
    let chunks = json_events(&events);
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    let text =
        |field: &str| -> String { deltas.iter().filter_map(|d| d[field].as_str()).collect() };
    assert_eq!(text("reasoning_content"), "r");
    assert_eq!(text("content"), "c");
    assert!(deltas
        .iter()
        .any(|d| d["tool_calls"][0]["function"]["name"] == "get"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_special_tokens_false_keeps_control_tokens_in_the_answer() {
    let model = ModelDir::create();
    mark_tags_special(&model);
    let worker = FakeWorker::start(Script::reply(model.encode("a<|user|>b"), 1), 4096);
    let server = Server::start(&model, &worker.addr, &[], true).await;
    let body = json!({"messages": [{"role": "user", "content": "go"}],
        "skip_special_tokens": false, "chat_template_kwargs": {"enable_thinking": false}});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "a<|user|>b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_that_ends_the_output_is_left_out_unless_asked_for() {
    let model = ModelDir::create();
    mark_tags_special(&model);
    let mut reply = model.encode("a<|user|>b");
    reply.push(model.eos);
    let worker = FakeWorker::start(Script::reply(reply, 1), 4096);
    let server = Server::start(&model, &worker.addr, &[], true).await;
    let ask = |include: bool, stream: bool| {
        json!({"messages": [{"role": "user", "content": "go"}], "stream": stream,
            "skip_special_tokens": false, "include_stop_str_in_output": include,
            "logprobs": true, "chat_template_kwargs": {"enable_thinking": false}})
    };
    for (include, text) in [(false, "a<|user|>b"), (true, "a<|user|>b<|endoftext|>")] {
        let (status, answer) = server
            .post("/v1/chat/completions", ask(include, false))
            .await;
        assert_eq!(status, 200, "{answer}");
        let choice = &answer["choices"][0];
        assert_eq!(choice["message"]["content"], text, "{answer}");
        assert_eq!(choice["finish_reason"], "stop");
        // the eos token keeps its place among the logprobs
        let tokens = choice["logprobs"]["content"].as_array().expect("logprobs");
        assert_eq!(tokens.last().unwrap()["token"], "<|endoftext|>", "{answer}");
        let (_, events) = server
            .post_stream("/v1/chat/completions", ask(include, true))
            .await;
        assert_eq!(streamed_content(&json_events(&events)), text);
    }
    // the same on completions
    let body = json!({"prompt": "go", "skip_special_tokens": false, "max_tokens": 9});
    let (status, answer) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["text"], "a<|user|>b", "{answer}");

    // and for a stop token id of the request's (the worker ends on it)
    let stop_id = *model.encode("b").last().unwrap();
    let worker = FakeWorker::start(Script::reply(model.encode("a<|user|>b"), 1), 4096);
    let server = Server::start(&model, &worker.addr, &[], true).await;
    for (include, text) in [(false, "a<|user|>"), (true, "a<|user|>b")] {
        let body = json!({"prompt": "go", "skip_special_tokens": false, "max_tokens": 9,
            "stop_token_ids": [stop_id], "include_stop_str_in_output": include});
        let (status, answer) = server.post("/v1/completions", body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["choices"][0]["text"], text, "{answer}");
        assert_eq!(answer["choices"][0]["stop_reason"], stop_id, "{answer}");
    }
}
