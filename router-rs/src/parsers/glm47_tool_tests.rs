//! Edge cases of the GLM-4.7 tool-call parser, one behaviour per test.

use serde_json::{json, Value};

use super::*;

pub(crate) fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "opts": {"type": "object"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "zip": {"type": "string"},
                "big": {"type": "integer"},
                "note": {"type": ["string", "null"]},
                "free": {}
            }
        }}}),
        json!({"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}),
        json!({"type": "function", "function": {"name": "search", "parameters": {
            "type": "object", "properties": {"query": {"anyOf": [{"type": "string"}]}}
        }}}),
    ]
}

fn seeded() -> Glm47ToolParser {
    Glm47ToolParser::with_options(&tools(), "", Some(7))
}

fn streamed(chunks: &[&str]) -> ParsedToolCalls {
    let mut parser = seeded();
    let mut parsed = ParsedToolCalls::default();
    for chunk in chunks {
        parsed.absorb(parser.feed(chunk));
    }
    parsed.absorb(parser.finish());
    parsed
}

fn args(parsed: &ParsedToolCalls, index: usize) -> Value {
    serde_json::from_str(&parsed.tool_calls[index].arguments).expect("arguments are JSON")
}

fn call(index: usize, id: Option<&str>, name: Option<&str>, arguments: Option<&str>) -> ToolEvent {
    ToolEvent::Call {
        index,
        id: id.map(str::to_string),
        name: name.map(str::to_string),
        arguments: arguments.map(str::to_string),
    }
}

#[test]
fn text_without_calls_passes_through_unchanged_at_every_split() {
    let text = "if x < y and y <tool z> 1 then <tool_call";
    for cut in 0..=text.len() {
        let got = streamed(&[&text[..cut], &text[cut..]]);
        assert_eq!(got.content, text);
        assert!(got.tool_calls.is_empty());
    }
}

#[test]
fn a_call_after_text_is_parsed_with_typed_arguments() {
    let text = "Let me check.<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris\
                </arg_value><arg_key>days</arg_key><arg_value>3</arg_value></tool_call>Done";
    let got = Glm47ToolParser::parse(text, &tools());
    assert_eq!(got.content, "Let me check.Done");
    assert_eq!(got.tool_calls.len(), 1);
    assert_eq!(got.tool_calls[0].name, "get_weather");
    assert_eq!(
        got.tool_calls[0].arguments,
        r#"{"city": "Paris", "days": 3}"#
    );
}

#[test]
fn the_header_is_emitted_as_soon_as_the_name_is_complete() {
    let mut parser = seeded();
    assert_eq!(
        parser.feed("Hi<tool_call>get_wea"),
        vec![ToolEvent::Content("Hi".into())]
    );
    assert_eq!(parser.feed("ther<arg_"), vec![]);
    let events = parser.feed("key>");
    let [ToolEvent::Call {
        index: 0,
        id: Some(id),
        name: Some(name),
        arguments: None,
    }] = events.as_slice()
    else {
        panic!("expected one header event, got {events:?}");
    };
    assert_eq!(name, "get_weather");
    assert_eq!(id.len(), "call_".len() + 24);
    assert!(id.starts_with("call_") && id[5..].chars().all(|c| c.is_ascii_alphanumeric()));
}

#[test]
fn string_values_stream_as_escaped_fragments_holding_back_only_a_partial_close_tag() {
    let mut parser = seeded();
    parser.feed("<tool_call>get_weather<arg_key>city</arg_key>");
    assert_eq!(
        parser.feed("<arg_value>Sa"),
        vec![call(0, None, None, Some(r#"{"city": "Sa"#))]
    );
    assert_eq!(
        parser.feed("n \"J\"</arg_v"),
        vec![call(0, None, None, Some(r#"n \"J\""#))]
    );
    assert_eq!(parser.feed("alue>"), vec![call(0, None, None, Some("\""))]);
    assert_eq!(
        parser.feed("</tool_call>"),
        vec![call(0, None, None, Some("}"))]
    );
}

#[test]
fn non_string_values_are_emitted_when_complete() {
    let mut parser = seeded();
    parser.feed("<tool_call>get_weather<arg_key>days</arg_key>");
    assert_eq!(
        parser.feed("<arg_value>1"),
        vec![call(0, None, None, Some(r#"{"days": "#))]
    );
    assert_eq!(
        parser.feed("2</arg_value>"),
        vec![call(0, None, None, Some("12"))]
    );
}

#[test]
fn one_feed_yields_coalesced_events() {
    let mut parser = seeded();
    let events = parser.feed("a<b<tool_call>noop</tool_call>c");
    assert_eq!(events.len(), 3);
    assert_eq!(events[0], ToolEvent::Content("a<b".into()));
    assert!(
        matches!(&events[1], ToolEvent::Call { index: 0, id: Some(_), name: Some(n),
        arguments: Some(a) } if n == "noop" && a == "{}")
    );
    assert_eq!(events[2], ToolEvent::Content("c".into()));
}

#[test]
fn two_calls_to_the_same_function_get_distinct_indices_and_ids() {
    let text = "<tool_call>search<arg_key>query</arg_key><arg_value>a</arg_value></tool_call>\n\
                <tool_call>search<arg_key>query</arg_key><arg_value>b</arg_value></tool_call>";
    let mut parser = seeded();
    let events = parser.feed(text);
    let ids: Vec<(usize, String)> = events
        .iter()
        .filter_map(|e| match e {
            ToolEvent::Call {
                index,
                id: Some(id),
                ..
            } => Some((*index, id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!((ids[0].0, ids[1].0), (0, 1));
    assert_ne!(ids[0].1, ids[1].1);
    let parsed = Glm47ToolParser::parse(text, &tools());
    assert_eq!(parsed.content, "\n");
    assert_eq!(args(&parsed, 1), json!({"query": "b"}));
}

#[test]
fn the_glm45_layout_with_newlines_is_parsed_without_the_whitespace() {
    let text = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>\n\
                <arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>";
    let got = Glm47ToolParser::parse(text, &tools());
    assert_eq!(got.content, "");
    assert_eq!(got.tool_calls[0].name, "get_weather");
    assert_eq!(args(&got, 0), json!({"city": "Beijing", "days": 2}));
}

#[test]
fn values_are_typed_by_the_schema_not_by_their_look() {
    let text = "<tool_call>get_weather<arg_key>zip</arg_key><arg_value>01234</arg_value>\
        <arg_key>city</arg_key><arg_value>true</arg_value><arg_key>metric</arg_key>\
        <arg_value>false</arg_value><arg_key>opts</arg_key><arg_value>{\"a\": [1, null]}\
        </arg_value><arg_key>tags</arg_key><arg_value>[\"x\"]</arg_value><arg_key>note\
        </arg_key><arg_value>12</arg_value><arg_key>free</arg_key><arg_value>2.50</arg_value>\
        <arg_key>days</arg_key><arg_value>soon</arg_value></tool_call>";
    let got = Glm47ToolParser::parse(text, &tools());
    assert_eq!(
        got.tool_calls[0].arguments,
        r#"{"zip": "01234", "city": "true", "metric": false, "opts": {"a":[1,null]}, "tags": ["x"], "note": "12", "free": 2.50, "days": "soon"}"#
    );
}

#[test]
fn large_integers_keep_all_their_digits() {
    let text = "<tool_call>get_weather<arg_key>big</arg_key>\
                <arg_value>123456789012345678901234567890</arg_value></tool_call>";
    let got = Glm47ToolParser::parse(text, &tools());
    assert_eq!(
        got.tool_calls[0].arguments,
        r#"{"big": 123456789012345678901234567890}"#
    );
}

#[test]
fn zero_argument_calls_have_empty_object_arguments() {
    for text in [
        "<tool_call>noop</tool_call>",
        "<tool_call>noop\n</tool_call>",
    ] {
        let got = Glm47ToolParser::parse(text, &tools());
        assert_eq!(got.tool_calls[0].arguments, "{}", "{text:?}");
        assert_eq!(got.content, "");
    }
}

#[test]
fn a_call_to_an_undeclared_function_is_content_byte_for_byte() {
    let text = "a<tool_call>rm_rf<arg_key>p</arg_key><arg_value>/</arg_value></tool_call>b";
    let got = streamed(&[
        "a<tool_call>rm",
        "_rf<arg_key>p</arg_key>",
        "<arg_value>/</arg_value>",
        "</tool_call>b",
    ]);
    assert_eq!(got.content, text);
    assert!(got.tool_calls.is_empty());
}

#[test]
fn a_malformed_opening_is_content_and_a_later_call_still_parses() {
    let text = "<tool_call>get weather < now <tool_call>noop</tool_call>";
    let got = Glm47ToolParser::parse(text, &tools());
    assert_eq!(got.content, "<tool_call>get weather < now ");
    assert_eq!(got.tool_calls.len(), 1);
    assert_eq!(got.tool_calls[0].name, "noop");
}

#[test]
fn a_call_cut_off_before_its_name_is_complete_is_content() {
    let got = streamed(&["see <tool_call>get_weat"]);
    assert_eq!(got.content, "see <tool_call>get_weat");
    assert!(got.tool_calls.is_empty());
    let got = streamed(&["see <tool_call>noop <b"]);
    assert_eq!(
        got.content, "see <tool_call>noop <b",
        "a stray `<` after the name"
    );
    assert!(got.tool_calls.is_empty());
}

#[test]
fn a_forced_call_whose_output_ends_at_once_is_still_a_call() {
    // The prompt ended in `<tool_call>noop` (a named tool_choice) and the model stopped.
    let mut parser = Glm47ToolParser::with_options(&tools(), "<tool_call>noop", Some(7));
    let mut got = ParsedToolCalls::default();
    got.absorb(parser.feed(""));
    got.absorb(parser.finish());
    assert_eq!(got.content, "");
    assert_eq!(got.tool_calls.len(), 1);
    assert_eq!(got.tool_calls[0].name, "noop");
    assert_eq!(args(&got, 0), json!({}));
}

#[test]
fn a_call_cut_off_after_its_name_is_closed_with_the_arguments_so_far() {
    let cases = [
        (
            "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Ly",
            json!({"city": "Ly"}),
        ),
        (
            "<tool_call>get_weather<arg_key>days</arg_key><arg_value>4",
            json!({"days": 4}),
        ),
        (
            "<tool_call>get_weather<arg_key>days</arg_key><arg_value>4</arg_value><arg_key>ci",
            json!({"days": 4}),
        ),
        ("<tool_call>get_weather\n", json!({})),
        ("<tool_call>noop\n</tool_ca", json!({})),
        (
            "<tool_call>get_weather<arg_key>days</arg_key>\n<arg_val",
            json!({}),
        ),
        // A partial closing tag at the end belongs to the call, whatever the value's type.
        (
            "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Lyon</arg_val",
            json!({"city": "Lyon"}),
        ),
        (
            "<tool_call>get_weather<arg_key>days</arg_key><arg_value>4</",
            json!({"days": 4}),
        ),
        (
            "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Lyon</tool_ca",
            json!({"city": "Lyon"}),
        ),
        // The output ended right after a declared name: a call without arguments.
        ("<tool_call>noop", json!({})),
        ("<tool_call>\nnoop", json!({})),
        ("<tool_call>noop</tool_ca", json!({})),
    ];
    for (text, want) in cases {
        let got = Glm47ToolParser::parse(text, &tools());
        assert_eq!(got.content, "", "{text:?}");
        assert_eq!(args(&got, 0), want, "{text:?}");
    }
}

#[test]
fn recovery_inside_a_call_keeps_valid_json() {
    let text = "<tool_call>get_weather junk\n stray<arg_key>days</arg_key>x<arg_key>city\
                </arg_key> <arg_value>Oslo</tool_call>after";
    let got = Glm47ToolParser::parse(text, &tools());
    assert_eq!(
        got.content, text,
        "the name is `get_weather junk`, which is undeclared"
    );
    assert!(got.tool_calls.is_empty());
    let text = "<tool_call>get_weather\nstray<arg_key>days</arg_key>x<arg_key>city\
                </arg_key> <arg_value>Oslo</tool_call>after";
    let got = Glm47ToolParser::parse(text, &tools());
    assert_eq!(got.content, "after");
    assert_eq!(args(&got, 0), json!({"city": "Oslo"}));
}

#[test]
fn a_key_without_its_closing_tag_ends_at_the_value_at_every_split() {
    let text = "<tool_call>get_weather<arg_key>city<arg_value>Paris</arg_value>\
                <arg_key> days <arg_value>3</arg_value></tool_call>after";
    let whole = Glm47ToolParser::parse(text, &tools());
    assert_eq!(whole.content, "after");
    assert_eq!(args(&whole, 0), json!({"city": "Paris", "days": 3}));
    for cut in 0..=text.len() {
        if text.is_char_boundary(cut) {
            assert_eq!(
                streamed(&[&text[..cut], &text[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
    }
    // cut off inside such a key's value: the pairs so far, the open string closed
    let got = Glm47ToolParser::parse("<tool_call>get_weather<arg_key>city<arg_value>Pa", &tools());
    assert_eq!(args(&got, 0), json!({"city": "Pa"}));
}

#[test]
fn the_parser_tells_whether_the_output_ended_inside_a_call() {
    let whole =
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>";
    for (text, inside) in [
        (whole.to_string(), None),
        (format!("{whole}after"), None),
        (whole[..whole.len() - 3].to_string(), Some(0)),
        ("<tool_call>get_weather<arg_key>ci".to_string(), Some(0)),
        (format!("{whole}<tool_call>noop<arg_key>a"), Some(1)),
        ("no call".to_string(), None),
    ] {
        let mut parser = seeded();
        parser.finish_with(&text);
        assert_eq!(parser.call_cut_off(), inside, "{text}");
    }
}

#[test]
fn a_prefix_from_the_prompt_is_parsed_but_never_emitted() {
    let body = "<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>";
    for (prefix, text) in [
        ("<tool_call>get_weather", body.to_string()),
        ("<tool_call>", format!("get_weather{body}")),
        ("<tool_call>get_weather\n", body.to_string()),
    ] {
        let parser = Glm47ToolParser::with_options(&tools(), prefix, Some(1));
        let got = parser.collect(&text);
        assert_eq!(got.content, "", "{prefix:?}");
        assert_eq!(got.tool_calls[0].name, "get_weather");
        assert_eq!(args(&got, 0), json!({"city": "Rome"}));
    }
    let got = Glm47ToolParser::with_prefix(&tools(), "<tool_call>").collect("nothing");
    assert_eq!(got.content, "nothing");
}

#[test]
fn seeded_parsers_give_the_same_ids() {
    let mut a = seeded();
    let mut b = seeded();
    assert_eq!(
        a.feed("<tool_call>noop</tool_call>"),
        b.feed("<tool_call>noop</tool_call>")
    );
}
