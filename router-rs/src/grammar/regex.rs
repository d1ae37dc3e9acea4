//! Output that matches a regular expression whole (vLLM's `guided_regex`): a dense DFA over
//! bytes, walked by the matcher one byte at a time (a thread's single `Frame::Regex`).
//!
//! The DFA is built for the pattern followed by the byte 0xFF, which UTF-8 text never holds:
//! its matches then end only where the output ends (a DFA reports a match one byte late, so
//! without the end byte every byte after a match would look alive), and a state that is not
//! dead can still reach a match.

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::nfa::thompson;
use regex_automata::util::primitives::StateID;
use regex_automata::util::{start, syntax};
use regex_automata::Anchored;

use super::schema::SchemaError;

/// The byte after the output (never in UTF-8 text).
const END: u8 = 0xFF;

/// Largest DFA a pattern may build (bytes): beyond it the pattern is refused.
const MAX_DFA_BYTES: usize = 16 << 20;

/// A compiled pattern: the whole output must match it.
#[derive(Debug, Clone)]
pub struct Regex {
    dfa: dense::DFA<Vec<u32>>,
    start: u32,
}

impl Regex {
    /// Compiles `pattern` (regex crate syntax, anchored at both ends); an error names why.
    pub fn new(pattern: &str) -> Result<Self, SchemaError> {
        let err = |message: String| SchemaError {
            path: "regex".into(),
            message,
        };
        syntax::parse(pattern).map_err(|e| err(format!("the pattern is not valid: {e}")))?;
        let ended = format!("(?:{pattern})(?-u:\\xFF)");
        let dfa = dense::Builder::new()
            .syntax(syntax::Config::new().utf8(false))
            .thompson(thompson::Config::new().utf8(false))
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .dfa_size_limit(Some(MAX_DFA_BYTES))
                    .determinize_size_limit(Some(MAX_DFA_BYTES)),
            )
            .build(&ended)
            .map_err(|e| err(format!("the pattern cannot be used: {e}")))?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .map_err(|e| err(format!("the pattern cannot be used: {e}")))?;
        Ok(Regex {
            dfa,
            start: start.as_u32(),
        })
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

fn id(state: u32) -> StateID {
    StateID::new(state as usize).expect("a state id of this DFA")
}
