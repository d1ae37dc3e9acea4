//! The vocabulary as byte strings, in prefix trees, and the allowed-token masks they give.
//!
//! A token is allowed when the matcher survives its bytes. Tokens sharing a prefix share its
//! work: the masks walk a prefix tree of the vocabulary depth-first, keep the matcher's threads
//! of each depth, and skip a whole subtree where the threads die. Inside a string (a single
//! thread between characters) every "plain" token (whole UTF-8 characters, no quote, backslash
//! or control byte) is allowed while the string has room for its characters, so that walk takes
//! only the other tokens' tree. Inside a string under a `pattern` (or the output of a regular
//! expression) the walk steps DFA states instead of threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::chars::Utf8;
use super::frame::Thread;
use super::matcher::{FreeAt, Matcher, TextAt};
use super::regex::Regex;
use super::schema::Pattern;
use super::step_raw::{text_step, TextStep};

/// `Vocab::plain` of a token that is not plain.
const NOT_PLAIN: u32 = u32::MAX;

/// A prefix tree of byte strings, its nodes in depth-first order.
#[derive(Debug, Default)]
struct Trie {
    /// Per node (node 0 is the root, the empty prefix): its last byte, its depth, the index
    /// after its subtree, and its tokens as a range of `token_ids`.
    byte: Vec<u8>,
    depth: Vec<u16>,
    end: Vec<u32>,
    tokens: Vec<(u32, u32)>,
    token_ids: Vec<u32>,
    max_depth: usize,
}

impl Trie {
    /// `tokens`: (bytes, id), in any order; empty byte strings are left out.
    fn build(mut tokens: Vec<(&[u8], u32)>) -> Self {
        tokens.retain(|(b, _)| !b.is_empty());
        tokens.sort();
        let mut t = Trie::default();
        t.push_node(0, 0);
        let mut path: Vec<u32> = vec![0]; // the nodes of the previous token's bytes
        let mut prev: &[u8] = &[];
        for &(bytes, id) in &tokens {
            let common = prev.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            while path.len() > common + 1 {
                let node = path.pop().expect("a node on the path");
                t.end[node as usize] = t.byte.len() as u32;
            }
            for (d, &b) in bytes.iter().enumerate().skip(common) {
                path.push(t.byte.len() as u32);
                t.push_node(b, d + 1);
            }
            let node = *path.last().expect("the token's node") as usize;
            if t.tokens[node].0 == t.tokens[node].1 {
                t.tokens[node] = (t.token_ids.len() as u32, t.token_ids.len() as u32);
            }
            t.token_ids.push(id);
            t.tokens[node].1 += 1;
            t.max_depth = t.max_depth.max(bytes.len());
            prev = bytes;
        }
        let total = t.byte.len() as u32;
        for node in path {
            t.end[node as usize] = total;
        }
        t
    }

    fn push_node(&mut self, byte: u8, depth: usize) {
        self.byte.push(byte);
        self.depth
            .push(u16::try_from(depth).expect("tokens shorter than 64K bytes"));
        self.end.push(0);
        self.tokens.push((0, 0));
    }

    /// Sets the bit of every token whose bytes lead `regex` from `state` to a live state: the
    /// walk of `mark` with a DFA state per depth instead of threads.
    fn mark_regex(&self, regex: &Regex, state: u32, words: &mut [u32]) {
        let mut states = vec![state; self.max_depth + 1];
        let mut i = 1;
        while i < self.byte.len() {
            let d = self.depth[i] as usize;
            match regex.next(states[d - 1], self.byte[i]) {
                None => {
                    i = self.end[i] as usize;
                    continue;
                }
                Some(next) => states[d] = next,
            }
            let (lo, hi) = self.tokens[i];
            for &id in &self.token_ids[lo as usize..hi as usize] {
                words[id as usize / 32] |= 1 << (id % 32);
            }
            i += 1;
        }
    }

    /// Every token whose bytes stay inside a string of `pattern` from DFA state `state`, with
    /// the room it needs (its characters plus the fewest a match takes after it) and the state
    /// after it. The walk of
    /// `mark` with a state and a count per depth, leaving out every subtree from a quote on
    /// (the tokens that close the string).
    fn pattern_tokens(&self, pattern: &Pattern, state: u32) -> Vec<(u32, u32, u32)> {
        let mut out = Vec::new();
        let mut states = vec![(state, 0u32); self.max_depth + 1];
        let mut i = 1;
        while i < self.byte.len() {
            let d = self.depth[i] as usize;
            let (state, chars) = states[d - 1];
            let b = self.byte[i];
            let chars = chars + u32::from(b & 0xC0 != 0x80);
            let Some((next, rest)) = pattern.step(state, b) else {
                i = self.end[i] as usize;
                continue;
            };
            states[d] = (next, chars);
            let (lo, hi) = self.tokens[i];
            for &id in &self.token_ids[lo as usize..hi as usize] {
                out.push((id, chars + rest, next));
            }
            i += 1;
        }
        out
    }

    /// Sets the bit of every token whose bytes `matcher` survives.
    fn mark(&self, matcher: &Matcher, words: &mut [u32], levels: &mut Vec<Vec<Thread>>) {
        levels.resize_with(self.max_depth + 1, Vec::new);
        levels[0].clone_from(&matcher.threads);
        let mut i = 1;
        while i < self.byte.len() {
            let d = self.depth[i] as usize;
            let (before, after) = levels.split_at_mut(d);
            let cur = &mut after[0];
            cur.clear();
            matcher
                .grammar()
                .step_all(&before[d - 1], self.byte[i], cur);
            if cur.is_empty() {
                i = self.end[i] as usize;
                continue;
            }
            let (lo, hi) = self.tokens[i];
            for &id in &self.token_ids[lo as usize..hi as usize] {
                words[id as usize / 32] |= 1 << (id % 32);
            }
            i += 1;
        }
    }
}

/// Code points of `bytes` if they are whole UTF-8 characters with no quote, backslash or
/// control character (what a JSON string takes as is).
fn plain_chars(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text
        .chars()
        .any(|c| c == '"' || c == '\\' || (c as u32) < 0x20)
    {
        return None;
    }
    Some(text.chars().count() as u32)
}

/// The vocabulary the masks cover: each id's bytes (None: never allowed under a grammar, e.g.
/// added and special tokens), `size` ids in all (the logits' width).
#[derive(Debug)]
pub struct Vocab {
    /// Unique in the process: what the grammars' caches key this vocabulary's masks by (a
    /// grammar kept across requests may outlive a vocabulary, whose address is then reused).
    id: usize,
    bytes: Vec<Option<Vec<u8>>>,
    size: usize,
    all: Trie,
    /// The tokens that are not plain.
    rest: Trie,
    /// Per id: its characters when plain, else NOT_PLAIN.
    plain: Vec<u32>,
    /// Masks inside raw text up to a stop (tool calls' keys and values), by where the text
    /// stands (a few states recur), each computed once per vocabulary.
    text_masks: Mutex<HashMap<TextKey, Arc<TextMask>>>,
}

/// Raw text's (stop, banned, matched, begin, chars): its texts and where it stands.
type TextKey = (Vec<u8>, Vec<u8>, u8, u8, Utf8);

/// Inside raw text up to a stop, in one state (`TextAt`): the tokens whose bytes stay in the
/// text or end with the stop (as mask words), and those that run on past the stop (what follows
/// decides: the matcher takes them).
#[derive(Debug)]
struct TextMask {
    words: Vec<u32>,
    past_stop: Vec<u32>,
}

impl TextMask {
    fn new(vocab: &Vocab, at: TextAt<'_>) -> Self {
        let mut words = vec![0u32; vocab.mask_words()];
        let mut past_stop = Vec::new();
        for (id, bytes) in vocab.bytes.iter().enumerate() {
            let Some(bytes) = bytes.as_deref().filter(|b| !b.is_empty()) else {
                continue;
            };
            match text_run(bytes, at) {
                TextRun::Inside => words[id / 32] |= 1 << (id % 32),
                TextRun::PastStop => past_stop.push(id as u32),
                TextRun::Dead => {}
            }
        }
        TextMask { words, past_stop }
    }
}

enum TextRun {
    /// The bytes stay in the text, or end exactly with its stop.
    Inside,
    /// The stop ends before the bytes do.
    PastStop,
    Dead,
}

/// What raw text up to a stop, standing at `at`, makes of `bytes`.
fn text_run(bytes: &[u8], at: TextAt<'_>) -> TextRun {
    let (mut chars, mut matched, mut begin) = (at.chars, at.matched, at.begin);
    for (i, &b) in bytes.iter().enumerate() {
        match text_step(at.stop, at.banned, &mut chars, matched, begin, b) {
            TextStep::Dead => return TextRun::Dead,
            TextStep::Stopped if i + 1 == bytes.len() => return TextRun::Inside,
            TextStep::Stopped => return TextRun::PastStop,
            TextStep::Inside {
                matched: m,
                begin: g,
            } => (matched, begin) = (m, g),
        }
    }
    TextRun::Inside
}

impl Vocab {
    /// `bytes[id]` for the ids the tokenizer knows; ids from `bytes.len()` to `size` have none.
    pub fn new(bytes: Vec<Option<Vec<u8>>>, size: usize) -> Self {
        Vocab::build(bytes, size, false)
    }

    /// `Vocab::new` for tool-call grammars (`bytes` with the tool tags' texts, tools.rs): a JSON
    /// string there never holds `</` (`Schema::no_close_tags`), so tokens holding it are not
    /// plain and the masks walk them.
    pub fn for_tool_calls(bytes: Vec<Option<Vec<u8>>>, size: usize) -> Self {
        Vocab::build(bytes, size, true)
    }

    fn build(bytes: Vec<Option<Vec<u8>>>, size: usize, no_close_tags: bool) -> Self {
        let size = size.max(bytes.len());
        let entries: Vec<(&[u8], u32)> = bytes
            .iter()
            .enumerate()
            .filter_map(|(id, b)| b.as_deref().map(|b| (b, id as u32)))
            .collect();
        let holds_close_tag = |b: &[u8]| no_close_tags && b.windows(2).any(|w| w == b"</");
        let plain: Vec<u32> = (0..size)
            .map(|id| {
                bytes
                    .get(id)
                    .and_then(|b| b.as_deref())
                    .filter(|b| !b.is_empty() && !holds_close_tag(b))
                    .and_then(plain_chars)
                    .unwrap_or(NOT_PLAIN)
            })
            .collect();
        let rest: Vec<(&[u8], u32)> = entries
            .iter()
            .copied()
            .filter(|&(_, id)| plain[id as usize] == NOT_PLAIN)
            .collect();
        let all = Trie::build(entries);
        let rest = Trie::build(rest);
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Vocab {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            bytes,
            size,
            all,
            rest,
            plain,
            text_masks: Mutex::default(),
        }
    }

    fn text_mask(&self, at: TextAt<'_>) -> Arc<TextMask> {
        let key = (
            at.stop.to_vec(),
            at.banned.to_vec(),
            at.matched,
            at.begin,
            at.chars,
        );
        let lock = || self.text_masks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mask) = lock().get(&key) {
            return mask.clone();
        }
        let mask = Arc::new(TextMask::new(self, at));
        lock().insert(key, mask.clone());
        mask
    }

    /// Inside free text standing at `at`: the mask words of the tokens whose bytes stay in it
    /// (whole UTF-8, no word ended), the ids of those that end one of its words, and of those
    /// that break UTF-8.
    fn free_tokens(&self, at: FreeAt<'_>) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let mut words = vec![0u32; self.mask_words()];
        let (mut ends_word, mut broken) = (Vec::new(), Vec::new());
        'tokens: for (id, bytes) in self.bytes.iter().enumerate() {
            let Some(bytes) = bytes.as_deref().filter(|b| !b.is_empty()) else {
                continue;
            };
            let (mut chars, mut state) = (at.chars, at.state);
            for &b in bytes {
                if !chars.step(b) {
                    broken.push(id as u32);
                    continue 'tokens;
                }
                state = at.words.step(state, b);
                if !at.words.ends(state).is_empty() {
                    ends_word.push(id as u32);
                    continue 'tokens;
                }
            }
            words[id / 32] |= 1 << (id % 32);
        }
        (words, ends_word, broken)
    }

    /// Ids covered by the masks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The bytes of `id`, None for tokens never allowed under a grammar (and unknown ids).
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).and_then(|b| b.as_deref())
    }

    /// 32-bit words of the allowed-token mask: bit `id % 32` of word `id / 32`.
    pub fn mask_words(&self) -> usize {
        self.size.div_ceil(32)
    }

    /// Fills `words` (`mask_words` of them) with the tokens `matcher` can take next; `ends`
    /// (the ids that end generation) are allowed when the document is whole.
    pub fn fill_mask(&self, matcher: &Matcher, ends: &[u32], words: &mut [u32]) {
        words.fill(0);
        let mut levels = Vec::new();
        if let Some((regex, state)) = matcher.in_regex() {
            self.all.mark_regex(regex, state, words);
        } else if let Some(at) = matcher.in_pattern() {
            // the tokens inside the string by DFA states, kept per state with the room each
            // needs (a string's state repeats from token to token); those with a quote (all in
            // `rest`, which is walked whole) by the matcher
            let room = at.max.map_or(u32::MAX, |max| max.saturating_sub(at.len));
            let key = (self.id, at.node, at.state);
            let inside = matcher
                .grammar()
                .pattern_tokens(key, || self.all.pattern_tokens(at.pattern, at.state));
            for &(id, needs, state) in inside.iter() {
                let fits = match at.lengths {
                    // a `minLength` too: a match of min..=max characters after the token
                    Some(lengths) => {
                        let rest = at.pattern.chars_to_match.get(state).unwrap_or(0);
                        lengths.fits(state, at.len + needs - rest)
                    }
                    None => needs <= room,
                };
                if fits {
                    words[id as usize / 32] |= 1 << (id % 32);
                }
            }
            self.rest.mark(matcher, words, &mut levels);
        } else if let Some(at) = matcher.in_free().or_else(|| {
            // at the start of free text (after a literal, or at the output's start)
            let g = matcher.grammar();
            g.has_free
                .then(|| matcher.free_among(&g.settled(&matcher.threads)))?
        }) {
            // free text: the tokens that stay in it, the same every time it stands there, then
            // those that end one of its words by the matcher (what follows the word decides)
            let key = (self.id, at.node, at.state, at.chars);
            let free = matcher.grammar().free_tokens(key, || self.free_tokens(at));
            words.copy_from_slice(&free.0);
            // where the text may end, what follows it decides the tokens the text refuses
            let others: &[u32] = if at.open { &free.2 } else { &[] };
            for &id in free.1.iter().chain(others) {
                let bytes = self.bytes(id).expect("a token with bytes");
                if !matcher.after(&matcher.threads, bytes).is_empty() {
                    words[id as usize / 32] |= 1 << (id % 32);
                }
            }
        } else if let Some(at) = matcher.in_text() {
            // raw text up to a stop: the tokens that stay in it or end with the stop, the same
            // every time it stands there, then those that run past the stop by the matcher
            let text = self.text_mask(at);
            for (w, t) in words.iter_mut().zip(&text.words) {
                *w |= t;
            }
            for &id in &text.past_stop {
                let bytes = self.bytes(id).expect("a token with bytes");
                if !matcher.after(&matcher.threads, bytes).is_empty() {
                    words[id as usize / 32] |= 1 << (id % 32);
                }
            }
        } else {
            match matcher.in_plain_string() {
                Some(room) => {
                    for (id, &chars) in self.plain.iter().enumerate() {
                        if chars != NOT_PLAIN && chars <= room {
                            words[id / 32] |= 1 << (id % 32);
                        }
                    }
                    self.rest.mark(matcher, words, &mut levels);
                }
                None => {
                    // the whole vocabulary through the matcher, once per set of threads
                    let walked = matcher
                        .grammar()
                        .walked_mask(self.id, &matcher.threads, || {
                            let mut walked = vec![0u32; words.len()];
                            self.all.mark(matcher, &mut walked, &mut levels);
                            walked
                        });
                    words.copy_from_slice(&walked);
                }
            }
        }
        if matcher.can_end() {
            for &id in ends {
                if (id as usize) < self.size {
                    words[id as usize / 32] |= 1 << (id % 32);
                }
            }
        }
    }
}
