//! Partition invariance: for every way of cutting an output into chunks (on UTF-8 character
//! boundaries), the accumulated stream equals the one-shot parse, types included.

use proptest::prelude::*;
use serde_json::Value;

use super::glm47_tool::tests::tools;
use super::{Glm45ReasoningParser, Glm47ToolParser, ParsedToolCalls, ReasoningDelta, ToolEvent};

const TOOL_TEXTS: &[&str] = &[
    "Sure.<tool_call>get_weather<arg_key>city</arg_key><arg_value>北京 🌧️ \"q\" \\ a<b\n\
     </arg_value><arg_key>days</arg_key><arg_value>7</arg_value></tool_call> ok",
    "<tool_call>get_weather\n<arg_key>metric</arg_key>\n<arg_value>true</arg_value>\n\
     <arg_key>opts</arg_key>\n<arg_value>{\"unit\": \"C\", \"n\": [1, 2.5]}</arg_value>\n\
     <arg_key>tags</arg_key>\n<arg_value>[\"a\", \"b\"]</arg_value>\n</tool_call>",
    "a<tool_call>noop</tool_call>b<tool_call>search<arg_key>query</arg_key><arg_value>x</arg_value>\
     </tool_call><tool_call>search<arg_key>query</arg_key><arg_value>y</arg_value></tool_call>",
    "x < y <tool and </tool_call> stray <tool_cal <<tool_call",
    "<tool_call>rm_rf<arg_key>path</arg_key><arg_value>/</arg_value></tool_call>after",
    "text<tool_call>get_weather<arg_key>city</arg_key><arg_value>line1\nline2 é",
    "text<tool_call>get_wea",
    "<tool_call>get_weather<arg_key>big</arg_key><arg_value>123456789012345678901234567890\
     </arg_value><arg_key>zip</arg_key><arg_value>007</arg_value><arg_key>note</arg_key>\
     <arg_value>null</arg_value><arg_key>free</arg_key><arg_value>maybe</arg_value></tool_call>",
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>a </arg_val b <tool_call> c\
     </arg_valu</arg_value></tool_call>",
    "<tool_call>get < weather</tool_call><tool_call>get_weather<arg_key>days</arg_key>junk\
     <arg_key>city</arg_key> <arg_value>Oslo</arg_value> more </tool_call>",
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>😀😀</tool_call>tail 😀",
    "<tool_call>\nnoop\n</tool_call><tool_call>get_weather<arg_key>days</arg_key><arg_value>1",
    "<tool_call>get_weather<arg_key>days</arg_key><arg_value> 12 </arg_value><arg_key>opts\
     </arg_key><arg_value>{broken</arg_value></tool_call>",
    "<tool_call>get_weather<arg_key>opts</arg_key><arg_value>{\"e\": \"a < b </arg_val c\"}\
     </arg_value><arg_key>c<i</arg_key>ty</arg_key><arg_value>x</arg_value></tool_call>",
    "a<tool_call>noop\n</tool_ca",
    "<tool_call>get_weather<arg_key>days</arg_key>\n<arg_val",
];

/// Streams `chunks` and checks the event contract on the way: each call's first event carries
/// its id (`call_` + 24 alphanumerics) and name, exactly once, in index order.
fn stream_tools(chunks: &[&str]) -> ParsedToolCalls {
    let mut parser = Glm47ToolParser::with_options(&tools(), "", Some(3));
    let mut parsed = ParsedToolCalls::default();
    let mut events: Vec<ToolEvent> = chunks.iter().flat_map(|c| parser.feed(c)).collect();
    events.extend(parser.finish());
    for event in events {
        if let ToolEvent::Call {
            index, id, name, ..
        } = &event
        {
            let opened = parsed.tool_calls.len();
            if *index == opened {
                let id = id.as_deref().expect("the first event of a call has its id");
                assert!(id.len() == 29 && id.starts_with("call_"), "bad id {id}");
                assert!(name.is_some(), "the first event of a call has its name");
            } else {
                assert!(*index < opened, "index {index} skips ahead of {opened}");
                assert!(
                    id.is_none() && name.is_none(),
                    "id and name come once per call"
                );
            }
        }
        parsed.absorb(vec![event]);
    }
    parsed
}

fn check_tools(text: &str, chunks: &[&str]) {
    let want = Glm47ToolParser::parse(text, &tools());
    for call in &want.tool_calls {
        let args: Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
        assert!(args.is_object(), "{}", call.arguments);
    }
    assert_eq!(stream_tools(chunks), want, "chunks {chunks:?}");
}

fn stream_reasoning(in_reasoning: bool, chunks: &[&str]) -> ReasoningDelta {
    let mut parser = Glm45ReasoningParser::new(in_reasoning);
    let mut out = ReasoningDelta::default();
    let mut deltas: Vec<ReasoningDelta> = chunks.iter().map(|c| parser.feed(c)).collect();
    deltas.push(parser.finish());
    for delta in deltas {
        out.reasoning.push_str(&delta.reasoning);
        out.content.push_str(&delta.content);
    }
    out
}

fn check_reasoning(text: &str, chunks: &[&str]) {
    for in_reasoning in [true, false] {
        let want = stream_reasoning(in_reasoning, &[text]);
        assert_eq!(
            stream_reasoning(in_reasoning, chunks),
            want,
            "chunks {chunks:?}"
        );
    }
}

const REASONING_TEXTS: &[&str] = &[
    "think about x < y</think>answer",
    "<think>plan 🤔</think>\n\nresult <tool_call>f</tool_call>",
    "a <tool_call>f</tool_call> b </thin</think>c<think>d</think",
    "</think><think><think>double</think></think>end <",
];

fn char_cuts(text: &str) -> Vec<usize> {
    (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

fn split_at_cuts<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut last = 0;
    for &cut in cuts {
        pieces.push(&text[last..cut]);
        last = cut;
    }
    pieces.push(&text[last..]);
    pieces
}

#[test]
fn every_two_way_split_streams_to_the_one_shot_result() {
    for text in TOOL_TEXTS {
        for cut in char_cuts(text) {
            check_tools(text, &split_at_cuts(text, &[cut]));
        }
    }
    for text in REASONING_TEXTS {
        for cut in char_cuts(text) {
            check_reasoning(text, &split_at_cuts(text, &[cut]));
        }
    }
}

#[test]
fn one_character_per_chunk_streams_to_the_one_shot_result() {
    for text in TOOL_TEXTS {
        let cuts = char_cuts(text);
        check_tools(text, &split_at_cuts(text, &cuts[1..cuts.len() - 1]));
    }
    for text in REASONING_TEXTS {
        let cuts = char_cuts(text);
        check_reasoning(text, &split_at_cuts(text, &cuts[1..cuts.len() - 1]));
    }
}

fn random_cuts(text: &str, picks: &[prop::sample::Index]) -> Vec<usize> {
    let boundaries = char_cuts(text);
    let mut cuts: Vec<usize> = picks
        .iter()
        .map(|pick| boundaries[pick.index(boundaries.len())])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_multi_way_splits_stream_to_the_one_shot_result(
        which in 0..TOOL_TEXTS.len(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..60),
    ) {
        let text = TOOL_TEXTS[which];
        check_tools(text, &split_at_cuts(text, &random_cuts(text, &picks)));
    }

    #[test]
    fn random_multi_way_splits_of_reasoning_stream_to_the_one_shot_result(
        which in 0..REASONING_TEXTS.len(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let text = REASONING_TEXTS[which];
        check_reasoning(text, &split_at_cuts(text, &random_cuts(text, &picks)));
    }
}

#[test]
fn the_one_shot_results_of_the_corpus_are_the_intended_ones() {
    let parse = |i: usize| Glm47ToolParser::parse(TOOL_TEXTS[i], &tools());
    let first = parse(0);
    assert_eq!(first.content, "Sure. ok");
    let args: Value = serde_json::from_str(&first.tool_calls[0].arguments).expect("JSON");
    assert_eq!(args["city"], "北京 🌧️ \"q\" \\ a<b\n");
    assert_eq!(args["days"], 7);
    assert_eq!(parse(2).tool_calls.len(), 3);
    assert_eq!(parse(3).content, TOOL_TEXTS[3]);
    assert_eq!(parse(4).content, TOOL_TEXTS[4]);
    assert_eq!(parse(6).content, TOOL_TEXTS[6]);
    assert_eq!(
        parse(7).tool_calls[0].arguments,
        r#"{"big": 123456789012345678901234567890, "zip": "007", "note": "null", "free": "maybe"}"#
    );
    let values = parse(8);
    assert_eq!(
        values.tool_calls[0].arguments,
        r#"{"city": "a </arg_val b <tool_call> c</arg_valu"}"#
    );
    assert_eq!(parse(9).content, "<tool_call>get < weather</tool_call>");
    assert_eq!(parse(10).tool_calls[0].arguments, r#"{"city": "😀😀"}"#);
    assert_eq!(
        parse(12).tool_calls[0].arguments,
        r#"{"days": 12, "opts": "{broken"}"#
    );
    assert_eq!(
        parse(13).tool_calls[0].arguments,
        r#"{"opts": {"e":"a < b </arg_val c"}, "c<i": "x"}"#
    );
}
