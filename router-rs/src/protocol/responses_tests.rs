//! Tests of responses.rs.

use serde_json::json;

use super::ResponsesRequest;
use crate::protocol::chat::ToolChoice;

#[test]
fn items_become_the_chat_messages_they_stand_for() {
    let body = json!({
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                          {"type": "input_text", "text": "in Paris?"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Look it up."}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Sunny."}]},
        ],
        "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "w"},
        "max_output_tokens": 7,
        "parallel_tool_calls": false,
        "reasoning": {"effort": "minimal"},
    });
    let req = ResponsesRequest::from_json(&body).unwrap();
    let m = req.chat.messages.as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["system", "system", "user", "assistant", "tool", "assistant"]
    );
    assert_eq!(m[2]["content"], "Weather in Paris?");
    assert_eq!(m[3]["reasoning_content"], "Look it up.");
    assert_eq!(m[3]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(m[4]["tool_call_id"], "c1");
    assert_eq!(req.chat.tool_choice, ToolChoice::Named("w".into()));
    assert_eq!(req.chat.sampling.max_new_tokens, Some(7));
    assert!(!req.chat.parallel_tool_calls);
    let json = json!({"input": "hi", "text": {"format": {"type": "json_schema", "name": "n",
                                                         "schema": {"type": "object"}}}});
    let json = ResponsesRequest::from_json(&json).unwrap();
    assert!(json.chat.sampling.output_constraint.is_some());
    assert_eq!(req.chat.template_kwargs["enable_thinking"], false);
    assert_eq!(req.echo["max_output_tokens"], 7);
    // a function keeps its keys' order, as the prompt renders them
    let tool = json!({"type": "function", "name": "w", "description": "d",
                      "parameters": {"type": "object"}, "strict": true});
    let req = ResponsesRequest::from_json(&json!({"input": "hi", "tools": [tool]})).unwrap();
    let function = req.chat.tools[0]["function"].as_object().unwrap();
    let keys: Vec<&str> = function.keys().map(String::as_str).collect();
    assert_eq!(keys, ["name", "description", "parameters", "strict"]);
    // vLLM's constrained output is read as chat reads it
    for (field, value) in [
        ("guided_choice", json!(["yes", "no"])),
        ("structured_outputs", json!({"choice": ["yes", "no"]})),
    ] {
        let mut body = json!({"input": "hi"});
        body[field] = value;
        let req = ResponsesRequest::from_json(&body).unwrap();
        let c = req.chat.sampling.output_constraint.expect(field);
        assert_eq!(c.choices, Some(vec!["yes".to_string(), "no".to_string()]));
    }
}

#[test]
fn what_is_not_kept_or_offered_names_its_field() {
    for (body, param) in [
        (
            json!({"input": "hi", "background": true, "store": false}),
            "background",
        ),
        (json!({"input": "hi", "background": 1}), "background"),
        (json!({"input": "hi", "store": "no"}), "store"),
        (
            json!({"input": "hi", "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"input": "hi", "guided_json": {}, "guided_whitespace_pattern": " "}),
            "guided_whitespace_pattern",
        ),
        (json!({"input": "hi", "guided_regex": "("}), "guided_regex"),
        (json!({"input": "hi", "text": "plain"}), "text"),
        (json!({"input": "hi", "reasoning": "high"}), "reasoning"),
        (json!({"input": "hi", "metadata": "x"}), "metadata"),
        (json!({"input": "hi", "metadata": {"k": 1}}), "metadata"),
        (
            json!({"input": [{"role": "tool", "content": "sunny"}]}),
            "input[0].role",
        ),
        (
            json!({"input": "hi", "tools": [{"type": "file_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"input": [{"type": "item_reference", "id": "x"}]}),
            "input[0]",
        ),
        (json!({"input": 3}), "input"),
        (
            json!({"input": "hi", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (json!({"input": "hi", "top_logprobs": 21}), "top_logprobs"),
        (
            json!({"input": "hi", "text": {"format": {"type": "json_schema", "name": "n",
                                                      "schema": {"type": "object", "not": {}}}}}),
            "text.format.schema",
        ),
        (
            json!({"input": "hi", "tools": [{"type": "function", "name": "a<b"}]}),
            "tools[0].name",
        ),
    ] {
        let e = ResponsesRequest::from_json(&body).unwrap_err();
        assert_eq!(e.param, param, "{body}");
    }
}
