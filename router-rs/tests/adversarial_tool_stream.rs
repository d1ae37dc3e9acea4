//! Adversarial streaming tests for the GLM-4.7 tool-call parser and the GLM-4.5 reasoning parser.
//!
//! Invariant under test: for every way of cutting an output into chunks, the concatenated
//! stream (content, reasoning, per-index argument fragments, ids, names) equals the one-shot
//! parse, the event contract holds (id+name once, in the first event of a call; one entry per
//! call per feed; indices dense and in order), and the semantic result is the documented one
//! (docs/parsers.md), malformed calls included.

mod http_support;

use std::collections::HashSet;
use std::sync::Arc;

use glm47_router::detokenize::Detokenizer;
use glm47_router::parsers::{
    Glm45ReasoningParser, Glm47ToolParser, ParsedToolCalls, ReasoningDelta, ToolEvent,
};
use glm47_router::state::{Collected, Pipeline};
use glm47_router::stop::StopMatcher;
use glm47_router::tokenizer::OUTPUT_TAGS;
use glm47_router::wire;
use proptest::prelude::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Fixtures and harness
// ---------------------------------------------------------------------------------------------

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "temp": {"type": "number"},
                "metric": {"type": "boolean"},
                "opts": {"type": "object"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "zip": {"type": "string"},
                "note": {"type": ["string", "null"]},
                "maybe_n": {"type": ["integer", "null"]},
                "free": {}
            }
        }}}),
        json!({"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}),
        json!({"type": "function", "function": {"name": "search", "parameters": {
            "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}
        }}}),
        // A name that is a prefix of another declared name.
        json!({"type": "function", "function": {"name": "get", "parameters": {
            "type": "object", "properties": {"k": {"type": "string"}}
        }}}),
    ]
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Stream {
    content: String,
    /// (id, name, arguments) per index
    calls: Vec<(String, String, String)>,
}

fn check_id(id: &str) {
    assert_eq!(id.len(), 29, "bad id {id}");
    assert!(id.starts_with("call_"), "bad id {id}");
    assert!(
        id[5..].chars().all(|c| c.is_ascii_alphanumeric()),
        "bad id {id}"
    );
}

/// Folds events into `out`, checking the event contract for one `feed`/`finish` batch.
fn absorb_checked(out: &mut Stream, events: Vec<ToolEvent>, ctx: &str) {
    let mut seen_in_batch = HashSet::new();
    for event in events {
        match event {
            ToolEvent::Content(text) => {
                assert!(!text.is_empty(), "empty content event ({ctx})");
                out.content.push_str(&text);
            }
            ToolEvent::Call {
                index,
                id,
                name,
                arguments,
            } => {
                assert!(
                    seen_in_batch.insert(index),
                    "two entries for call {index} in one batch ({ctx})"
                );
                let opened = out.calls.len();
                if index == opened {
                    let id = id
                        .unwrap_or_else(|| panic!("first event of call {index} lacks id ({ctx})"));
                    check_id(&id);
                    let name = name.unwrap_or_else(|| {
                        panic!("first event of call {index} lacks name ({ctx})")
                    });
                    assert!(
                        out.calls.iter().all(|(other, _, _)| *other != id),
                        "duplicate id {id} ({ctx})"
                    );
                    out.calls.push((id, name, arguments.unwrap_or_default()));
                } else {
                    assert!(
                        index + 1 == opened,
                        "fragment for call {index} while {opened} are open ({ctx})"
                    );
                    assert!(id.is_none() && name.is_none(), "id/name repeated ({ctx})");
                    let args = arguments.unwrap_or_else(|| panic!("empty later event ({ctx})"));
                    assert!(!args.is_empty(), "empty fragment ({ctx})");
                    out.calls[index].2.push_str(&args);
                }
            }
        }
    }
}

fn stream_tools_prefixed(prefix: &str, chunks: &[&str]) -> Stream {
    let mut parser = Glm47ToolParser::with_options(&tools(), prefix, Some(11));
    let mut out = Stream::default();
    for (i, chunk) in chunks.iter().enumerate() {
        let events = parser.feed(chunk);
        absorb_checked(&mut out, events, &format!("feed #{i} of {chunks:?}"));
    }
    let events = parser.finish();
    absorb_checked(&mut out, events, &format!("finish of {chunks:?}"));
    out
}

fn stream_tools(chunks: &[&str]) -> Stream {
    stream_tools_prefixed("", chunks)
}

fn one_shot_prefixed(prefix: &str, text: &str) -> Stream {
    stream_tools_prefixed(prefix, &[text])
}

fn one_shot(text: &str) -> Stream {
    one_shot_prefixed("", text)
}

/// The public one-shot API agrees with streaming in one chunk.
fn check_public_parse(text: &str, got: &Stream) {
    let parsed: ParsedToolCalls = Glm47ToolParser::parse(text, &tools());
    assert_eq!(parsed.content, got.content, "parse() content for {text:?}");
    let calls: Vec<(String, String)> = parsed
        .tool_calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone()))
        .collect();
    let want: Vec<(String, String)> = got
        .calls
        .iter()
        .map(|(_, n, a)| (n.clone(), a.clone()))
        .collect();
    assert_eq!(calls, want, "parse() calls for {text:?}");
}

fn check_args_are_objects(s: &Stream, ctx: &str) {
    for (_, name, args) in &s.calls {
        let v: Value = serde_json::from_str(args)
            .unwrap_or_else(|e| panic!("{name} args {args:?} not JSON: {e} ({ctx})"));
        assert!(v.is_object(), "{name} args {args:?} not an object ({ctx})");
    }
}

fn char_cuts(text: &str) -> Vec<usize> {
    (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

fn split_at<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts {
        out.push(&text[last..c]);
        last = c;
    }
    out.push(&text[last..]);
    out
}

/// Every 1-cut, every 2-cut (for short texts), and char-by-char.
fn check_all_splits_prefixed(prefix: &str, text: &str) -> Stream {
    let want = one_shot_prefixed(prefix, text);
    check_args_are_objects(&want, text);
    let cuts = char_cuts(text);
    for &a in &cuts {
        assert_eq!(
            stream_tools_prefixed(prefix, &split_at(text, &[a])),
            want,
            "text {text:?} cut at {a}"
        );
    }
    if cuts.len() <= 160 {
        for (i, &a) in cuts.iter().enumerate() {
            for &b in &cuts[i..] {
                assert_eq!(
                    stream_tools_prefixed(prefix, &split_at(text, &[a, b])),
                    want,
                    "text {text:?} cut at {a},{b}"
                );
            }
        }
    }
    let inner = &cuts[1..cuts.len().saturating_sub(1).max(1)];
    assert_eq!(
        stream_tools_prefixed(prefix, &split_at(text, inner)),
        want,
        "text {text:?} char by char"
    );
    // With empty chunks interleaved.
    let mut pieces: Vec<&str> = Vec::new();
    for p in split_at(text, inner) {
        pieces.push("");
        pieces.push(p);
    }
    assert_eq!(
        stream_tools_prefixed(prefix, &pieces),
        want,
        "text {text:?} with empty chunks"
    );
    want
}

fn check_all_splits(text: &str) -> Stream {
    let want = check_all_splits_prefixed("", text);
    check_public_parse(text, &want);
    want
}

fn args_of(s: &Stream, i: usize) -> Value {
    serde_json::from_str(&s.calls[i].2).expect("JSON")
}

// ---------------------------------------------------------------------------------------------
// Tool parser: split invariance on an adversarial corpus
// ---------------------------------------------------------------------------------------------

const CORPUS: &[&str] = &[
    // plain text with lookalikes
    "x < y, a<b>c, <tool, <tool_call, </tool_call>, <arg_key>k</arg_key> <<tool_call",
    "<tool_cal><tool_callx><tool_call >",
    // two calls of one function, text before/between/after
    "Hi 🌍.\n<tool_call>search<arg_key>query</arg_key><arg_value>a</arg_value></tool_call>\n\
     <tool_call>search<arg_key>query</arg_key><arg_value>b</arg_value></tool_call> bye é",
    // values with < > and tag lookalikes
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>a<b>c </arg_val </tool_cal <arg_key> \
     <tool_call> </arg_valuex</arg_value></tool_call>",
    // JSON values of every type
    "<tool_call>get_weather<arg_key>days</arg_key><arg_value>3</arg_value><arg_key>temp</arg_key>\
     <arg_value>-2.50e3</arg_value><arg_key>metric</arg_key><arg_value>false</arg_value>\
     <arg_key>opts</arg_key><arg_value>{\"a\": [1, {\"b\": null}], \"c\": \"<x>\"}</arg_value>\
     <arg_key>tags</arg_key><arg_value>[\"x\", \"y\"]</arg_value><arg_key>free</arg_key>\
     <arg_value>null</arg_value><arg_key>maybe_n</arg_key><arg_value>null</arg_value></tool_call>",
    // string-typed keys that look like JSON
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>12345</arg_value><arg_key>zip</arg_key>\
     <arg_value>{\"a\":1}</arg_value><arg_key>note</arg_key><arg_value>null</arg_value></tool_call>",
    // empty arguments, empty value, empty key
    "<tool_call>noop</tool_call><tool_call>noop\n</tool_call><tool_call>get_weather<arg_key>city\
     </arg_key><arg_value></arg_value><arg_key>days</arg_key><arg_value></arg_value></tool_call>",
    // unknown function, then a known one
    "<tool_call>unknown_fn<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>then\
     <tool_call>noop</tool_call>",
    // a name that is a prefix of another declared name
    "<tool_call>get<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>\
     <tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>",
    // GLM-4.5 layout
    "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris\nFrance</arg_value>\n\
     <arg_key>days</arg_key>\n<arg_value>\n2\n</arg_value>\n</tool_call>",
    // multibyte everywhere
    "前<tool_call>get_weather<arg_key>city</arg_key><arg_value>北京😀é\u{0}\u{1f}\t\"\\</arg_value>\
     </tool_call>後😀",
    // unterminated: string value
    "ok <tool_call>get_weather<arg_key>city</arg_key><arg_value>Par",
    // unterminated: json value with partial closer
    "<tool_call>get_weather<arg_key>days</arg_key><arg_value>42</arg_val",
    // unterminated: inside key
    "<tool_call>get_weather<arg_key>da",
    // unterminated right after name / partial tag
    "<tool_call>noop",
    "<tool_call>noop<arg_k",
    "<tool_call>get_weather</tool_ca",
    "<tool_call>unknown",
    "<tool_call>",
    "text <tool_call",
    // unterminated string value ending with a '<'
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>a <",
    // forgotten </arg_value>
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</tool_call>after",
    // key with no value, junk between tags
    "<tool_call>get_weather<arg_key>days</arg_key>junk<arg_key>city</arg_key> x <arg_value>Y\
     </arg_value> z </tool_call>",
    // think tags inside a tool call
    "<tool_call>search<arg_key>query</arg_key><arg_value><think>hmm</think></arg_value></tool_call>",
    // nested tool_call opening inside a call
    "<tool_call>search<arg_key>query</arg_key><arg_value>q</arg_value><tool_call>noop</tool_call>",
    // CRLF layout
    "<tool_call>get_weather\r\n<arg_key>city</arg_key>\r\n<arg_value>Lima</arg_value>\r\n</tool_call>",
    // blank lines before the name
    "<tool_call>\n\n  noop  \n</tool_call>",
];

#[test]
fn corpus_streams_to_the_one_shot_result_at_every_split() {
    for text in CORPUS {
        check_all_splits(text);
    }
}

#[test]
fn corpus_with_forced_prefixes_streams_to_the_one_shot_result() {
    let cases: &[(&str, &str)] = &[
        (
            "<tool_call>",
            "get_weather<arg_key>city</arg_key><arg_value>X</arg_value></tool_call>",
        ),
        (
            "<tool_call>",
            "unknown<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>",
        ),
        (
            "<tool_call>get_weather",
            "<arg_key>days</arg_key><arg_value>5</arg_value></tool_call>t",
        ),
        (
            "<tool_call>get_weather",
            "\n<arg_key>days</arg_key>\n<arg_value>5",
        ),
        ("<tool_call>get_weather", ""),
        ("<tool_call>get", "_weather</tool_call>"),
        ("<tool_call>noop\n", "</tool_call>after"),
        ("<tool_call>search", "_v2</tool_call>x"),
    ];
    for (prefix, text) in cases {
        let want = check_all_splits_prefixed(prefix, text);
        assert!(
            !want.content.contains("<tool_call>"),
            "prefix leaked into content: {prefix:?} + {text:?} -> {want:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tool parser: expected results (semantics)
// ---------------------------------------------------------------------------------------------

#[test]
fn text_with_lookalikes_is_content_byte_for_byte() {
    for text in [
        CORPUS[0],
        CORPUS[1],
        "a <tool_call",
        "<",
        "</",
        "<tool_call>\n",
    ] {
        let got = check_all_splits(text);
        assert_eq!(got.content, text);
        assert!(got.calls.is_empty());
    }
}

#[test]
fn two_calls_of_one_function_get_two_indices_and_ids_and_text_is_kept() {
    let got = check_all_splits(CORPUS[2]);
    assert_eq!(got.content, "Hi 🌍.\n\n bye é");
    assert_eq!(got.calls.len(), 2);
    assert_ne!(got.calls[0].0, got.calls[1].0);
    assert_eq!(got.calls[0].2, r#"{"query": "a"}"#);
    assert_eq!(got.calls[1].2, r#"{"query": "b"}"#);
}

#[test]
fn string_values_keep_angle_brackets_and_tag_lookalikes() {
    let got = check_all_splits(CORPUS[3]);
    assert_eq!(got.content, "");
    assert_eq!(
        args_of(&got, 0)["city"],
        "a<b>c </arg_val </tool_cal <arg_key> <tool_call> </arg_valuex"
    );
}

#[test]
fn json_typed_values_are_typed() {
    let got = check_all_splits(CORPUS[4]);
    let a = args_of(&got, 0);
    assert_eq!(a["days"], json!(3));
    assert!(a["temp"].is_number(), "{a}");
    assert_eq!(a["metric"], json!(false));
    assert_eq!(a["opts"], json!({"a": [1, {"b": null}], "c": "<x>"}));
    assert_eq!(a["tags"], json!(["x", "y"]));
    assert_eq!(a["free"], Value::Null);
    assert_eq!(a["maybe_n"], Value::Null);
}

#[test]
fn string_typed_values_stay_strings() {
    let got = check_all_splits(CORPUS[5]);
    let a = args_of(&got, 0);
    assert_eq!(a["city"], "12345");
    assert_eq!(a["zip"], "{\"a\":1}");
    // Documented: a ["string","null"] key keeps "null" as a string.
    assert_eq!(a["note"], "null");
}

#[test]
fn empty_arguments_and_empty_values() {
    let got = check_all_splits(CORPUS[6]);
    assert_eq!(got.calls.len(), 3);
    assert_eq!(got.calls[0].2, "{}");
    assert_eq!(got.calls[1].2, "{}");
    let a = args_of(&got, 2);
    assert_eq!(a["city"], "");
    // An empty integer value: documented as "JSON string of the raw text".
    assert_eq!(a["days"], "");
}

#[test]
fn unknown_function_is_content_and_a_later_call_is_found() {
    let got = check_all_splits(CORPUS[7]);
    assert_eq!(
        got.content,
        "<tool_call>unknown_fn<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>then"
    );
    assert_eq!(got.calls.len(), 1);
    assert_eq!(got.calls[0].1, "noop");
    assert_eq!(got.calls[0].2, "{}");
}

#[test]
fn a_name_that_prefixes_another_declared_name() {
    let got = check_all_splits(CORPUS[8]);
    assert_eq!(got.calls.len(), 2);
    assert_eq!(got.calls[0].1, "get");
    assert_eq!(got.calls[1].1, "get_weather");
    assert_eq!(args_of(&got, 1)["city"], "Rome");
}

#[test]
fn glm45_layout() {
    let got = check_all_splits(CORPUS[9]);
    assert_eq!(got.content, "");
    let a = args_of(&got, 0);
    assert_eq!(a["city"], "Paris\nFrance");
    assert_eq!(a["days"], json!(2));
}

#[test]
fn multibyte_and_control_characters() {
    let got = check_all_splits(CORPUS[10]);
    assert_eq!(got.content, "前後😀");
    assert_eq!(args_of(&got, 0)["city"], "北京😀é\u{0}\u{1f}\t\"\\");
}

#[test]
fn unterminated_calls_are_closed_at_finish() {
    let got = check_all_splits(CORPUS[11]);
    assert_eq!(got.content, "ok ");
    assert_eq!(got.calls[0].2, r#"{"city": "Par"}"#);
    let got = check_all_splits(CORPUS[12]);
    assert_eq!(got.calls[0].2, r#"{"days": 42}"#);
    let got = check_all_splits(CORPUS[13]);
    assert_eq!(got.calls[0].2, "{}");
    for text in [CORPUS[14], CORPUS[15]] {
        let got = check_all_splits(text);
        assert_eq!(got.content, "");
        assert_eq!(got.calls[0].1, "noop");
        assert_eq!(got.calls[0].2, "{}");
    }
    let got = check_all_splits(CORPUS[16]);
    assert_eq!(got.calls[0].2, "{}");
    for text in [CORPUS[17], CORPUS[18], CORPUS[19]] {
        let got = check_all_splits(text);
        assert_eq!(got.content, text);
        assert!(got.calls.is_empty());
    }
}

#[test]
fn recovery_cases() {
    let got = check_all_splits(CORPUS[21]);
    assert_eq!(got.calls[0].2, r#"{"city": "Oslo"}"#);
    assert_eq!(got.content, "after");
    let got = check_all_splits(CORPUS[22]);
    assert_eq!(got.calls[0].2, r#"{"city": "Y"}"#);
    let got = check_all_splits(CORPUS[23]);
    assert_eq!(args_of(&got, 0)["query"], "<think>hmm</think>");
    let got = check_all_splits(CORPUS[25]);
    assert_eq!(args_of(&got, 0)["city"], "Lima");
    let got = check_all_splits(CORPUS[26]);
    assert_eq!(got.calls[0].1, "noop");
    assert_eq!(got.content, "");
}

#[test]
fn a_string_value_cut_off_after_a_lone_angle_bracket() {
    // Documented: a partial closing tag at the end belongs to the call and is dropped. "<" is
    // such a prefix, so the value loses it. Recorded here to make the behaviour visible.
    let got = check_all_splits(CORPUS[20]);
    assert_eq!(got.calls[0].2, r#"{"city": "a "}"#);
}

#[test]
fn a_call_fed_whole_is_one_event() {
    let mut p = Glm47ToolParser::with_options(&tools(), "", Some(1));
    let events =
        p.feed("<tool_call>get_weather<arg_key>city</arg_key><arg_value>X</arg_value></tool_call>");
    assert_eq!(events.len(), 1, "{events:?}");
    let mut p = Glm47ToolParser::with_options(&tools(), "<tool_call>noop\n", Some(1));
    let events = p.feed("</tool_call>");
    assert_eq!(events.len(), 1, "{events:?}");
}

// ---------------------------------------------------------------------------------------------
// Tool parser: random texts from adversarial pieces, random splits
// ---------------------------------------------------------------------------------------------

/// Pieces of random outputs, besides every tag the parsers read (`OUTPUT_TAGS`).
const PIECES: &[&str] = &[
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>",
    "<tool_call>get_weather<arg_key>days</arg_key><arg_value>",
    "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>",
    "</arg_value></tool_call>",
    "</arg_value><arg_key>opts</arg_key><arg_value>",
    "<tool_call>noop</tool_call>",
    "get_weather",
    "noop",
    "search",
    "get",
    "unknown",
    "city",
    "days",
    "\n",
    " ",
    "\r\n",
    "<",
    ">",
    "</",
    "<tool",
    "</arg_val",
    "<arg_k",
    "</tool_ca",
    "x",
    "é",
    "😀",
    "北京",
    "\"",
    "\\",
    "{\"a\": [1, 2]}",
    "true",
    "null",
    "12",
    "-0.5",
];

fn texts() -> impl Strategy<Value = String> {
    let pieces: Vec<&str> = PIECES.iter().chain(&OUTPUT_TAGS).copied().collect();
    prop::collection::vec(prop::sample::select(pieces), 0..30).prop_map(|v| v.concat())
}

fn random_cuts(text: &str, picks: &[prop::sample::Index]) -> Vec<usize> {
    let b = char_cuts(text);
    let mut cuts: Vec<usize> = picks.iter().map(|p| b[p.index(b.len())]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_texts_stream_to_the_one_shot_result(
        text in texts(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        prefix in prop::sample::select(&["", "", "<tool_call>", "<tool_call>get_weather", "<tool_call>noop\n"][..]),
    ) {
        let want = one_shot_prefixed(prefix, &text);
        check_args_are_objects(&want, &text);
        let got = stream_tools_prefixed(prefix, &split_at(&text, &random_cuts(&text, &picks)));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn random_texts_char_by_char(text in texts()) {
        let want = one_shot(&text);
        let cuts = char_cuts(&text);
        let inner = &cuts[1..cuts.len().saturating_sub(1).max(1)];
        prop_assert_eq!(stream_tools(&split_at(&text, inner)), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Reasoning parser
// ---------------------------------------------------------------------------------------------

fn stream_reasoning(in_reasoning: bool, chunks: &[&str]) -> ReasoningDelta {
    let mut p = Glm45ReasoningParser::new(in_reasoning);
    let mut out = ReasoningDelta::default();
    for c in chunks {
        let d = p.feed(c);
        out.reasoning.push_str(&d.reasoning);
        out.content.push_str(&d.content);
    }
    let d = p.finish();
    out.reasoning.push_str(&d.reasoning);
    out.content.push_str(&d.content);
    out
}

fn check_reasoning_splits(text: &str) {
    for in_reasoning in [true, false] {
        let want = stream_reasoning(in_reasoning, &[text]);
        let cuts = char_cuts(text);
        for (i, &a) in cuts.iter().enumerate() {
            for &b in &cuts[i..] {
                assert_eq!(
                    stream_reasoning(in_reasoning, &split_at(text, &[a, b])),
                    want,
                    "{text:?} cut {a},{b} in_reasoning={in_reasoning}"
                );
            }
        }
        let inner = &cuts[1..cuts.len().saturating_sub(1).max(1)];
        assert_eq!(stream_reasoning(in_reasoning, &split_at(text, inner)), want);
    }
}

const REASONING_CORPUS: &[&str] = &[
    "plan 🤔 x < y </thin </think>answer <think> ok",
    "<think>a</think>b",
    "\n \t<think>\nr</think>\n\nc",
    "</think>x",
    "  </think>  <think>y",
    "<thinkx>a</think>b",
    "r1 <think> r2 </think> c1 </think> c2",
    "<",
    "</th",
    "é<think>",
    "<tool_call>f</tool_call></think><tool_call>g",
];

#[test]
fn reasoning_corpus_streams_to_the_one_shot_result() {
    for text in REASONING_CORPUS {
        check_reasoning_splits(text);
    }
}

#[test]
fn reasoning_semantics() {
    let r = |ir: bool, t: &str| {
        let d = stream_reasoning(ir, &[t]);
        (d.reasoning, d.content)
    };
    assert_eq!(r(true, "a</think>b"), ("a".into(), "b".into()));
    assert_eq!(r(true, "<think>a</think>b"), ("a".into(), "b".into()));
    assert_eq!(r(true, "a</th"), ("a</th".into(), "".into()));
    assert_eq!(
        r(false, "hello <think>x</think>"),
        ("".into(), "hello <think>x</think>".into())
    );
    assert_eq!(r(false, "<think>x</think>y"), ("x".into(), "y".into()));
    assert_eq!(
        r(true, "r1 <think> r2 </think> c1 </think> c2"),
        ("r1  r2 ".into(), " c1 </think> c2".into())
    );
}

const REASONING_PIECES: &[&str] = &[
    "<think>",
    "</think>",
    "<th",
    "</th",
    "<",
    "</",
    ">",
    "think",
    "a",
    " ",
    "\n",
    "é",
    "😀",
    "<tool_call>noop</tool_call>",
    "<tool_call>",
    "</tool_call>",
    "x<y",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_reasoning_texts_stream_to_the_one_shot_result(
        pieces in prop::collection::vec(prop::sample::select(REASONING_PIECES), 0..25),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        in_reasoning in any::<bool>(),
    ) {
        let text = pieces.concat();
        let want = stream_reasoning(in_reasoning, &[&text]);
        let got = stream_reasoning(in_reasoning, &split_at(&text, &random_cuts(&text, &picks)));
        prop_assert_eq!(got, want);
    }

    /// Reasoning then tool parser, chained as the HTTP layer does.
    #[test]
    fn random_chained_texts_stream_to_the_one_shot_result(
        pieces in prop::collection::vec(prop::sample::select(PIECES), 0..30),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        in_reasoning in any::<bool>(),
    ) {
        let text = pieces.concat();
        let want = chain(in_reasoning, &[&text]);
        let got = chain(in_reasoning, &split_at(&text, &random_cuts(&text, &picks)));
        prop_assert_eq!(got, want);
    }
}

fn chain(in_reasoning: bool, chunks: &[&str]) -> (String, Stream) {
    let mut r = Glm45ReasoningParser::new(in_reasoning);
    let mut t = Glm47ToolParser::with_options(&tools(), "", Some(5));
    let mut reasoning = String::new();
    let mut out = Stream::default();
    for c in chunks {
        let d = r.feed(c);
        reasoning.push_str(&d.reasoning);
        let ev = t.feed(&d.content);
        absorb_checked(&mut out, ev, "chain");
    }
    let d = r.finish();
    reasoning.push_str(&d.reasoning);
    let ev = t.finish_with(&d.content);
    absorb_checked(&mut out, ev, "chain finish");
    (reasoning, out)
}

// ---------------------------------------------------------------------------------------------
// Full pipeline with a byte-level tokenizer: tokens split inside UTF-8 characters and tags
// ---------------------------------------------------------------------------------------------

fn byte_tokenizer() -> (
    tokenizers::Tokenizer,
    Arc<glm47_router::tokenizer::Tokenizer>,
) {
    let mut tok = http_support::byte_level_tokenizer();
    tok.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
    let eos = tok.token_to_id("<|endoftext|>").expect("eos");
    let ours = glm47_router::tokenizer::Tokenizer::new(tok.clone(), vec![eos]);
    (tok, Arc::new(ours))
}

fn pipeline_run(text: &str, group: usize, in_reasoning: bool, parallel: bool) -> Collected {
    let (raw, tok) = byte_tokenizer();
    let ids = raw.encode(text, false).expect("encode").get_ids().to_vec();
    let detok = Detokenizer::new(tok.clone(), true);
    let stop = StopMatcher::new(Vec::<String>::new());
    let mut p = Pipeline::new(tok, Box::new(detok), Box::new(stop))
        .with_reasoning(Glm45ReasoningParser::new(in_reasoning))
        .with_tools(Glm47ToolParser::new(&tools()), parallel);
    let mut all = Collected::default();
    let chunks: Vec<&[u32]> = ids.chunks(group.max(1)).collect();
    for (i, c) in chunks.iter().enumerate() {
        let out = wire::Output {
            rid: "r".into(),
            ids: c.to_vec(),
            finish: (i + 1 == chunks.len()).then_some(wire::FinishReason::Stop),
            ..wire::Output::default()
        };
        all.absorb(p.push(&out));
    }
    if chunks.is_empty() {
        all.absorb(p.push(&wire::Output {
            rid: "r".into(),
            finish: Some(wire::FinishReason::Stop),
            ..wire::Output::default()
        }));
    }
    all.tokens.clear();
    all
}

#[test]
fn pipeline_byte_tokens_split_inside_utf8_and_tags() {
    let text = "思考 🤔 <tool_call>x</think>回答 é\n<tool_call>get_weather<arg_key>city</arg_key>\
                <arg_value>北京😀</arg_value><arg_key>days</arg_key><arg_value>3</arg_value>\
                </tool_call><tool_call>search<arg_key>query</arg_key><arg_value>ü</arg_value>\
                </tool_call>末尾😀";
    let want = pipeline_run(text, usize::MAX, true, true);
    assert_eq!(want.reasoning, "思考 🤔 <tool_call>x");
    assert_eq!(want.content, "回答 é\n末尾😀");
    assert_eq!(want.tool_calls.len(), 2);
    for group in 1..=7 {
        let got = pipeline_run(text, group, true, true);
        assert_eq!(got.content, want.content, "group {group}");
        assert_eq!(got.reasoning, want.reasoning, "group {group}");
        let strip = |c: &Collected| -> Vec<(String, String)> {
            c.tool_calls
                .iter()
                .map(|(_, n, a)| (n.clone(), a.clone()))
                .collect()
        };
        assert_eq!(strip(&got), strip(&want), "group {group}");
        assert!(!got.content.contains('\u{fffd}'));
    }
    let single = pipeline_run(text, 3, true, false);
    assert_eq!(single.tool_calls.len(), 1);
    assert_eq!(single.content, want.content);
}

// ---------------------------------------------------------------------------------------------
// Repairs of malformed calls, and choices the format leaves open
// ---------------------------------------------------------------------------------------------

/// A second `<tool_call>` before the first call's `</tool_call>` (the model forgot to close it)
/// closes the first call with its arguments so far and opens the second.
#[test]
fn a_call_begun_before_the_previous_ones_close_is_a_call_of_its_own() {
    let text = "<tool_call>search<arg_key>query</arg_key><arg_value>q</arg_value>\n\
                <tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>";
    let got = check_all_splits(text);
    let names: Vec<&str> = got.calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(names, ["search", "get_weather"], "{got:?}");
    assert_eq!(args_of(&got, 0), json!({"query": "q"}));
    assert_eq!(args_of(&got, 1), json!({"city": "Paris"}));
    // after a key without its value, and with a call without arguments next
    let got = check_all_splits(
        "<tool_call>search<arg_key>query</arg_key><tool_call>noop</tool_call>tail",
    );
    let names: Vec<&str> = got.calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(names, ["search", "noop"], "{got:?}");
    assert_eq!((args_of(&got, 0), args_of(&got, 1)), (json!({}), json!({})));
    assert_eq!(got.content, "tail");
}

/// A repeated key keeps its first value (already streamed when the second appears): the
/// arguments stay one JSON object with distinct names.
#[test]
fn a_repeated_key_keeps_its_first_value() {
    let text = "<tool_call>get_weather<arg_key>days</arg_key><arg_value>5</arg_value>\
                <arg_key>days</arg_key><arg_value>6</arg_value>\
                <arg_key>city</arg_key><arg_value>Oslo</arg_value>\
                <arg_key>city</arg_key><arg_value>Rome</tool_call>";
    let got = check_all_splits(text);
    let args = &got.calls[0].2;
    assert_eq!(
        args.matches("\"days\"").count(),
        1,
        "duplicate key in {args}"
    );
    assert_eq!(args_of(&got, 0), json!({"days": 5, "city": "Oslo"}));
}

/// At the end of the output, a cut-off name that is a declared function name (here `get`, a
/// prefix of `get_weather`) is a call to that function: the parser cannot tell a name cut off by
/// max_tokens from a complete one, and a forced call's name ends exactly so.
#[test]
fn a_cut_off_name_that_is_a_declared_name_is_a_call() {
    let got = check_all_splits("<tool_call>get");
    assert_eq!(got.calls.len(), 1);
    assert_eq!(got.calls[0].1, "get");
}

/// Stray closing tags after a call reach `content` verbatim.
#[test]
fn stray_closing_tags_after_a_call_are_content() {
    let got = check_all_splits("<tool_call>noop</tool_call></arg_value></tool_call>");
    assert_eq!(got.content, "</arg_value></tool_call>");
}

/// Inside a call, text between pairs is not content (it is skipped with a warning): a call whose
/// `</tool_call>` never comes takes the rest of the output.
#[test]
fn text_after_an_unclosed_calls_last_pair_is_skipped() {
    let text =
        "<tool_call>search<arg_key>query</arg_key><arg_value>q</arg_value>\nThe answer is 42.";
    let got = check_all_splits(text);
    assert_eq!(got.calls.len(), 1);
    assert_eq!(args_of(&got, 0), json!({"query": "q"}));
    assert_eq!(got.content, "");
}
