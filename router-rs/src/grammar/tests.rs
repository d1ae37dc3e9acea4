use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::matcher::{MAX_DEPTH, MAX_NUMBER_BYTES, MAX_WHITESPACE_RUN};
use super::*;

pub(super) fn grammar(schema: Value) -> Arc<Grammar> {
    compile(Some(&schema)).expect("the schema compiles")
}

pub(super) fn accepts(g: &Arc<Grammar>, text: &str) -> bool {
    let mut m = Matcher::new(g.clone());
    text.bytes().all(|b| m.accept(&[b])) && m.can_end()
}

/// A test vocabulary: every single byte, some JSON pieces, some words and partial characters.
pub(super) fn test_vocab() -> Vec<Option<Vec<u8>>> {
    let mut v: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    for piece in [
        "{\"", "\":", "\": ", "\",", "\"}", "}}", "],", "\n  ", "  ", "true", "false", "null",
        "na", "name", "age", "\"name\"", "tags", "12", "3.5", "-0", "e+", "hello", " world", "é",
        "日本", "\\n", "\\u00", "\\\"", "\":\"", "[\"", "\"]", "[]", "{}", ",\"", "ok\"", "\"a",
        "red",
    ] {
        v.push(Some(piece.as_bytes().to_vec()));
    }
    v.push(Some(vec![0xE6, 0x97])); // the first two bytes of 日
    v.push(None); // an added token: never allowed
    v
}

pub(super) const END: u32 = 1000;

pub(super) fn vocab() -> Arc<Vocab> {
    Arc::new(Vocab::new(test_vocab(), END as usize + 1))
}

pub(super) fn allowed(c: &Constraint) -> Vec<u32> {
    let mut words = vec![0u32; c.vocab().mask_words()];
    c.fill_mask(&mut words);
    (0..c.vocab().size() as u32)
        .filter(|&id| words[id as usize / 32] & (1 << (id % 32)) != 0)
        .collect()
}

/// What the masks must equal: the tokens after whose bytes some thread is alive.
pub(super) fn brute_force(m: &Matcher, v: &Vocab) -> Vec<u32> {
    let mut out: Vec<u32> = (0..v.size() as u32)
        .filter(|&id| {
            v.bytes(id)
                .is_some_and(|b| !b.is_empty() && !m.after(&m.threads, b).is_empty())
        })
        .collect();
    if m.can_end() {
        out.push(END);
    }
    out
}

/// Random walks through `g` (`walks` of them, at most `max_bytes` each, tokens picked at random
/// among the allowed ones, the end preferred half the time once allowed): every mask equals the
/// brute force and none is empty. Returns the walks that ended in a whole document.
pub(super) fn whole_documents(
    g: &Arc<Grammar>,
    seed: u64,
    walks: usize,
    max_bytes: usize,
) -> Vec<Vec<u8>> {
    whole_documents_in(g, &vocab(), seed, walks, max_bytes)
}

/// `whole_documents` over the vocabulary `v`.
pub(super) fn whole_documents_in(
    g: &Arc<Grammar>,
    v: &Arc<Vocab>,
    seed: u64,
    walks: usize,
    max_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done = Vec::new();
    for _ in 0..walks {
        let mut c = Constraint::new(g.clone(), v.clone(), vec![END], None);
        let mut text = Vec::new();
        while !c.is_done() && text.len() < max_bytes {
            let mask = allowed(&c);
            assert_eq!(mask, brute_force(&c.matcher, v), "after {text:?}");
            assert!(
                !mask.is_empty(),
                "a dead end after {:?}",
                String::from_utf8_lossy(&text)
            );
            let id = if mask.contains(&END) && rng.random_bool(0.5) {
                END
            } else {
                mask[rng.random_range(0..mask.len())]
            };
            assert!(c.accept(id));
            if id != END {
                text.extend_from_slice(v.bytes(id).unwrap());
            }
        }
        if c.is_done() {
            done.push(text);
        }
    }
    done
}

/// Checks `doc` against the subset of JSON Schema the grammar enforces.
pub(super) fn conforms(doc: &Value, schema: &Value, root: &Value) -> bool {
    let Some(map) = schema.as_object() else {
        return schema == &Value::Bool(true);
    };
    if let Some(r) = map.get("$ref").and_then(Value::as_str) {
        return conforms(doc, root.pointer(&r[1..]).unwrap(), root);
    }
    if let Some(alts) = map.get("anyOf").or_else(|| map.get("oneOf")) {
        return alts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| conforms(doc, a, root));
    }
    if let Some(values) = map.get("enum") {
        return values.as_array().unwrap().contains(doc);
    }
    if let Some(value) = map.get("const") {
        return value == doc;
    }
    let types: Vec<&str> = match map.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(ts)) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
        _ => return true,
    };
    let count = |k: &str| map.get(k).and_then(Value::as_u64);
    types.iter().any(|t| match (*t, doc) {
        ("object", Value::Object(o)) => {
            let props = map.get("properties").and_then(Value::as_object);
            let required = map.get("required").and_then(Value::as_array);
            let open = match map.get("additionalProperties") {
                None => props.is_none(),
                Some(Value::Bool(b)) => *b,
                Some(_) => true,
            };
            required.is_none_or(|r| r.iter().all(|k| o.contains_key(k.as_str().unwrap())))
                && count("minProperties").is_none_or(|m| o.len() as u64 >= m)
                && count("maxProperties").is_none_or(|m| o.len() as u64 <= m)
                && o.iter().all(|(k, v)| match props.and_then(|p| p.get(k)) {
                    Some(s) => conforms(v, s, root),
                    None => {
                        open && map
                            .get("additionalProperties")
                            .filter(|a| a.is_object())
                            .is_none_or(|a| conforms(v, a, root))
                    }
                })
        }
        ("array", Value::Array(a)) => {
            count("minItems").is_none_or(|m| a.len() as u64 >= m)
                && count("maxItems").is_none_or(|m| a.len() as u64 <= m)
                && map
                    .get("items")
                    .is_none_or(|s| a.iter().all(|x| conforms(x, s, root)))
        }
        ("string", Value::String(s)) => {
            let n = s.chars().count() as u64;
            let pattern = map.get("pattern").and_then(Value::as_str);
            count("minLength").is_none_or(|m| n >= m)
                && count("maxLength").is_none_or(|m| n <= m)
                && pattern.is_none_or(|p| regex_automata::meta::Regex::new(p).unwrap().is_match(s))
        }
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) | ("null", Value::Null) => true,
        _ => false,
    })
}

pub(super) fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}
        }, "required": ["name", "age"]}),
        json!({"type": "object", "properties": {
            "color": {"enum": ["red", "green", 7, null]},
            "ok": {"type": "boolean"},
            "score": {"type": ["number", "null"]}
        }, "required": ["color", "ok", "score"], "additionalProperties": false}),
        json!({"$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"},
            "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}
        }, "required": ["v", "next"]}}, "$ref": "#/$defs/node"}),
        json!({"type": "object", "properties": {"a": {"const": "x\"y"}},
               "additionalProperties": {"type": "number"}}),
        json!({"type": "array", "items": {"type": "string", "minLength": 2}, "maxItems": 2}),
        json!({"type": "object"}),
        json!({"enum": ["ab", "a", "abc"]}),
        json!({"type": "number"}),
        json!({"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "boolean"}, "c": {"type": "null"}
        }, "required": ["c"], "minProperties": 2, "maxProperties": 2}),
        json!({"type": "object", "maxProperties": 2, "properties": {"x": {"type": "null"}},
               "required": ["x"], "additionalProperties": {"type": "integer"}}),
        json!({"type": "object", "minProperties": 1, "additionalProperties": {"type": "integer"}}),
    ]
}

#[test]
fn documents_of_a_schema_are_taken_and_others_are_not() {
    let g = grammar(schemas()[0].clone());
    for ok in [
        r#"{"name": "Al", "age": 3}"#,
        r#"{"age":-12,"name":"","tags":["x"]}"#,
        "{\n  \"name\": \"\\u00e9t\\n\",\n  \"age\": 0\n}",
        r#"{"name":"日本語","age":7,"tags":["a","b","c"]}"#,
    ] {
        assert!(accepts(&g, ok), "{ok}");
    }
    for bad in [
        r#"{"name": "Al"}"#,                        // age required
        r#"{"name": "Al", "age": 3.5}"#,            // integer
        r#"{"name": "Alberta", "age": 3}"#,         // maxLength 6
        r#"{"name": "Al", "age": 3, "x": 1}"#,      // no other members
        r#"{"name": "Al", "age": 03}"#,             // leading zero
        r#"{"name": "Al", "age": 3, "tags": []}"#,  // minItems 1
        r#"{"name": "Al", "name": "B", "age": 3}"#, // twice
        r#"{"name": "A\l", "age": 3}"#,             // bad escape
        r#"{"name": "Al", "age": 3} "#,             // nothing after the document
        r#"{"name": "Al", "age": 3,}"#,             // trailing comma
    ] {
        assert!(!accepts(&g, bad), "{bad}");
    }
    let choice = grammar(schemas()[6].clone());
    for (text, ok) in [
        ("\"a\"", true),
        ("\"ab\"", true),
        ("\"abc\"", true),
        ("\"b\"", false),
    ] {
        assert_eq!(accepts(&choice, text), ok, "{text}");
    }
    let open = compile(None).unwrap();
    assert!(accepts(
        &open,
        r#"{"k": [1, {"z": null}, "s", -2.5e+3, true]}"#
    ));
    assert!(!accepts(&open, "[1]"), "json_object takes objects only");
    assert!(!accepts(&open, "{\"a\": 1}\n"));
}

#[test]
fn member_names_are_read_in_their_one_json_spelling() {
    // `"\u0061"` is the name `"a"`: read as another member it would give `a` twice, the second
    // time with the other members' type
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}, "q\"t": {}},
                        "additionalProperties": {"type": "string"}});
    let g = grammar(schema);
    for ok in [
        r#"{"a": 1, "b": "x"}"#,
        r#"{"q\"t": 2}"#,
        r#"{"é": "x", "b\n\u001f\u000b": "y"}"#,
    ] {
        assert!(accepts(&g, ok), "{ok}");
    }
    for bad in [
        r#"{"a": 1, "\u0061": "x"}"#,
        r#"{"\u0061": "x"}"#,
        r#"{"q\u0022t": "x"}"#,
        r#"{"\/": "x"}"#,
        r#"{"b\u00e9": "y"}"#,
        r#"{"b\u001F": "y"}"#,
        r#"{"b\u000a": "y"}"#,
        r#"{"b\u0009": "y"}"#,
    ] {
        assert!(!accepts(&g, bad), "{bad}");
    }
    // values keep every spelling
    assert!(accepts(&g, r#"{"b": "\u0061\/\u00E9"}"#));
}

#[test]
fn whitespace_runs_and_numbers_are_bounded() {
    let g = compile(None).unwrap();
    let spaces = |n: usize| format!("{{{}}}", " ".repeat(n));
    assert!(accepts(&g, &spaces(MAX_WHITESPACE_RUN as usize)));
    assert!(!accepts(&g, &spaces(MAX_WHITESPACE_RUN as usize + 1)));
    // compact JSON: no whitespace between tokens, inside strings as ever
    let schema = json!({"type": "object", "properties": {"a": {"type": "array"}}});
    let compact = compile_compact(Some(&schema)).unwrap();
    assert!(accepts(&compact, r#"{"a":[1,"x y"]}"#));
    for spaced in [r#"{"a": [1]}"#, r#" {"a":[]}"#, r#"{"a":[1 ,2]}"#, "{\n}"] {
        assert!(!accepts(&compact, spaced), "{spaced}");
    }
    let number = |n: usize| format!("{{\"n\": {}}}", "1".repeat(n));
    assert!(accepts(&g, &number(MAX_NUMBER_BYTES as usize)));
    assert!(!accepts(&g, &number(MAX_NUMBER_BYTES as usize + 1)));
    // the object, then arrays inside it
    let nested = |n: usize| format!("{{\"a\": {}{}}}", "[".repeat(n), "]".repeat(n));
    assert!(accepts(&g, &nested(MAX_DEPTH - 1)));
    assert!(!accepts(&g, &nested(MAX_DEPTH)));
}

#[test]
fn masks_equal_the_brute_force_on_every_step_of_random_documents() {
    for (i, schema) in schemas().into_iter().enumerate() {
        let g = grammar(schema.clone());
        // walks cut off by the length limit are prefixes, not documents, and left out
        let docs = whole_documents(&g, 7 + i as u64, 20, 1200);
        for text in &docs {
            let doc: Value = serde_json::from_slice(text)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(text)));
            assert!(conforms(&doc, &schema, &schema), "{schema}: {doc}");
        }
        assert!(
            docs.len() >= 5,
            "{schema}: only {} whole documents",
            docs.len()
        );
    }
}

#[test]
fn a_constraint_waits_for_its_start_token_and_refuses_what_the_grammar_does_not_allow() {
    let v = vocab();
    let think_end = 999;
    let mut c = Constraint::new(
        compile(None).unwrap(),
        v.clone(),
        vec![END],
        Some(think_end),
    );
    assert!(!c.active());
    assert!(c.accept(b'x' as u32), "anything before the start token");
    assert!(c.accept(think_end));
    assert!(c.active());
    assert!(!c.accept(b'x' as u32));
    assert!(!c.accept(END), "an end before the document is whole");
    for b in b"{\"a\":1}" {
        assert!(c.accept(*b as u32));
    }
    assert!(c.is_done(), "a closed object cannot be extended");
    assert!(!allowed(&c).iter().any(|&id| id != END));
    let added = test_vocab().len() as u32 - 1; // the added token of test_vocab (no bytes)
    let fresh = Constraint::new(compile(None).unwrap(), v.clone(), vec![END], None);
    assert!(!allowed(&fresh).contains(&added));
}

#[test]
fn a_choice_takes_exactly_one_of_its_strings_and_ends_there() {
    let v = vocab();
    let choices = ["yes".to_string(), "no".into(), "nope".into(), "日本".into()];
    let g = one_of(&choices);
    for (text, ok) in [
        ("yes", true),
        ("no", true),
        ("nope", true),
        ("日本", true),
        ("\"yes\"", false),
        (" yes", false),
        ("yess", false),
        ("nop", false),
        ("", false),
    ] {
        assert_eq!(accepts(&g, text), ok, "{text:?}");
    }
    let mut c = Constraint::new(g.clone(), v.clone(), vec![END], None);
    for b in b"yes" {
        assert!(c.accept(*b as u32));
    }
    assert!(c.is_done(), "nothing extends yes");
    let mut c = Constraint::new(g, v, vec![END], None);
    assert!(c.accept(b'n' as u32) && c.accept(b'o' as u32));
    assert!(!c.is_done(), "no may go on to nope");
    assert!(allowed(&c).contains(&END) && allowed(&c).contains(&(b'p' as u32)));
}

#[test]
fn a_top_level_number_ends_only_at_an_end_token() {
    let v = vocab();
    let mut c = Constraint::new(grammar(json!({"type": "number"})), v, vec![END], None);
    for b in b"12" {
        assert!(c.accept(*b as u32));
    }
    assert!(!c.is_done(), "more digits may follow");
    assert!(allowed(&c).contains(&END));
    assert!(c.accept(END));
    assert!(c.is_done());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any split of a conforming document into pieces is taken piece by piece.
    #[test]
    fn documents_are_taken_in_any_split(
        name in "[a-z\u{e9}\u{65e5}\"\\\\]{0,6}",
        age in -1000i64..1000,
        tags in proptest::collection::vec("[a-z ]{0,4}", 1..4),
        pretty in any::<bool>(),
        cuts in proptest::collection::vec(0usize..200, 0..12),
    ) {
        let g = grammar(schemas()[0].clone());
        let doc = json!({"name": name, "age": age, "tags": tags});
        let text = if pretty { serde_json::to_vec_pretty(&doc) } else { serde_json::to_vec(&doc) }.unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
        cuts.push(0);
        cuts.push(text.len());
        cuts.sort();
        let mut m = Matcher::new(g);
        for w in cuts.windows(2) {
            prop_assert!(m.accept(&text[w[0]..w[1]]));
        }
        prop_assert!(m.can_end());
    }
}

#[test]
fn a_regex_grammar_takes_whole_matches_and_its_masks_equal_the_brute_force() {
    let pattern = r"[a-z]{2,4}@(x|yz)\.com( [0-9]+)?";
    let g = regex(pattern).unwrap();
    for (text, ok) in [
        ("ab@x.com", true),
        ("abcd@yz.com 42", true),
        ("a@x.com", false),
        ("ab@x.co", false),
        ("ab@x.comm", false),
        ("ab@x.com ", false),
    ] {
        assert_eq!(accepts(&g, text), ok, "{text:?}");
    }
    let whole = regex_automata::meta::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    let docs = whole_documents(&g, 3, 30, 60);
    for text in &docs {
        assert!(whole.is_match(text), "{:?}", String::from_utf8_lossy(text));
    }
    assert!(docs.len() > 10);
    for bad in ["(", "a{2,1}", "[z-a]"] {
        assert!(regex(bad).is_err(), "{bad}");
    }
}

#[test]
fn tuples_take_their_items_in_order() {
    let modern = json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                        "items": false});
    let draft7 = json!({"items": [{"type": "string"}, {"type": "integer"}],
                        "additionalItems": {"type": "boolean"}, "minItems": 1});
    let modern = grammar(modern);
    for (text, ok) in [
        (r#"["a", 1]"#, true),
        (r#"["a"]"#, true),
        ("[]", true),
        (r#"[1, "a"]"#, false),
        (r#"["a", 1, 2]"#, false),
    ] {
        assert_eq!(accepts(&modern, text), ok, "{text}");
    }
    let draft7 = grammar(draft7);
    for (text, ok) in [
        (r#"["a", 1, true, false]"#, true),
        (r#"["a"]"#, true),
        ("[]", false),
        (r#"["a", 1, 2]"#, false),
    ] {
        assert_eq!(accepts(&draft7, text), ok, "{text}");
    }
}
