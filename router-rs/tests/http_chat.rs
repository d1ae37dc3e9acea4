//! Chat completions through the real router and a scripted worker.

mod http_support;

use http_support::{json_events, setup, setup_with, streamed_content};
use serde_json::{json, Value};

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_answer_carries_the_reply_usage_and_model_defaults() {
    let (model, worker, server) = setup("Hello there", 3, &[]).await;
    let (status, body) = server
        .post("/v1/chat/completions", json!({"messages": user("hi")}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "tiny-glm");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
    let message = body["choices"][0]["message"].as_object().unwrap();
    assert!(
        message["reasoning_content"].is_null(),
        "present and null without reasoning"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let prompt = model.encode("<|user|>hi<|assistant|><think>");
    let reqs = worker.requests();
    assert_eq!(reqs[0].input_ids, prompt);
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(body["usage"]["completion_tokens"], 11);
    assert_eq!(body["usage"]["total_tokens"], prompt.len() + 11);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    assert_eq!(reqs[0].temperature, 0.6, "generation_config default");
    assert_eq!(
        reqs[0].max_new_tokens,
        4096 - prompt.len() as u32,
        "unset max_tokens fills the room"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_stream_sends_role_deltas_finish_usage_and_done() {
    let (_model, _worker, server) = setup("Hello there", 2, &[]).await;
    let body =
        json!({"messages": user("hi"), "stream": true, "stream_options": {"include_usage": true}});
    let (status, events) = server.post_stream("/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = json_events(&events);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_content(&chunks), "Hello there");
    let last_choice = &chunks[chunks.len() - 2];
    assert_eq!(last_choice["choices"][0]["finish_reason"], "stop");
    assert!(last_choice["usage"].is_null());
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 11);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_reasoning_alone_has_null_content() {
    let parsers = ["--reasoning-parser", "glm45"];
    let (_model, _worker, server) = setup("still thinking", 2, &parsers).await;
    let (status, answer) = server
        .post("/v1/chat/completions", json!({"messages": user("hi")}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "still thinking");
    assert!(message["content"].is_null(), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_split_across_tokens_ends_the_answer_and_aborts_the_worker() {
    let slow = |s: &mut http_support::Script| s.delay = std::time::Duration::from_millis(15);
    let (_model, worker, server) = setup_with("one two STOP three four five", &[], slow).await;
    let body = json!({"messages": user("count"), "stop": ["STOP"]});
    let (status, body) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "one two ");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"]["completion_tokens"], 12,
        "tokens up to the end of the match"
    );
    let rid = worker.requests()[0].rid.clone();
    for _ in 0..100 {
        if worker.aborts.lock().unwrap().contains(&rid) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the worker request was not aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_are_indexed_and_get_consecutive_seeds() {
    let (_model, worker, server) = setup("ok", 1, &[]).await;
    let body = json!({"messages": user("hi"), "n": 2, "seed": 7, "max_tokens": 5});
    let (status, body) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{body}");
    let indexes: Vec<_> = body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].clone())
        .collect();
    assert_eq!(indexes, vec![json!(0), json!(1)]);
    assert!(body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["message"]["content"] == "ok"));
    assert_eq!(body["usage"]["completion_tokens"], 4);
    let seeds: Vec<_> = worker.requests().iter().map(|r| r.seed).collect();
    assert_eq!(seeds, vec![Some(7), Some(8)]);
    assert!(worker.requests().iter().all(|r| r.max_new_tokens == 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_and_tool_calls_are_split_out_when_the_parsers_are_on() {
    let reply = "plan</think>ok<tool_call>get<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>";
    let parsers = ["--tool-call-parser", "glm47", "--reasoning-parser", "glm45"];
    let (_model, _worker, server) = setup(reply, 4, &parsers).await;
    let tools = json!([{"type": "function", "function": {"name": "get", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let body = json!({"messages": user("weather?"), "tools": tools});
    let (status, answer) = server.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "plan");
    assert_eq!(message["content"], "ok");
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get");
    let args: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, events) = server.post_stream("/v1/chat/completions", streamed).await;
    let chunks = json_events(&events);
    for chunk in &chunks {
        // Outputs the parsers hold back entirely (a name or tag still incomplete) send nothing.
        let choice = &chunk["choices"][0];
        let said = choice["delta"]
            .as_object()
            .is_some_and(|d| d.values().any(|v| !v.is_null()));
        assert!(said || !choice["finish_reason"].is_null(), "{chunk}");
    }
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    let reasoning: String = deltas
        .iter()
        .filter_map(|d| d["reasoning_content"].as_str())
        .collect();
    let arguments: String = deltas
        .iter()
        .filter_map(|d| d["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(reasoning, "plan");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    let finish = chunks
        .iter()
        .rev()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_tool_choice_without_thinking_forces_the_call_in_the_prompt() {
    let reply = "<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>";
    let (model, worker, server) = setup(reply, 3, &["--tool-call-parser", "glm47"]).await;
    let tools = json!([{"type": "function", "function": {"name": "get"}}]);
    let body = json!({"messages": user("go"), "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get"}},
        "chat_template_kwargs": {"enable_thinking": false}});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let prompt = model.encode("<|system|>tools:get;<|user|>go<|assistant|></think><tool_call>get");
    assert_eq!(worker.requests()[0].input_ids, prompt);
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Rome"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_tool_choice_without_the_tool_parser_is_refused() {
    let (_model, worker, server) = setup("x", 1, &[]).await;
    let tools = json!([{"type": "function", "function": {"name": "get"}}]);
    let named = json!({"type": "function", "function": {"name": "get"}});
    for choice in [json!("required"), named] {
        let body = json!({"messages": user("go"), "tools": tools, "tool_choice": choice});
        let (status, answer) = server.post("/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], "tool_choice");
    }
    let body = json!({"messages": user("go"), "tools": tools, "tool_choice": "auto"});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        worker.requests().len(),
        1,
        "refused requests never reach the worker"
    );
}

const BOTH_PARSERS: [&str; 4] = ["--tool-call-parser", "glm47", "--reasoning-parser", "glm45"];

fn get_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

/// The arguments of the first call of a non-streamed answer, parsed.
fn first_call_args(answer: &Value) -> Value {
    let args = answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .expect("a call with arguments");
    serde_json::from_str(args).expect("arguments are JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_tool_choice_with_thinking_takes_the_turn_without_reasoning_and_opens_the_call()
{
    let reply = "get<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>";
    let (model, worker, server) = setup(reply, 3, &BOTH_PARSERS).await;
    let body = json!({"messages": user("go"), "tools": get_tool(), "tool_choice": "required"});
    let (status, answer) = server.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let prompt = model.encode("<|system|>tools:get;<|user|>go<|assistant|></think><tool_call>");
    assert_eq!(worker.requests()[0].input_ids, prompt);
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get");
    assert_eq!(first_call_args(&answer), json!({"city": "Rome"}));
    assert!(message["content"].is_null(), "{message}");
    assert!(message["reasoning_content"].is_null(), "{message}");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (status, events) = server.post_stream("/v1/chat/completions", streamed).await;
    assert_eq!(status, 200);
    let chunks = json_events(&events);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    let names: Vec<&str> = calls
        .iter()
        .filter_map(|c| c["function"]["name"].as_str())
        .collect();
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(names, vec!["get"]);
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Rome"})
    );
    let finish = chunks
        .iter()
        .rev()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ended_at_the_token_limit_finishes_as_tool_calls_and_a_cut_one_as_length() {
    let call = "<tool_call>get<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>";
    let parser = ["--tool-call-parser", "glm47"];
    let (model, _worker, server) = setup(&format!("{call} and more"), 2, &parser).await;
    let whole = model.encode(call).len();
    for (max_tokens, reason) in [(whole, "tool_calls"), (whole - 1, "length")] {
        let body = json!({"messages": user("go"), "tools": get_tool(), "max_tokens": max_tokens});
        let (status, answer) = server.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["choices"][0]["finish_reason"], reason, "{answer}");
        assert_eq!(first_call_args(&answer), json!({"city": "Rome"}));
        let mut streamed = body;
        streamed["stream"] = json!(true);
        let (_, events) = server.post_stream("/v1/chat/completions", streamed).await;
        let finish = json_events(&events)
            .iter()
            .rev()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned));
        assert_eq!(finish.as_deref(), Some(reason), "max_tokens {max_tokens}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_tool_choice_with_thinking_forces_that_call_and_keeps_one_without_parallel() {
    let reply = "<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>\
        <tool_call>get<arg_key>city</arg_key><arg_value>Oslo</arg_value></tool_call>";
    let (model, worker, server) = setup(reply, 4, &BOTH_PARSERS).await;
    let body = json!({"messages": user("go"), "tools": get_tool(),
        "tool_choice": {"type": "function", "function": {"name": "get"}},
        "parallel_tool_calls": false});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let prompt = model.encode("<|system|>tools:get;<|user|>go<|assistant|></think><tool_call>get");
    assert_eq!(worker.requests()[0].input_ids, prompt);
    let calls = answer["choices"][0]["message"]["tool_calls"]
        .as_array()
        .expect("tool calls");
    assert_eq!(calls.len(), 1, "only the first call: {calls:?}");
    assert_eq!(first_call_args(&answer), json!({"city": "Rome"}));
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_none_tool_choice_renders_no_tools_and_parses_no_calls() {
    let reply = "sure<tool_call>get<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>";
    let (model, worker, server) = setup(reply, 5, &BOTH_PARSERS).await;
    let body = json!({"messages": user("go"), "tools": get_tool(), "tool_choice": "none",
        "chat_template_kwargs": {"enable_thinking": false}});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let prompt = model.encode("<|user|>go<|assistant|></think>");
    assert_eq!(worker.requests()[0].input_ids, prompt);
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], reply);
    assert!(message.get("tool_calls").is_none(), "{message}");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_come_in_the_openai_shape() {
    let (_model, worker, server) = setup("abc", 2, &[]).await;
    let body = json!({"messages": user("x"), "logprobs": true, "top_logprobs": 2});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(worker.requests()[0].logprobs, 2);
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(content.len(), 3);
    assert_eq!(content[1]["token"], "b");
    assert_eq!(content[1]["logprob"], -1.0);
    assert_eq!(content[1]["bytes"], json!([98]));
    assert_eq!(content[1]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(content[1]["top_logprobs"][0]["token"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprob_bytes_spell_a_character_split_over_tokens() {
    let (_model, _worker, server) = setup("é", 2, &[]).await;
    let body = json!({"messages": user("x"), "logprobs": true});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(content.len(), 2, "one token a byte");
    let bytes: Vec<Value> = content
        .iter()
        .flat_map(|t| t["bytes"].as_array().unwrap().clone())
        .collect();
    assert_eq!(bytes, json!([0xc3, 0xa9]).as_array().unwrap().clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_aborts_its_worker_request() {
    use futures::StreamExt;
    let slow = |s: &mut http_support::Script| s.delay = std::time::Duration::from_millis(20);
    let (_model, worker, server) = setup_with("a long answer that keeps going", &[], slow).await;
    let body = json!({"messages": user("talk"), "stream": true});
    let response = server
        .client
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut bytes = response.bytes_stream();
    let first = bytes.next().await.expect("a first chunk").unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    drop(bytes);
    let rid = worker.requests()[0].rid.clone();
    for _ in 0..100 {
        if worker.aborts.lock().unwrap().contains(&rid) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the worker request was not aborted after the client left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_keeps_its_stop_string_when_asked_to() {
    let (_model, _worker, server) = setup("Hello there. More", 3, &[]).await;
    let body = |include: bool| json!({"messages": user("hi"), "stop": "there.", "include_stop_str_in_output": include});
    let (status, answer) = server.post("/v1/chat/completions", body(false)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello ");
    let (_, answer) = server.post("/v1/chat/completions", body(true)).await;
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}
