//! The values of single keywords: a string's `pattern` or `format`, a number's bounds, counts.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::compile::err;
use super::decimal::Bounds;
use super::integer::IntRange;
use super::regex::Regex;
use super::schema::{unescaped, Node, Pattern, SchemaError};

pub(super) fn string_pattern(
    pattern: &Value,
    path: &str,
    no_lt: bool,
) -> Result<Pattern, SchemaError> {
    let pattern = pattern
        .as_str()
        .ok_or_else(|| err(path, "pattern must be a string"))?;
    let regex = Regex::search(pattern, path)?;
    let chars_to_match = regex
        .chars_to_match(|b| unescaped(b) && !(no_lt && b == b'<'))
        .map_err(|message| err(path, message))?;
    if chars_to_match.get(regex.start()).is_none() {
        return Err(err(
            path,
            "the pattern matches no string without escaped characters (\", \\, control characters)",
        ));
    }
    Ok(Pattern {
        regex,
        chars_to_match,
        no_lt,
    })
}

/// The patterns of the string formats that are enforced (RFC 3339 dates and times, UUIDs,
/// IPv4 addresses, e-mail addresses and host names, in ASCII).
pub(super) fn format_pattern(format: &str) -> Option<&'static str> {
    const DATE: &str = "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])";
    const TIME: &str =
        "([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])";
    const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    const LABEL: &str = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    static PATTERNS: std::sync::OnceLock<HashMap<&'static str, String>> =
        std::sync::OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        HashMap::from([
            ("date", format!("^{DATE}$")),
            ("time", format!("^{TIME}$")),
            ("date-time", format!("^{DATE}T{TIME}$")),
            (
                "uuid",
                "^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$".to_string(),
            ),
            ("ipv4", format!("^({OCTET}\\.){{3}}{OCTET}$")),
            (
                "email",
                format!("^[A-Za-z0-9._%+-]{{1,64}}@{LABEL}(\\.{LABEL})+$"),
            ),
            ("hostname", format!("^{LABEL}(\\.{LABEL})*$")),
        ])
    });
    patterns.get(format).map(String::as_str)
}

/// Keywords that only describe, never constrain.
pub(super) const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "$anchor",
    "title",
    "description",
    "default",
    "examples",
    "format",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentEncoding",
    "contentMediaType",
    "$defs",
    "definitions",
];

/// Keywords on the value itself, which an `enum` or `const` beside them would leave unchecked.
pub(super) const VALUE_KEYWORDS: [&str; 10] = [
    "pattern",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
];

/// Whether `value` is of JSON Schema type `kind` (an integer: a number without a fraction).
pub(super) fn of_type(value: &Value, kind: &str) -> bool {
    match kind {
        "string" => value.is_string(),
        "integer" => {
            value.as_f64().is_some_and(|n| n.fract() == 0.0) || value.is_i64() || value.is_u64()
        }
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => false,
    }
}

/// Keywords handled by `compile_keywords` (with `type`).
pub(super) const HANDLED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "nullable",
];

/// The keywords that bound a number.
pub(super) const BOUNDS: [&str; 4] = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];

/// Most fraction digits a number's `multipleOf` may ask for (0.000001).
const MAX_FRAC: u8 = 6;

/// A `number` schema's bounds (draft 4's boolean exclusive forms too) and, with `step`, its
/// `multipleOf` (a power of ten up to 1: 1, 0.1, 0.01, …); None without either.
pub(super) fn bounds(
    map: &Map<String, Value>,
    path: &str,
    step: bool,
) -> Result<Option<Bounds>, SchemaError> {
    let frac = match map.get("multipleOf").filter(|_| step) {
        None => None,
        Some(m) => Some(
            m.as_f64()
                .and_then(|m| (0..=MAX_FRAC).find(|&d| m * 10f64.powi(i32::from(d)) == 1.0))
                .ok_or_else(|| {
                    err(
                        path,
                        "multipleOf on a number is supported as a power of ten up to 1 \
                         (1, 0.1, 0.01, ... 0.000001)",
                    )
                })?,
        ),
    };
    if frac.is_none() && !BOUNDS.iter().any(|k| map.contains_key(*k)) {
        return Ok(None);
    }
    let mut b = Bounds {
        lo: f64::NEG_INFINITY,
        lo_open: false,
        hi: f64::INFINITY,
        hi_open: false,
        frac,
    };
    let flag = |key: &str| map.get(key) == Some(&Value::Bool(true));
    if let Some(m) = bound(map, "minimum", path)? {
        (b.lo, b.lo_open) = (m, flag("exclusiveMinimum"));
    }
    if let Some(m) = bound(map, "exclusiveMinimum", path)? {
        if m >= b.lo {
            (b.lo, b.lo_open) = (m, true);
        }
    }
    if let Some(m) = bound(map, "maximum", path)? {
        (b.hi, b.hi_open) = (m, flag("exclusiveMaximum"));
    }
    if let Some(m) = bound(map, "exclusiveMaximum", path)? {
        if m <= b.hi {
            (b.hi, b.hi_open) = (m, true);
        }
    }
    if !b.any() {
        return Err(err(
            path,
            "no number lies within minimum and maximum (and multipleOf)",
        ));
    }
    Ok(Some(b))
}

/// The least (`low`) or greatest integer an integer schema's bounds allow: the tightest of
/// `minimum` (draft 4's `exclusiveMinimum: true` beside it) and a numeric `exclusiveMinimum`, or
/// of their maximum twins; each integer bound read exactly, a fractional one through its f64.
/// The bounds are known to be numbers ([`bounds`] checked them).
fn int_bound(map: &Map<String, Value>, low: bool) -> i128 {
    let (inclusive, exclusive) = if low {
        ("minimum", "exclusiveMinimum")
    } else {
        ("maximum", "exclusiveMaximum")
    };
    // the integer bound `v` gives, `open` when it excludes itself, read from its JSON text
    let of = |v: &Value, open: bool| exact_integer_bound(&v.as_number()?.to_string(), low, open);
    let draft4_open = map.get(exclusive) == Some(&Value::Bool(true));
    let candidates = [
        map.get(inclusive).and_then(|v| of(v, draft4_open)),
        map.get(exclusive)
            .filter(|v| v.is_number())
            .and_then(|v| of(v, true)),
    ];
    let bounds = candidates.into_iter().flatten();
    if low {
        bounds.max().unwrap_or(i128::MIN)
    } else {
        bounds.min().unwrap_or(i128::MAX)
    }
}

/// An exponent's value (`+12`, `-3`, `7`); one too long for 62 bits is read as ±2^61, which
/// every bound past it equals in effect (the value saturates or comes to a fraction of one).
fn exponent_of(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX).min(1 << 61);
    Some(if negative { -magnitude } else { magnitude })
}

/// Magnitudes past this many decimal digits saturate (far outside 64 bits either way).
const MAX_BOUND_DIGITS: usize = 30;

/// The least (`low`) or greatest integer a bound written as the JSON number `text` allows,
/// `open` when it excludes itself: worked out on the decimal digits, so that no bound is
/// rounded. None where `text` is not a plain JSON number.
fn exact_integer_bound(text: &str, low: bool, open: bool) -> Option<i128> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], exponent_of(&rest[at + 1..])?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    if int.bytes().chain(frac.bytes()).all(|b| b == b'0') {
        return Some(if low {
            i128::from(open)
        } else {
            -i128::from(open)
        }); // zero
    }
    // the digits and where the point falls among them
    let digits: String = format!("{int}{frac}");
    let point = i64::try_from(int.len()).ok()?.checked_add(exponent)?;
    let (whole, fraction) = if point <= 0 {
        ("", digits.as_str())
    } else if point as usize >= digits.len() {
        (digits.as_str(), "")
    } else {
        digits.split_at(point as usize)
    };
    let pad = (point.max(0) as usize).saturating_sub(whole.len()); // zeros past the digits
    let whole = whole.trim_start_matches('0');
    let inexact = fraction.bytes().any(|b| b != b'0');
    let magnitude = if whole.len() + pad > MAX_BOUND_DIGITS {
        i128::MAX / 2
    } else {
        let n: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        n * 10i128.pow(pad as u32)
    };
    let value = if negative { -magnitude } else { magnitude };
    // the integers on the allowed side of value (value itself when whole and not open)
    Some(match (low, inexact) {
        (true, true) => value + i128::from(!negative), // ceil: toward +inf past the fraction
        (false, true) => value - i128::from(negative), // floor: toward -inf past it
        (true, false) => value + i128::from(open),
        (false, false) => value - i128::from(open),
    })
}

/// A numeric bound's value (None when absent or a draft 4 boolean).
fn bound(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<f64>, SchemaError> {
    match map.get(key) {
        None | Some(Value::Bool(_)) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| err(path, format!("{key} must be a number"))),
    }
}

/// The integers an `integer` schema's bounds allow; None without bounds.
pub(super) fn int_range(
    map: &Map<String, Value>,
    path: &str,
) -> Result<Option<IntRange>, SchemaError> {
    let step = match map.get("multipleOf") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f < 1e18)
                        .map(|f| f as u64)
                })
                .filter(|&s| s > 0)
                .ok_or_else(|| err(path, "multipleOf on an integer must be a positive integer"))?,
        ),
    };
    for key in BOUNDS {
        bound(map, key, path)?; // a number, or draft 4's boolean beside its twin
    }
    if !BOUNDS.iter().any(|k| map.contains_key(*k)) && step.is_none() {
        return Ok(None);
    }
    // the least and greatest integers within the bounds, in i128: exact where the bounds are
    // integers (past 2^53 an f64 would round them), else through the f64s
    let (lo, hi) = (int_bound(map, true), int_bound(map, false));
    let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
    if lo <= hi && (lo > max || hi < min) {
        return Err(err(
            path,
            "the integers within minimum and maximum lie outside 64 bits",
        ));
    }
    let range = IntRange {
        min: i64::try_from(lo.max(min)).unwrap_or(i64::MIN),
        max: i64::try_from(hi.min(max)).unwrap_or(i64::MAX),
        step: step.unwrap_or(1),
    };
    if lo > hi || !range.meets(i128::from(range.min), i128::from(range.max)) {
        return Err(err(
            path,
            "no integer lies within minimum and maximum (and multipleOf)",
        ));
    }
    Ok(Some(range))
}

pub(super) fn count(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<u32>, SchemaError> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| err(path, format!("{key} must be a non-negative integer"))),
    }
}

pub(super) fn check_range(
    min: u32,
    max: Option<u32>,
    what: &str,
    path: &str,
) -> Result<(), SchemaError> {
    if max.is_some_and(|max| max < min) {
        return Err(err(path, format!("{what} is above its maximum")));
    }
    Ok(())
}

/// `uniqueItems` of an array whose items are `items` (after a tuple where `tuple`): None when
/// not asked, else how many distinct items there are (the texts of a choice, counted in the
/// array frame: `enum`, `const` or boolean items, at most 128).
pub(super) fn unique_items(
    map: &Map<String, Value>,
    path: &str,
    tuple: bool,
    items: &Node,
) -> Result<Option<u32>, SchemaError> {
    match map.get("uniqueItems") {
        None | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => match items {
            Node::Choices(texts) if !tuple && texts.len() <= 128 => Ok(Some(texts.len() as u32)),
            _ => Err(err(
                path,
                "uniqueItems is supported only on arrays of enum, const or boolean items (at \
                 most 128 values), without prefixItems",
            )),
        },
        Some(_) => Err(err(path, "uniqueItems must be a boolean")),
    }
}
