//! Tool calls as a grammar (tools.rs): what a forced call may be, the masks on random calls, and
//! every call the grammar lets through read back by the tool parser as valid arguments.

use std::sync::Arc;

use serde_json::{json, Value};

use super::tests::{conforms, grammar, test_vocab, whole_documents_in, END};
use super::*;
use crate::parsers::Glm47ToolParser;

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"enum": ["c", "f"]},
                "hourly": {"type": "boolean"},
            },
            "required": ["city"],
        }}}),
        json!({"type": "function", "function": {"name": "get_time", "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}, "at": {"$ref": "#/$defs/at"},
                           "day": {"type": "string", "format": "date"},
                           "meta": {"type": "object", "properties": {
                               "note": {"type": "string"},
                               "id": {"type": "string", "pattern": "^x"}}}},
            "required": ["zone", "at"],
            "$defs": {"at": {"type": "object", "properties": {"h": {"type": "integer"}},
                             "required": ["h"]}},
        }}}),
        json!({"name": "note", "parameters": {}}),
        json!({"type": "function", "function": {"name": "set_code", "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2}$"},
                "tag": {"type": "string", "pattern": "ab"},
                "nick": {"type": "string", "minLength": 2, "maxLength": 3},
            },
            "required": ["code"],
        }}}),
        json!({"name": "odd_patterns", "parameters": {"properties": {
            "bad": {"type": "string", "pattern": "(?=x)"},
            "angle": {"type": "string", "pattern": "a<b"},
        }}}),
    ]
}

fn forced(function: Option<&str>, parallel: bool) -> Arc<Grammar> {
    let spec = ToolCallSpec {
        tools: tools(),
        function: function.map(str::to_string),
        parallel,
        open_id: None,
    };
    tool_calls(&spec).expect("the tools compile")
}

fn accepts(g: &Arc<Grammar>, text: &str) -> bool {
    super::tests::accepts(g, text)
}

/// The test vocabulary with the tool tags (as a tokenizer's added tokens) and pieces of calls.
fn tool_vocab() -> Arc<Vocab> {
    let mut v = test_vocab();
    for piece in TOOL_TAGS.iter().copied().chain([
        "get_", "weather", "time", "city", "zone", "days", "unit", "Rome", "</", "<a", "set_code",
        "code", "tag", "nick", "IT-", "07", "ab",
    ]) {
        v.push(Some(piece.as_bytes().to_vec()));
    }
    Arc::new(Vocab::for_tool_calls(v, END as usize + 1))
}

#[test]
fn a_required_call_is_one_declared_function_with_its_parameters() {
    let g = forced(None, false);
    for ok in [
        "get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>",
        "get_weather<arg_key>unit</arg_key><arg_value>f</arg_value><arg_key>city</arg_key>\
         <arg_value>a < b, </arg_ \"x\"\n</arg_value><arg_key>days</arg_key><arg_value>7\
         </arg_value><arg_key>hourly</arg_key><arg_value>false</arg_value></tool_call>",
        "get_time<arg_key>at</arg_key><arg_value>{\"h\": 3}</arg_value><arg_key>zone</arg_key>\
         <arg_value></arg_value></tool_call>",
        "note</tool_call>",
        "note<arg_key>any key</arg_key><arg_value>any value</arg_value></tool_call>",
    ] {
        assert!(accepts(&g, ok), "{ok}");
    }
    for bad in [
        "get_stock</tool_call>",   // not declared
        "get_weather</tool_call>", // city is required
        "get_weather<arg_key>country</arg_key><arg_value>IT</arg_value></tool_call>",
        "get_weather<arg_key>city</arg_key><arg_value>a</arg_value><arg_key>city</arg_key>\
         <arg_value>b</arg_value></tool_call>", // twice
        "get_weather<arg_key>city</arg_key><arg_value>a</arg_value><arg_key>days</arg_key>\
         <arg_value>8</arg_value></tool_call>", // above the maximum
        "get_weather<arg_key>city</arg_key><arg_value>a</arg_value><arg_key>unit</arg_key>\
         <arg_value>k</arg_value></tool_call>", // not in the enum
        "get_weather<arg_key>city</arg_key><arg_value>a</arg_value><arg_key>hourly</arg_key>\
         <arg_value>yes</arg_value></tool_call>",
        "get_weather\n<arg_key>city</arg_key><arg_value>a</arg_value></tool_call>",
        "get_time<arg_key>zone</arg_key><arg_value>CET</arg_value><arg_key>at</arg_key>\
         <arg_value>{}</arg_value></tool_call>", // h is required
        "get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>\
         <tool_call>note</tool_call>", // one call only
    ] {
        assert!(!accepts(&g, bad), "{bad}");
    }
    let mut m = Matcher::new(g.clone());
    assert!(m.accept(b"note</tool_call>"));
    assert!(m.is_terminated(), "nothing may follow the only call");
}

#[test]
fn a_string_parameter_with_a_format_takes_texts_of_it() {
    let g = forced(Some("get_time"), false);
    let call = |day: &str| {
        format!(
            "<arg_key>zone</arg_key><arg_value>CET</arg_value><arg_key>at</arg_key>\
             <arg_value>{{\"h\":1}}</arg_value><arg_key>day</arg_key><arg_value>{day}\
             </arg_value></tool_call>"
        )
    };
    assert!(accepts(&g, &call("2026-12-04")));
    for bad in ["tomorrow", "2026-13-01", "2026-12-04T10:00:00Z", ""] {
        assert!(!accepts(&g, &call(bad)), "{bad}");
    }
}

#[test]
fn a_referenced_string_schema_takes_raw_text_as_the_parser_reads_it() {
    // As `pydantic_function_tool` writes a string enum and a pattern-typed alias.
    let spec = ToolCallSpec {
        tools: vec![json!({"name": "ship", "parameters": {
            "$defs": {
                "Code": {"enum": ["100", "200"], "type": "string"},
                "Ref": {"type": "string", "pattern": "^[A-Z]{2}$"},
            },
            "properties": {
                "code": {"$ref": "#/$defs/Code"},
                "maybe": {"anyOf": [{"$ref": "#/$defs/Ref"}, {"type": "null"}]},
            },
            "required": ["code"],
        }})],
        function: Some("ship".into()),
        parallel: false,
        open_id: None,
    };
    let g = tool_calls(&spec).expect("the tools compile");
    let call =
        |code: &str| format!("<arg_key>code</arg_key><arg_value>{code}</arg_value></tool_call>");
    assert!(accepts(&g, &call("100")));
    for bad in ["\"100\"", "300", "100 "] {
        assert!(!accepts(&g, &call(bad)), "{bad}");
    }
    let maybe = |v: &str| {
        format!("<arg_key>code</arg_key><arg_value>200</arg_value><arg_key>maybe</arg_key><arg_value>{v}</arg_value></tool_call>")
    };
    assert!(accepts(&g, &maybe("IT")));
    let text = maybe("IT");
    let parsed = Glm47ToolParser::parse(&format!("<tool_call>ship{text}"), &spec.tools);
    let arguments: Value = serde_json::from_str(&parsed.tool_calls[0].arguments).unwrap();
    assert_eq!(
        arguments,
        json!({"code": "200", "maybe": "IT"}),
        "{parsed:?}"
    );
}

#[test]
fn a_union_with_strings_takes_the_strings_its_string_parts_allow() {
    // As pydantic writes `Optional[Literal[...]]`, `Optional[str]` with a bound, and others.
    let spec = ToolCallSpec {
        tools: vec![json!({"name": "order", "parameters": {
            "$defs": {
                "Size": {"enum": ["S", "M", "L"], "type": "string"},
                "Loop": {"anyOf": [{"const": "a"}, {"const": "b"},
                                   {"$ref": "#/$defs/Loop"}, {"$ref": "#/$defs/Loop"},
                                   {"$ref": "#/$defs/Loop"}, {"$ref": "#/$defs/Loop"},
                                   {"$ref": "#/$defs/Loop"}, {"$ref": "#/$defs/Loop"}]},
            },
            "properties": {
                "size": {"anyOf": [{"enum": ["S", "M", "L"], "type": "string"}, {"type": "null"}]},
                "ref": {"anyOf": [{"$ref": "#/$defs/Size"}, {"type": "null"}]},
                "nick": {"type": ["string", "null"], "maxLength": 2},
                "tint": {"enum": ["red", null]},
                "two": {"oneOf": [{"const": "a"}, {"anyOf": [{"const": "b"}, {"type": "null"}]}]},
                "mixed": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                // branches that refer back to their union, eight times over
                "loop": {"$ref": "#/$defs/Loop"},
                "typed": {"type": "string", "enum": ["x", 1]},
            },
        }})],
        function: Some("order".into()),
        parallel: false,
        open_id: None,
    };
    let g = tool_calls(&spec).expect("the tools compile");
    let call = |key: &str, value: &str| {
        format!("<arg_key>{key}</arg_key><arg_value>{value}</arg_value></tool_call>")
    };
    for (key, ok, bad) in [
        ("size", &["S", "L"][..], &["Paris", "null", "XL", ""][..]),
        ("ref", &["M"], &["m", "null"]),
        ("nick", &["ab", "", "x"], &["abc"]),
        // not a string type: JSON, so that its null can be written
        ("tint", &["\"red\"", "null"], &["blue", "red"]),
        ("two", &["a", "b"], &["c", "ab"]),
        ("mixed", &["anything at all", "12"], &[]),
        ("loop", &["a", "b"], &["c"]),
        ("typed", &["x"], &["1", "y"]),
    ] {
        for value in ok {
            assert!(accepts(&g, &call(key, value)), "{key}: {value}");
        }
        for value in bad {
            assert!(!accepts(&g, &call(key, value)), "{key}: {value}");
        }
    }
}

#[test]
fn a_string_parameter_with_a_pattern_or_lengths_takes_texts_of_them() {
    let g = forced(Some("set_code"), false);
    let call = |key: &str, value: &str| {
        format!(
            "<arg_key>code</arg_key><arg_value>IT-07</arg_value><arg_key>{key}</arg_key>\
             <arg_value>{value}</arg_value></tool_call>"
        )
    };
    assert!(accepts(
        &g,
        "<arg_key>code</arg_key><arg_value>IT-07</arg_value></tool_call>"
    ));
    for bad in ["it-07", "IT-7", "IT-07 ", "", "IT-07\nX"] {
        let text = format!("<arg_key>code</arg_key><arg_value>{bad}</arg_value></tool_call>");
        assert!(!accepts(&g, &text), "{bad}");
    }
    // an unanchored pattern is found anywhere, in a text without `<`
    for ok in ["ab", "x ab y", "abab"] {
        assert!(accepts(&g, &call("tag", ok)), "{ok}");
    }
    for bad in ["a b", "ba", "ab<", "<ab"] {
        assert!(!accepts(&g, &call("tag", bad)), "{bad}");
    }
    // lengths in characters
    for ok in ["ab", "été", "日本"] {
        assert!(accepts(&g, &call("nick", ok)), "{ok}");
    }
    for bad in ["a", "abcd", ""] {
        assert!(!accepts(&g, &call("nick", bad)), "{bad}");
    }
    // a pattern the regex engine cannot compile, or that needs a `<`, leaves the text unchecked
    let g = forced(Some("odd_patterns"), false);
    for (key, value) in [("bad", "anything"), ("angle", "a < b")] {
        let text = format!("<arg_key>{key}</arg_key><arg_value>{value}</arg_value></tool_call>");
        assert!(accepts(&g, &text), "{text}");
    }
}

#[test]
fn parallel_calls_follow_the_first_and_may_end_after_any() {
    let g = forced(None, true);
    let one = "note</tool_call>";
    let two = "note</tool_call><tool_call>get_weather<arg_key>city</arg_key><arg_value>x\
               </arg_value></tool_call>";
    assert!(accepts(&g, one) && accepts(&g, two));
    assert!(!accepts(
        &g,
        "note</tool_call>\n<tool_call>note</tool_call>"
    ));
    assert!(!accepts(&g, "note</tool_call><tool_call>nope</tool_call>"));
    let mut m = Matcher::new(g);
    assert!(m.accept(one.as_bytes()));
    assert!(m.can_end() && !m.is_terminated());
}

#[test]
fn a_named_call_starts_at_its_arguments() {
    let g = forced(Some("get_time"), true);
    assert!(accepts(
        &g,
        "<arg_key>zone</arg_key><arg_value>CET</arg_value><arg_key>at</arg_key>\
         <arg_value>{\"h\":1}</arg_value></tool_call>"
    ));
    assert!(!accepts(
        &g,
        "get_time<arg_key>zone</arg_key><arg_value>CET</arg_value></tool_call>"
    ));
    let mut m = Matcher::new(g);
    assert!(m.accept(
        b"<arg_key>at</arg_key><arg_value>{\"h\":1}</arg_value><arg_key>zone</arg_key>\
          <arg_value></arg_value></tool_call>"
    ));
    assert!(m.is_terminated(), "a named function is called once");
}

#[test]
fn a_parameter_schema_the_grammar_cannot_enforce_takes_any_json_value() {
    let tools = vec![
        json!({"name": "f", "parameters": {"type": "object", "properties": {
        "even": {"type": "array", "uniqueItems": true}}}}),
    ];
    let spec = ToolCallSpec {
        tools,
        function: Some("f".into()),
        parallel: false,
        open_id: None,
    };
    let g = tool_calls(&spec).unwrap();
    let call = |v: &str| format!("<arg_key>even</arg_key><arg_value>{v}</arg_value></tool_call>");
    assert!(accepts(&g, &call("[1, 1]")) && accepts(&g, &call("\"three\"")));
    assert!(
        !accepts(&g, &call("three")),
        "still JSON: the parser reads it as JSON"
    );
}

#[test]
fn what_cannot_be_forced_is_an_error() {
    let spec = |tools: Vec<Value>, function: Option<&str>| ToolCallSpec {
        tools,
        function: function.map(str::to_string),
        parallel: false,
        open_id: None,
    };
    assert!(tool_calls(&spec(tools(), Some("get_stock"))).is_err());
    assert!(tool_calls(&spec(vec![], None)).is_err());
    let odd = json!({"name": "f", "parameters": {"properties": {"a<b": {}}}});
    assert!(tool_calls(&spec(vec![odd], None)).is_err());
}

#[test]
fn masks_equal_the_brute_force_and_every_call_reads_back_valid() {
    let v = tool_vocab();
    let by_name: Vec<(String, Value)> = tools()
        .iter()
        .map(|t| {
            let f = t.get("function").unwrap_or(t);
            (
                f["name"].as_str().unwrap().to_string(),
                f["parameters"].clone(),
            )
        })
        .collect();
    for (function, parallel, seed) in [
        (None, false, 1),
        (None, true, 2),
        (Some("get_weather"), false, 3),
        (Some("get_time"), false, 4),
        (Some("set_code"), false, 5),
    ] {
        let g = forced(function, parallel);
        let docs = whole_documents_in(&g, &v, seed, 16, 1500);
        assert!(docs.len() >= 4, "only {} whole calls", docs.len());
        for doc in docs {
            let prefix = match function {
                Some(name) => format!("<tool_call>{name}"),
                None => "<tool_call>".to_string(),
            };
            let text = prefix + std::str::from_utf8(&doc).expect("UTF-8");
            let parsed = Glm47ToolParser::parse(&text, &tools());
            assert_eq!(parsed.content, "", "{text}");
            assert!(!parsed.tool_calls.is_empty(), "{text}");
            if function.is_some() || !parallel {
                assert_eq!(parsed.tool_calls.len(), 1, "{text}");
            }
            for call in parsed.tool_calls {
                let (_, params) = by_name
                    .iter()
                    .find(|(n, _)| *n == call.name)
                    .expect("declared");
                let args: Value = serde_json::from_str(&call.arguments).expect("JSON arguments");
                let schema = if params.get("properties").is_some() {
                    params.clone()
                } else {
                    json!({"type": "object"})
                };
                assert!(conforms(&args, &schema, params), "{text} -> {args}");
            }
        }
    }
}

#[test]
fn nothing_comes_before_the_name_or_the_arguments() {
    for g in [forced(None, true), forced(None, false)] {
        assert!(accepts(&g, "note</tool_call>"));
        assert!(!accepts(&g, "\tnote</tool_call>"));
        assert!(!accepts(&g, " note</tool_call>"));
    }
    let g = forced(Some("note"), false);
    assert!(accepts(&g, "</tool_call>") && !accepts(&g, " </tool_call>"));
}

#[test]
fn opened_by_the_model_only_strict_functions_have_their_parameters_enforced() {
    let mut tools = tools();
    tools[0]["function"]["strict"] = json!(true);
    let spec = ToolCallSpec {
        tools,
        function: None,
        parallel: false,
        open_id: Some(7),
    };
    let g = tool_calls(&spec).unwrap();
    // get_weather is strict: its schema holds
    assert!(!accepts(
        &g,
        "get_weather<arg_key>country</arg_key><arg_value>IT</arg_value></tool_call>"
    ));
    assert!(accepts(
        &g,
        "get_weather<arg_key>city</arg_key><arg_value>x</arg_value></tool_call>"
    ));
    // get_time is not: any arguments, none required
    assert!(accepts(&g, "get_time</tool_call>"));
    assert!(accepts(
        &g,
        "get_time<arg_key>zone</arg_key><arg_value>not json {</arg_value></tool_call>"
    ));
    assert!(
        !accepts(&g, "get_stock</tool_call>"),
        "still a declared function"
    );
}

#[test]
fn a_constraint_waits_for_each_id_in_turn() {
    let spec = ToolCallSpec {
        tools: tools(),
        function: None,
        parallel: false,
        open_id: Some(END - 1),
    };
    let v = tool_vocab();
    let think_close = END - 2;
    let c = Constraint::new(
        tool_calls(&spec).unwrap(),
        v.clone(),
        vec![END],
        Some(think_close),
    );
    let mut c = c.also_after(END - 1);
    let open = END - 1;
    for id in [open, 5, think_close, 9] {
        assert!(
            c.accept(id) && !c.active(),
            "{id}: the open id before </think> does not count"
        );
    }
    assert!(c.accept(open) && c.active());
    let word = |c: &Constraint| {
        let mut words = vec![0u32; v.mask_words()];
        c.fill_mask(&mut words);
        words
    };
    assert!(word(&c).iter().any(|&w| w != 0));
    for b in "note</tool_call>".bytes() {
        assert!(c.accept(u32::from(b)), "byte {b}");
    }
    assert!(c.is_done());
}

#[test]
fn a_json_string_in_an_argument_never_holds_a_closing_tag_start() {
    let g = forced(Some("get_time"), false);
    let call = |meta: &str| {
        format!(
            "<arg_key>zone</arg_key><arg_value>CET</arg_value><arg_key>at</arg_key>\
             <arg_value>{{\"h\":1}}</arg_value><arg_key>meta</arg_key><arg_value>{meta}\
             </arg_value></tool_call>"
        )
    };
    assert!(accepts(&g, &call(r#"{"note": "a<b"}"#)));
    assert!(accepts(&g, &call(r#"{"note": "a<\/b"}"#)));
    assert!(!accepts(&g, &call(r#"{"note": "a</b"}"#)));
    // a string of a pattern: no `<` at all (its masks walk the pattern's states alone)
    assert!(accepts(&g, &call(r#"{"id": "xa/b"}"#)));
    for bad in [r#"{"id": "x</b"}"#, r#"{"id": "x<b"}"#, r#"{"id": "ax"}"#] {
        assert!(!accepts(&g, &call(bad)), "{bad}");
    }
    // the JSON grammar of a response format takes it
    let json = grammar(json!({"type": "object", "properties": {"note": {"type": "string"}}}));
    assert!(accepts(&json, r#"{"note": "a</b"}"#));
}
