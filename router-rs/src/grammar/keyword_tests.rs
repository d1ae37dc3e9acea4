//! The keywords that bound a document's parts (member and item counts, multiples, distinct
//! items) and the schemas the grammar refuses, with where and why.

use serde_json::{json, Value};

use super::tests::{accepts, grammar, whole_documents};
use super::*;

#[test]
fn unsupported_schemas_are_refused_with_their_place() {
    for (schema, path, words) in [
        (
            json!({"type": "string", "pattern": "a(", "maxLength": 3}),
            "#/pattern",
            "not valid",
        ),
        (
            json!({"properties": {"q": {"pattern": "^\"$"}}}),
            "#/properties/q/pattern",
            "without escaped characters",
        ),
        (json!({"pattern": "a", "enum": ["a"]}), "#", "beside enum"),
        (json!({"pattern": 3}), "#/pattern", "must be a string"),
        (
            json!({"properties": {"n": {"type": "number", "multipleOf": 0.5}}}),
            "#/properties/n",
            "power of ten up to 1",
        ),
        (
            json!({"type": "array", "uniqueItems": true}),
            "#",
            "arrays of enum, const or boolean",
        ),
        (
            json!({"type": "array", "items": {"enum": [1, 2]}, "uniqueItems": true,
                   "minItems": 3}),
            "#",
            "more than the distinct items",
        ),
        (
            json!({"type": "object", "properties": {}, "required": ["x"]}),
            "#",
            "required property",
        ),
        (json!({"$ref": "#"}), "#", "leads back"),
        (
            json!({"$ref": "https://example.com/s.json"}),
            "#",
            "local references",
        ),
        (json!({"type": "strings"}), "#", "unknown type"),
        (json!(false), "#", "no value"),
        (
            json!({"allOf": [{"type": "string"}, {"maxLength": 2}]}),
            "#",
            "exactly one",
        ),
        (
            json!({"type": "string", "minLength": 3, "maxLength": 2}),
            "#",
            "above its maximum",
        ),
        (
            json!({"type": "object", "properties": {"a": {}}, "additionalProperties": false,
                   "minProperties": 2}),
            "#",
            "more than the properties allowed",
        ),
        (
            json!({"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a", "b"],
                   "maxProperties": 1}),
            "#",
            "less than the required",
        ),
        (
            json!({"type": "object", "minProperties": 3, "maxProperties": 2}),
            "#",
            "above its maximum",
        ),
        (
            json!({"type": "integer", "multipleOf": 1.5}),
            "#",
            "positive integer",
        ),
        (
            json!({"type": "integer", "minimum": 1, "maximum": 4, "multipleOf": 5}),
            "#",
            "no integer lies",
        ),
        (json!({"maxLength": 2, "enum": ["a"]}), "#", "beside enum"),
        (json!({"required": ["a"]}), "#", "required property"),
        (
            json!({"type": "integer", "const": "x"}),
            "#",
            "of the type the schema names",
        ),
    ] {
        let e = compile(Some(&schema)).unwrap_err();
        assert_eq!(e.path, path, "{schema}");
        assert!(e.message.contains(words), "{schema}: {e}");
    }
    // annotations are fine
    let annotated = json!({"title": "T", "description": "d", "type": "string", "format": "date"});
    if let Err(e) = compile(Some(&annotated)) {
        panic!("{e}");
    }
}

#[test]
fn enum_values_keep_to_the_type_and_untyped_keywords_name_their_type() {
    for (schema, ok, bad) in [
        (
            json!({"type": "string", "enum": ["a", 1, null]}),
            &["\"a\""][..],
            &["1", "null"][..],
        ),
        (
            json!({"type": ["integer", "null"], "enum": [2, 2.5, "2", null]}),
            &["2", "null"],
            &["2.5", "\"2\""],
        ),
        // array and object keywords without a type: an array, an object
        (json!({"minItems": 2}), &["[1, 2]"], &["[1]", "\"ab\"", "3"]),
        (json!({"maxItems": 1}), &["[]", "[true]"], &["[1, 2]"]),
        (
            json!({"maxProperties": 1}),
            &["{}", r#"{"x": 1}"#],
            &[r#"{"x": 1, "y": 2}"#],
        ),
    ] {
        let g = compile(Some(&schema)).unwrap_or_else(|e| panic!("{schema}: {e}"));
        for text in ok {
            assert!(accepts(&g, text), "{schema}: {text}");
        }
        for text in bad {
            assert!(!accepts(&g, text), "{schema}: {text}");
        }
    }
}

#[test]
fn member_counts_are_bounded_and_never_dead_end() {
    let g = grammar(json!({"type": "object", "maxProperties": 2,
        "properties": {"x": {"type": "null"}, "y": {"type": "null"}}, "required": ["x"],
        "additionalProperties": {"type": "integer"}}));
    assert!(accepts(&g, r#"{"x": null}"#));
    assert!(accepts(&g, r#"{"k": 1, "x": null}"#));
    assert!(accepts(&g, r#"{"y": null, "x": null}"#));
    assert!(
        !accepts(&g, r#"{"k": 1, "x": null, "y": null}"#),
        "three members"
    );
    // after one member other than x, only x may come: neither y nor another name
    let mut m = Matcher::new(g.clone());
    assert!(m.accept(br#"{"k": 1, ""#));
    assert!(!m.clone().accept(b"y\"") && !m.clone().accept(b"z\""));
    assert!(m.accept(b"x\": null}"));
    let g = grammar(json!({"type": "object", "minProperties": 2}));
    assert!(!accepts(&g, r#"{"a": 1}"#) && accepts(&g, r#"{"a": 1, "b": []}"#));
}

#[test]
fn multiples_are_taken_and_others_not() {
    let g = grammar(json!({"type": "integer", "multipleOf": 4}));
    for (text, ok) in [
        ("0", true),
        ("8", true),
        ("-12", true),
        ("6", false),
        ("-2", false),
    ] {
        assert_eq!(accepts(&g, text), ok, "{text}");
    }
    let g = grammar(json!({"type": "integer", "minimum": 5, "maximum": 12, "multipleOf": 5}));
    for (text, ok) in [
        ("5", true),
        ("10", true),
        ("0", false),
        ("15", false),
        ("1", false),
    ] {
        assert_eq!(accepts(&g, text), ok, "{text}");
    }
    // "1" can still become 10: the digit is offered; "2" cannot become a multiple in 5..=12
    let mut m = Matcher::new(g);
    assert!(m.clone().accept(b"1") && !m.clone().accept(b"2"));
    assert!(m.accept(b"1") && !m.can_end());
    // random arrays of them: masks equal the brute force, no dead end, every item a multiple
    let schema = json!({"type": "array", "items": {"type": "integer", "multipleOf": 7,
                        "minimum": -30, "maximum": 100}, "maxItems": 4});
    let docs = whole_documents(&grammar(schema), 5, 20, 400);
    assert!(docs.len() >= 5);
    for doc in docs {
        let items: Vec<i64> = serde_json::from_slice(&doc).unwrap();
        assert!(
            items
                .iter()
                .all(|&x| x % 7 == 0 && (-30..=100).contains(&x)),
            "{items:?}"
        );
    }
}

#[test]
fn unique_items_of_a_choice_are_given_once() {
    let schema = json!({"type": "array", "items": {"enum": ["a", "ab", 1, 12, true]},
                        "uniqueItems": true, "minItems": 1});
    let g = grammar(schema.clone());
    for (text, ok) in [
        (r#"["a", "ab", 12, 1, true]"#, true),
        (r#"["ab"]"#, true),
        (r#"["a", "a"]"#, false),
        (r#"[12, 1, 12]"#, false),
        ("[]", false),
    ] {
        assert_eq!(accepts(&g, text), ok, "{text}");
    }
    // masks equal the brute force, no dead end, and no item twice in any whole array
    let docs = whole_documents(&g, 9, 30, 300);
    assert!(docs.len() >= 5);
    for doc in docs {
        let items: Vec<Value> = serde_json::from_slice(&doc).unwrap();
        let distinct: std::collections::HashSet<String> =
            items.iter().map(Value::to_string).collect();
        assert_eq!(distinct.len(), items.len(), "{items:?}");
    }
    let free = grammar(json!({"type": "array", "items": {"type": "string"}, "uniqueItems": false}));
    assert!(accepts(&free, r#"["x", "x"]"#));
    let bools =
        grammar(json!({"type": "array", "items": {"type": "boolean"}, "uniqueItems": true}));
    assert!(accepts(&bools, "[true, false]") && !accepts(&bools, "[true, false, true]"));
}
