//! JSON Schema to the matcher's nodes.
//!
//! Supported: `type` (one or a list), `properties`, `required`, `additionalProperties` (bool or a
//! schema), `items`, `prefixItems` (and draft 7's list `items` with `additionalItems`), `minItems`,
//! `maxItems`, `uniqueItems` (on arrays of `enum` / `const` / boolean items), `minProperties`, `maxProperties`, `minLength`, `maxLength`, `pattern`, `minimum`,
//! `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (numbers with them are written as plain
//! decimals of at most 15 digits), `multipleOf` (a positive integer on integers; on numbers a power of ten up to 1, as
//! at most that many fraction digits), `enum`,
//! `const`, `anyOf`, `oneOf` (taken as `anyOf`: exclusivity is not enforced), `allOf` of one
//! schema, `$ref` to
//! `#`, `#/$defs/…` and `#/definitions/…` (recursion allowed), `nullable`, and the string
//! formats `date`, `time`, `date-time`, `uuid`, `ipv4`, `email` and `hostname` (enforced as
//! patterns where neither a pattern nor a minimum length is given). Annotations are ignored
//! (`title`, `description`, `default`, `examples`, other formats, …). Any keyword that asserts
//! something the matcher cannot enforce (`uniqueItems` on other items, another `multipleOf` on a number, …)
//! is an error,
//! so a request never gets output that silently breaks its schema.
//!
//! A `pattern` (regex crate syntax; it may match anywhere in the string unless anchored with `^`
//! and `$`) is matched against the string's characters as written: its strings hold no escape
//! sequences, so it cannot require `"`, `\` or control characters. A `minLength` beside it
//! closes the string only at a match of `minLength..=maxLength` characters (lengths.rs).
//!
//! An object with `properties` and no `additionalProperties` takes only those properties (the
//! strict reading that OpenAI's structured outputs use); an object without `properties` takes
//! any members.

use std::sync::Arc;

use serde_json::Value;

use super::compile::{choices_node, err, Builder, ANY};
use super::decimal::Bounds;
use super::integer::IntRange;
use super::lengths::Lengths;
use super::regex::{CharsToMatch, Regex};
use super::words::Words;

/// Index of a node in [`Schema::nodes`].
pub type NodeId = usize;

/// Properties one object schema may list (the matcher keeps the seen ones in a 128-bit set).
pub const MAX_PROPERTIES: usize = 128;

/// What a value must look like.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// An object of `min..=max` members: `props` sorted by their JSON-escaped names; members
    /// other than those take `additional` (None: no other members).
    Object {
        props: Vec<Prop>,
        additional: Option<NodeId>,
        min: u32,
        max: Option<u32>,
    },
    /// An array: its first items take `prefix` in order (a tuple), the others `items`; with
    /// `unique` (`uniqueItems`; no prefix, `items` a `Choices` node of at most 128 texts) no
    /// text twice.
    Array {
        prefix: Vec<NodeId>,
        items: NodeId,
        min: u32,
        max: Option<u32>,
        unique: bool,
    },
    /// A string of `min..=max` characters (code points).
    Str {
        min: u32,
        max: Option<u32>,
    },
    /// A string of at most `max` characters, written without escapes, that `regex` matches
    /// whole; as the root of a raw schema, the output itself (no quotes). With `lengths` (a
    /// `minLength` beside the pattern), only a match of its `min..=max` characters.
    Pattern {
        regex: Arc<Pattern>,
        max: Option<u32>,
        lengths: Option<Arc<Lengths>>,
    },
    Number {
        integer: bool,
    },
    /// An integer within `range`.
    Integer(IntRange),
    /// A plain decimal within `bounds`.
    Decimal(Bounds),
    /// One of these exact JSON texts, sorted (enum, const, true/false, null).
    Choices(Vec<Vec<u8>>),
    /// Any of these nodes.
    AnyOf(Vec<NodeId>),
    /// Raw text (tool calls, tools.rs): these nodes one after the other, nothing between.
    Seq(Vec<NodeId>),
    /// Raw text that this regular expression matches whole (a tool call's string value of a
    /// `format`; then whatever follows in the sequence holding it).
    RawRegex(Arc<Pattern>),
    /// Raw text: any characters up to the first `stop`, which it reads too, without `banned`
    /// anywhere before (both start with `<` and hold no other).
    Text {
        stop: Vec<u8>,
        banned: Vec<u8>,
    },
    /// Raw text: a tool call's arguments, pairs `<arg_key>K</arg_key><arg_value>` and the value
    /// (K's node, which reads the closing `</arg_value>`), each listed K at most once, in any
    /// order, the required ones all given. `props` sorted by their pair's opening text
    /// ([`arg_opening`]); other keys, where `additional`, through that node (a whole pair).
    Args {
        props: Vec<Prop>,
        additional: Option<NodeId>,
    },
    /// Raw text: any characters up to the first of `words` to end in them; after word k the
    /// text is read and `then[k]` follows (None: the text may not hold word k). With `open`,
    /// the text may also end anywhere before a word (a structural tag's free text).
    Free {
        words: Arc<Words>,
        then: Vec<Option<NodeId>>,
        open: bool,
    },
    /// Raw text: `item` `min..=max` times, nothing between.
    Repeat {
        item: NodeId,
        min: u32,
        max: Option<u32>,
    },
}

/// What opens the value of argument `key` in a tool call: `<arg_key>key</arg_key><arg_value>`.
pub fn arg_opening(key: &[u8]) -> Vec<u8> {
    [b"<arg_key>".as_slice(), key, b"</arg_key><arg_value>"].concat()
}

/// A compiled pattern and, for a string's, the fewest characters from each DFA state that can
/// still lead to a match (states missing there cannot; empty for raw output, where every live
/// state can). `no_lt`: the text holds no `<` (a tool call's argument, which never holds `</`);
/// `chars_to_match` then counts only texts without it.
#[derive(Debug, PartialEq)]
pub struct Pattern {
    pub regex: Regex,
    pub chars_to_match: CharsToMatch,
    pub no_lt: bool,
}

impl Pattern {
    /// Inside a string of this pattern: the DFA state after byte `b` and the fewest characters
    /// a match then takes; None where `b` cannot be written there or no match can follow.
    pub(crate) fn step(&self, state: u32, b: u8) -> Option<(u32, u32)> {
        if !unescaped(b) || (self.no_lt && b == b'<') {
            return None;
        }
        let next = self.regex.next(state, b)?;
        Some((next, self.chars_to_match.get(next)?))
    }
}

/// One listed property of an object (or argument of a tool call).
#[derive(Debug, Clone, PartialEq)]
pub struct Prop {
    /// The name as it appears between the quotes in JSON (escaped); an argument's as written.
    pub key: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

/// A compiled schema: nodes and the root's id.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    /// The root is raw text (a choice of strings, or a pattern's text): no whitespace before it.
    pub raw: bool,
    /// JSON strings and member names never hold `</` (tool calls, tools.rs: the tool parser
    /// would take it for the start of a closing tag; `<\/` writes the same text).
    pub no_close_tags: bool,
}

/// A schema the matcher cannot enforce, with where in it (a JSON pointer) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

impl Schema {
    /// Any JSON object (`response_format` `json_object`).
    pub fn any_object() -> Self {
        let mut b = Builder::new(&Value::Null);
        let root = b.push(Node::Object {
            props: Vec::new(),
            additional: Some(ANY),
            min: 0,
            max: None,
        });
        Schema {
            nodes: b.nodes,
            root,
            raw: false,
            no_close_tags: false,
        }
    }

    /// Exactly one of `choices` (raw text, not JSON).
    pub fn one_of(choices: &[String]) -> Self {
        let mut b = Builder::new(&Value::Null);
        let root = b.push(choices_node(choices.iter().map(String::as_bytes)));
        Schema {
            nodes: b.nodes,
            root,
            raw: true,
            no_close_tags: false,
        }
    }

    /// Output that `pattern` matches whole (raw text, not JSON).
    pub fn regex(pattern: &str) -> Result<Self, SchemaError> {
        let mut b = Builder::new(&Value::Null);
        let root = b.push(Node::Pattern {
            regex: Arc::new(Pattern {
                regex: Regex::new(pattern)?.matching_some()?,
                chars_to_match: CharsToMatch::default(),
                no_lt: false,
            }),
            max: None,
            lengths: None,
        });
        Ok(Schema {
            nodes: b.nodes,
            root,
            raw: true,
            no_close_tags: false,
        })
    }

    /// Compiles a JSON Schema (an object or a boolean).
    pub fn compile(schema: &Value) -> Result<Self, SchemaError> {
        let mut b = Builder::new(schema);
        let root = b.compile(schema, "#")?;
        let compiled = Schema {
            nodes: b.nodes,
            root,
            raw: false,
            no_close_tags: false,
        };
        compiled.check_alternatives()?;
        Ok(compiled)
    }

    /// Refuses alternatives that lead back to themselves with no value read in between
    /// (`{"$ref": "#"}`, or two definitions that only refer to each other): the matcher would
    /// expand them forever.
    pub(super) fn check_alternatives(&self) -> Result<(), SchemaError> {
        // 0: not visited, 1: on the current path, 2: done
        let mut state = vec![0u8; self.nodes.len()];
        fn visit(nodes: &[Node], id: NodeId, state: &mut [u8]) -> bool {
            match state[id] {
                1 => return false,
                2 => return true,
                _ => {}
            }
            state[id] = 1;
            if let Node::AnyOf(alts) = &nodes[id] {
                if !alts.iter().all(|&a| visit(nodes, a, state)) {
                    return false;
                }
            }
            state[id] = 2;
            true
        }
        for id in 0..self.nodes.len() {
            if !visit(&self.nodes, id, &mut state) {
                return Err(err(
                    "#",
                    "a $ref that leads back to itself before any value",
                ));
            }
        }
        Ok(())
    }
}

/// Bytes a string under a `pattern` may hold as they are: printable ASCII but `"` and `\`, and
/// every byte of a multi-byte UTF-8 character (the pattern's DFA keeps the sequences valid).
pub(crate) fn unescaped(b: u8) -> bool {
    b >= 0x80 || (b >= 0x20 && b != b'"' && b != b'\\')
}

/// The texts in `lo..hi` (sorted, all sharing their first `pos` bytes) whose byte `pos` is `b`.
pub(super) fn narrow(texts: &[Vec<u8>], lo: u32, hi: u32, pos: u32, b: u8) -> (u32, u32) {
    let range = &texts[lo as usize..hi as usize];
    let p = pos as usize;
    let key = |t: &Vec<u8>| t.get(p).copied();
    let start = range.partition_point(|t| key(t) < Some(b));
    let end = range.partition_point(|t| key(t) <= Some(b));
    (lo + start as u32, lo + end as u32)
}
