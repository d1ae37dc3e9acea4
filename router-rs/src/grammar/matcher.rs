//! A byte-level pushdown matcher for JSON text under a compiled [`Schema`].
//!
//! The state is a set of threads, each a stack of frames (the values being read, innermost
//! last); a schema's `anyOf` forks a thread, and a thread dies on a byte it cannot take. A byte
//! sequence is a valid prefix of a document exactly when some thread survives it, so a token is
//! allowed exactly when its bytes leave a thread alive (vocab.rs walks every token that way).
//!
//! Whitespace runs are capped at [`MAX_WHITESPACE_RUN`] bytes, numbers at [`MAX_NUMBER_BYTES`]
//! and nesting at [`MAX_DEPTH`] containers, and nothing may follow the top-level value: a model
//! that keeps writing spaces, digits or brackets is still brought to an end. The stepping rules
//! per frame are in step.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::chars::Utf8;
use super::decimal::Bounds;
use super::frame::{Frame, Thread};
use super::integer::IntRange;
use super::lengths::Lengths;
use super::regex::Regex;
use super::schema::{arg_opening, Node, NodeId, Pattern, Prop, Schema, SchemaError};
use super::words::Words;

/// Longest run of whitespace between tokens of the document.
pub const MAX_WHITESPACE_RUN: u8 = 40;
/// Longest number, sign and exponent included.
pub const MAX_NUMBER_BYTES: u8 = 32;
/// Deepest nesting of objects and arrays (each mask copies a thread's stack per byte it tries).
pub const MAX_DEPTH: usize = 64;

/// The schema and the stepping rules; shared by every matcher of a request.
#[derive(Debug)]
pub struct Grammar {
    pub(super) schema: Schema,
    /// Per node: the texts of a `Choices` node and the keys of an `Object` node, as slices.
    pub(super) texts: Vec<Vec<Vec<u8>>>,
    /// The tokens that stay inside a `pattern` string and the room each needs (vocab.rs), by
    /// vocabulary, node and DFA state: a string's state repeats from token to token.
    pattern_tokens: Mutex<HashMap<PatternKey, PatternTokens>>,
    /// Masks that walked the whole vocabulary with the matcher, by vocabulary and threads (an
    /// EBNF grammar's positions repeat: the items of a repetition, a word's letters).
    walked_masks: Mutex<HashMap<(usize, Vec<Thread>), WalkedMask>>,
    /// Inside free text (`Node::Free`), by vocabulary, node and where the text stands: the
    /// tokens that stay in it and those that end one of its words (vocab.rs).
    free_tokens: Mutex<HashMap<FreeKey, FreeTokens>>,
    /// The schema has free text (`Node::Free`): its masks may look for it past raw frames.
    pub(crate) has_free: bool,
    /// Longest run of whitespace between JSON tokens (0: compact JSON).
    pub(super) max_ws: u8,
}

/// (vocabulary id, free-text node, words' automaton state, UTF-8 state)
pub(crate) type FreeKey = (usize, NodeId, u32, Utf8);
/// The mask words of the tokens that stay in free text, the ids of those that end a word, and
/// the ids of those that break UTF-8 there.
pub(crate) type FreeTokens = Arc<(Vec<u32>, Vec<u32>, Vec<u32>)>;

/// Free-text token sets a grammar keeps in `Grammar::free_tokens` (19 KB each and the ids).
const MAX_FREE_TOKENS: usize = 64;

/// The mask words of `Vocab::fill_mask`'s walk (before the ends are added).
pub(crate) type WalkedMask = Arc<Vec<u32>>;

/// Masks a grammar keeps in `Grammar::walked_masks` (19 KB each on a 155K vocabulary).
const MAX_WALKED_MASKS: usize = 256;

/// (vocabulary id, pattern node, DFA state)
pub(crate) type PatternKey = (usize, NodeId, u32);
/// (token id, room it needs, DFA state after it) of the tokens that stay inside a `pattern`
/// string.
pub(crate) type PatternTokens = Arc<Vec<(u32, u32, u32)>>;

/// Token lists a grammar keeps in `Grammar::pattern_tokens` (up to about 1.2 MB each on a 155K
/// vocabulary).
const MAX_PATTERN_LISTS: usize = 8;

/// The value `cache` keeps under `key`, else `fill()`'s, kept while the cache holds fewer than
/// `room` (a poisoned lock is taken as it is: the map stays whole).
fn kept<K: std::hash::Hash + Eq, V>(
    cache: &Mutex<HashMap<K, Arc<V>>>,
    key: K,
    room: usize,
    fill: impl FnOnce() -> V,
) -> Arc<V> {
    let lock = || cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(value) = lock().get(&key) {
        return value.clone();
    }
    let value = Arc::new(fill());
    let mut map = lock();
    if map.len() < room {
        map.insert(key, value.clone());
    }
    value
}

impl Grammar {
    pub fn new(schema: Schema) -> Arc<Self> {
        Self::with_whitespace(schema, MAX_WHITESPACE_RUN)
    }

    /// [`Grammar::new`] with whitespace runs between JSON tokens capped at `max_ws` bytes (0:
    /// none, vLLM's `disable_any_whitespace`).
    pub fn with_whitespace(schema: Schema, max_ws: u8) -> Arc<Self> {
        let texts = schema
            .nodes
            .iter()
            .map(|n| match n {
                Node::Choices(t) => t.clone(),
                Node::Object { props, .. } => props.iter().map(|p: &Prop| p.key.clone()).collect(),
                Node::Args { props, .. } => props.iter().map(|p| arg_opening(&p.key)).collect(),
                _ => Vec::new(),
            })
            .collect();
        let has_free = schema.nodes.iter().any(|n| matches!(n, Node::Free { .. }));
        Arc::new(Grammar {
            schema,
            texts,
            pattern_tokens: Mutex::default(),
            walked_masks: Mutex::default(),
            free_tokens: Mutex::default(),
            has_free,
            max_ws,
        })
    }

    /// The walked mask kept for (`vocab`, `threads`), else `walk()`'s (kept while there is
    /// room).
    pub(crate) fn walked_mask(
        &self,
        vocab: usize,
        threads: &[Thread],
        walk: impl FnOnce() -> Vec<u32>,
    ) -> WalkedMask {
        let key = (vocab, threads.to_vec());
        kept(&self.walked_masks, key, MAX_WALKED_MASKS, walk)
    }

    /// The free-text token sets kept under `key`, else `fill()`'s (kept while there is room).
    pub(crate) fn free_tokens(
        &self,
        key: FreeKey,
        fill: impl FnOnce() -> (Vec<u32>, Vec<u32>, Vec<u32>),
    ) -> FreeTokens {
        kept(&self.free_tokens, key, MAX_FREE_TOKENS, fill)
    }

    /// The token list cached under `key`, else `fill()`'s (kept while the cache has room).
    pub(crate) fn pattern_tokens(
        &self,
        key: PatternKey,
        fill: impl FnOnce() -> Vec<(u32, u32, u32)>,
    ) -> PatternTokens {
        kept(&self.pattern_tokens, key, MAX_PATTERN_LISTS, fill)
    }

    /// Output matching `pattern` whole.
    pub fn regex(pattern: &str) -> Result<Arc<Self>, SchemaError> {
        Ok(Grammar::new(Schema::regex(pattern)?))
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub(crate) fn start(&self) -> Vec<Thread> {
        let root = self.schema.root;
        let first = match &self.schema.nodes[root] {
            // raw text of a pattern
            Node::Pattern { regex, .. } if self.schema.raw => Frame::Regex {
                node: root,
                state: regex.regex.start(),
            },
            // raw text: the choice's first byte at once, no whitespace before it
            Node::Choices(texts) if self.schema.raw => Frame::Choice {
                node: root,
                lo: 0,
                hi: texts.len() as u32,
                pos: 0,
            },
            // other raw text (tool calls): no whitespace before it either
            _ if self.schema.raw => Frame::Raw(root),
            _ => Frame::Value(root),
        };
        vec![Thread {
            stack: vec![first],
            ws: 0,
        }]
    }

    /// Every thread `threads` become after byte `b`, appended to `out` (deduplicated).
    pub(crate) fn step_all(&self, threads: &[Thread], b: u8, out: &mut Vec<Thread>) {
        for t in threads {
            self.feed(t.clone(), b, out);
        }
    }

    /// The range of `Node::Integer` `node`.
    pub(super) fn int_range(&self, node: NodeId) -> IntRange {
        match &self.schema.nodes[node] {
            Node::Integer(range) => *range,
            _ => unreachable!("an integer frame reads an integer node"),
        }
    }

    /// The bounds of `Node::Decimal` `node`.
    pub(super) fn bounds(&self, node: NodeId) -> Bounds {
        match &self.schema.nodes[node] {
            Node::Decimal(bounds) => *bounds,
            _ => unreachable!("a decimal frame reads a decimal node"),
        }
    }

    /// The regular expression of `Node::Pattern` `node`.
    pub(super) fn pattern(&self, node: NodeId) -> &Regex {
        match &self.schema.nodes[node] {
            Node::Pattern { regex, .. } | Node::RawRegex(regex) => &regex.regex,
            _ => unreachable!("a regex frame reads a pattern node"),
        }
    }

    /// Whether the thread's document can end here: its stack is empty once the frames that end
    /// only when something else follows (a number, a choice text) are closed.
    fn can_end(&self, t: &Thread) -> bool {
        for frame in t.stack.iter().rev() {
            let complete = match frame {
                Frame::Number { at, .. } => at.complete(),
                Frame::Integer { node, at } => self.int_range(*node).holds(*at),
                Frame::Decimal { node, at } => self.bounds(*node).holds(*at),
                Frame::Choice { node, lo, hi, pos } => {
                    lo < hi && self.texts[*node][*lo as usize].len() == *pos as usize
                }
                Frame::Regex { node, state } => self.pattern(*node).can_end(*state),
                Frame::Raw(node) => self.nullable(*node),
                frame if frame.is_raw() => self.raw_complete(frame),
                _ => false,
            };
            if !complete {
                return false;
            }
        }
        true
    }
}

/// Where a thread inside a `pattern` string stands: DFA state and characters so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PatternAt<'a> {
    pub(crate) node: NodeId,
    pub(crate) pattern: &'a Pattern,
    pub(crate) state: u32,
    pub(crate) len: u32,
    pub(crate) max: Option<u32>,
    pub(crate) lengths: Option<&'a Lengths>,
}

/// Where every thread inside free text stands (see `Frame::Free`): one node's words, at one
/// state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FreeAt<'a> {
    pub(crate) node: NodeId,
    pub(crate) words: &'a Words,
    pub(crate) state: u32,
    pub(crate) chars: Utf8,
    /// Some thread's text may end here (what follows it then reads the next bytes).
    pub(crate) open: bool,
}

/// Where a thread inside raw text up to a stop stands (see `Frame::Text`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TextAt<'a> {
    pub(crate) stop: &'a [u8],
    pub(crate) banned: &'a [u8],
    pub(crate) matched: u8,
    pub(crate) begin: u8,
    pub(crate) chars: Utf8,
}

/// A document being read: the grammar and the threads alive after the bytes so far.
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    pub(crate) threads: Vec<Thread>,
}

impl Matcher {
    pub fn new(grammar: Arc<Grammar>) -> Self {
        let threads = grammar.start();
        Matcher { grammar, threads }
    }

    pub fn grammar(&self) -> &Arc<Grammar> {
        &self.grammar
    }

    /// The threads after `bytes` from `threads` (empty: the bytes cannot continue the document).
    pub(crate) fn after(&self, threads: &[Thread], bytes: &[u8]) -> Vec<Thread> {
        let mut cur = threads.to_vec();
        let mut next = Vec::new();
        for &b in bytes {
            next.clear();
            self.grammar.step_all(&cur, b, &mut next);
            if next.is_empty() {
                return next;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        cur
    }

    /// Takes `bytes` if they continue the document; false (and nothing taken) if not.
    pub fn accept(&mut self, bytes: &[u8]) -> bool {
        let next = self.after(&self.threads, bytes);
        if next.is_empty() {
            return false;
        }
        self.threads = next;
        true
    }

    /// Whether the bytes so far are a whole document.
    pub fn can_end(&self) -> bool {
        self.threads.iter().any(|t| self.grammar.can_end(t))
    }

    /// Whether the document is whole and no byte can extend it.
    pub fn is_terminated(&self) -> bool {
        if !self.can_end() {
            return false;
        }
        let mut out = Vec::new();
        (0..=255u8).all(|b| {
            out.clear();
            self.grammar.step_all(&self.threads, b, &mut out);
            out.is_empty()
        })
    }

    /// A single thread reading a regular expression: the pattern and its DFA state (the masks
    /// then walk the vocabulary with DFA states alone).
    pub(crate) fn in_regex(&self) -> Option<(&Regex, u32)> {
        match self.threads.as_slice() {
            [t] => match t.stack.as_slice() {
                [Frame::Regex { node, state }] => Some((self.grammar.pattern(*node), *state)),
                _ => None,
            },
            _ => None,
        }
    }

    /// A single thread inside a string of a `pattern`: where its DFA stands (the masks then walk
    /// the tokens that stay in the string with DFA states alone).
    pub(crate) fn in_pattern(&self) -> Option<PatternAt<'_>> {
        let [t] = self.threads.as_slice() else {
            return None;
        };
        let Frame::Pattern { node, state, len } = *t.stack.last()? else {
            return None;
        };
        match &self.grammar.schema.nodes[node] {
            Node::Pattern {
                regex,
                max,
                lengths,
            } => Some(PatternAt {
                node,
                pattern: regex,
                state,
                len,
                max: *max,
                lengths: lengths.as_deref(),
            }),
            _ => None,
        }
    }

    /// Every thread inside free text of the same words, standing at the same place (a
    /// structural tag's text between its structures: the masks then step the words' automaton
    /// alone, but for the tokens that end a word).
    pub(crate) fn in_free(&self) -> Option<FreeAt<'_>> {
        self.free_among(&self.threads)
    }

    /// Whether, with its innermost frame done, thread `t` could still read a byte (rather
    /// than end the document there).
    fn more_after(&self, t: &Thread) -> bool {
        let mut done = t.clone();
        done.stack.pop();
        let settled = self.grammar.settled(std::slice::from_ref(&done));
        settled.iter().any(|s| !s.stack.is_empty())
    }

    /// `in_free` of `threads` (the matcher's, or what they settle to).
    pub(crate) fn free_among(&self, threads: &[Thread]) -> Option<FreeAt<'_>> {
        let mut at: Option<FreeAt<'_>> = None;
        for t in threads {
            let Some(&Frame::Free { node, state, chars }) = t.stack.last() else {
                return None;
            };
            let Node::Free { words, open, .. } = &self.grammar.schema.nodes[node] else {
                return None;
            };
            // the text may end here and something after it read the next bytes
            let open = *open && chars.at_boundary() && self.more_after(t);
            match &mut at {
                None => {
                    at = Some(FreeAt {
                        node,
                        words,
                        state,
                        chars,
                        open,
                    })
                }
                Some(a)
                    if std::ptr::eq(a.words, &**words) && (a.state, a.chars) == (state, chars) =>
                {
                    a.open |= open
                }
                Some(_) => return None,
            }
        }
        at
    }

    /// A single thread inside raw text that runs up to a stop (a tool call's key or value, or
    /// just before it): where the text stands.
    pub(crate) fn in_text(&self) -> Option<TextAt<'_>> {
        let [t] = self.threads.as_slice() else {
            return None;
        };
        let (node, matched, begin, chars) = match *t.stack.last()? {
            Frame::Text {
                node,
                matched,
                begin,
                chars,
            } => (node, matched, begin, chars),
            Frame::Raw(node) => (node, 0, 0, Utf8::default()),
            _ => return None,
        };
        match &self.grammar.schema.nodes[node] {
            Node::Text { stop, banned } => Some(TextAt {
                stop,
                banned,
                matched,
                begin,
                chars,
            }),
            _ => None,
        }
    }

    /// A single thread between the characters of a string that takes any character (a value,
    /// or a member name where other members are allowed): the characters it may still take (the
    /// fast path of the token masks). None otherwise.
    pub(crate) fn in_plain_string(&self) -> Option<u32> {
        let [t] = self.threads.as_slice() else {
            return None;
        };
        if self.grammar.schema.no_close_tags {
            // after a `<` a token that starts with `/` dies: the slow path sees it
            let chars = match t.stack.last()? {
                Frame::Str { chars, .. } | Frame::Key { chars, .. } => chars,
                _ => return None,
            };
            if chars.after_lt() {
                return None;
            }
        }
        match t.stack.last()? {
            Frame::Str {
                len, max, chars, ..
            } if chars.at_boundary() => Some(max - len),
            Frame::Key { node, chars, .. } if chars.at_boundary() => {
                // any name only where another member may still come (maxProperties)
                let n = t.stack.len();
                let Frame::Object { seen, count, .. } = t.stack[n - 2] else {
                    return None;
                };
                match &self.grammar.schema.nodes[*node] {
                    Node::Object {
                        additional: Some(_),
                        ..
                    } if self.grammar.room_for_others(*node, seen, count) => Some(u32::MAX),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}
