//! Chat completions through the real router and a scripted worker.

mod http_support;

use glm47_router::wire;
use http_support::{json_events, setup, setup_with};
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
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello there");
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
async fn a_required_tool_choice_with_thinking_closes_reasoning_and_opens_the_call() {
    let reply = "get<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>";
    let (model, worker, server) = setup(reply, 3, &BOTH_PARSERS).await;
    let body = json!({"messages": user("go"), "tools": get_tool(), "tool_choice": "required"});
    let (status, answer) = server.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let prompt =
        model.encode("<|system|>tools:get;<|user|>go<|assistant|><think></think><tool_call>");
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
async fn a_named_tool_choice_with_thinking_forces_that_call_and_keeps_one_without_parallel() {
    let reply = "<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>\
        <tool_call>get<arg_key>city</arg_key><arg_value>Oslo</arg_value></tool_call>";
    let (model, worker, server) = setup(reply, 4, &BOTH_PARSERS).await;
    let body = json!({"messages": user("go"), "tools": get_tool(),
        "tool_choice": {"type": "function", "function": {"name": "get"}},
        "parallel_tool_calls": false});
    let (status, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{answer}");
    let prompt =
        model.encode("<|system|>tools:get;<|user|>go<|assistant|><think></think><tool_call>get");
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
    let text: String = json_events(&events)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "The answer is 42.");
    // the last message a user's: nothing to echo
    let body = json!({"messages": user("hi"), "echo": true});
    let (_, answer) = server.post("/v1/chat/completions", body).await;
    assert_eq!(answer["choices"][0]["message"]["content"], " 42.");
}
