//! Tests of messages.rs.

use serde_json::json;

use super::MessagesRequest;
use crate::protocol::chat::ToolChoice;

#[test]
fn blocks_become_the_chat_messages_they_stand_for() {
    let body = json!({
        "model": "m", "max_tokens": 9, "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Look it up.", "signature": "x"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "And tomorrow?"}]},
        ],
        "tools": [{"name": "w", "description": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "w", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"],
        "thinking": {"type": "disabled"},
    });
    let req = MessagesRequest::from_json(&body).unwrap().chat;
    let m = req.messages.as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
    assert_eq!(m[2]["reasoning_content"], "Look it up.");
    assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "w");
    assert_eq!(m[3]["content"], "sunny");
    assert_eq!(req.tool_choice, ToolChoice::Named("w".into()));
    assert!(!req.parallel_tool_calls);
    assert_eq!(req.sampling.max_new_tokens, Some(9));
    assert_eq!(req.sampling.stop, vec!["END".to_string()]);
    assert_eq!(req.template_kwargs["enable_thinking"], false);
    // a tool as OpenAI clients write a function, for the same prompt as chat's
    let function = req.tools[0]["function"].as_object().unwrap();
    let keys: Vec<&str> = function.keys().map(String::as_str).collect();
    assert_eq!(keys, ["name", "description", "parameters"]);
}

#[test]
fn turns_of_one_role_are_merged_and_a_last_assistant_turn_is_continued() {
    let body = json!({"messages": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"}]},
        {"role": "assistant", "content": "The answer is"},
    ]});
    let req = MessagesRequest::from_json(&body).unwrap().chat;
    let m = req.messages.as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["content"], "a\n\nb");
    assert_eq!(m[1]["reasoning_content"], "t");
    assert_eq!(m[1]["content"], "The answer is");
    assert!(req.continue_final_message && !req.add_generation_prompt);
    // an empty last assistant turn is no prefill
    let body = json!({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]});
    let req = MessagesRequest::from_json(&body).unwrap().chat;
    assert_eq!(req.messages.as_array().unwrap().len(), 1);
    assert!(req.add_generation_prompt && !req.continue_final_message);
    // a tool use cannot be continued
    let body = json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant",
        "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]}]});
    assert_eq!(
        MessagesRequest::from_json(&body).unwrap_err().param,
        "messages"
    );
}

#[test]
fn what_is_not_offered_names_its_field() {
    for (body, param) in [
        (json!({"messages": []}), "messages"),
        (
            json!({"system": [{"type": "text", "text": ""}], "messages": [{"role": "user", "content": "x"}]}),
            "system[0].text",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                   "content": [{"type": "text", "text": ""}]}]}]}),
            "messages[0].content[0].content[0].text",
        ),
        (
            json!({"messages": [{"role": "user", "content": ""}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": []}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": ""}, {"role": "user", "content": "x"}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""}]}]}),
            "messages[0].content[1].text",
        ),
        (
            json!({"messages": [{"role": "system", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "s"}]}),
            "tools[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}}),
            "tool_choice",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            "max_tokens",
        ),
    ] {
        let e = MessagesRequest::from_json(&body).unwrap_err();
        assert_eq!(e.param, param, "{body}");
    }
}
