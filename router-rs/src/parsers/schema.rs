//! Argument typing from the OpenAI `tools` list: which values stay strings, which are JSON.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::scan::json_string;

/// How an argument value is turned into JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// The schema allows a string: the raw text becomes a JSON string, streamed as it arrives.
    String,
    /// Any other or no declared type: the raw text is parsed as JSON when complete, and becomes a
    /// JSON string when it does not parse.
    Json,
}

/// The declared functions and the kind of each of their parameters.
#[derive(Debug, Clone, Default)]
pub struct ToolSchemas {
    /// function name -> parameter name -> kind
    functions: HashMap<String, HashMap<String, ValueKind>>,
}

impl ToolSchemas {
    /// Reads OpenAI `tools` entries (`{"type":"function","function":{"name","parameters"}}`; a bare
    /// `{"name","parameters"}` is accepted too). Entries without a string name are skipped.
    pub fn new(tools: &[Value]) -> Self {
        let mut functions = HashMap::new();
        for tool in tools {
            let function = tool.get("function").unwrap_or(tool);
            let Some(name) = function.get("name").and_then(Value::as_str) else {
                continue;
            };
            let mut params = HashMap::new();
            let root = function.get("parameters").unwrap_or(&Value::Null);
            let properties = root.get("properties").and_then(Value::as_object);
            for (key, schema) in properties.into_iter().flatten() {
                params.insert(key.clone(), kind_of(schema, root));
            }
            functions.insert(name.to_string(), params);
        }
        Self { functions }
    }

    /// Whether `name` is a declared function.
    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// The kind of parameter `key` of function `name`; `Json` when either is undeclared.
    pub fn kind(&self, name: &str, key: &str) -> ValueKind {
        self.functions
            .get(name)
            .and_then(|params| params.get(key))
            .copied()
            .unwrap_or(ValueKind::Json)
    }
}

/// A parameter is a string when any type its schema allows is "string" (`type`, type lists such as
/// `["string","null"]`, `anyOf`/`oneOf`/`allOf` branches, an `enum`/`const` of strings only, or
/// what a local `$ref` points at, as pydantic writes enums and nested models).
fn kind_of(schema: &Value, root: &Value) -> ValueKind {
    if allows_string(schema, root) {
        ValueKind::String
    } else {
        ValueKind::Json
    }
}

/// `$ref`s followed at most in one chain of references.
const MAX_REF_DEPTH: usize = 16;

/// Whether `schema` (a part of the document `root`, which its local `$ref`s point into) allows a
/// string; see [`kind_of`]. Each referenced schema is looked at once (a schema that refers back
/// to itself, directly or through others, adds nothing the second time), so the work is linear
/// in the document whatever its references.
pub fn allows_string(schema: &Value, root: &Value) -> bool {
    let mut seen = HashSet::new();
    allows_string_in(schema, root, &mut seen)
}

/// The schema that `schema`'s local `$ref` (`#/$defs/Name`, `#/definitions/Name`, any JSON
/// pointer into `root`) points at, followed through chains of references; `schema` itself when
/// it has none; None when a reference does not resolve or the chain is longer than
/// [`MAX_REF_DEPTH`].
pub fn resolve_ref<'a>(schema: &'a Value, root: &'a Value) -> Option<&'a Value> {
    let mut current = schema;
    for _ in 0..=MAX_REF_DEPTH {
        let Some(reference) = current.get("$ref") else {
            return Some(current);
        };
        current = reference
            .as_str()
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| root.pointer(pointer))?;
    }
    None
}

/// [`allows_string`], `seen` holding the referenced schemas already looked at (by address).
fn allows_string_in(schema: &Value, root: &Value, seen: &mut HashSet<*const Value>) -> bool {
    let by_ref = schema.get("$ref").is_some()
        && resolve_ref(schema, root).is_some_and(|target| {
            seen.insert(std::ptr::from_ref(target)) && allows_string_in(target, root, seen)
        });
    let by_type = match schema.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(types)) => types.iter().any(|t| t.as_str() == Some("string")),
        _ => false,
    };
    let by_branches = ["anyOf", "oneOf", "allOf"].iter().any(|combinator| {
        schema
            .get(*combinator)
            .and_then(Value::as_array)
            .is_some_and(|branches| {
                branches
                    .iter()
                    .any(|branch| allows_string_in(branch, root, seen))
            })
    });
    let by_enum = match (schema.get("enum"), schema.get("const")) {
        (Some(Value::Array(values)), _) if schema.get("type").is_none() => {
            !values.is_empty() && values.iter().all(Value::is_string)
        }
        (None, Some(Value::String(_))) => schema.get("type").is_none(),
        _ => false,
    };
    by_ref || by_type || by_branches || by_enum
}

/// Renders a complete non-string value: its JSON (numbers keep every digit) when `raw` parses as
/// JSON, else `raw` as a JSON string.
pub fn render_json_value(raw: &str) -> String {
    match serde_json::from_str::<Value>(raw.trim()) {
        Ok(value) => value.to_string(),
        Err(_) => json_string(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas() -> ToolSchemas {
        ToolSchemas::new(&[
            json!({"type": "function", "function": {"name": "f", "parameters": {
                "type": "object",
                "properties": {
                    "s": {"type": "string"},
                    "n": {"type": "integer"},
                    "opt": {"type": ["string", "null"]},
                    "any": {"anyOf": [{"type": "number"}, {"type": "string"}]},
                    "nums": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                    "color": {"enum": ["red", "blue"]},
                    "free": {}
                }
            }}}),
        ])
    }

    #[test]
    fn kinds_follow_the_schema_including_type_lists_and_any_of() {
        let s = schemas();
        assert_eq!(s.kind("f", "s"), ValueKind::String);
        assert_eq!(s.kind("f", "n"), ValueKind::Json);
        assert_eq!(s.kind("f", "opt"), ValueKind::String);
        assert_eq!(s.kind("f", "any"), ValueKind::String);
        assert_eq!(s.kind("f", "nums"), ValueKind::Json);
        assert_eq!(s.kind("f", "color"), ValueKind::String);
        assert_eq!(s.kind("f", "free"), ValueKind::Json);
        assert_eq!(s.kind("f", "undeclared"), ValueKind::Json);
        assert_eq!(s.kind("g", "s"), ValueKind::Json);
        assert!(s.has_function("f"));
        assert!(!s.has_function("g"));
    }

    #[test]
    fn references_are_followed_into_the_parameters_document() {
        // As `pydantic_function_tool` writes an enum field, an optional one and a nested model.
        let s = ToolSchemas::new(&[json!({"type": "function", "function": {"name": "ship",
        "parameters": {
            "$defs": {
                "Code": {"enum": ["100", "200"], "title": "Code", "type": "string"},
                "Alias": {"$ref": "#/$defs/Code"},
                "Box": {"type": "object", "properties": {"w": {"type": "number"}}},
                "Loop": {"anyOf": [{"$ref": "#/$defs/Loop"}, {"type": "integer"}]}
            },
            "definitions": {"Legacy": {"type": "string"}},
            "properties": {
                "code": {"$ref": "#/$defs/Code"},
                "alias": {"$ref": "#/$defs/Alias", "description": "a code"},
                "maybe": {"anyOf": [{"$ref": "#/$defs/Code"}, {"type": "null"}]},
                "box": {"$ref": "#/$defs/Box"},
                "legacy": {"$ref": "#/definitions/Legacy"},
                "loop": {"$ref": "#/$defs/Loop"},
                "dangling": {"$ref": "#/$defs/Missing"},
                "remote": {"$ref": "https://example.com/schema.json"}
            }
        }}})]);
        for key in ["code", "alias", "maybe", "legacy"] {
            assert_eq!(s.kind("ship", key), ValueKind::String, "{key}");
        }
        for key in ["box", "loop", "dangling", "remote"] {
            assert_eq!(s.kind("ship", key), ValueKind::Json, "{key}");
        }
    }

    #[test]
    fn references_that_branch_back_to_themselves_are_read_in_linear_time() {
        // each of 8 branches refers back to the schema, in a chain of such schemas
        let branches = |next: &str| json!({"anyOf": vec![json!({"$ref": next}); 8]});
        let root = json!({
            "$defs": {"A": branches("#/$defs/B"), "B": branches("#/$defs/A")},
            "properties": {"x": {"$ref": "#/$defs/A"}, "y": {"anyOf": [{"$ref": "#/$defs/A"},
                                                                          {"type": "string"}]}}
        });
        let started = std::time::Instant::now();
        let s = ToolSchemas::new(&[json!({"name": "f", "parameters": root})]);
        assert_eq!(s.kind("f", "x"), ValueKind::Json);
        assert_eq!(s.kind("f", "y"), ValueKind::String);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn json_values_keep_large_integers_and_fall_back_to_strings() {
        assert_eq!(
            render_json_value("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(render_json_value(" 1.50 "), "1.50");
        assert_eq!(render_json_value("true"), "true");
        assert_eq!(render_json_value("{\"a\": [1, 2]}"), "{\"a\":[1,2]}");
        assert_eq!(render_json_value("Beijing"), "\"Beijing\"");
        assert_eq!(render_json_value(""), "\"\"");
    }
}
