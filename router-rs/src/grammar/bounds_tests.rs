//! Bounded integers and numbers: what they take, and masks equal to the brute force on random
//! walks.

use serde_json::{json, Value};

use super::tests::{accepts, grammar, whole_documents};
use super::*;

#[test]
fn bounded_integers_take_exactly_the_integers_in_range() {
    for (schema, cases) in [
        (
            json!({"type": "integer", "minimum": 3, "maximum": 120}),
            vec![
                ("3", true),
                ("120", true),
                ("57", true),
                ("2", false),
                ("121", false),
                ("-1", false),
                ("0", false),
                ("03", false),
                ("3.0", false),
                ("1e2", false),
            ],
        ),
        (
            json!({"type": "integer", "minimum": -20, "maximum": -5}),
            vec![
                ("-5", true),
                ("-20", true),
                ("-13", true),
                ("-4", false),
                ("-21", false),
                ("5", false),
                ("-0", false),
            ],
        ),
        (
            json!({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}),
            vec![("1", true), ("9", true), ("0", false), ("10", false)],
        ),
        (
            json!({"type": "integer", "minimum": 2.5, "maximum": 1e3}),
            vec![("3", true), ("1000", true), ("2", false), ("1001", false)],
        ),
        (
            json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true, "maximum": 0.5}),
            vec![("0", false), ("1", false)],
        ),
        (
            json!({"type": "integer", "maximum": 0}),
            vec![
                ("0", true),
                ("-0", true),
                ("-123456789", true),
                ("1", false),
            ],
        ),
        (
            json!({"type": ["integer", "string"], "minimum": 10}),
            vec![("10", true), ("9", false), ("\"9\"", true)],
        ),
        // integer bounds past 2^53 are read exactly, not through an f64
        (
            json!({"type": "integer", "minimum": 9007199254740993_u64,
                   "maximum": 9007199254740993_u64}),
            vec![
                ("9007199254740993", true),
                ("9007199254740992", false),
                ("9007199254740994", false),
            ],
        ),
        (
            json!({"type": "integer", "exclusiveMinimum": 9007199254740993_u64,
                   "exclusiveMaximum": 9007199254740996_u64}),
            vec![
                ("9007199254740994", true),
                ("9007199254740995", true),
                ("9007199254740993", false),
                ("9007199254740996", false),
            ],
        ),
        (
            json!({"type": "integer", "minimum": 3, "exclusiveMinimum": true,
                   "maximum": 5.0, "exclusiveMaximum": true}),
            vec![("4", true), ("3", false), ("5", false)],
        ),
        // exclusive bounds an f64 would round together still leave the integer between
        (
            json!({"type": "integer", "exclusiveMinimum": 9007199254740995_u64,
                   "exclusiveMaximum": 9007199254740997_u64}),
            vec![("9007199254740996", true), ("9007199254740995", false)],
        ),
        // at the ends of 64 bits
        (
            json!({"type": "integer", "minimum": 9223372036854775806_u64,
                   "maximum": 9223372036854775808_u64}),
            vec![
                ("9223372036854775806", true),
                ("9223372036854775807", true),
                ("9223372036854775805", false),
            ],
        ),
        (
            json!({"type": "integer", "maximum": -9223372036854775807_i64,
                   "exclusiveMaximum": -9.2e18}),
            vec![
                ("-9223372036854775808", true),
                ("-9223372036854775807", true),
                ("-9223372036854775806", false),
            ],
        ),
    ] {
        let e = compile(Some(&schema));
        if cases.iter().all(|(_, ok)| !ok) {
            assert!(e.is_err(), "{schema}: no integer in range");
            continue;
        }
        let g = grammar(schema.clone());
        for (text, ok) in cases {
            assert_eq!(accepts(&g, text), ok, "{schema}: {text}");
        }
    }
    // a digit is offered only while the range can still be reached
    let g = grammar(json!({"type": "integer", "minimum": 40, "maximum": 45}));
    let mut m = Matcher::new(g);
    assert!(!m.accept(b"5") && !m.accept(b"-"));
    assert!(m.accept(b"4"));
    assert!(!m.accept(b"6") && m.accept(b"2"));
    assert!(m.can_end() && !m.accept(b"0"));
}

#[test]
fn integer_ranges_outside_64_bits_are_refused() {
    for (text, words) in [
        (
            r#"{"type": "integer", "minimum": 9223372036854775808, "maximum": 9223372036854775809}"#,
            "outside 64 bits",
        ),
        (
            r#"{"type": "integer", "minimum": 9223372036854775808}"#,
            "outside 64 bits",
        ),
        (
            r#"{"type": "integer", "maximum": -1e20}"#,
            "outside 64 bits",
        ),
        (
            r#"{"type": "integer", "maximum": -9223372036854775809}"#,
            "outside 64 bits",
        ),
        (
            r#"{"type": "integer", "exclusiveMaximum": -9223372036854775808.0}"#,
            "outside 64 bits",
        ),
        (
            r#"{"type": "integer", "minimum": 9007199254740992.5, "maximum": 9007199254740992}"#,
            "no integer",
        ),
        (
            r#"{"type": "integer", "minimum": 1e-99999999999999999999,
                "exclusiveMaximum": 0e9223372036854775807}"#,
            "no integer",
        ),
    ] {
        let schema: Value = serde_json::from_str(text).unwrap();
        let e = compile(Some(&schema)).unwrap_err();
        assert!(e.message.contains(words), "{schema}: {e}");
    }
}

#[test]
fn integer_bounds_are_read_from_their_text_exactly() {
    for (text, ok, bad) in [
        (
            r#"{"type": "integer", "exclusiveMinimum": 9007199254740993.0,
                "maximum": 9007199254740995}"#,
            &["9007199254740994"][..],
            &["9007199254740993"][..],
        ),
        (
            r#"{"type": "integer", "minimum": 9007199254740992, "maximum": 9007199254740993.5}"#,
            &["9007199254740993"],
            &["9007199254740994"],
        ),
        (
            r#"{"type": "integer", "minimum": -2.5, "maximum": 25e-1}"#,
            &["-2", "2"],
            &["-3", "3"],
        ),
        (
            r#"{"type": "integer", "exclusiveMinimum": -1E1, "exclusiveMaximum": 0.1e2}"#,
            &["-9", "9"],
            &["-10", "10"],
        ),
        // zero however written; exponents of any length
        (
            r#"{"type": "integer", "minimum": 0e31, "maximum": -0.0E100}"#,
            &["0"],
            &["1", "-1"],
        ),
        (
            r#"{"type": "integer", "exclusiveMinimum": -1e-99999999999999999999, "maximum": 1}"#,
            &["0", "1"],
            &["-1"],
        ),
    ] {
        let schema: Value = serde_json::from_str(text).unwrap();
        let g = grammar(schema.clone());
        for t in ok {
            assert!(accepts(&g, t), "{schema}: {t}");
        }
        for t in bad {
            assert!(!accepts(&g, t), "{schema}: {t}");
        }
    }
}

#[test]
fn bounds_that_cannot_be_enforced_are_refused() {
    for (schema, words) in [
        (
            json!({"type": "number", "minimum": 1, "exclusiveMaximum": 1}),
            "no number",
        ),
        (json!({"minimum": 0}), "only with type integer or number"),
        (
            json!({"type": "integer", "minimum": 5, "maximum": 4}),
            "no integer",
        ),
        (
            json!({"type": "integer", "minimum": 4.2, "maximum": 4.8}),
            "no integer",
        ),
        (
            json!({"type": "integer", "minimum": "1"}),
            "must be a number",
        ),
        (
            json!({"type": "integer", "maximum": 3, "enum": [1, 2]}),
            "beside enum",
        ),
    ] {
        let e = compile(Some(&schema)).unwrap_err();
        assert!(e.message.contains(words), "{schema}: {e}");
    }
    for schema in [
        json!({"type": "number", "multipleOf": 0.1, "minimum": 0.05, "maximum": 0.08}),
        json!({"type": "number", "multipleOf": 1, "exclusiveMinimum": 2, "exclusiveMaximum": 3}),
        json!({"type": "number", "multipleOf": 10}),
        json!({"type": "number", "multipleOf": 0.25}),
        json!({"type": "number", "multipleOf": 1e-7}),
    ] {
        assert!(compile(Some(&schema)).is_err(), "{schema}");
    }
}

#[test]
fn masks_under_integer_bounds_equal_the_brute_force_and_every_document_is_in_range() {
    let schema = json!({
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 130},
                       "delta": {"type": "integer", "minimum": -1000, "exclusiveMaximum": -99},
                       "p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                       "t": {"type": "number", "minimum": -2.5, "maximum": 40.25},
                       "c": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.3,
                             "multipleOf": 0.01}},
        "required": ["age", "delta", "p", "t", "c"],
        "additionalProperties": false,
    });
    let g = grammar(schema);
    let docs = whole_documents(&g, 5, 30, 200);
    for text in &docs {
        let doc: Value = serde_json::from_slice(text).unwrap();
        let (age, delta) = (doc["age"].as_i64().unwrap(), doc["delta"].as_i64().unwrap());
        assert!(
            (18..=130).contains(&age) && (-1000..-99).contains(&delta),
            "{doc}"
        );
        let c = doc["c"].to_string(); // as written: at most two fraction digits
        let frac = c.split_once('.').map_or(0, |(_, f)| f.len());
        assert!(
            frac <= 2 && doc["c"].as_f64().is_some_and(|c| c > 0.0 && c <= 0.3),
            "{doc}"
        );
    }
    assert!(docs.len() >= 10, "only {} whole documents", docs.len());
}

#[test]
fn bounded_numbers_take_plain_decimals_within_their_bounds() {
    for (schema, cases) in [
        (
            json!({"type": "number", "minimum": 0, "maximum": 1}),
            vec![
                ("0", true),
                ("1", true),
                ("0.5", true),
                ("1.0", true),
                ("1.01", false),
                ("-0.1", false),
                ("2", false),
                ("1e-1", false),
                ("00.5", false),
                ("0.", false),
            ],
        ),
        (
            json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5}),
            vec![
                ("0.25", true),
                ("0.4999", true),
                ("0", false),
                ("0.0", false),
                ("0.5", false),
            ],
        ),
        (
            json!({"type": "number", "minimum": -10.5, "maximum": -3}),
            vec![
                ("-10.5", true),
                ("-3", true),
                ("-7.25", true),
                ("-10.51", false),
                ("-2.9", false),
                ("3", false),
            ],
        ),
        (
            json!({"type": "number", "minimum": 100}),
            vec![("100", true), ("12345.678", true), ("99.99", false)],
        ),
        // multipleOf a power of ten: at most that many fraction digits, bounds on its grid
        (
            json!({"type": "number", "multipleOf": 0.01, "exclusiveMinimum": 0}),
            vec![
                ("0.01", true),
                ("12.5", true),
                ("3", true),
                ("0.10", true),
                ("0", false),
                ("0.00", false),
                ("0.001", false),
                ("1.234", false),
                ("-1", false),
            ],
        ),
        (
            json!({"type": "number", "multipleOf": 1, "minimum": -2.5, "maximum": 2.5}),
            vec![
                ("-2", true),
                ("2", true),
                ("0", true),
                ("2.0", false),
                ("3", false),
            ],
        ),
        (
            json!({"type": "number", "multipleOf": 0.1}),
            vec![("-0.5", true), ("100.2", true), ("1.25", false)],
        ),
    ] {
        let g = grammar(schema.clone());
        for (text, ok) in cases {
            assert_eq!(accepts(&g, text), ok, "{schema}: {text}");
        }
    }
    // under (0, ...) with two fraction digits "0.0" has only "1"-"9" left
    let g = grammar(json!({"type": "number", "multipleOf": 0.01, "exclusiveMinimum": 0}));
    let mut m = Matcher::new(g);
    assert!(m.accept(b"0.0") && !m.accept(b"0") && m.accept(b"7") && m.can_end());
    // after "0." under (0, 0.5): zeros only while digits remain for a non-zero one
    let g = grammar(json!({"type": "number", "exclusiveMinimum": 0, "maximum": 0.5}));
    let mut m = Matcher::new(g);
    assert!(m.accept(b"0.") && !m.accept(b"6") && m.accept(b"0000000000000"));
    assert!(!m.accept(b"0") && m.accept(b"7"));
    assert!(m.can_end());
}
