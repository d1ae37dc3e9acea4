//! The matcher against an independent check: random documents of the test schemas, half of
//! them changed in one place, are taken exactly when they conform.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::matcher::MAX_NUMBER_BYTES;
use super::tests::{accepts, conforms, grammar, schemas};

/// A random value of `schema` (the subset `conforms` checks), or, with `wrong`, sometimes one
/// that is not: a member dropped or added, a value of another type.
fn sample(schema: &Value, root: &Value, rng: &mut StdRng, depth: u32) -> Value {
    let Some(map) = schema.as_object() else {
        return json!(rng.random_range(0..10));
    };
    if let Some(r) = map.get("$ref").and_then(Value::as_str) {
        return sample(root.pointer(&r[1..]).unwrap(), root, rng, depth + 1);
    }
    if let Some(alts) = map.get("anyOf").and_then(Value::as_array) {
        // past a few levels, the last alternative (the recursion's way out in `schemas()`)
        let i = if depth > 3 {
            alts.len() - 1
        } else {
            rng.random_range(0..alts.len())
        };
        return sample(&alts[i], root, rng, depth + 1);
    }
    if let Some(values) = map.get("enum").and_then(Value::as_array) {
        return values[rng.random_range(0..values.len())].clone();
    }
    if let Some(value) = map.get("const") {
        return value.clone();
    }
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts[rng.random_range(0..ts.len())].as_str().unwrap(),
        _ => "any",
    };
    let count = |k: &str| map.get(k).and_then(Value::as_u64);
    let text = |rng: &mut StdRng, min: u64, max: u64| -> String {
        let pool = ['a', 'Z', ' ', '"', '\\', '\n', 'é', '日', '😀', '\u{1}'];
        let n = rng.random_range(min..=max);
        (0..n)
            .map(|_| pool[rng.random_range(0..pool.len())])
            .collect()
    };
    match kind {
        "object" => {
            let mut out = serde_json::Map::new();
            let props = map.get("properties").and_then(Value::as_object);
            let required: Vec<&str> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().map(|k| k.as_str().unwrap()).collect())
                .unwrap_or_default();
            for (k, s) in props.into_iter().flatten() {
                if required.contains(&k.as_str()) || rng.random_bool(0.5) {
                    out.insert(k.clone(), sample(s, root, rng, depth + 1));
                }
            }
            if let Some(extra) = map.get("additionalProperties").filter(|a| a.is_object()) {
                if rng.random_bool(0.5) {
                    out.insert(text(rng, 0, 3) + "x", sample(extra, root, rng, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let (min, max) = (
                count("minItems").unwrap_or(0),
                count("maxItems").unwrap_or(4),
            );
            let n = rng.random_range(min..=max);
            let items = map.get("items").cloned().unwrap_or(json!(true));
            Value::Array(
                (0..n)
                    .map(|_| sample(&items, root, rng, depth + 1))
                    .collect(),
            )
        }
        "string" => {
            let min = count("minLength").unwrap_or(0);
            json!(text(rng, min, count("maxLength").unwrap_or(min + 5)))
        }
        "integer" => json!(rng.random_range(-100_000i64..100_000)),
        "number" => json!(rng.random_range(-1e6..1e6f64)),
        "boolean" => json!(rng.random_bool(0.5)),
        "null" => Value::Null,
        _ => json!({"k": [1, "two", null, {"z": -3.5e-2}]}),
    }
}

/// Changes one place of `doc`: a member dropped or added, a value of another type.
fn mutate(doc: &mut Value, rng: &mut StdRng) {
    match doc {
        Value::Object(o) if !o.is_empty() && rng.random_bool(0.7) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            match rng.random_range(0..3) {
                0 => {
                    o.remove(k);
                }
                1 => {
                    o.insert("zzz".into(), json!(1));
                }
                _ => mutate(o.get_mut(k).unwrap(), rng),
            }
        }
        Value::Array(a) if !a.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..a.len());
            mutate(&mut a[i], rng);
        }
        other => {
            *other = match other {
                Value::String(_) => json!(7),
                Value::Number(_) => json!("7"),
                Value::Bool(_) => Value::Null,
                _ => json!(true),
            };
        }
    }
}

#[test]
fn the_matcher_takes_exactly_the_documents_of_its_schema() {
    let mut rng = StdRng::seed_from_u64(11);
    for schema in schemas() {
        let g = grammar(schema.clone());
        let (mut taken, mut refused) = (0, 0);
        for _ in 0..150 {
            let mut doc = sample(&schema, &schema, &mut rng, 0);
            if rng.random_bool(0.5) {
                mutate(&mut doc, &mut rng);
            }
            let ok = conforms(&doc, &schema, &schema);
            for text in [
                serde_json::to_string(&doc),
                serde_json::to_string_pretty(&doc),
            ] {
                let text = text.unwrap();
                // numbers longer than the matcher takes are out of its language by design
                let long_number = text
                    .split(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
                    .any(|run| run.len() > MAX_NUMBER_BYTES as usize);
                if long_number {
                    continue;
                }
                assert_eq!(accepts(&g, &text), ok, "{schema}\n{text}");
                if ok {
                    taken += 1
                } else {
                    refused += 1
                }
            }
        }
        assert!(
            taken > 20 && (refused > 20 || schema == json!({"type": "object"})),
            "{schema}: {taken} taken, {refused} refused"
        );
    }
}
