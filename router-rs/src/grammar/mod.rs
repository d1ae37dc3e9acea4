//! Constrained decoding: JSON output under `response_format` (`json_object`, `json_schema`),
//! one of a list of strings, text that a regular expression matches, or text of an EBNF grammar.
//!
//! The router compiles a request's schema to refuse what cannot be enforced (400) and sends the
//! schema to the worker (docs/wire.md, `Request.grammar`); the worker keeps a [`Constraint`] per
//! request (through `glm47._native.JsonConstraint`), asks it before each sampled token for the
//! allowed-token mask and tells it every token sampled. A request whose prompt ends inside a
//! reasoning block is constrained only from the token that closes it (`start_after`).

pub mod cache;
mod chars;
mod compile;
pub mod decimal;
pub mod ebnf;
mod frame;
pub mod integer;
mod keywords;
mod lark;
mod left_recursion;
mod lengths;
pub mod matcher;
pub mod regex;
pub mod schema;
mod step;
mod step_raw;
mod step_start;
pub mod structural;
mod structural_read;
pub mod tools;
pub mod vocab;
pub mod words;

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod ebnf_tests;
#[cfg(test)]
mod keyword_tests;
#[cfg(test)]
mod lark_tests;
#[cfg(test)]
mod pattern_tests;
#[cfg(test)]
mod structural_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tools_tests;

use std::sync::Arc;

use serde_json::Value;

pub use matcher::{Grammar, Matcher};
pub use schema::{Schema, SchemaError};
pub use tools::{is_strict, tool_calls, ToolCallSpec, TOOL_TAGS};
pub use vocab::Vocab;

/// Output matching `pattern` whole (vLLM's `guided_regex`).
pub fn regex(pattern: &str) -> Result<Arc<Grammar>, SchemaError> {
    Grammar::regex(pattern)
}

/// Output of an EBNF grammar (vLLM's `guided_grammar`, SGLang's `ebnf`; see [`ebnf`]).
pub fn ebnf(text: &str) -> Result<Arc<Grammar>, SchemaError> {
    Ok(Grammar::new(ebnf::compile(text)?))
}

/// Output of a structural tag (`response_format` `structural_tag`; see [`structural`]).
pub fn structural_tag(tag: &Value) -> Result<Arc<Grammar>, SchemaError> {
    Ok(Grammar::new(structural::compile(tag)?))
}

/// Exactly one of `choices` (vLLM's `guided_choice`).
pub fn one_of(choices: &[String]) -> Arc<Grammar> {
    Grammar::new(Schema::one_of(choices))
}

/// The grammar of a `response_format`: a schema, or None for any JSON object.
pub fn compile(schema: Option<&Value>) -> Result<Arc<Grammar>, SchemaError> {
    let schema = match schema {
        None => Schema::any_object(),
        Some(s) => Schema::compile(s)?,
    };
    Ok(Grammar::new(schema))
}

/// [`compile`] for compact JSON: no whitespace between tokens (vLLM's `disable_any_whitespace`).
pub fn compile_compact(schema: Option<&Value>) -> Result<Arc<Grammar>, SchemaError> {
    let schema = match schema {
        None => Schema::any_object(),
        Some(s) => Schema::compile(s)?,
    };
    Ok(Grammar::with_whitespace(schema, 0))
}

/// One request's constraint: unconstrained until `start_after` is sampled (when given; and then
/// each id added by `also_after`, in order), then the grammar; done once the document is whole
/// and nothing can extend it, or an id in `ends` was taken where the document could end.
#[derive(Debug, Clone)]
pub struct Constraint {
    matcher: Matcher,
    vocab: Arc<Vocab>,
    ends: Vec<u32>,
    /// The ids sampled in this order before the grammar applies, and how many were.
    wait: Vec<u32>,
    waited: usize,
    active: bool,
    ended: bool,
}

impl Constraint {
    pub fn new(
        grammar: Arc<Grammar>,
        vocab: Arc<Vocab>,
        ends: Vec<u32>,
        start_after: Option<u32>,
    ) -> Self {
        Constraint {
            matcher: Matcher::new(grammar),
            vocab,
            ends,
            wait: start_after.into_iter().collect(),
            waited: 0,
            active: start_after.is_none(),
            ended: false,
        }
    }

    /// The grammar waits for `id` too, after the ids before it (tool calls the model opens
    /// itself: from its `<tool_call>`).
    pub fn also_after(mut self, id: u32) -> Self {
        self.wait.push(id);
        self.active = false;
        self
    }

    /// Whether the grammar applies to the next token.
    pub fn active(&self) -> bool {
        self.active && !self.ended
    }

    /// Takes a sampled token. False when the grammar does not allow it (nothing changes then).
    pub fn accept(&mut self, id: u32) -> bool {
        if !self.active {
            if self.wait.get(self.waited) == Some(&id) {
                self.waited += 1;
                self.active = self.waited == self.wait.len();
            }
            return true;
        }
        if self.ended {
            return false;
        }
        if self.ends.contains(&id) {
            self.ended = self.matcher.can_end();
            return self.ended;
        }
        match self.vocab.bytes(id) {
            Some(bytes) => self.matcher.accept(bytes),
            None => false,
        }
    }

    /// Whether the document is complete and no token can extend it: the request is done.
    pub fn is_done(&self) -> bool {
        self.active && (self.ended || self.matcher.is_terminated())
    }

    /// The allowed-token mask for the next token (see [`Vocab::fill_mask`]); all zero once done.
    pub fn fill_mask(&self, words: &mut [u32]) {
        if self.ended {
            words.fill(0);
            return;
        }
        self.vocab.fill_mask(&self.matcher, &self.ends, words);
    }

    pub fn vocab(&self) -> &Arc<Vocab> {
        &self.vocab
    }
}
