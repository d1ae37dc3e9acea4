//! Text that matches a regular expression whole: the output of vLLM's `guided_regex`, or the
//! characters of a JSON string under a schema's `pattern`. A dense DFA over bytes, walked by the
//! matcher one byte at a time.
//!
//! The DFA is built for the pattern followed by the byte 0xFF, which UTF-8 text never holds:
//! its matches then end only where the text ends (a DFA reports a match one byte late, so
//! without the end byte every byte after a match would look alive), and a state that is not
//! dead can still reach a match. The text's end (`$`, `\z`) is read as the end of a line that
//! ends at that byte; multi-line anchors (`(?m)`) are refused. The pattern is parsed alone and
//! joined to what surrounds it as syntax trees, so none of its text (a `(?x)` comment, say) can
//! reach past it.

use std::collections::{HashMap, VecDeque};

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::nfa::thompson;
use regex_automata::util::look::LookMatcher;
use regex_automata::util::primitives::StateID;
use regex_automata::util::{start, syntax};
use regex_automata::Anchored;
use regex_syntax::hir::{Capture, Hir, HirKind, Look, Repetition};

use super::schema::SchemaError;

/// The byte after the output (never in UTF-8 text).
const END: u8 = 0xFF;

/// Largest DFA a pattern may build (bytes): beyond it the pattern is refused.
const MAX_DFA_BYTES: usize = 16 << 20;
/// Most DFA states a string pattern may reach (`chars_to_match` walks them all).
const MAX_STATES: usize = 1 << 16;

/// A compiled pattern: the whole text must match it.
#[derive(Debug, Clone)]
pub struct Regex {
    /// The text compiled (a search pattern wrapped), which equality compares.
    pattern: String,
    dfa: dense::DFA<Vec<u32>>,
    start: u32,
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Regex {
    /// Compiles `pattern` (regex crate syntax, anchored at both ends); an error names why.
    pub fn new(pattern: &str) -> Result<Self, SchemaError> {
        Self::build(pattern, false, "regex")
    }

    /// `self`, or an error where no text matches it (a grammar of it would have no document).
    /// Patterns too large to tell are taken.
    pub fn matching_some(self) -> Result<Self, SchemaError> {
        match self.chars_to_match(|b| b != END) {
            Ok(live) if live.get(self.start).is_none() => Err(SchemaError {
                path: "regex".into(),
                message: "the pattern matches no text".into(),
            }),
            _ => Ok(self),
        }
    }

    /// A JSON Schema `pattern` (at `path`): it matches anywhere in the string, unless anchored.
    pub fn search(pattern: &str, path: &str) -> Result<Self, SchemaError> {
        Self::build(pattern, true, path)
    }

    /// `pattern` matched whole, or with `search` anywhere in the text.
    fn build(pattern: &str, search: bool, path: &str) -> Result<Self, SchemaError> {
        let err = |message: String| SchemaError {
            path: path.into(),
            message,
        };
        // the pattern matches UTF-8 text only (the wrapper's end byte is not UTF-8)
        let parse = |text: &str, utf8: bool| {
            syntax::parse_with(text, &syntax::Config::new().utf8(utf8)).map_err(Box::new)
        };
        let user =
            parse(pattern, true).map_err(|e| err(format!("the pattern is not valid: {e}")))?;
        let user = ending_at_end_byte(user)
            .map_err(|e| err(format!("the pattern cannot be used: {e}")))?;
        let wrapper = |text: &str| parse(text, false).expect("a valid wrapper pattern");
        let mut parts = vec![user, wrapper("(?-u:\\xFF)")];
        if search {
            parts.insert(0, wrapper("(?s:.*)"));
            parts.insert(2, wrapper("(?s:.*)"));
        }
        let mut anchors = LookMatcher::new();
        anchors.set_line_terminator(END);
        let nfa = thompson::Compiler::new()
            .configure(thompson::Config::new().utf8(false).look_matcher(anchors))
            .build_from_hir(&Hir::concat(parts))
            .map_err(|e| err(format!("the pattern cannot be used: {e}")))?;
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .dfa_size_limit(Some(MAX_DFA_BYTES))
                    .determinize_size_limit(Some(MAX_DFA_BYTES)),
            )
            .build_from_nfa(&nfa)
            .map_err(|e| err(format!("the pattern cannot be used: {e}")))?;
        let whole = if search {
            format!("(?s:.*)(?:{pattern})(?s:.*)")
        } else {
            pattern.to_string()
        };
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .map_err(|e| err(format!("the pattern cannot be used: {e}")))?;
        Ok(Regex {
            pattern: whole,
            dfa,
            start: start.as_u32(),
        })
    }

    /// For every state that text of bytes `allowed` reaches from the start and can lead on to a
    /// match: the fewest characters (UTF-8 lead bytes) that lead there. None for the start when
    /// it cannot reach a match; an error past MAX_STATES states.
    pub(crate) fn chars_to_match(
        &self,
        allowed: impl Fn(u8) -> bool,
    ) -> Result<CharsToMatch, String> {
        // the reachable states and, per state, the states that step into it (and whether the
        // byte starts a character)
        let mut into: HashMap<u32, Vec<(u32, u32)>> = HashMap::from([(self.start, Vec::new())]);
        let mut todo = vec![self.start];
        while let Some(state) = todo.pop() {
            for b in (0..=255u8).filter(|&b| allowed(b)) {
                let Some(next) = self.next(state, b) else {
                    continue;
                };
                if !into.contains_key(&next) {
                    if into.len() >= MAX_STATES {
                        return Err(format!("the pattern has more than {MAX_STATES} states"));
                    }
                    todo.push(next);
                }
                into.entry(next)
                    .or_default()
                    .push((state, u32::from(b & 0xC0 != 0x80)));
            }
        }
        // 0-1 breadth-first search back from the matches
        let mut dist: HashMap<u32, u32> = HashMap::new();
        let mut queue: VecDeque<(u32, u32)> = into
            .keys()
            .filter(|&&s| self.can_end(s))
            .map(|&s| (s, 0))
            .collect();
        while let Some((state, d)) = queue.pop_front() {
            if dist.get(&state).is_some_and(|&seen| seen <= d) {
                continue;
            }
            dist.insert(state, d);
            for &(prev, w) in &into[&state] {
                if w == 0 {
                    queue.push_front((prev, d));
                } else {
                    queue.push_back((prev, d + 1));
                }
            }
        }
        let shift = self.dfa.stride2() as u32;
        let slots = into
            .keys()
            .map(|&s| (s >> shift) as usize + 1)
            .max()
            .unwrap_or(0);
        let mut chars = vec![u32::MAX; slots];
        for (state, d) in dist {
            chars[(state >> shift) as usize] = d;
        }
        Ok(CharsToMatch { shift, chars })
    }

    pub(crate) fn start(&self) -> u32 {
        self.start
    }

    /// The state after byte `b`, None where no match can follow.
    pub(crate) fn next(&self, state: u32, b: u8) -> Option<u32> {
        if b == END {
            return None;
        }
        let next = self.dfa.next_state(id(state), b);
        (!self.dfa.is_dead_state(next) && !self.dfa.is_quit_state(next)).then(|| next.as_u32())
    }

    /// Whether the bytes read so far match whole.
    pub(crate) fn can_end(&self, state: u32) -> bool {
        let ended = self.dfa.next_state(id(state), END);
        self.dfa.is_match_state(self.dfa.next_eoi_state(ended))
    }
}

/// `hir` with the text's end (`$` outside multi-line mode, `\z`) read as the end of the line that
/// the END byte ends; an error for multi-line anchors, whose lines would end at newlines too.
/// (`^` and `\A` need nothing: the DFA starts anchored at the text's start.)
fn ending_at_end_byte(hir: Hir) -> Result<Hir, String> {
    let each = |subs: Vec<Hir>| -> Result<Vec<Hir>, String> {
        subs.into_iter().map(ending_at_end_byte).collect()
    };
    Ok(match hir.into_kind() {
        HirKind::Look(Look::End) => Hir::look(Look::EndLF),
        HirKind::Look(Look::StartLF | Look::EndLF | Look::StartCRLF | Look::EndCRLF) => {
            return Err("multi-line anchors ((?m) with ^ or $) are not supported".into())
        }
        HirKind::Look(look) => Hir::look(look),
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => Hir::literal(lit.0),
        HirKind::Class(class) => Hir::class(class),
        HirKind::Repetition(rep) => Hir::repetition(Repetition {
            sub: Box::new(ending_at_end_byte(*rep.sub)?),
            ..rep
        }),
        HirKind::Capture(cap) => Hir::capture(Capture {
            sub: Box::new(ending_at_end_byte(*cap.sub)?),
            ..cap
        }),
        HirKind::Concat(subs) => Hir::concat(each(subs)?),
        HirKind::Alternation(subs) => Hir::alternation(each(subs)?),
    })
}

fn id(state: u32) -> StateID {
    StateID::new(state as usize).expect("a state id of this DFA")
}

/// `Regex::chars_to_match`: per state (a premultiplied DFA id shifted to an index), the fewest
/// characters to a match, u32::MAX where none can follow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CharsToMatch {
    shift: u32,
    chars: Vec<u32>,
}

impl CharsToMatch {
    /// The fewest characters from `state` to a match; None where no match can follow.
    pub(crate) fn get(&self, state: u32) -> Option<u32> {
        self.chars
            .get((state >> self.shift) as usize)
            .copied()
            .filter(|&c| c != u32::MAX)
    }
}
