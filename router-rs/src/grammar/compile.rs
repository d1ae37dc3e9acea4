//! Compiling a JSON Schema document to the matcher's nodes (see schema.rs for the subset).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::keywords::{
    bounds, check_range, count, format_pattern, int_range, of_type, string_pattern, unique_items,
    ANNOTATIONS, BOUNDS, HANDLED, VALUE_KEYWORDS,
};
use super::lengths::Lengths;
use super::schema::{Node, NodeId, Prop, SchemaError, MAX_PROPERTIES};

/// Ids of the nodes every schema has.
pub(super) const ANY: NodeId = 0;
const ANY_STRING: NodeId = 1;

pub(super) struct Builder<'a> {
    pub(super) nodes: Vec<Node>,
    document: &'a Value,
    /// `$ref` targets already compiled (or being compiled: recursion), by pointer.
    refs: HashMap<String, NodeId>,
    /// Strings of a `pattern` hold no `<` (a tool call's arguments; see `Pattern::no_lt`).
    pub(super) no_lt: bool,
}

pub(super) fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn json_text(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

impl<'a> Builder<'a> {
    pub(super) fn new(document: &'a Value) -> Self {
        let mut b = Builder {
            nodes: Vec::new(),
            document,
            refs: HashMap::new(),
            no_lt: false,
        };
        // ANY: object | array | string | number | literal; its object and array hold ANY again.
        b.nodes.push(Node::AnyOf(Vec::new()));
        b.nodes.push(Node::Str { min: 0, max: None });
        let object = b.push(Node::Object {
            props: Vec::new(),
            additional: Some(ANY),
            min: 0,
            max: None,
        });
        let array = b.push(Node::Array {
            prefix: Vec::new(),
            items: ANY,
            min: 0,
            max: None,
            unique: false,
        });
        let number = b.push(Node::Number { integer: false });
        let literals = b.push(choices_node(["true", "false", "null"].map(str::as_bytes)));
        b.nodes[ANY] = Node::AnyOf(vec![object, array, ANY_STRING, number, literals]);
        b
    }

    /// Compiles schemas of `document` from here on: its `$ref`s resolve in it (and none
    /// compiled before is reused).
    pub(super) fn set_document(&mut self, document: &'a Value) {
        self.document = document;
        self.refs.clear();
    }

    pub(super) fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub(super) fn compile(&mut self, schema: &Value, path: &str) -> Result<NodeId, SchemaError> {
        match schema {
            Value::Bool(true) => Ok(ANY),
            Value::Bool(false) => Err(err(path, "the schema `false` admits no value")),
            Value::Object(map) => self.compile_object(map, path),
            _ => Err(err(path, "a schema must be an object or a boolean")),
        }
    }

    fn compile_object(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        for key in map.keys() {
            if !HANDLED.contains(&key.as_str()) && !ANNOTATIONS.contains(&key.as_str()) {
                return Err(err(
                    path,
                    format!("the keyword {key:?} is not supported in a response format schema"),
                ));
            }
        }
        if let Some(target) = map.get("$ref") {
            if map
                .keys()
                .any(|k| HANDLED.contains(&k.as_str()) && k != "$ref")
            {
                return Err(err(path, "$ref beside other constraints is not supported"));
            }
            let target = target
                .as_str()
                .ok_or_else(|| err(path, "$ref must be a string"))?;
            return self.reference(target, path);
        }
        if let Some(all) = map.get("allOf") {
            let items = all
                .as_array()
                .filter(|a| a.len() == 1)
                .ok_or_else(|| err(path, "allOf is supported only with exactly one schema"))?;
            if map
                .keys()
                .any(|k| HANDLED.contains(&k.as_str()) && k != "allOf")
            {
                return Err(err(path, "allOf beside other constraints is not supported"));
            }
            return self.compile(&items[0], &format!("{path}/allOf/0"));
        }
        let node = self.compile_constraints(map, path)?;
        if map.get("nullable") == Some(&Value::Bool(true)) {
            let null = self.push(choices_node([b"null".as_slice()]));
            return Ok(self.push(Node::AnyOf(vec![node, null])));
        }
        Ok(node)
    }

    fn compile_constraints(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = map.get(key) {
                let alts = alts
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| err(path, format!("{key} must be a non-empty array")))?;
                if map.keys().any(|k| {
                    HANDLED.contains(&k.as_str())
                        && !matches!(k.as_str(), "anyOf" | "oneOf" | "nullable")
                }) {
                    return Err(err(
                        path,
                        format!("{key} beside other constraints is not supported"),
                    ));
                }
                let ids = alts
                    .iter()
                    .enumerate()
                    .map(|(i, alt)| self.compile(alt, &format!("{path}/{key}/{i}")))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(self.push(Node::AnyOf(ids)));
            }
        }
        if map.contains_key("enum") || map.contains_key("const") {
            if let Some(key) = VALUE_KEYWORDS
                .iter()
                .chain(&BOUNDS)
                .find(|k| map.contains_key(**k))
            {
                return Err(err(
                    path,
                    format!("{key} beside enum or const is not supported"),
                ));
            }
            // the values of the types `type` allows, if it says
            let typed = |v: &&Value| match map.get("type") {
                None => Ok(true),
                Some(Value::String(t)) => Ok(of_type(v, t)),
                Some(Value::Array(ts)) => {
                    Ok(ts.iter().any(|t| t.as_str().is_some_and(|t| of_type(v, t))))
                }
                Some(_) => Err(err(path, "type must be a string or a non-empty array")),
            };
            let values: Vec<&Value> = match (map.get("const"), map.get("enum")) {
                (Some(value), _) => vec![value],
                (None, Some(Value::Array(values))) if !values.is_empty() => values.iter().collect(),
                _ => return Err(err(path, "enum must be a non-empty array")),
            };
            let mut kept = Vec::with_capacity(values.len());
            for v in values {
                if typed(&v)? {
                    kept.push(json_text(v));
                }
            }
            if kept.is_empty() {
                return Err(err(
                    path,
                    "no value of enum or const is of the type the schema names",
                ));
            }
            return Ok(self.push(choices_node(kept.iter().map(Vec::as_slice))));
        }
        let types: Vec<&str> = match map.get("type") {
            None => {
                if map.contains_key("properties") || map.contains_key("additionalProperties") {
                    vec!["object"]
                } else if [
                    "items",
                    "prefixItems",
                    "minItems",
                    "maxItems",
                    "uniqueItems",
                ]
                .iter()
                .any(|k| map.contains_key(*k))
                {
                    vec!["array"]
                } else if ["required", "minProperties", "maxProperties"]
                    .iter()
                    .any(|k| map.contains_key(*k))
                {
                    vec!["object"]
                } else if ["minLength", "maxLength", "pattern"]
                    .iter()
                    .any(|k| map.contains_key(*k))
                {
                    vec!["string"]
                } else if let Some(key) = BOUNDS
                    .iter()
                    .chain(&["multipleOf"])
                    .find(|k| map.contains_key(**k))
                {
                    return Err(err(
                        path,
                        format!("{key} is supported only with type integer or number"),
                    ));
                } else {
                    return Ok(ANY);
                }
            }
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .map(|t| t.as_str().ok_or_else(|| err(path, "type must name types")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err(path, "type must be a string or a non-empty array")),
        };
        let ids = types
            .iter()
            .map(|t| self.compile_type(t, map, path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if ids.len() == 1 {
            ids[0]
        } else {
            self.push(Node::AnyOf(ids))
        })
    }

    fn compile_type(
        &mut self,
        kind: &str,
        map: &Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        match kind {
            "object" => self.compile_properties(map, path),
            "array" => {
                // 2020-12: `prefixItems` then `items`; draft 7: `items` as a list, then
                // `additionalItems`. An item schema `false` ends the array after the prefix.
                let (tuple, rest, rest_key) = match (map.get("prefixItems"), map.get("items")) {
                    (Some(Value::Array(t)), rest) => (t.as_slice(), rest, "items"),
                    (None, Some(Value::Array(t))) => {
                        (t.as_slice(), map.get("additionalItems"), "additionalItems")
                    }
                    (Some(_), _) => return Err(err(path, "prefixItems must be an array")),
                    (None, rest) => (&[][..], rest, "items"),
                };
                let prefix = tuple
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.compile(s, &format!("{path}/prefixItems/{i}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let min = count(map, "minItems", path)?.unwrap_or(0);
                let mut max = count(map, "maxItems", path)?;
                let items = match rest {
                    None | Some(Value::Bool(true)) => ANY,
                    Some(Value::Bool(false)) => {
                        let len = prefix.len() as u32;
                        max = Some(max.map_or(len, |m| m.min(len)));
                        ANY
                    }
                    Some(items) => self.compile(items, &format!("{path}/{rest_key}"))?,
                };
                let items = self.resolved_id(items);
                let unique = unique_items(map, path, !prefix.is_empty(), &self.nodes[items])?;
                if let Some(distinct) = unique {
                    if min > distinct {
                        return Err(err(
                            path,
                            "minItems is more than the distinct items allowed",
                        ));
                    }
                    max = Some(max.map_or(distinct, |m| m.min(distinct)));
                }
                check_range(min, max, "minItems", path)?;
                let unique = unique.is_some();
                Ok(self.push(Node::Array {
                    prefix,
                    items,
                    min,
                    max,
                    unique,
                }))
            }
            "string" => {
                let min = count(map, "minLength", path)?.unwrap_or(0);
                let max = count(map, "maxLength", path)?;
                check_range(min, max, "minLength", path)?;
                // a known `format` is enforced as its pattern where no pattern or minimum
                // length is given (otherwise it stays the annotation it is by default)
                let format = map
                    .get("format")
                    .and_then(Value::as_str)
                    .and_then(format_pattern)
                    .filter(|_| min == 0)
                    .map(|p| (Value::from(p), format!("{path}/format")));
                let (pattern, at) = match map.get("pattern") {
                    Some(p) => (p.clone(), format!("{path}/pattern")),
                    None => match format {
                        Some(f) => f,
                        None => return Ok(self.push(Node::Str { min, max })),
                    },
                };
                let regex = Arc::new(string_pattern(&pattern, &at, self.no_lt)?);
                let lengths = Lengths::of_string(&regex, min, max, path)?;
                Ok(self.push(Node::Pattern {
                    regex,
                    max,
                    lengths,
                }))
            }
            "integer" => Ok(self.push(match int_range(map, path)? {
                Some(range) => Node::Integer(range),
                None => Node::Number { integer: true },
            })),
            "number" => Ok(self.push(match bounds(map, path, true)? {
                Some(bounds) => Node::Decimal(bounds),
                None => Node::Number { integer: false },
            })),
            "boolean" => Ok(self.push(choices_node([b"true".as_slice(), b"false"]))),
            "null" => Ok(self.push(choices_node([b"null".as_slice()]))),
            other => Err(err(path, format!("unknown type {other:?}"))),
        }
    }

    fn compile_properties(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        let empty = Map::new();
        let listed = match map.get("properties") {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Err(err(path, "properties must be an object")),
        };
        if listed.len() > MAX_PROPERTIES {
            return Err(err(
                path,
                format!("more than {MAX_PROPERTIES} properties in one object"),
            ));
        }
        let required: Vec<&str> = match map.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| {
                    n.as_str()
                        .ok_or_else(|| err(path, "required must list names"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err(path, "required must be an array")),
        };
        if let Some(missing) = required.iter().find(|n| !listed.contains_key(**n)) {
            return Err(err(
                path,
                format!("required property {missing:?} must be listed in properties"),
            ));
        }
        let additional = match map.get("additionalProperties") {
            None => (listed.is_empty()).then_some(ANY),
            Some(Value::Bool(open)) => open.then_some(ANY),
            Some(schema) => Some(self.compile(schema, &format!("{path}/additionalProperties"))?),
        };
        let mut props = Vec::with_capacity(listed.len());
        for (name, schema) in listed {
            let node = self.compile(schema, &format!("{path}/properties/{name}"))?;
            let quoted = json_text(&Value::String(name.clone()));
            props.push(Prop {
                key: quoted[1..quoted.len() - 1].to_vec(),
                node,
                required: required.contains(&name.as_str()),
            });
        }
        props.sort_by(|a, b| a.key.cmp(&b.key));
        let min = count(map, "minProperties", path)?.unwrap_or(0);
        let max = count(map, "maxProperties", path)?;
        check_range(min, max, "minProperties", path)?;
        if additional.is_none() && min as usize > props.len() {
            return Err(err(
                path,
                "minProperties is more than the properties allowed",
            ));
        }
        let required = props.iter().filter(|p| p.required).count();
        if max.is_some_and(|max| (max as usize) < required) {
            return Err(err(
                path,
                "maxProperties is less than the required properties",
            ));
        }
        Ok(self.push(Node::Object {
            props,
            additional,
            min,
            max,
        }))
    }

    /// `id` past the `anyOf`s of one alternative (a `$ref`'s placeholder).
    fn resolved_id(&self, mut id: NodeId) -> NodeId {
        while let Node::AnyOf(alts) = &self.nodes[id] {
            match alts.as_slice() {
                [one] => id = *one,
                _ => break,
            }
        }
        id
    }

    fn reference(&mut self, target: &str, path: &str) -> Result<NodeId, SchemaError> {
        if let Some(&id) = self.refs.get(target) {
            return Ok(id);
        }
        let pointer = target.strip_prefix('#').ok_or_else(|| {
            err(
                path,
                format!("$ref {target:?}: only local references (#…) are supported"),
            )
        })?;
        let document = self.document;
        let schema = document
            .pointer(pointer)
            .ok_or_else(|| err(path, format!("$ref {target:?} points at nothing")))?;
        // A placeholder first, so a recursive reference finds the node it is inside.
        let id = self.push(Node::AnyOf(Vec::new()));
        self.refs.insert(target.to_string(), id);
        let inner = self.compile(schema, target)?;
        self.nodes[id] = Node::AnyOf(vec![inner]);
        Ok(id)
    }
}

pub(super) fn choices_node<'b>(texts: impl IntoIterator<Item = &'b [u8]>) -> Node {
    let mut texts: Vec<Vec<u8>> = texts.into_iter().map(<[u8]>::to_vec).collect();
    texts.sort();
    texts.dedup();
    Node::Choices(texts)
}
