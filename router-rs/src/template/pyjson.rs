//! Python's text forms of template values: `json.dumps` (for `tojson`) and `str()` (for `{{ x }}`).
//!
//! transformers renders chat templates with Jinja2, where a value printed with `{{ }}` goes
//! through Python's `str()` (`None`, `True`, `{'a': 1}`) and `tojson` is `json.dumps` with
//! `", "`/`": "` separators and no HTML escaping. Matching those byte for byte keeps rendered
//! prompts identical to the reference.

use std::fmt::Write;
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// An integer too large for `i128`/`u128`, kept as its exact decimal digits.
#[derive(Debug)]
pub(crate) struct BigInt(pub(crate) String);

impl Object for BigInt {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Options of Python's `json.dumps` that `tojson` accepts.
#[derive(Debug, Clone)]
pub(crate) struct DumpOptions {
    /// Escape every non-ASCII character as `\uXXXX`.
    pub ensure_ascii: bool,
    /// Indentation unit; `None` keeps everything on one line.
    pub indent: Option<String>,
    /// Separator between items (`", "`, or `","` when indenting).
    pub item_sep: String,
    /// Separator between a key and its value.
    pub key_sep: String,
    /// Sort object keys.
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".to_string(),
            key_sep: ": ".to_string(),
            sort_keys: false,
        }
    }
}

fn not_serializable(kind: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {kind} is not JSON serializable"),
    )
}

/// `json.dumps(value, …)`; fails on undefined values and objects JSON cannot hold.
pub(crate) fn dumps(value: &Value, opts: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_json(&mut out, value, opts, 0)?;
    Ok(out)
}

fn newline_indent(out: &mut String, opts: &DumpOptions, depth: usize) {
    if let Some(unit) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(unit);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &Value,
    opts: &DumpOptions,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&number_text(value, true)?),
        ValueKind::String => {
            write_json_str(out, value.as_str().unwrap_or_default(), opts.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, opts, depth, ('[', ']'), items.len(), |out, i| {
                write_json(out, &items[i], opts, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, opts, depth, ('{', '}'), entries.len(), |out, i| {
                write_json_str(out, &entries[i].0, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, &entries[i].1, opts, depth + 1)
            })?;
        }
        ValueKind::Plain => match value.downcast_object_ref::<BigInt>() {
            Some(big) => out.push_str(&big.0),
            None => return Err(not_serializable("object")),
        },
        ValueKind::Undefined => return Err(not_serializable("Undefined")),
        _ => return Err(not_serializable(&value.kind().to_string())),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    opts: &DumpOptions,
    depth: usize,
    (open, close): (char, char),
    len: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len > 0 {
        for i in 0..len {
            if i > 0 {
                out.push_str(&opts.item_sep);
            }
            newline_indent(out, opts, depth + 1);
            item(out, i)?;
        }
        newline_indent(out, opts, depth);
    }
    out.push(close);
    Ok(())
}

/// Python converts non-string keys: `1` → `"1"`, `True` → `"true"`, `None` → `"null"`.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => number_text(key, true),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::None => Ok("null".to_string()),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "keys must be str, int, float, bool or None, not {}",
                key.kind()
            ),
        )),
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The text of a number as Python prints it (`json` spells non-finite floats differently).
fn number_text(value: &Value, json: bool) -> Result<String, Error> {
    if value.is_integer() {
        if let Ok(n) = i128::try_from(value.clone()) {
            return Ok(n.to_string());
        }
        if let Ok(n) = u128::try_from(value.clone()) {
            return Ok(n.to_string());
        }
    }
    let f = f64::try_from(value.clone())?;
    Ok(match (f.is_nan(), f.is_infinite(), json) {
        (true, _, true) => "NaN".to_string(),
        (true, _, false) => "nan".to_string(),
        (_, true, true) => if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string(),
        (_, true, false) => if f > 0.0 { "inf" } else { "-inf" }.to_string(),
        _ => float_repr(f),
    })
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 and from 1e16.
pub(crate) fn float_repr(f: f64) -> String {
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let point = exp + 1; // value = 0.DIGITS × 10^point
    let body = if !(-4 < point && point <= 16) {
        let (head, tail) = digits.split_at(1);
        let frac = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{head}{frac}e{exp_sign}{:02}", exp.abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

/// Python's `str(value)` as Jinja2 prints it; strings come out unchanged, undefined as "".
pub(crate) fn python_str(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::String => Ok(value.as_str().unwrap_or_default().to_string()),
        ValueKind::Undefined => Ok(String::new()),
        _ => {
            let mut out = String::new();
            python_repr(&mut out, value)?;
            Ok(out)
        }
    }
}

fn python_repr(out: &mut String, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&number_text(value, false)?),
        ValueKind::String => repr_str(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &item)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &key)?;
                out.push_str(": ");
                python_repr(out, &value.get_item(&key)?)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::json_value;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e100, "1e+100"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn dumps_uses_python_spacing_and_keeps_non_ascii() {
        let v = json_value(&serde_json::json!({"a": [1, 2.5, true, null], "é": "<x>\"\n"}));
        let text = dumps(&v, &DumpOptions::default()).unwrap();
        assert_eq!(text, r#"{"a": [1, 2.5, true, null], "é": "<x>\"\n"}"#);
        let ascii = DumpOptions {
            ensure_ascii: true,
            ..DumpOptions::default()
        };
        assert_eq!(
            dumps(&Value::from("é😀"), &ascii).unwrap(),
            r#""\u00e9\ud83d\ude00""#
        );
    }

    #[test]
    fn dumps_indents_like_python() {
        let v = json_value(&serde_json::json!({"a": [1, {}], "b": []}));
        let opts = DumpOptions {
            indent: Some("  ".to_string()),
            item_sep: ",".to_string(),
            ..DumpOptions::default()
        };
        let want = "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}";
        assert_eq!(dumps(&v, &opts).unwrap(), want);
    }

    #[test]
    fn python_str_prints_like_jinja2() {
        assert_eq!(python_str(&Value::from(())).unwrap(), "None");
        assert_eq!(python_str(&Value::from(true)).unwrap(), "True");
        let v = json_value(&serde_json::json!({"k": ["it's", null, false, 1.0]}));
        assert_eq!(
            python_str(&v).unwrap(),
            r#"{'k': ["it's", None, False, 1.0]}"#
        );
        assert_eq!(python_str(&Value::UNDEFINED).unwrap(), "");
    }

    #[test]
    fn undefined_is_not_serializable() {
        assert!(dumps(&Value::UNDEFINED, &DumpOptions::default()).is_err());
    }
}
