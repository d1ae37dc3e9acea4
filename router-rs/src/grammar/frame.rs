//! The matcher's state: a thread is a stack of frames, the values being read, innermost last.

use super::chars::{Chars, Utf8};
use super::decimal::DecAt;
use super::integer::IntAt;
use super::schema::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ObjAt {
    /// After `{`: a key or `}`.
    Open,
    /// After `,`: a key.
    Comma,
    /// After a key: `:`, then a value of this node.
    Colon(NodeId),
    /// After a member's value: `,` or `}`.
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ArrAt {
    Open,
    Comma,
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NumAt {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl NumAt {
    pub(crate) fn complete(self) -> bool {
        matches!(
            self,
            NumAt::Zero | NumAt::Int | NumAt::Frac | NumAt::ExpDigits
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Frame {
    /// A value of this node comes next (whitespace allowed before it).
    Value(NodeId),
    /// Inside an object; `seen` holds the listed properties already given (by sorted index),
    /// `count` the members so far (listed or not).
    Object {
        node: NodeId,
        seen: u128,
        count: u32,
        at: ObjAt,
    },
    /// Inside a member name of object `node`: the listed names in `lo..hi` still match the
    /// `pos` bytes read.
    Key {
        node: NodeId,
        lo: u32,
        hi: u32,
        pos: u32,
        chars: Chars,
    },
    /// Inside an array of `count` items; `used`: the choice texts given (a `unique` array's).
    Array {
        node: NodeId,
        count: u32,
        at: ArrAt,
        used: u128,
    },
    /// Inside a string of `len` characters so far.
    Str {
        len: u32,
        min: u32,
        max: u32,
        chars: Chars,
    },
    Number {
        integer: bool,
        at: NumAt,
        len: u8,
    },
    /// Inside an integer of `Node::Integer` `node`.
    Integer {
        node: NodeId,
        at: IntAt,
    },
    /// Inside a number of `Node::Decimal` `node`.
    Decimal {
        node: NodeId,
        at: DecAt,
    },
    /// Inside one of the texts of `Node::Choices` `node`: those in `lo..hi` match the `pos`
    /// bytes read.
    Choice {
        node: NodeId,
        lo: u32,
        hi: u32,
        pos: u32,
    },
    /// Inside the raw text of `Node::Pattern` `node` (the root of `Grammar::regex`), at this
    /// DFA state.
    Regex {
        node: NodeId,
        state: u32,
    },
    /// Inside a string of `Node::Pattern` `node`, at this DFA state, `len` characters so far.
    Pattern {
        node: NodeId,
        state: u32,
        len: u32,
    },
    /// Raw text of this node starts at the next byte (no whitespace before it).
    Raw(NodeId),
    /// Inside `Node::Seq` `node`, its items before `next` started.
    Seq {
        node: NodeId,
        next: u32,
    },
    /// Inside `Node::Text` `node`: the last `matched` bytes begin its stop (bit 0 of `begin`)
    /// or its banned text (bit 1).
    Text {
        node: NodeId,
        matched: u8,
        begin: u8,
        chars: Utf8,
    },
    /// Inside `Node::Free` `node`, its words' automaton at `state`.
    Free {
        node: NodeId,
        state: u32,
        chars: Utf8,
    },
    /// Between the pairs of `Node::Args` `node`; `seen` holds the listed keys given (by index).
    Args {
        node: NodeId,
        seen: u128,
    },
    /// Inside the opening of a pair of `Node::Args` `node` (the frame below): the openings in
    /// `lo..hi` match the `pos` bytes read.
    ArgKey {
        node: NodeId,
        lo: u32,
        hi: u32,
        pos: u32,
    },
    /// Inside `Node::Repeat` `node`, `count` items started.
    Repeat {
        node: NodeId,
        count: u32,
    },
}

impl Frame {
    /// Whether this frame reads raw text (its steps are in step_raw.rs).
    pub(crate) fn is_raw(&self) -> bool {
        matches!(
            self,
            Frame::Raw(_)
                | Frame::Seq { .. }
                | Frame::Text { .. }
                | Frame::Free { .. }
                | Frame::Args { .. }
                | Frame::ArgKey { .. }
                | Frame::Repeat { .. }
        )
    }
}

/// One reading of the bytes so far.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Thread {
    pub(crate) stack: Vec<Frame>,
    /// Whitespace bytes just read.
    pub(crate) ws: u8,
}

impl Clone for Thread {
    fn clone(&self) -> Self {
        Thread {
            stack: self.stack.clone(),
            ws: self.ws,
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.stack.clone_from(&source.stack);
        self.ws = source.ws;
    }
}

/// `t` with its innermost frame replaced by `frame`.
pub(crate) fn with_top(mut t: Thread, frame: Frame) -> Thread {
    *t.stack.last_mut().expect("a frame to replace") = frame;
    t
}
