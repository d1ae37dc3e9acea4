//! Tool calls as a grammar, for a forced `tool_choice` (`required`, or a function by name): the
//! model writes calls of the declared functions in the chat template's format,
//! `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>…</tool_call>`, each key one of
//! the function's parameters (at most once, the required ones all given) and each value one of
//! its schema.
//!
//! A parameter the tool parser keeps as a string (its schema allows a string,
//! `parsers::allows_string`) takes any text, exactly one of its strings where its schema is an
//! `enum` / `const` of strings only; where it is `type` string, a text without `<` that its
//! `pattern` finds (or of its `format`, one of those schema.rs enforces, where it has no pattern
//! and no `minLength`; or of its `minLength` / `maxLength`, where it has neither). A pattern the
//! regex engine cannot compile or that only texts with `<` match, or lengths beside a pattern,
//! leave the text that far unchecked. Any other parameter takes a JSON value of its schema
//! (schema.rs's subset; where the schema uses more, any JSON value), whose strings never hold
//! `</` (where the tool parser would end the value), nor any `<` under a `pattern`. Keys outside
//! `properties` are allowed where the parameters' schema has no `properties` or allows
//! `additionalProperties`; those are not checked against repeats. The prompt already ends with the forced call's opening (`<tool_call>`, or
//! `<tool_call>NAME`), so the grammar starts after it. With `tool_choice` auto and functions
//! marked `"strict": true`, the model opens the calls itself and the same grammar applies from
//! its `<tool_call>` (`ToolCallSpec::open_id`), the strict functions' parameters enforced.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::compile::{choices_node, err, Builder, ANY};
use super::keywords::format_pattern;
use super::matcher::Grammar;
use super::regex::Regex;
use super::schema::{
    arg_opening, Node, NodeId, Pattern, Prop, Schema, SchemaError, MAX_PROPERTIES,
};
use crate::parsers::glm47_name::{
    CALL_CLOSE, CALL_OPEN, KEY_CLOSE, KEY_OPEN, MAX_NAME_BYTES, VALUE_CLOSE, VALUE_OPEN,
};
use crate::parsers::{allows_string, resolve_ref};

/// The tags a tool-call grammar writes, which the tokenizer has as added tokens (left out of the
/// vocabulary of the other grammars): a tool-call grammar's vocabulary has them as their text.
pub const TOOL_TAGS: [&str; 6] = [
    CALL_OPEN,
    CALL_CLOSE,
    KEY_OPEN,
    KEY_CLOSE,
    VALUE_OPEN,
    VALUE_CLOSE,
];

/// The calls a request forces (docs/wire.md `Grammar.tool_calls`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCallSpec {
    /// OpenAI `tools` entries (`{"type":"function","function":{…}}`, or the function alone).
    pub tools: Vec<Value>,
    /// The function the prompt's forced call names (its `<tool_call>NAME` is in the prompt);
    /// None: any declared function, its name written first.
    #[serde(default)]
    pub function: Option<String>,
    /// More calls may follow the first (`parallel_tool_calls`); never for a named function.
    #[serde(default)]
    pub parallel: bool,
    /// The model opens the calls itself (`tool_choice` auto): the grammar applies from the
    /// token of this id (`<tool_call>`) on, and only the functions marked `"strict": true` have
    /// their parameters enforced (the others take any arguments).
    #[serde(default)]
    pub open_id: Option<u32>,
}

/// Whether an OpenAI `tools` entry asks for its arguments to follow its schema (`strict`).
pub fn is_strict(tool: &Value) -> bool {
    tool.get("function").unwrap_or(tool).get("strict") == Some(&Value::Bool(true))
}

/// The grammar of the calls `spec` forces.
pub fn tool_calls(spec: &ToolCallSpec) -> Result<Arc<Grammar>, SchemaError> {
    Ok(Grammar::new(tool_calls_schema(spec)?))
}

fn tool_calls_schema(spec: &ToolCallSpec) -> Result<Schema, SchemaError> {
    let mut b = Builder::new(&Value::Null);
    b.no_lt = true; // JSON strings of a pattern in arguments: no `</` either
    let close = b.push(literal(CALL_CLOSE.as_bytes()));
    let mut functions = Vec::new(); // (name, arguments node)
    for (i, tool) in spec.tools.iter().enumerate() {
        let function = tool.get("function").unwrap_or(tool);
        let Some(name) = function.get("name").and_then(Value::as_str) else {
            continue;
        };
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains(['<', '\n']) {
            continue; // a name the tool parser would not read back
        }
        let params = function.get("parameters").unwrap_or(&Value::Null);
        let path = format!("#/tools/{i}/function/parameters");
        let args = if spec.open_id.is_some() && !is_strict(tool) {
            let pair = any_pair(&mut b);
            b.push(Node::Args {
                props: Vec::new(),
                additional: Some(pair),
            })
        } else {
            arguments(&mut b, params, &path)?
        };
        functions.push((name, args));
    }
    let root = match &spec.function {
        Some(wanted) => {
            let &(_, args) = functions
                .iter()
                .find(|(name, _)| name == wanted)
                .ok_or_else(|| err("#", format!("no declared function is named {wanted:?}")))?;
            b.push(Node::Seq(vec![args, close]))
        }
        None => {
            if functions.is_empty() {
                return Err(err("#/tools", "no function to call"));
            }
            let mut first = Vec::new();
            let mut more = Vec::new();
            for &(name, args) in &functions {
                let named = b.push(literal(name.as_bytes()));
                first.push(b.push(Node::Seq(vec![named, args, close])));
                let opened = b.push(literal(format!("{CALL_OPEN}{name}").as_bytes()));
                more.push(b.push(Node::Seq(vec![opened, args, close])));
            }
            let first = b.push(Node::AnyOf(first));
            if spec.parallel {
                let call = b.push(Node::AnyOf(more));
                let rest = b.push(Node::Repeat {
                    item: call,
                    min: 0,
                    max: None,
                });
                b.push(Node::Seq(vec![first, rest]))
            } else {
                first
            }
        }
    };
    let schema = Schema {
        nodes: b.nodes,
        root,
        raw: true,
        no_close_tags: true,
    };
    schema.check_alternatives()?;
    Ok(schema)
}

fn literal(text: &[u8]) -> Node {
    choices_node([text])
}

/// The arguments of a function whose parameters' schema is `params`.
fn arguments<'a>(
    b: &mut Builder<'a>,
    params: &'a Value,
    path: &str,
) -> Result<NodeId, SchemaError> {
    b.set_document(params);
    let listed = params.get("properties").and_then(Value::as_object);
    let required: Vec<&str> = params
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut props = Vec::new();
    for (key, schema) in listed.into_iter().flatten() {
        if key.contains('<') {
            return Err(err(path, format!("the parameter name {key:?} holds a `<`")));
        }
        let node = argument_value(b, params, schema);
        props.push(Prop {
            key: key.as_bytes().to_vec(),
            node,
            required: required.contains(&key.as_str()),
        });
    }
    if props.len() > MAX_PROPERTIES {
        return Err(err(path, format!("more than {MAX_PROPERTIES} parameters")));
    }
    props.sort_by_cached_key(|p| arg_opening(&p.key));
    let others = match params.get("additionalProperties") {
        None => listed.is_none(),
        Some(Value::Bool(allowed)) => *allowed,
        Some(_) => true,
    };
    let additional = others.then(|| any_pair(b));
    Ok(b.push(Node::Args { props, additional }))
}

/// A parameter's value and the `</arg_value>` after it.
fn argument_value<'a>(b: &mut Builder<'a>, params: &'a Value, schema: &'a Value) -> NodeId {
    if allows_string(schema, params) {
        // The parser reads the raw text as a string: what the schema's string parts allow.
        let mut branches = Vec::new();
        string_branches(schema, params, &mut HashSet::new(), &mut branches);
        let (mut choices, mut patterns, mut free) = (Vec::new(), Vec::new(), branches.is_empty());
        for branch in branches {
            if let Some(strings) = only_strings(branch) {
                choices.extend(strings);
            } else if let Some(regex) = string_regex(branch) {
                patterns.push(regex);
            } else {
                free = true;
            }
        }
        if !free && patterns.is_empty() {
            let choices = b.push(choices_node(choices.iter().map(|s| s.as_bytes())));
            let close = b.push(literal(VALUE_CLOSE.as_bytes()));
            return b.push(Node::Seq(vec![choices, close]));
        }
        if !free && choices.is_empty() && patterns.len() == 1 {
            if let Some(pattern) = patterns.pop().and_then(value_pattern) {
                let value = b.push(Node::RawRegex(Arc::new(pattern)));
                let close = b.push(literal(VALUE_CLOSE.as_bytes()));
                return b.push(Node::Seq(vec![value, close]));
            }
        }
        // any text: an unconstrained string part, or strings and patterns mixed in one union
        return b.push(text(VALUE_CLOSE));
    }
    let json = b.compile(schema, "#").unwrap_or_else(|_| {
        b.set_document(params); // forget the `$ref`s the failed compile left half made
        ANY
    });
    let close = b.push(literal(VALUE_CLOSE.as_bytes()));
    b.push(Node::Seq(vec![json, close]))
}

/// Gathers the parts of a string parameter's schema that say which strings it takes: the schema
/// itself (its `$ref`'s target), or where it is a union (`anyOf`/`oneOf` without a `type`,
/// `enum` or `const` of its own, as pydantic writes `Optional[...]`), each branch that allows a
/// string. Branches of other types add nothing: the parser reads any text as a string. A
/// referenced schema is gathered once (`seen`, by address): one that refers back to itself adds
/// nothing more.
fn string_branches<'a>(
    schema: &'a Value,
    root: &'a Value,
    seen: &mut HashSet<*const Value>,
    out: &mut Vec<&'a Value>,
) {
    let Some(target) = resolve_ref(schema, root) else {
        out.push(&Value::Null); // a reference that does not resolve: any text
        return;
    };
    if !std::ptr::eq(target, schema) && !seen.insert(std::ptr::from_ref(target)) {
        return;
    }
    let schema = target;
    let own = ["type", "enum", "const"]
        .iter()
        .any(|k| schema.get(*k).is_some());
    let union = ["anyOf", "oneOf"]
        .iter()
        .find_map(|k| schema.get(*k).and_then(Value::as_array));
    match union {
        Some(branches) if !own => {
            for branch in branches.iter().filter(|b| allows_string(b, root)) {
                string_branches(branch, root, seen, out);
            }
        }
        _ => out.push(schema),
    }
}

/// Whether `schema`'s `type` is string or a list of types with string in it.
fn typed_string(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
        _ => false,
    }
}

/// The regular expression a string parameter's text matches whole, where its schema is `type`
/// string with a `pattern` (found anywhere in the text unless anchored), else a `format` of
/// those enforced (`date`, `time`, `date-time`, `uuid`, `ipv4`, `email`, `hostname`: texts
/// without `<`) and no `minLength`, else a `minLength` or `maxLength`.
fn string_regex(schema: &Value) -> Option<Regex> {
    if !typed_string(schema) {
        return None;
    }
    if let Some(pattern) = schema.get("pattern") {
        return Regex::search(pattern.as_str()?, "#").ok();
    }
    let length = |key: &str| schema.get(key).and_then(Value::as_u64);
    let (min, max) = (length("minLength").unwrap_or(0), length("maxLength"));
    if min == 0 {
        if let Some(pattern) = schema
            .get("format")
            .and_then(Value::as_str)
            .and_then(format_pattern)
        {
            return Regex::new(pattern).ok();
        }
    }
    if (min == 0 && max.is_none()) || max.is_some_and(|max| max < min) {
        return None;
    }
    let max = max.map_or(String::new(), |max| max.to_string());
    Regex::new(&format!("(?s:.){{{min},{max}}}")).ok()
}

/// `regex` as a value's pattern: texts without `<` (none holds `</`, where the tool parser would
/// end the value), walked only through states that still reach a match; None where no such
/// text matches (or the pattern has too many states).
fn value_pattern(regex: Regex) -> Option<Pattern> {
    let chars_to_match = regex.chars_to_match(|b| b != b'<').ok()?;
    chars_to_match.get(regex.start())?;
    Some(Pattern {
        regex,
        chars_to_match,
        no_lt: true,
    })
}

/// The strings of an `enum` or `const`: with `type` string (or a list with string in it), its
/// strings; without a `type`, its values if all are strings (a `null` among them aside, as a
/// nullable enum has it).
fn only_strings(schema: &Value) -> Option<Vec<&str>> {
    if schema.get("type").is_some() && !typed_string(schema) {
        return None;
    }
    let values: Vec<&Value> = match (schema.get("enum"), schema.get("const")) {
        (Some(Value::Array(values)), None) => values.iter().collect(),
        (None, Some(value)) => vec![value],
        _ => return None,
    };
    let strings: Vec<&str> = values.iter().filter_map(|v| v.as_str()).collect();
    // with `type` string the others are not its values (as the JSON grammar reads an enum)
    let others_out = typed_string(schema) || values.iter().all(|v| v.is_string() || v.is_null());
    (!strings.is_empty() && others_out).then_some(strings)
}

/// Raw text up to `stop`, without a `</tool_call>` before it (where the tool parser would end
/// the call).
fn text(stop: &str) -> Node {
    Node::Text {
        stop: stop.as_bytes().to_vec(),
        banned: CALL_CLOSE.as_bytes().to_vec(),
    }
}

/// A pair of a key outside the listed ones: `<arg_key>K</arg_key><arg_value>V</arg_value>`.
fn any_pair(b: &mut Builder<'_>) -> NodeId {
    let open = b.push(literal(KEY_OPEN.as_bytes()));
    let key = b.push(text(KEY_CLOSE));
    let value_open = b.push(literal(VALUE_OPEN.as_bytes()));
    let value = b.push(text(VALUE_CLOSE));
    b.push(Node::Seq(vec![open, key, value_open, value]))
}
