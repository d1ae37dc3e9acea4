use super::*;
use crate::protocol::OutputConstraint;
use serde_json::json;

#[test]
fn text_parts_are_joined_and_arguments_parsed() {
    let req = ChatRequest::from_json(&json!({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}
    ]}))
    .unwrap();
    assert_eq!(req.messages[0]["content"], "ab");
    assert_eq!(
        req.messages[1]["content"], "",
        "a null content renders as no text"
    );
    assert_eq!(
        req.messages[1]["tool_calls"][0]["function"]["arguments"]["x"],
        1
    );
}

#[test]
fn tool_choice_none_drops_the_tools() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let req = ChatRequest::from_json(&json!({"messages": [{"role": "user", "content": "hi"}],
        "tools": tools, "tool_choice": "none"}))
    .unwrap();
    assert!(req.tools.is_empty());
}

#[test]
fn function_names_a_call_could_never_match_are_refused() {
    let long = "f".repeat(257);
    for (name, why) in [
        ("", "blank"),
        ("spaced ", "whitespace"),
        (" spaced", "whitespace"),
        ("a<b", "'<'"),
        ("two\nlines", "newline"),
        (long.as_str(), "longer than 256"),
    ] {
        let err = ChatRequest::from_json(&json!({"messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "ok"}},
                      {"type": "function", "function": {"name": name}}]}))
        .unwrap_err();
        assert_eq!(err.param, "tools[1].function.name");
        assert!(err.message.contains(why), "{name:?}: {}", err.message);
    }
    for name in ["get_weather", "a.b-c:d", "f".repeat(256).as_str(), "名前"] {
        let tools = json!([{"type": "function", "function": {"name": name}}]);
        let req = ChatRequest::from_json(&json!({"messages": [{"role": "user", "content": "hi"}],
            "tools": tools}));
        assert!(req.is_ok(), "{name:?}");
    }
}

#[test]
fn chat_options_that_would_be_ignored_are_refused() {
    let hi = json!([{"role": "user", "content": "hi"}]);
    for (extra, param) in [
        (json!({"best_of": 3}), "best_of"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}),
            "tools[0].function.parameters",
        ),
    ] {
        let mut body = extra.clone();
        body["messages"] = hi.clone();
        let err = ChatRequest::from_json(&body).unwrap_err();
        assert_eq!(err.param, param, "{extra}");
    }
    let fine = json!({"messages": hi, "echo": false, "best_of": 2, "n": 2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": null}}]});
    assert!(ChatRequest::from_json(&fine).is_ok());
}

#[test]
fn a_named_tool_choice_must_exist() {
    let err = ChatRequest::from_json(&json!({"messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "g"}}}))
    .unwrap_err();
    assert_eq!(err.param, "tool_choice");
}

#[test]
fn image_parts_and_unknown_formats_are_rejected() {
    let img = json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]});
    assert_eq!(
        ChatRequest::from_json(&img).unwrap_err().param,
        "messages[0].content[0]"
    );
    let fmt = json!({"messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "yaml"}});
    assert_eq!(
        ChatRequest::from_json(&fmt).unwrap_err().param,
        "response_format.type"
    );
}

#[test]
fn logprobs_turn_into_the_wire_count() {
    let req = ChatRequest::from_json(&json!({"messages": [{"role": "user", "content": "x"}],
        "logprobs": true, "top_logprobs": 3}))
    .unwrap();
    assert_eq!(req.sampling.logprobs, 3);
}

#[test]
fn json_response_formats_are_read_and_empty_arguments_are_an_empty_object() {
    let user = json!([{"role": "user", "content": "x"}]);
    let object = json!({"messages": user, "response_format": {"type": "json_object"}});
    let req = ChatRequest::from_json(&object).unwrap();
    assert_eq!(
        req.sampling.output_constraint,
        Some(OutputConstraint::default())
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let named = json!({"messages": user, "response_format": {"type": "json_schema",
        "json_schema": {"name": "n", "schema": schema, "strict": true}}});
    let req = ChatRequest::from_json(&named).unwrap();
    let sent: Value = serde_json::from_str(
        req.sampling
            .output_constraint
            .unwrap()
            .schema
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sent, schema);
    for (body, param) in [
        (
            json!({"messages": user, "response_format": {"type": "json_schema"}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"messages": user, "response_format": {"type": "json_schema", "json_schema":
            {"schema": {"type": "array", "uniqueItems": true}}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"messages": user, "response_format": {"type": "json_object"},
            "guided_json": {"type": "object"}}),
            "guided_json",
        ),
        (
            json!({"messages": user, "response_format": {"type": "json_object"}, "tool_choice":
            "required", "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tool_choice",
        ),
    ] {
        assert_eq!(
            ChatRequest::from_json(&body).unwrap_err().param,
            param,
            "{body}"
        );
    }
    let text = json!({"messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "text"}});
    assert!(ChatRequest::from_json(&text).is_ok());
    let req = ChatRequest::from_json(&json!({"messages": [
        {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]}
    ]}))
    .unwrap();
    assert_eq!(
        req.messages[0]["tool_calls"][0]["function"]["arguments"],
        json!({})
    );
}

#[test]
fn prompt_logprobs_are_scored_but_refused_on_a_stream() {
    let messages = json!([{"role": "user", "content": "hi"}]);
    let req = ChatRequest::from_json(&json!({"messages": messages, "prompt_logprobs": 2})).unwrap();
    assert_eq!(req.sampling.prompt_logprobs, Some(2));
    assert_eq!(req.sampling.score_prompt, Some(2));
    assert_eq!(
        req.sampling.logprobs, -1,
        "the answer's own logprobs stay off"
    );
    let err = ChatRequest::from_json(
        &json!({"messages": messages, "prompt_logprobs": 0, "stream": true}),
    )
    .unwrap_err();
    assert_eq!(err.param, "prompt_logprobs");
    assert!(err.message.contains("stream"), "{}", err.message);
    let plain = ChatRequest::from_json(&json!({"messages": messages, "stream": true})).unwrap();
    assert_eq!(plain.sampling.score_prompt, None);
    let err =
        ChatRequest::from_json(&json!({"messages": messages, "prompt_logprobs": -1})).unwrap_err();
    assert_eq!(err.param, "prompt_logprobs");
}

#[test]
fn continuing_the_last_message_replaces_the_generation_prompt() {
    let chat = |extra: serde_json::Value, last: serde_json::Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}, last]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ChatRequest::from_json(&body)
    };
    let prefill = json!({"role": "assistant", "content": "The answer is"});
    let plain = chat(json!({}), prefill.clone()).unwrap();
    assert!(plain.add_generation_prompt && !plain.continue_final_message);
    let go_on = chat(json!({"continue_final_message": true}), prefill.clone()).unwrap();
    assert!(!go_on.add_generation_prompt && go_on.continue_final_message);
    let none = chat(json!({"add_generation_prompt": false}), prefill.clone()).unwrap();
    assert!(!none.add_generation_prompt && !none.continue_final_message);
    let both = json!({"continue_final_message": true, "add_generation_prompt": true});
    let err = chat(both, prefill).unwrap_err();
    assert_eq!(err.param, "add_generation_prompt");
    let go_on = json!({"continue_final_message": true});
    for last in [
        json!({"role": "user", "content": "more"}),
        json!({"role": "assistant", "content": "  "}),
        json!({"role": "assistant", "content": "x", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
    ] {
        let err = chat(go_on.clone(), last.clone()).unwrap_err();
        assert_eq!(err.param, "messages[1]", "{last}");
    }
    let thought = json!({"role": "assistant", "content": "", "reasoning_content": "Hmm"});
    assert!(chat(go_on, thought).unwrap().continue_final_message);
}

#[test]
fn a_low_reasoning_effort_turns_thinking_off() {
    let chat = |extra: serde_json::Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ChatRequest::from_json(&body)
    };
    let off = chat(json!({"reasoning_effort": "minimal"})).unwrap();
    assert_eq!(off.template_kwargs["enable_thinking"], false);
    let on = chat(json!({"reasoning_effort": "high"})).unwrap();
    assert!(on.template_kwargs.get("enable_thinking").is_none());
    let kept =
        json!({"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": true}});
    assert_eq!(chat(kept).unwrap().template_kwargs["enable_thinking"], true);
    let err = chat(json!({"reasoning_effort": "max"})).unwrap_err();
    assert_eq!(err.param, "reasoning_effort");
}

#[test]
fn vllm_json_options_shape_the_schema_and_the_whitespace() {
    let chat = |outputs: serde_json::Value| {
        ChatRequest::from_json(&json!({"messages": [{"role": "user", "content": "hi"}],
                                       "structured_outputs": outputs}))
    };
    let schema = json!({"type": "object", "properties": {
        "inner": {"properties": {"x": {"const": {"properties": 1}}}},
        "properties": {"type": "object", "properties": {"a": {}}},
        "free": {"type": "object"}}});
    let opts = json!({"json": schema, "disable_any_whitespace": true,
                      "disable_additional_properties": true});
    let c = chat(opts).unwrap().sampling.output_constraint.unwrap();
    assert!(c.compact);
    let sent: serde_json::Value = serde_json::from_str(c.schema.as_deref().unwrap()).unwrap();
    assert_eq!(sent["additionalProperties"], false);
    assert_eq!(sent["properties"]["inner"]["additionalProperties"], false);
    assert_eq!(
        sent["properties"]["inner"]["properties"]["x"]["const"],
        json!({"properties": 1}),
        "data is left as it is"
    );
    // a property named `properties` is a schema, not a map; an object without properties
    // stays free
    assert_eq!(
        sent["properties"]["properties"]["additionalProperties"],
        false
    );
    assert!(sent["properties"].get("additionalProperties").is_none());
    assert!(sent["properties"]["free"]
        .get("additionalProperties")
        .is_none());
    let open = json!({"json": schema, "disable_additional_properties": false});
    let c = chat(open).unwrap().sampling.output_constraint.unwrap();
    assert!(!c.compact && !c.schema.unwrap().contains("additionalProperties"));
    // whitespace rules for raw text mean nothing: a regex stays as it is
    let regex = json!({"regex": "a b", "disable_any_whitespace": true});
    assert!(
        !chat(regex)
            .unwrap()
            .sampling
            .output_constraint
            .unwrap()
            .compact
    );
    let err = chat(json!({"json": {}, "whitespace_pattern": " "})).unwrap_err();
    assert_eq!(err.param, "structured_outputs");
    // nor vLLM's older spelling of it
    let body = json!({"messages": [{"role": "user", "content": "hi"}],
                      "guided_json": {}, "guided_whitespace_pattern": " "});
    let err = ChatRequest::from_json(&body).unwrap_err();
    assert_eq!(err.param, "guided_whitespace_pattern");
}
