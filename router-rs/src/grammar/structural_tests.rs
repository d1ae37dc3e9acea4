//! Structural tags (structural.rs): the texts each form takes and refuses, masks against the
//! brute force on random walks, and the tags refused.

use std::sync::Arc;

use serde_json::{json, Value};

use super::tests::{accepts, whole_documents_in};
use super::*;

fn g(tag: Value) -> Arc<Grammar> {
    structural_tag(&tag).unwrap_or_else(|e| panic!("{tag}: {e}"))
}

fn city() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
           "required": ["city"]})
}

/// The legacy form: one function behind `<f=`.
fn weather() -> Value {
    json!({"type": "structural_tag", "triggers": ["<f="],
           "structures": [{"begin": "<f=weather>", "schema": city(), "end": "</f>"}]})
}

#[test]
fn free_text_holds_structures_where_a_trigger_opens_them() {
    let w = g(weather());
    for ok in [
        "",
        "hello",
        "a < b and f=1",
        r#"<f=weather>{"city":"Paris"}</f>"#,
        r#"Let me check. <f=weather>{"city": "Oslo"}</f> and <f=weather>{"city":"Rome"}</f>."#,
        "<<f=weather>{\"city\":\"x\"}</f><",
    ] {
        assert!(accepts(&w, ok), "{ok}");
    }
    for bad in [
        "<f=",                                     // a trigger must go on as a begin
        "text <f=rain>{}</f>",                     // no structure begins so
        r#"<f=weather>{"town":"Paris"}</f>"#,      // the schema's key
        r#"<f=weather>{"city":"Paris"}"#,          // no end
        r#"<f=weather> {"city":"Paris"}</f>"#,     // no whitespace before the value
        r#"<f=weather>{"city":"Parisienne"}</f>"#, // maxLength
    ] {
        assert!(!accepts(&w, bad), "{bad}");
    }
    assert!(!Matcher::new(w.clone()).accept(&[0xFF])); // not UTF-8
                                                       // between structures every thread stands in the same free text: the masks' short path
    let mut m = Matcher::new(w.clone());
    assert!(m.accept(b"hi <") && m.in_free().is_some_and(|at| at.state != 0));
    assert!(m.accept(b"f=weather>") && m.in_free().is_none());
}

#[test]
fn masks_equal_the_brute_force_on_random_walks_of_each_form() {
    let words: Vec<Option<Vec<u8>>> = super::tests::test_vocab()
        .into_iter()
        .chain(
            [
                "<f=",
                "<f=weather>",
                "</f>",
                "{\"city\":\"",
                "<think>",
                "</think>",
                "ok",
                ",",
                "; ",
            ]
            .map(|s| Some(s.as_bytes().to_vec())),
        )
        .collect();
    let v = Arc::new(Vocab::new(words, super::tests::END as usize + 1));
    let tags = [
        weather(),
        json!({"type": "structural_tag", "format": {"type": "sequence", "elements": [
            {"type": "tag", "begin": "<think>", "content": {"type": "any_text"}, "end": "</think>"},
            {"type": "triggered_tags", "triggers": ["<f="], "at_least_one": true, "tags": [
                {"begin": "<f=weather>", "content": {"type": "json_schema", "json_schema": city()},
                 "end": "</f>"}]}]}}),
        json!({"format": {"type": "tags_with_separator", "separator": "; ", "tags": [
            {"type": "tag", "begin": "ok", "content": {"type": "regex", "pattern": "[0-9]{1,3}"},
             "end": ","},
            {"begin": "<f=weather>", "content": {"type": "grammar", "grammar": "root ::= [a-z]+"},
             "end": "</f>"}]}}),
    ];
    for (seed, tag) in tags.into_iter().enumerate() {
        let grammar = g(tag);
        let docs = whole_documents_in(&grammar, &v, seed as u64, 24, 160);
        assert!(docs.len() >= 4, "only {} whole documents", docs.len());
        for doc in docs {
            let s = String::from_utf8(doc).expect("UTF-8");
            assert!(accepts(&grammar, &s), "{s}");
        }
    }
}

#[test]
fn each_format_type_reads_its_text() {
    let cases = [
        (
            json!({"type": "const_string", "value": "yes"}),
            &["yes"][..],
            &["", "ye", "yes!"][..],
        ),
        (
            json!({"type": "or", "elements": [{"type": "const_string", "value": "a"},
                                               {"type": "regex", "pattern": "b+"}]}),
            &["a", "bbb"],
            &["ab", ""],
        ),
        (
            json!({"type": "tag", "begin": "<think>", "end": "</think>",
                   "content": {"type": "any_text", "excluded_str": ["<tool"]}}),
            &["<think></think>", "<think>a</thin b</think>"],
            &["<think>a</think>b", "<think>x<tool</think>", "<think>"],
        ),
        (
            json!({"type": "any_text", "excluded_str": ["bad"]}),
            &["", "ba d", "good"],
            &["bad", "a bad one"],
        ),
        (
            json!({"type": "triggered_tags", "triggers": ["<a"], "stop_after_first": true,
                   "tags": [{"begin": "<a>", "content": {"type": "const_string", "value": "1"},
                             "end": "</a>"}]}),
            &["x", "x<a>1</a>", "<a>1</a>"],
            &["x<a>1</a>y", "<a>1</a><a>1</a>"],
        ),
        (
            json!({"type": "triggered_tags", "triggers": ["<a"], "at_least_one": true,
                   "tags": [{"begin": "<a>", "content": {"type": "const_string", "value": "1"},
                             "end": "</a>"}]}),
            &["<a>1</a>", "<a>1</a> then <a>1</a>."],
            &["", "x<a>1</a>"],
        ),
        (
            json!({"type": "tags_with_separator", "separator": ",", "tags": [
                {"begin": "[", "content": {"type": "json_schema", "json_schema": {"type": "integer"}},
                 "end": "]"}]}),
            &["", "[1]", "[1],[-20]"],
            &["[1],", "[1][2]", "[x]"],
        ),
    ];
    for (format, good, bad) in cases {
        let grammar = g(json!({"type": "structural_tag", "format": format}));
        for ok in good {
            assert!(accepts(&grammar, ok), "{format}: {ok:?}");
        }
        for no in bad {
            assert!(!accepts(&grammar, no), "{format}: {no:?}");
        }
    }
}

#[test]
fn tags_the_matcher_cannot_read_are_refused_with_where() {
    let refused = [
        (json!({"triggers": ["<f="]}), "#"),
        (
            json!({"structures": [], "triggers": ["<f="]}),
            "#/structures",
        ),
        (
            json!({"structures": [{"begin": "<g>", "schema": {}, "end": "</g>"}],
                   "triggers": ["<f="]}),
            "#/tags/0",
        ),
        (
            json!({"structures": [{"begin": "<f=a>", "schema": {}, "end": ""}], "triggers": [""]}),
            "#/triggers",
        ),
        (
            json!({"structures": [{"begin": "<f=a>", "schema": {"type": "object",
                   "properties": {"x": {"not": {}}}}, "end": ""}], "triggers": ["<f="]}),
            "#/structures/0/schema/properties/x",
        ),
        (
            json!({"format": {"type": "qwen_xml_parameter"}}),
            "#/format",
        ),
        (
            json!({"format": {"type": "sequence", "elements": []}}),
            "#/format",
        ),
        (
            json!({"format": {"type": "regex", "pattern": "(a"}}),
            "#/format/pattern",
        ),
        (
            json!({"format": {"type": "grammar", "grammar": "root ::= x"}}),
            "#/format/grammar",
        ),
        (
            json!({"format": {"type": "tags_with_separator", "tags": [
                {"begin": "", "content": {"type": "any_text"}, "end": ""}]}}),
            "#/format",
        ),
    ];
    for (tag, path) in refused {
        let e = structural_tag(&tag).expect_err(&tag.to_string());
        assert_eq!(e.path, path, "{tag}: {e}");
    }
}

#[test]
fn text_that_may_end_anywhere_lets_what_follows_it_start_anywhere() {
    let seq = |elements: Value| g(json!({"format": {"type": "sequence", "elements": elements}}));
    let x = seq(json!([{"type": "any_text"}, {"type": "const_string", "value": "X"}]));
    for (text, ok) in [
        ("aX", true),
        ("X", true),
        ("XX", true),
        ("a", false),
        ("", false),
    ] {
        assert_eq!(accepts(&x, text), ok, "{text:?}");
    }
    let call = json!({"type": "triggered_tags", "triggers": ["<f"], "tags": [
        {"begin": "<f>", "content": {"type": "const_string", "value": "1"}, "end": "</f>"}]});
    let end = seq(json!([call, {"type": "const_string", "value": "END"}]));
    for (text, ok) in [
        ("xEND", true),
        ("x<f>1</f>yEND", true),
        ("END", true),
        ("x<fEND", false),
    ] {
        assert_eq!(accepts(&end, text), ok, "{text:?}");
    }
    let nested =
        g(json!({"format": {"type": "tag", "begin": "<a>", "content": call, "end": "</a>"}}));
    for (text, ok) in [
        ("<a>x</a>", true),
        ("<a></a>", true),
        ("<a><f>1</f></a>", true),
        ("<a>", false),
    ] {
        assert_eq!(accepts(&nested, text), ok, "{text:?}");
    }
    // the masks (the free text's short path where some thread's text may end) on random walks
    let v = Arc::new(Vocab::new(
        super::tests::test_vocab()
            .into_iter()
            .chain(
                ["<f>", "</f>", "END", "EN", "D", "<a>", "</a>"]
                    .map(|s| Some(s.as_bytes().to_vec())),
            )
            .collect(),
        super::tests::END as usize + 1,
    ));
    for (seed, grammar) in [end, nested, x].into_iter().enumerate() {
        let docs = whole_documents_in(&grammar, &v, 10 + seed as u64, 40, 120);
        assert!(docs.len() >= 3, "only {} whole documents", docs.len());
        for doc in docs {
            assert!(accepts(&grammar, std::str::from_utf8(&doc).unwrap()));
        }
    }
}

#[test]
fn a_json_schema_format_is_json_even_as_the_whole_output() {
    let s = g(
        json!({"format": {"type": "json_schema", "json_schema": {"type": "string", "pattern": "^a+$"}}}),
    );
    assert!(accepts(&s, "\"aa\""));
    assert!(!accepts(&s, "aa"));
}

#[test]
fn tags_with_no_document_or_too_many_words_are_refused() {
    let refused = [
        // the excluded string is in the end: the tag could never close
        json!({"format": {"type": "tag", "begin": "<t>", "end": "</t>",
                          "content": {"type": "any_text", "excluded_str": ["<"]}}}),
        // a pattern no text matches
        json!({"format": {"type": "regex", "pattern": "[^\\s\\S]"}}),
        // 5 x 4000 bytes of excluded strings
        json!({"format": {"type": "or", "elements": (0..5).map(|i| json!({"type": "any_text",
            "excluded_str": [format!("{i}{}", "x".repeat(3999))]})).collect::<Vec<_>>()}}),
    ];
    for tag in refused {
        assert!(structural_tag(&tag).is_err(), "{tag}");
    }
    assert!(regex("[^\\s\\S]").is_err());
}

#[test]
fn settled_threads_read_every_text_as_the_threads_they_stand_for() {
    let w = g(weather());
    let m = Matcher::new(w.clone());
    let settled = w.settled(&m.threads);
    assert!(m.free_among(&settled).is_some()); // the masks' short path from the first token
    let texts = [
        "",
        "a",
        "<f=",
        "<f=weather>{\"city\":\"x\"}</f>",
        "<f=weather>{",
        "x<f=weather>{\"city\":\"ab\"}</f>y",
        "<g",
    ];
    for text in texts {
        for prefix in 0..=text.len() {
            let bytes = &text.as_bytes()[..prefix];
            let a = m.after(&m.threads, bytes);
            let b = m.after(&settled, bytes);
            assert_eq!(a.is_empty(), b.is_empty(), "{:?}", &text[..prefix]);
            let ends = |ts: &[super::frame::Thread]| {
                let mut n = Matcher::new(w.clone());
                n.threads = ts.to_vec();
                n.can_end()
            };
            assert_eq!(ends(&a), ends(&b), "{:?}", &text[..prefix]);
        }
    }
    // after a structure's end: its literal closed, free text again
    let mut m = Matcher::new(w.clone());
    assert!(m.accept(b"<f=weather>{\"city\":\"x\"}</f>"));
    assert!(m.in_free().is_none());
    assert!(m.free_among(&w.settled(&m.threads)).is_some());
}

#[test]
fn a_grammar_kept_past_its_vocabulary_gives_the_next_vocabulary_its_own_masks() {
    // masks are kept per vocabulary: a new one (perhaps at the freed one's address) walks anew
    let grammar = g(weather());
    for size in [
        super::tests::END as usize + 1,
        super::tests::END as usize + 65,
    ] {
        let v = Arc::new(Vocab::new(super::tests::test_vocab(), size));
        let c = Constraint::new(grammar.clone(), v.clone(), vec![super::tests::END], None);
        let mut words = vec![0u32; v.mask_words()];
        c.fill_mask(&mut words);
        let allowed = words.iter().map(|w| w.count_ones()).sum::<u32>();
        assert_eq!(
            allowed as usize,
            super::tests::brute_force(&Matcher::new(grammar.clone()), &v).len()
        );
    }
}
