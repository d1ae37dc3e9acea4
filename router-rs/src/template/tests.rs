//! Chat template tests against outputs of transformers' `apply_chat_template` (Jinja2).

use super::*;
use serde_json::json;

const GLM47: &str = include_str!("../../../tests/fixtures/glm47_chat_template.jinja");

fn glm47() -> ChatTemplate {
    ChatTemplate::new(GLM47).expect("the GLM-4.7 template compiles")
}

/// A minimal valid message list, for templates that do not look at messages.
fn one_message() -> Json {
    json!([{"role": "user", "content": "x"}])
}

fn kwargs(value: Json) -> Map<String, Json> {
    value.as_object().cloned().unwrap_or_default()
}

#[test]
fn plain_chat_ends_in_the_thinking_generation_prompt() {
    let msgs = json!([{"role": "user", "content": "hello"}]);
    let text = glm47().render(&msgs, None, true, &Map::new()).unwrap();
    assert_eq!(text, "[gMASK]<sop><|user|>hello<|assistant|><think>");
}

#[test]
fn enable_thinking_false_closes_the_think_block() {
    let msgs = json!([{"role": "user", "content": "hello"}]);
    let kw = kwargs(json!({"enable_thinking": false}));
    let text = glm47().render(&msgs, None, true, &kw).unwrap();
    assert_eq!(text, "[gMASK]<sop><|user|>hello<|assistant|></think>");
}

#[test]
fn string_tool_arguments_render_like_parsed_ones_with_exact_integers() {
    let args = r#"{"n": 123456789012345678901234567890, "s": "x y", "f": 1.0, "o": {"b": 1, "a": [true]}}"#;
    let msgs = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]},
        {"role": "tool", "content": "ok"},
        {"role": "tool", "content": "ok2"}
    ]);
    let want = "[gMASK]<sop><|system|>Be brief.<|user|>hi<|assistant|></think>None<tool_call>f\
        <arg_key>n</arg_key><arg_value>123456789012345678901234567890</arg_value>\
        <arg_key>s</arg_key><arg_value>x y</arg_value><arg_key>f</arg_key><arg_value>1.0</arg_value>\
        <arg_key>o</arg_key><arg_value>{\"b\": 1, \"a\": [true]}</arg_value></tool_call>\
        <|observation|><tool_response>ok</tool_response><tool_response>ok2</tool_response>\
        <|assistant|><think>";
    assert_eq!(
        glm47().render(&msgs, None, true, &Map::new()).unwrap(),
        want
    );
}

#[test]
fn tools_are_listed_as_python_json_without_html_escaping() {
    let tools = json!([{"type": "function", "function": {"name": "get", "description": "天气 <b>",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let msgs = json!([{"role": "user", "content": "q"}]);
    let text = glm47()
        .render(&msgs, Some(&tools), false, &Map::new())
        .unwrap();
    let line = r#"{"type": "function", "function": {"name": "get", "description": "天气 <b>", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}"#;
    assert!(
        text.contains(&format!("<tools>\n{line}\n</tools>")),
        "{text}"
    );
    assert!(text.ends_with("...</tool_call><|user|>q"), "{text}");
}

#[test]
fn malformed_tool_arguments_are_a_clear_error() {
    let bad = |arguments: &str| {
        json!([{"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": arguments}}]}])
    };
    let err = glm47()
        .render(&bad("{oops"), None, true, &Map::new())
        .unwrap_err();
    assert!(matches!(
        err,
        TemplateError::InvalidToolArguments {
            message: 0,
            call: 0,
            ..
        }
    ));
    let err = glm47()
        .render(&bad("[1]"), None, true, &Map::new())
        .unwrap_err();
    assert!(matches!(err, TemplateError::InvalidToolArguments { .. }));
    let text = glm47().render(&bad(" "), None, false, &Map::new()).unwrap();
    assert!(text.ends_with("<tool_call>f</tool_call>"), "{text}");
}

#[test]
fn messages_must_be_a_non_empty_list_of_objects() {
    for msgs in [json!({"role": "user"}), json!(["hi"]), json!([])] {
        let err = glm47().render(&msgs, None, true, &Map::new()).unwrap_err();
        assert!(matches!(err, TemplateError::InvalidMessages));
    }
}

#[test]
fn raise_exception_aborts_with_its_message() {
    let t = ChatTemplate::new("{{ raise_exception('no system role here') }}").unwrap();
    let err = t
        .render(&one_message(), None, true, &Map::new())
        .unwrap_err();
    assert!(err.to_string().contains("no system role here"), "{err}");
}

#[test]
fn broken_template_source_fails_to_compile() {
    assert!(matches!(
        ChatTemplate::new("{% if %}"),
        Err(TemplateError::Compile(_))
    ));
}

#[test]
fn tojson_honours_python_keyword_arguments() {
    let src = "{{ x | tojson(indent=2, sort_keys=true) }}|{{ x | tojson(separators=[',', ':']) }}\
               |{{ 'é' | tojson(ensure_ascii=true) }}";
    let t = ChatTemplate::new(src).unwrap();
    let kw = kwargs(json!({"x": {"b": [1], "a": null}}));
    let text = t.render(&one_message(), None, true, &kw).unwrap();
    assert_eq!(
        text,
        "{\n  \"a\": null,\n  \"b\": [\n    1\n  ]\n}|{\"b\":[1],\"a\":null}|\"\\u00e9\""
    );
    let bad = ChatTemplate::new("{{ 1 | tojson(colour=1) }}").unwrap();
    assert!(bad.render(&one_message(), None, true, &Map::new()).is_err());
}

#[test]
fn values_print_as_python_str_and_keys_keep_their_order() {
    let src = "{{ x }} {{ n }} {{ t }} {% for k, v in x.items() %}{{ k }}={{ v }};{% endfor %}";
    let t = ChatTemplate::new(src).unwrap();
    let kw = kwargs(json!({"x": {"z": 1, "a": "s", "m": [null]}, "n": null, "t": true}));
    let text = t.render(&one_message(), None, true, &kw).unwrap();
    assert_eq!(
        text,
        "{'z': 1, 'a': 's', 'm': [None]} None True z=1;a=s;m=[None];"
    );
}

#[test]
fn strftime_now_is_available() {
    let t = ChatTemplate::new("{{ strftime_now('%Y') }}").unwrap();
    let year: i64 = t
        .render(&one_message(), None, true, &Map::new())
        .unwrap()
        .parse()
        .unwrap();
    assert!(year >= 2024);
}

#[test]
fn template_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

#[test]
fn strip_takes_python_whitespace_with_the_separators() {
    // Python's isspace holds for \x1c-\x1f; Unicode's White_Space (Rust's trim) does not
    let msgs = json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "\u{1f}hello\u{a0}\u{1c}", "reasoning_content": "\u{1e}R\n"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "\u{1d}"},
    ]);
    let kw = kwargs(json!({"clear_thinking": false}));
    let text = glm47().render(&msgs, None, false, &kw).unwrap();
    assert_eq!(
        text,
        "[gMASK]<sop><|user|>q<|assistant|><think>R</think>hello<|user|>q2<|assistant|></think>"
    );
    // a method with arguments is still pycompat's
    let t =
        ChatTemplate::new("{{ messages[0].content.strip('x') }}|{{ ' a '.lstrip() }}|").unwrap();
    let msgs = json!([{"role": "user", "content": "xx\u{1f}axx"}]);
    assert_eq!(
        t.render(&msgs, None, false, &Map::new()).unwrap(),
        "\u{1f}a|a |"
    );
    assert_eq!(py_strip("\u{1c}\t a \u{3000}\u{1f}"), "a");
}

#[test]
fn a_continued_prompt_ends_after_the_last_text_or_its_reasoning() {
    let cut = |first: &str, last: Json| {
        let earlier = json!([{"role": "user", "content": first}]);
        let msgs = json!([{"role": "user", "content": first}, last.clone()]);
        let text = glm47().render(&msgs, None, false, &Map::new()).unwrap();
        let before = glm47().render(&earlier, None, false, &Map::new()).unwrap();
        let end = continued_end(&text, &before, &last).expect("the text is in the prompt");
        text[..end].to_owned()
    };
    let prefix = "[gMASK]<sop><|user|>hi<|assistant|>";
    let answer = json!({"role": "assistant", "content": "The answer is "});
    assert_eq!(cut("hi", answer), format!("{prefix}</think>The answer is"));
    let both = json!({"role": "assistant", "content": "Yes", "reasoning_content": "Easy."});
    assert_eq!(cut("hi", both), format!("{prefix}<think>Easy.</think>Yes"));
    let thought = json!({"role": "assistant", "content": "", "reasoning_content": "Let me"});
    assert_eq!(cut("hi", thought), format!("{prefix}<think>Let me"));
    // reasoning written inline, as a model writes it, is split off as the template splits it
    let inline = json!({"role": "assistant", "content": "<think>\nA\n</think>\nB"});
    assert_eq!(cut("hi", inline), format!("{prefix}<think>A</think>B"));
    let open = json!({"role": "assistant", "content": "<think>\nA\n</think>"});
    assert_eq!(cut("hi", open), format!("{prefix}<think>A"));
    // an earlier message with the same text is not taken for the last
    let same = json!({"role": "assistant", "content": "B"});
    let user = "[gMASK]<sop><|user|>B<|assistant|>";
    assert_eq!(cut("B", same), format!("{user}</think>B"));
    let empty = json!({"role": "assistant", "content": ""});
    assert_eq!(continued_end("anything", "", &empty), None);
    // stripped as Python strips: the separator after the text is not in the prompt
    let separated = json!({"role": "assistant", "content": "Hello\u{1f}"});
    assert_eq!(cut("hi", separated), format!("{prefix}</think>Hello"));
}
