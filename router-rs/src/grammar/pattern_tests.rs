//! JSON Schema `pattern` strings and anchored regular expressions: what they take, and masks
//! equal to the brute force on random walks.

use serde_json::{json, Value};

use super::tests::{accepts, grammar, whole_documents};
use super::*;

#[test]
fn a_pattern_matches_anywhere_in_the_string_unless_anchored() {
    let g = grammar(json!({
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
            "note": {"pattern": "ab+c", "maxLength": 6},
        },
        "required": ["code", "note"],
    }));
    for (text, ok) in [
        (r#"{"code": "AB-123", "note": "abc"}"#, true),
        (r#"{"code":"XY-000","note":"xxabbc"}"#, true),
        (r#"{"code": "AB-123", "note": "abcxyz"}"#, true),
        (r#"{"code": "AB-12", "note": "abc"}"#, false),
        (r#"{"code": "AB-1234", "note": "abc"}"#, false),
        (r#"{"code": " AB-123", "note": "abc"}"#, false),
        (r#"{"code": "AB-123", "note": "ac"}"#, false),
        (r#"{"code": "AB-123", "note": "xxxabbc"}"#, false), // 7 characters
        (r#"{"code": "AB-123", "note": "a\nbc"}"#, false),   // an escape
        (r#"{"code": "AB-123", "note": "ab\"c"}"#, false),
    ] {
        assert_eq!(accepts(&g, text), ok, "{text}");
    }
}

#[test]
fn a_pattern_string_counts_characters_not_bytes() {
    let g = grammar(json!({"type": "string", "pattern": "^é+$", "maxLength": 3}));
    for (text, ok) in [
        ("\"\"", false),
        ("\"é\"", true),
        ("\"éé\"", true),
        ("\"ééé\"", true),
        ("\"éééé\"", false),
        ("\"ée\"", false),
    ] {
        assert_eq!(accepts(&g, text), ok, "{text}");
    }
    let nullable = grammar(json!({"type": ["string", "null"], "pattern": "^x"}));
    assert!(accepts(&nullable, "null") && accepts(&nullable, "\"xy\""));
    assert!(!accepts(&nullable, "\"yx\""));
}

#[test]
fn an_escaped_surrogate_pair_is_one_character_under_length_bounds() {
    // as a JSON parser reads the string (Python's json: one code point for the pair, one for
    // each lone surrogate)
    let g = grammar(json!({"type": "string", "minLength": 2, "maxLength": 2}));
    for (text, ok) in [
        (r#""\ud83d\ude00""#, false),
        (r#""\ud83d\ude00a""#, true),
        // never past maxLength, but a pair may not start at its last character: whether the
        // next escape ends a pair or is a character of its own is not known at its backslash
        (r#""a\uD83D\uDE00""#, false),
        (r#""\uD83D\uDE00\u00e9""#, true),
        (r#""\ud83da""#, true),
        (r#""\ud83d\ud83d""#, true),
        (r#""\ude00\ud83d""#, true),
        (r#""\ud83d\n\ude00""#, false), // three characters
        ("\"\u{1f600}a\"", true),
        (r#""\ud83d\ude00\ud83d\ude00""#, false), // the second pair starts at the last one
    ] {
        let n = serde_json::from_str::<String>(text).map_or(0, |s| s.chars().count());
        assert_eq!(accepts(&g, text), ok, "{text} ({n} characters)");
    }
}

#[test]
fn anchors_of_a_regex_grammar_match_at_the_ends_of_the_output() {
    let g = regex(r"^(ab|cd)+$").unwrap();
    for (text, ok) in [("ab", true), ("abcd", true), ("", false), ("abc", false)] {
        assert_eq!(accepts(&g, text), ok, "{text:?}");
    }
}

#[test]
fn text_anchors_match_at_the_ends_and_line_anchors_are_refused() {
    for pattern in [r"\A(ab|cd)+\z", r"(?:ab|cd)+\z", r"\A(?:ab|cd)+$"] {
        let g = regex(pattern).unwrap();
        for (text, ok) in [("ab", true), ("abcd", true), ("", false), ("abc", false)] {
            assert_eq!(accepts(&g, text), ok, "{pattern} {text:?}");
        }
    }
    let alt = regex(r"a\z|b").unwrap();
    assert!(accepts(&alt, "a") && accepts(&alt, "b") && !accepts(&alt, "ab"));
    for pattern in [r"(?m)^a$", r"(?m:a$)", r"x(?m:^)", r"(?Rm)^a"] {
        let err = regex(pattern).unwrap_err();
        assert!(
            err.message.contains("multi-line anchors"),
            "{pattern}: {err:?}"
        );
    }
    // a pattern that can match bytes that are not UTF-8 is refused
    for pattern in [r"(?-u:\xC3)", r"(?-u:.)+"] {
        let err = regex(pattern).unwrap_err();
        assert!(err.message.contains("not valid"), "{pattern}: {err:?}");
    }
    // (?m) without anchors changes nothing
    assert!(accepts(&regex(r"(?m)a+").unwrap(), "aa"));
    let g = grammar(json!({"type": "string", "pattern": r"x\z"}));
    assert!(accepts(&g, r#""abx""#) && !accepts(&g, r#""xa""#));
}

#[test]
fn a_verbose_pattern_comment_ends_with_its_line_not_with_the_pattern() {
    // the comment runs to the end of the pattern: nothing after it may be read as part of it
    let g = regex("(?x) a b  # two letters").unwrap();
    assert!(accepts(&g, "ab") && !accepts(&g, "a b") && !accepts(&g, "abx"));
    let g = grammar(json!({"type": "string", "pattern": "(?x) ^ a b # two letters"}));
    for (text, ok) in [(r#""ab""#, true), (r#""abzz""#, true), (r#""zab""#, false)] {
        assert_eq!(accepts(&g, text), ok, "{text}");
    }
}

#[test]
fn masks_under_a_pattern_equal_the_brute_force_and_every_document_matches() {
    let schema = json!({
        "type": "object",
        "properties": {"id": {"type": "string", "pattern": "^(na|[a-z]{1,3}[0-9]?)( [a-z]+)?$"},
                       "tag": {"type": "string", "pattern": "é|日本|\\d\\d", "maxLength": 4}},
        "required": ["id", "tag"],
        "additionalProperties": false,
    });
    let id_re = regex_automata::meta::Regex::new("^(na|[a-z]{1,3}[0-9]?)( [a-z]+)?$").unwrap();
    let tag_re = regex_automata::meta::Regex::new("é|日本|\\d\\d").unwrap();
    let g = grammar(schema);
    let docs = whole_documents(&g, 11, 30, 120);
    for text in &docs {
        let doc: Value = serde_json::from_slice(text).unwrap();
        assert!(id_re.is_match(doc["id"].as_str().unwrap()), "{doc}");
        assert!(tag_re.is_match(doc["tag"].as_str().unwrap()), "{doc}");
    }
    assert!(docs.len() >= 10, "only {} whole documents", docs.len());
}

#[test]
fn a_pattern_string_never_enters_a_state_it_cannot_leave() {
    // after `a` only a raw `"` would match: `a` is not taken
    let g = grammar(json!({"type": "string", "pattern": "^(a\"|b)$"}));
    assert!(accepts(&g, "\"b\""));
    let mut m = Matcher::new(g);
    assert!(m.accept(b"\""));
    assert!(!m.accept(b"a"));
    // within a length: after four characters without a digit, only a digit may follow
    let g = grammar(json!({"type": "string", "pattern": "[0-9]", "maxLength": 5}));
    let mut m = Matcher::new(g);
    assert!(m.accept(b"\"abcd"));
    assert!(!m.accept(b"e") && !m.accept(b"\""));
    assert!(m.accept(b"7\""));
    assert!(m.can_end());
    // no string of the pattern has that many characters
    let e = compile(Some(
        &json!({"type": "string", "pattern": "^a{1,3}$", "minLength": 4}),
    ))
    .unwrap_err();
    assert!(e.message.contains("that many characters"), "{e}");
    let e = compile(Some(
        &json!({"type": "string", "pattern": "^(aa)+$", "minLength": 3, "maxLength": 3}),
    ))
    .unwrap_err();
    assert!(e.message.contains("that many characters"), "{e}");
}

#[test]
fn a_min_length_beside_a_pattern_closes_the_string_only_at_a_match_that_long() {
    let cases = [
        // lengths not an interval: (aa)+ within 3..=6 is 4 or 6
        (
            json!({"pattern": "^(aa)+$", "minLength": 3, "maxLength": 6}),
            &["aaaa", "aaaaaa"][..],
            &["aa", "aaa", "aaaaa", "aaaaaaaa"][..],
        ),
        // no maximum, found anywhere; characters, not bytes
        (
            json!({"pattern": "ok", "minLength": 4}),
            &["okok", "xxok", "okéé"],
            &["ok", "oké", "xxxx"],
        ),
        // a bounded pattern with a bounded length
        (
            json!({"pattern": "^[a-z]{2,5}[0-9]?$", "minLength": 5, "maxLength": 5}),
            &["abcde", "abcd1"],
            &["abc1", "abcdef", "ab12"],
        ),
        // an unbounded pattern that must go on past its first match
        (
            json!({"pattern": "^x(yz)*$", "minLength": 4}),
            &["xyzyz", "xyzyzyz"],
            &["x", "xyz"],
        ),
    ];
    for (schema, good, bad) in cases {
        let g = grammar(schema.clone());
        for ok in good {
            assert!(accepts(&g, &format!("\"{ok}\"")), "{schema}: {ok}");
        }
        for no in bad {
            assert!(!accepts(&g, &format!("\"{no}\"")), "{schema}: {no}");
        }
        // every walk ends in a string of the schema: no dead end, masks as the brute force
        let docs = whole_documents(&g, 5, 24, 60);
        assert!(docs.len() >= 3, "{schema}: {} whole documents", docs.len());
        for doc in docs {
            assert!(accepts(&g, std::str::from_utf8(&doc).unwrap()), "{schema}");
        }
    }
}

#[test]
fn known_string_formats_are_enforced_as_their_patterns() {
    for (format, cases) in [
        (
            "date",
            vec![
                ("2026-12-04", true),
                ("2026-13-01", false),
                ("2026-1-01", false),
            ],
        ),
        (
            "date-time",
            vec![
                ("2026-12-04T10:20:30Z", true),
                ("2026-12-04T10:20:30.123+02:00", true),
                ("2026-12-04 10:20:30Z", false),
                ("2026-12-04T24:00:00Z", false),
            ],
        ),
        ("time", vec![("23:59:60Z", true), ("23:59:59", false)]),
        (
            "uuid",
            vec![
                ("123e4567-e89b-12d3-a456-426614174000", true),
                ("123e4567e89b12d3a456426614174000", false),
            ],
        ),
        (
            "ipv4",
            vec![
                ("192.168.0.1", true),
                ("256.1.1.1", false),
                ("1.2.3", false),
            ],
        ),
        (
            "email",
            vec![
                ("a.b+c@example.co", true),
                ("a@b", false),
                ("@example.com", false),
            ],
        ),
        (
            "hostname",
            vec![("example.com", true), ("a-b.c", true), ("-a.com", false)],
        ),
        ("color", vec![("anything at all", true)]), // unknown: an annotation
    ] {
        let g = grammar(json!({"type": "string", "format": format}));
        for (text, ok) in cases {
            assert_eq!(accepts(&g, &format!("\"{text}\"")), ok, "{format}: {text}");
        }
    }
    // beside a minimum length the format stays an annotation; an explicit pattern wins
    let g = grammar(json!({"type": "string", "format": "date", "minLength": 1}));
    assert!(accepts(&g, "\"not a date\""));
    let g = grammar(json!({"type": "string", "format": "date", "pattern": "^x+$"}));
    assert!(accepts(&g, "\"xx\"") && !accepts(&g, "\"2026-12-04\""));
}
