//! The chat prompt's reasoning state and the tool-call grammar a chat asks for.

use serde_json::{json, Value};

use super::{ends_in_reasoning, tool_call_wire_grammar};
use crate::protocol::chat::ChatRequest;

#[test]
fn strict_auto_calls_wait_for_the_end_of_reasoning_then_the_models_call() {
    let ids = |t: &str| match t {
        "<tool_call>" => Some(7),
        "</think>" => Some(9),
        _ => None,
    };
    let tool = |strict: bool| {
        json!({"type": "function", "function": {"name": "f",
        "strict": strict, "parameters": {"type": "object", "properties": {}}}})
    };
    let ask = |tools: Value, choice: Value, in_reasoning: bool| {
        let body = json!({"messages": [{"role": "user", "content": "x"}],
                          "tools": tools, "tool_choice": choice});
        let req = ChatRequest::from_json(&body).unwrap();
        tool_call_wire_grammar(&req, in_reasoning, ids).unwrap()
    };
    let spec = |g: &crate::wire::Grammar| -> Value {
        serde_json::from_str(g.tool_calls.as_deref().unwrap()).unwrap()
    };
    let g = ask(json!([tool(true)]), json!("auto"), true).unwrap();
    assert_eq!(
        (g.start_after, spec(&g)["open_id"].clone()),
        (Some(9), json!(7))
    );
    let g = ask(json!([tool(true)]), json!("auto"), false).unwrap();
    assert_eq!(g.start_after, None);
    assert!(ask(json!([tool(false)]), json!("auto"), true).is_none());
    // a forced call: the prompt holds the opening, nothing to wait for
    let g = ask(json!([tool(false)]), json!("required"), false).unwrap();
    assert_eq!(
        (g.start_after, spec(&g)["open_id"].clone()),
        (None, Value::Null)
    );
}

#[test]
fn the_last_think_tag_decides_where_the_answer_starts() {
    assert!(ends_in_reasoning("<|user|>hi<|assistant|><think>"));
    assert!(!ends_in_reasoning("<|user|>hi<|assistant|></think>"));
    assert!(ends_in_reasoning(
        "<think>a</think><|user|>b<|assistant|><think>"
    ));
    assert!(!ends_in_reasoning("<|user|>plain template<|assistant|>"));
}
