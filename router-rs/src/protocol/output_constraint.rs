//! The constrained output a request asks for ([`OutputConstraint`]): read from the fields each
//! API names it by, at most one of them per request.

use serde_json::Value;

use super::ValidationError;

/// The constrained output a request asks for: JSON (`response_format` `json_object` or
/// `json_schema`, vLLM's `guided_json` or `structured_outputs.json`, SGLang's `json_schema`) or
/// one of some strings (vLLM's `guided_choice` or `structured_outputs.choice`), a match of a
/// regular expression (vLLM's `guided_regex` or `structured_outputs.regex`, SGLang's `regex`) or
/// a sentence of an EBNF grammar (vLLM's `guided_grammar` or `structured_outputs.grammar`,
/// SGLang's `ebnf`) or text with structures in it (`response_format` `structural_tag`, vLLM's
/// `structured_outputs.structural_tag`, SGLang's `structural_tag`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutputConstraint {
    /// The schema as JSON text; None for any JSON object (unless `choices`).
    pub schema: Option<String>,
    /// The output is exactly one of these strings (no JSON).
    pub choices: Option<Vec<String>>,
    /// The whole output matches this regular expression (no JSON).
    pub regex: Option<String>,
    /// The whole output is a sentence of this EBNF grammar (no JSON; grammar/ebnf.rs).
    pub ebnf: Option<String>,
    /// The output follows this structural tag, as JSON text (grammar/structural.rs).
    pub structural_tag: Option<String>,
    /// JSON without whitespace between tokens (vLLM's `disable_any_whitespace`).
    pub compact: bool,
}

/// One way a body asks for constrained output.
enum Asked<'a> {
    AnyObject,
    Schema(&'a Value),
    Choice(&'a Value),
    Regex(&'a Value),
    Ebnf(&'a Value),
    StructuralTag(&'a Value),
}

/// Reads the constrained output a chat or completions body asks for (None: free text). A schema
/// the grammar cannot enforce, two ways of asking at once, and every other kind of constrained
/// decoding are refused.
pub fn output_constraint(body: &Value) -> Result<Option<OutputConstraint>, ValidationError> {
    let set = |f: &str| body.get(f).filter(|v| !v.is_null());
    let mut asked: Vec<(&str, Asked)> = Vec::new();
    if let Some(format) = set("response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => asked.push(("response_format", Asked::AnyObject)),
            Some("json_schema") => {
                let schema = format
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .filter(|s| !s.is_null())
                    .ok_or_else(|| {
                        ValidationError::new(
                            "response_format.json_schema.schema",
                            "response_format json_schema needs json_schema.schema",
                        )
                    })?;
                asked.push(("response_format.json_schema.schema", Asked::Schema(schema)));
            }
            Some("structural_tag") => asked.push(("response_format", Asked::StructuralTag(format))),
            Some(other) => {
                return Err(ValidationError::new(
                    "response_format.type",
                    format!(
                        "response_format type {other:?} is not supported (text, json_object, \
                         json_schema, structural_tag)"
                    ),
                ))
            }
            None => {
                return Err(ValidationError::new(
                    "response_format",
                    "response_format needs a type",
                ))
            }
        }
    }
    if set("guided_whitespace_pattern").is_some() {
        return Err(ValidationError::new(
            "guided_whitespace_pattern",
            "a whitespace pattern is not supported (structured_outputs.disable_any_whitespace \
             leaves all whitespace out)",
        ));
    }
    for field in ["guided_json", "json_schema"] {
        if let Some(schema) = set(field) {
            asked.push((field, Asked::Schema(schema)));
        }
    }
    if let Some(choices) = set("guided_choice") {
        asked.push(("guided_choice", Asked::Choice(choices)));
    }
    for field in ["guided_regex", "regex"] {
        if let Some(pattern) = set(field) {
            asked.push((field, Asked::Regex(pattern)));
        }
    }
    for field in ["guided_grammar", "ebnf"] {
        if let Some(text) = set(field) {
            asked.push((field, Asked::Ebnf(text)));
        }
    }
    if let Some(tag) = set("structural_tag") {
        asked.push(("structural_tag", Asked::StructuralTag(tag)));
    }
    let mut options = JsonOptions::default();
    if let Some(outputs) = set("structured_outputs") {
        // `disable_fallback` picks among vLLM's backends: there is one here
        let flag = |k: &str| outputs.get(k) == Some(&Value::Bool(true));
        options = JsonOptions {
            compact: flag("disable_any_whitespace"),
            closed: flag("disable_additional_properties"),
        };
        let given: Vec<(&String, &Value)> = outputs
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| !v.is_null() && !JSON_OPTIONS.contains(&k.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        match given.as_slice() {
            [(key, value)] if key.as_str() == "json" => {
                asked.push(("structured_outputs.json", Asked::Schema(value)));
            }
            [(key, value)] if key.as_str() == "choice" => {
                asked.push(("structured_outputs.choice", Asked::Choice(value)));
            }
            [(key, value)] if key.as_str() == "regex" => {
                asked.push(("structured_outputs.regex", Asked::Regex(value)));
            }
            [(key, value)] if key.as_str() == "grammar" => {
                asked.push(("structured_outputs.grammar", Asked::Ebnf(value)));
            }
            [(key, Value::Bool(true))] if key.as_str() == "json_object" => {
                asked.push(("structured_outputs.json_object", Asked::AnyObject));
            }
            [(key, value)] if key.as_str() == "structural_tag" => {
                asked.push((
                    "structured_outputs.structural_tag",
                    Asked::StructuralTag(value),
                ));
            }
            _ => {
                return Err(ValidationError::new(
                    "structured_outputs",
                    "structured_outputs is supported with one of json (a schema), json_object \
                     (true), choice, regex, grammar or structural_tag",
                ))
            }
        }
    }
    let constraint = constraint_of(&asked, options.closed)?;
    Ok(constraint.map(|mut c| {
        c.compact = options.compact && c.is_json();
        c
    }))
}

/// `structured_outputs` keys that shape the JSON rather than ask for output.
const JSON_OPTIONS: [&str; 3] = [
    "disable_fallback",
    "disable_any_whitespace",
    "disable_additional_properties",
];

/// vLLM's JSON options: no whitespace between tokens, objects closed unless their schema says.
#[derive(Default)]
struct JsonOptions {
    compact: bool,
    closed: bool,
}

impl OutputConstraint {
    /// JSON output: a schema's or any object's.
    fn is_json(&self) -> bool {
        self.choices.is_none()
            && self.regex.is_none()
            && self.ebnf.is_none()
            && self.structural_tag.is_none()
    }
}

/// `schema` with `additionalProperties: false` in every object schema with `properties` or
/// `patternProperties` that does not say (vLLM's `disable_additional_properties`), walked by
/// keyword: maps of schemas by name, lists of schemas, single schemas; data is left alone.
fn closed_objects(schema: &Value) -> Value {
    let Value::Object(o) = schema else {
        return schema.clone();
    };
    let each = |v: &Value| match v {
        Value::Array(list) => Value::Array(list.iter().map(closed_objects).collect()),
        other => closed_objects(other),
    };
    let mut out: serde_json::Map<String, Value> = o
        .iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => match v {
                    Value::Object(named) => Value::Object(
                        named
                            .iter()
                            .map(|(n, s)| (n.clone(), closed_objects(s)))
                            .collect(),
                    ),
                    other => other.clone(),
                },
                "items"
                | "prefixItems"
                | "anyOf"
                | "oneOf"
                | "allOf"
                | "additionalProperties"
                | "additionalItems"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contains"
                | "propertyNames"
                | "unevaluatedProperties"
                | "unevaluatedItems" => each(v),
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    let object = out.contains_key("properties") || out.contains_key("patternProperties");
    if object && !out.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

/// The constraint `asked` amounts to (None: free text); `closed`: object schemas closed.
fn constraint_of(
    asked: &[(&str, Asked)],
    closed: bool,
) -> Result<Option<OutputConstraint>, ValidationError> {
    match asked {
        [] => Ok(None),
        [(_, Asked::AnyObject)] => Ok(Some(OutputConstraint::default())),
        [(param, Asked::Schema(schema))] => {
            // vLLM and SGLang take the schema as an object or as its JSON text.
            let parsed;
            let schema = match schema {
                Value::String(text) => {
                    parsed = serde_json::from_str::<Value>(text).map_err(|e| {
                        ValidationError::new(*param, format!("the schema is not JSON: {e}"))
                    })?;
                    &parsed
                }
                other => *other,
            };
            let closed_schema;
            let schema = if closed {
                closed_schema = closed_objects(schema);
                &closed_schema
            } else {
                schema
            };
            crate::grammar::compile(Some(schema))
                .map_err(|e| ValidationError::new(*param, format!("unsupported schema: {e}")))?;
            Ok(Some(OutputConstraint {
                schema: Some(schema.to_string()),
                ..OutputConstraint::default()
            }))
        }
        [(param, Asked::Choice(choices))] => {
            let choices: Vec<String> = choices
                .as_array()
                .filter(|c| !c.is_empty())
                .and_then(|c| c.iter().map(|s| s.as_str().map(str::to_owned)).collect())
                .filter(|c: &Vec<String>| c.iter().all(|s| !s.is_empty()))
                .ok_or_else(|| {
                    ValidationError::new(
                        *param,
                        "a choice needs a non-empty list of non-empty strings",
                    )
                })?;
            Ok(Some(OutputConstraint {
                choices: Some(choices),
                ..OutputConstraint::default()
            }))
        }
        [(param, Asked::Regex(pattern))] => {
            let pattern = pattern.as_str().filter(|p| !p.is_empty()).ok_or_else(|| {
                ValidationError::new(*param, "a regex must be a non-empty string")
            })?;
            crate::grammar::regex(pattern)
                .map_err(|e| ValidationError::new(*param, format!("unsupported regex: {e}")))?;
            Ok(Some(OutputConstraint {
                regex: Some(pattern.to_owned()),
                ..OutputConstraint::default()
            }))
        }
        [(param, Asked::Ebnf(text))] => {
            let text = text
                .as_str()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| {
                    ValidationError::new(*param, "a grammar must be a non-empty string")
                })?;
            crate::grammar::ebnf(text)
                .map_err(|e| ValidationError::new(*param, format!("unsupported grammar: {e}")))?;
            Ok(Some(OutputConstraint {
                ebnf: Some(text.to_owned()),
                ..OutputConstraint::default()
            }))
        }
        [(param, Asked::StructuralTag(tag))] => {
            // an object, or its JSON text (vLLM's structured_outputs, SGLang's field)
            let parsed;
            let tag = match tag {
                Value::String(text) => {
                    parsed = serde_json::from_str::<Value>(text).map_err(|e| {
                        ValidationError::new(*param, format!("the structural tag is not JSON: {e}"))
                    })?;
                    &parsed
                }
                other => *other,
            };
            crate::grammar::structural_tag(tag).map_err(|e| {
                ValidationError::new(*param, format!("unsupported structural tag: {e}"))
            })?;
            Ok(Some(OutputConstraint {
                structural_tag: Some(tag.to_string()),
                ..OutputConstraint::default()
            }))
        }
        [(first, _), (second, _), ..] => Err(ValidationError::new(
            *second,
            format!("{second} and {first} both constrain the output: give one"),
        )),
    }
}
