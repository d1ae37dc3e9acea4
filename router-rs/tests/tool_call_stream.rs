//! Adversarial streaming tests of the GLM-4.7 tool-call parser.
//!
//! Invariant under test: for every way of cutting an output into chunks, the concatenated
//! stream (content, per-index argument fragments, ids, names) equals the one-shot parse, the
//! event contract holds (id+name once, in the first event of a call; one entry per call per
//! feed; indices dense and in order), and the semantic result is the documented one
//! (docs/parsers.md), malformed calls included.

mod stream_support;

use glm47_router::parsers::Glm47ToolParser;
use proptest::prelude::*;
use serde_json::{json, Value};
use stream_support::*;

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
