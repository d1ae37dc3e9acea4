//! The inside of a GLM-4.7 tool call: argument keys and values, streamed as JSON fragments.
//!
//! Inside a call whose name is declared, text between tags is skipped, a key without a value is
//! dropped, a key without its closing tag ends at `<arg_value>`, a repeated key's later values are dropped (the arguments stay valid JSON: the first
//! value has already streamed), a value ends at `</arg_value>` or `</tool_call>`, a `<tool_call>`
//! between pairs closes the call and opens the next, and the end of the output closes the call;
//! every such repair is logged once per call.

use super::{Glm47ToolParser, State};
use crate::parsers::glm47_name::{
    CALL_CLOSE, CALL_OPEN, KEY_CLOSE, KEY_OPEN, VALUE_CLOSE, VALUE_OPEN,
};
use crate::parsers::scan::{escape_json_into, find_tag, json_string, TagScan};
use crate::parsers::schema::{render_json_value, ValueKind};

impl Glm47ToolParser {
    pub(super) fn step_before_key(&mut self, eof: bool) -> bool {
        match self.skip_to(&[KEY_OPEN, CALL_CLOSE, CALL_OPEN]) {
            Some(0) => self.state = State::Key,
            Some(1) => self.close_call(),
            Some(_) => self.next_call_opened(),
            None if eof => {
                self.pos = self.buf.len();
                self.cut_off();
            }
            None => return false,
        }
        true
    }

    pub(super) fn step_key(&mut self, eof: bool) -> bool {
        let scan = self.scan_accumulating(&[KEY_CLOSE, CALL_CLOSE, VALUE_OPEN]);
        let rest = &self.buf[self.pos..];
        match scan {
            TagScan::Found {
                at,
                tag: tag @ (0 | 2),
            } => {
                let key = rest[..at].trim().to_string();
                if let Some(call) = self.call.as_mut() {
                    call.key = key;
                }
                if tag == 0 {
                    self.pos += at + KEY_CLOSE.len();
                    self.state = State::BeforeValue;
                } else {
                    // `<arg_key>k<arg_value>`: the key's closing tag is missing, not its value.
                    self.pos += at + VALUE_OPEN.len();
                    self.warn_once("argument key without </arg_key> read up to <arg_value>");
                    self.open_value();
                }
            }
            TagScan::Found { at, .. } => {
                self.pos += at + CALL_CLOSE.len();
                self.warn_once("argument key without a value dropped");
                self.close_call();
            }
            _ if eof => {
                self.pos = self.buf.len();
                self.cut_off();
            }
            _ => return false,
        }
        true
    }

    pub(super) fn step_before_value(&mut self, eof: bool) -> bool {
        match self.skip_to(&[VALUE_OPEN, KEY_OPEN, CALL_CLOSE, CALL_OPEN]) {
            Some(0) => self.open_value(),
            Some(1) => {
                self.warn_once("argument key without a value dropped");
                self.state = State::Key;
            }
            Some(2) => {
                self.warn_once("argument key without a value dropped");
                self.close_call();
            }
            Some(_) => {
                self.warn_once("argument key without a value dropped");
                self.next_call_opened();
            }
            None if eof => {
                self.pos = self.buf.len();
                self.cut_off();
            }
            None => return false,
        }
        true
    }

    pub(super) fn step_value(&mut self, kind: ValueKind, eof: bool) -> bool {
        let scan = match kind {
            ValueKind::String => find_tag(&self.buf[self.pos..], &[VALUE_CLOSE, CALL_CLOSE]),
            ValueKind::Json => self.scan_accumulating(&[VALUE_CLOSE, CALL_CLOSE]),
        };
        let rest = &self.buf[self.pos..];
        let (value_len, closer) = match scan {
            TagScan::Found { at, tag } => (at, Some(tag)),
            // A partial closing tag at the end of the output belongs to the call: dropped.
            TagScan::Partial { at } if eof => (at, None),
            _ if eof => (rest.len(), None),
            TagScan::Partial { at } if kind == ValueKind::String => {
                self.stream_string(at);
                return at > 0;
            }
            TagScan::Absent if kind == ValueKind::String => {
                let len = rest.len();
                self.stream_string(len);
                return len > 0;
            }
            _ => return false,
        };
        let tail = match kind {
            ValueKind::String => {
                self.stream_string(value_len);
                "\"".to_string()
            }
            ValueKind::Json => {
                let rendered = render_json_value(&rest[..value_len]);
                self.pos += value_len;
                rendered
            }
        };
        self.push_arguments(&tail);
        if let Some(call) = self.call.as_mut() {
            call.dropping = false;
        }
        match closer {
            Some(0) => {
                self.pos += VALUE_CLOSE.len();
                self.state = State::BeforeKey;
            }
            Some(_) => {
                self.pos += CALL_CLOSE.len();
                self.warn_once("argument value closed by </tool_call>");
                self.close_call();
            }
            None => {
                self.pos = self.buf.len();
                self.cut_off();
            }
        }
        true
    }

    /// Scans `buf[pos..]` for `tags` from where the previous scan of the same key or value stopped,
    /// so a long value arriving in small chunks is scanned once.
    pub(super) fn scan_accumulating(&mut self, tags: &[&str]) -> TagScan {
        let rest = &self.buf[self.pos..];
        let from = self.resume;
        let scan = match find_tag(&rest[from..], tags) {
            TagScan::Found { at, tag } => TagScan::Found { at: at + from, tag },
            TagScan::Partial { at } => TagScan::Partial { at: at + from },
            TagScan::Absent => TagScan::Absent,
        };
        self.resume = match scan {
            TagScan::Found { .. } => 0,
            TagScan::Partial { at } => at,
            TagScan::Absent => rest.len(),
        };
        scan
    }

    /// Skips to the first of `tags` and past it, returning its number. Text skipped inside a call
    /// is not part of any value and is dropped with a warning. Without a complete tag, skips up to
    /// a possible partial one and returns None.
    pub(super) fn skip_to(&mut self, tags: &[&str]) -> Option<usize> {
        let rest = &self.buf[self.pos..];
        let (skip, found) = match find_tag(rest, tags) {
            TagScan::Found { at, tag } => (at, Some(tag)),
            TagScan::Partial { at } => (at, None),
            TagScan::Absent => (rest.len(), None),
        };
        if !rest[..skip].trim().is_empty() {
            self.warn_once("text between tool-call tags skipped");
        }
        self.pos += skip + found.map_or(0, |tag| tags[tag].len());
        found
    }

    /// A `<tool_call>` (just consumed) between the pairs of a call: the model began the next call
    /// without closing this one, which closes with the arguments so far; the tag opens the next.
    fn next_call_opened(&mut self) {
        self.pos -= CALL_OPEN.len();
        self.warn_once("a tool call began before the previous one's </tool_call>; that one closed");
        self.close_call();
        self.state = State::Name;
    }

    pub(super) fn open_value(&mut self) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if !call.keys.insert(call.key.clone()) {
            // Its first value has streamed: this one is read (as JSON, held back) and dropped.
            call.dropping = true;
            self.warn_once("repeated argument key: its later values dropped");
            self.state = State::Value(ValueKind::Json);
            return;
        }
        let kind = self.schemas.kind(&call.name, &call.key);
        let mut head = String::from(if call.args == 0 { "{" } else { ", " });
        head.push_str(&json_string(&call.key));
        head.push_str(": ");
        if kind == ValueKind::String {
            head.push('"');
        }
        call.args += 1;
        self.push_arguments(&head);
        self.state = State::Value(kind);
    }

    /// Streams `buf[pos..pos + len]` as escaped string-value text and consumes it.
    pub(super) fn stream_string(&mut self, len: usize) {
        let mut escaped = String::with_capacity(len + 8);
        escape_json_into(&mut escaped, &self.buf[self.pos..self.pos + len]);
        self.pos += len;
        self.push_arguments(&escaped);
    }
}
