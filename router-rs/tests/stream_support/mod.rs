//! The harness of the streaming parser tests: tools, the streamed result of a split output, and
//! the checks that every split gives the one-shot parse and keeps the event contract.

#![allow(dead_code)]

use std::collections::HashSet;

use glm47_router::parsers::{Glm47ToolParser, ParsedToolCalls, ToolEvent};
use glm47_router::tokenizer::OUTPUT_TAGS;
use proptest::prelude::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Fixtures and harness
// ---------------------------------------------------------------------------------------------

pub fn tools() -> Vec<Value> {
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
pub struct Stream {
    pub content: String,
    /// (id, name, arguments) per index
    pub calls: Vec<(String, String, String)>,
}

pub fn check_id(id: &str) {
    assert_eq!(id.len(), 29, "bad id {id}");
    assert!(id.starts_with("call_"), "bad id {id}");
    assert!(
        id[5..].chars().all(|c| c.is_ascii_alphanumeric()),
        "bad id {id}"
    );
}

/// Folds events into `out`, checking the event contract for one `feed`/`finish` batch.
pub fn absorb_checked(out: &mut Stream, events: Vec<ToolEvent>, ctx: &str) {
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

pub fn stream_tools_prefixed(prefix: &str, chunks: &[&str]) -> Stream {
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

pub fn stream_tools(chunks: &[&str]) -> Stream {
    stream_tools_prefixed("", chunks)
}

pub fn one_shot_prefixed(prefix: &str, text: &str) -> Stream {
    stream_tools_prefixed(prefix, &[text])
}

pub fn one_shot(text: &str) -> Stream {
    one_shot_prefixed("", text)
}

/// The public one-shot API agrees with streaming in one chunk.
pub fn check_public_parse(text: &str, got: &Stream) {
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

pub fn check_args_are_objects(s: &Stream, ctx: &str) {
    for (_, name, args) in &s.calls {
        let v: Value = serde_json::from_str(args)
            .unwrap_or_else(|e| panic!("{name} args {args:?} not JSON: {e} ({ctx})"));
        assert!(v.is_object(), "{name} args {args:?} not an object ({ctx})");
    }
}

pub fn char_cuts(text: &str) -> Vec<usize> {
    (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

pub fn split_at<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
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
pub fn check_all_splits_prefixed(prefix: &str, text: &str) -> Stream {
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

pub fn check_all_splits(text: &str) -> Stream {
    let want = check_all_splits_prefixed("", text);
    check_public_parse(text, &want);
    want
}

pub fn args_of(s: &Stream, i: usize) -> Value {
    serde_json::from_str(&s.calls[i].2).expect("JSON")
}

pub fn random_cuts(text: &str, picks: &[prop::sample::Index]) -> Vec<usize> {
    let b = char_cuts(text);
    let mut cuts: Vec<usize> = picks.iter().map(|p| b[p.index(b.len())]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Pieces of random outputs, besides every tag the parsers read (`OUTPUT_TAGS`).
pub const PIECES: &[&str] = &[
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

pub fn texts() -> impl Strategy<Value = String> {
    let pieces: Vec<&str> = PIECES.iter().chain(&OUTPUT_TAGS).copied().collect();
    prop::collection::vec(prop::sample::select(pieces), 0..30).prop_map(|v| v.concat())
}
