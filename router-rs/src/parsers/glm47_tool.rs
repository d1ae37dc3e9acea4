//! Streaming parser for GLM-4.7 tool calls:
//! `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>…</tool_call>`.
//!
//! The parser is a state machine over a buffer of unconsumed text. It only ever decides from text
//! it has seen, holding back a possible partial tag at the end of a chunk, so the concatenated
//! output does not depend on how the text was split (see docs/parsers.md for the rules).
//!
//! Failure behaviour: a `<tool_call>` whose name is unknown, malformed or cut off by the end of
//! the output is plain content, byte for byte. Once a declared name is complete the call is
//! emitted and is always closed with valid JSON arguments: stray text between tags is skipped, a
//! key without a value is dropped, a repeated key's later values are dropped, a `<tool_call>`
//! between pairs closes the open call and starts the next, and a call cut off by `finish` keeps
//! the pairs seen so far (an open string value is closed). Each of these is logged as a warning.

use std::collections::HashSet;

use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::glm47_name::{scan_name, NameEnd, NameScan, CALL_OPEN};
use super::scan::{find_tag, TagScan};
use super::schema::{ToolSchemas, ValueKind};
use super::tool_events::{EventSink, ParsedToolCalls, ToolEvent};

/// Length of the random part of a call id.
const ID_CHARS: usize = 24;

/// Where the parser is in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Plain content; looking for `<tool_call>`.
    Text,
    /// The buffer position is at a `<tool_call>` whose name is not complete yet.
    Name,
    /// Inside a call, expecting `<arg_key>` or `</tool_call>`.
    BeforeKey,
    /// Inside `<arg_key>`; the key text stays in the buffer until `</arg_key>`.
    Key,
    /// After `</arg_key>`, expecting `<arg_value>`.
    BeforeValue,
    /// Inside `<arg_value>`; string values stream, others stay in the buffer until complete.
    Value(ValueKind),
}

/// The call being emitted.
#[derive(Debug)]
struct OpenCall {
    index: usize,
    name: String,
    /// Number of arguments emitted so far.
    args: usize,
    /// Key of the pair being read.
    key: String,
    /// Keys whose values were emitted.
    keys: HashSet<String>,
    /// Whether the value being read is dropped (its key was seen before).
    dropping: bool,
    /// Whether a recovery warning was already logged for this call.
    warned: bool,
}

/// Incremental GLM-4.7 tool-call parser for one response.
pub struct Glm47ToolParser {
    schemas: ToolSchemas,
    /// Unconsumed text; `buf[..pos]` is consumed and dropped at the end of each call.
    buf: String,
    pos: usize,
    /// While a key or JSON value accumulates: bytes after `pos` already known to hold no tag.
    resume: usize,
    /// Offset of `buf[0]` in the whole output.
    base: usize,
    /// Content before this output offset came from the prefix and is never emitted.
    hidden_until: usize,
    state: State,
    call: Option<OpenCall>,
    next_index: usize,
    rng: StdRng,
    events: EventSink,
    /// The index of the call the output ended inside, which was closed with the arguments so
    /// far.
    cut: Option<usize>,
}

impl Glm47ToolParser {
    /// A parser for a response to a request declaring `tools` (OpenAI `tools` entries).
    pub fn new(tools: &[Value]) -> Self {
        Self::with_options(tools, "", None)
    }

    /// A parser that behaves as if `prefix` (e.g. `<tool_call>NAME` appended to the prompt for a
    /// forced `tool_choice`) had already been fed; the prefix itself is never emitted as content.
    pub fn with_prefix(tools: &[Value], prefix: &str) -> Self {
        Self::with_options(tools, prefix, None)
    }

    /// Full constructor: `id_seed` makes call ids deterministic (tests); `None` seeds from the OS.
    pub fn with_options(tools: &[Value], prefix: &str, id_seed: Option<u64>) -> Self {
        let rng = match id_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let mut parser = Self {
            schemas: ToolSchemas::new(tools),
            buf: String::new(),
            pos: 0,
            resume: 0,
            base: 0,
            hidden_until: prefix.len(),
            state: State::Text,
            call: None,
            next_index: 0,
            rng,
            events: EventSink::default(),
            cut: None,
        };
        // Events of the prefix (a call header when its name is already complete) are returned
        // by the first `feed` or `finish`.
        parser.buf.push_str(prefix);
        parser.run(false);
        parser.compact();
        parser
    }

    /// Parses a whole output at once; same rules and result as streaming it.
    pub fn parse(text: &str, tools: &[Value]) -> ParsedToolCalls {
        Self::new(tools).collect(text)
    }

    /// Feeds the rest of the output at once and returns the accumulated result.
    pub fn collect(mut self, text: &str) -> ParsedToolCalls {
        let mut parsed = ParsedToolCalls::default();
        parsed.absorb(self.finish_with(text));
        parsed
    }

    /// Consumes the next chunk of output and returns what became certain.
    pub fn feed(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        self.run(false);
        self.compact();
        self.events.take()
    }

    /// Ends the output: flushes held-back text and closes or rejects an unfinished call.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        self.finish_with("")
    }

    /// `feed(text)` then `finish()`, their events merged as those of one `feed` are (a call's
    /// last fragments and its closing come as one event).
    pub fn finish_with(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        self.run(false);
        self.run(true);
        self.compact();
        self.events.take()
    }

    fn run(&mut self, eof: bool) {
        while self.step(eof) {}
    }

    /// Advances by one decision; false when nothing more can be decided.
    fn step(&mut self, eof: bool) -> bool {
        match self.state {
            State::Text => self.step_text(eof),
            State::Name => self.step_name(eof),
            State::BeforeKey => self.step_before_key(eof),
            State::Key => self.step_key(eof),
            State::BeforeValue => self.step_before_value(eof),
            State::Value(kind) => self.step_value(kind, eof),
        }
    }

    fn compact(&mut self) {
        self.buf.drain(..self.pos);
        self.base += self.pos;
        self.pos = 0;
    }

    fn step_text(&mut self, eof: bool) -> bool {
        let rest = &self.buf[self.pos..];
        let end = match find_tag(rest, &[CALL_OPEN]) {
            TagScan::Found { at, .. } => {
                self.emit_content(at);
                self.state = State::Name;
                return true;
            }
            TagScan::Partial { at } if !eof => at,
            _ => rest.len(),
        };
        self.emit_content(end);
        end > 0
    }

    fn step_name(&mut self, eof: bool) -> bool {
        let region = &self.buf[self.pos + CALL_OPEN.len()..];
        match scan_name(region) {
            NameScan::Complete { len, end } => {
                let name = region[..len].trim().to_string();
                if self.schemas.has_function(&name) {
                    self.pos += CALL_OPEN.len() + len + end.len();
                    self.open_call(name, end);
                } else {
                    tracing::warn!(name = %name, "tool call to an undeclared function kept as content");
                    self.reject_call();
                }
                true
            }
            NameScan::NeedMore if !eof => false,
            scan => {
                // The output may end right after a declared name (a call without arguments, or
                // a forced call whose name came from the prompt): that call, cut off.
                match self.cut_off_name().filter(|_| scan == NameScan::NeedMore) {
                    Some(name) => {
                        self.pos = self.buf.len();
                        self.open_call(name, NameEnd::Newline);
                    }
                    None => {
                        tracing::warn!("malformed or cut-off tool call opening kept as content");
                        self.reject_call();
                    }
                }
                true
            }
        }
    }

    /// At the end of the output, inside an unfinished `<tool_call>` opening: the declared function
    /// named by the text before any partial tag, if there is one.
    fn cut_off_name(&self) -> Option<String> {
        let region = &self.buf[self.pos + CALL_OPEN.len()..];
        let name = region[..region.find('<').unwrap_or(region.len())].trim();
        (!name.is_empty() && self.schemas.has_function(name)).then(|| name.to_string())
    }

    /// Emits `buf[pos..pos + len]` as content (minus any part of the hidden prefix) and consumes it.
    fn emit_content(&mut self, len: usize) {
        let end = self.pos + len;
        let start = self
            .pos
            .max(self.hidden_until.saturating_sub(self.base).min(end));
        if start < end {
            self.events.content(&self.buf[start..end]);
        }
        self.pos = end;
    }

    /// The `<tool_call>` at the buffer position is not a call: it is content, and scanning resumes
    /// right after it.
    fn reject_call(&mut self) {
        self.emit_content(CALL_OPEN.len());
        self.state = State::Text;
    }

    fn open_call(&mut self, name: String, end: NameEnd) {
        let index = self.next_index;
        self.next_index += 1;
        let suffix: String = (&mut self.rng)
            .sample_iter(Alphanumeric)
            .take(ID_CHARS)
            .map(char::from)
            .collect();
        self.events
            .header(index, format!("call_{suffix}"), name.clone());
        self.call = Some(OpenCall {
            index,
            name,
            args: 0,
            key: String::new(),
            keys: HashSet::new(),
            dropping: false,
            warned: false,
        });
        match end {
            NameEnd::Newline => self.state = State::BeforeKey,
            NameEnd::ArgKey => self.state = State::Key,
            NameEnd::Close => self.close_call(),
        }
    }

    fn push_arguments(&mut self, text: &str) {
        if let Some(call) = self.call.as_ref().filter(|c| !c.dropping) {
            self.events.arguments(call.index, text);
        }
    }

    fn close_call(&mut self) {
        let closing = match &self.call {
            Some(call) if call.args == 0 => "{}",
            _ => "}",
        };
        self.push_arguments(closing);
        self.call = None;
        self.resume = 0;
        self.state = State::Text;
    }

    fn cut_off(&mut self) {
        self.warn_once("tool call cut off before </tool_call>; closed with the arguments so far");
        self.cut = self.call.as_ref().map(|c| c.index);
        self.close_call();
    }

    /// The index of the call the output ended inside (before its `</tool_call>`), which
    /// `finish` closed with the arguments so far; None when it ended outside any.
    pub fn call_cut_off(&self) -> Option<usize> {
        self.cut
    }

    fn warn_once(&mut self, what: &'static str) {
        if let Some(call) = self.call.as_mut() {
            if !call.warned {
                call.warned = true;
                tracing::warn!(name = %call.name, index = call.index, "{what}");
            }
        }
    }
}

#[path = "glm47_call.rs"]
mod call;

#[cfg(test)]
#[path = "glm47_tool_tests.rs"]
pub(crate) mod tests;
