//! The first byte of a value: the frame it opens, by the kind of node.

use super::chars::Chars;
use super::decimal::DecAt;
use super::frame::{ArrAt, Frame, NumAt, ObjAt, Thread};
use super::integer::IntAt;
use super::matcher::{Grammar, MAX_DEPTH};
use super::schema::{Node, NodeId};

impl Grammar {
    /// `b` is the first byte of a value of `id` (the thread's frames hold what contains it).
    pub(super) fn start_value(&self, mut t: Thread, id: NodeId, b: u8, out: &mut Vec<Thread>) {
        let opened = match &self.schema.nodes[id] {
            Node::AnyOf(alts) => {
                for &alt in alts {
                    self.start_value(t.clone(), alt, b, out);
                }
                return;
            }
            Node::Seq(_)
            | Node::Text { .. }
            | Node::Free { .. }
            | Node::Args { .. }
            | Node::Repeat { .. } => {
                return self.start_raw(t, id, b, out);
            }
            Node::RawRegex(pattern) => {
                let state = pattern.regex.start();
                t.stack.push(Frame::Regex { node: id, state });
                return self.feed(t, b, out);
            }
            Node::Choices(texts) => {
                let hi = texts.len() as u32;
                t.stack.push(Frame::Choice {
                    node: id,
                    lo: 0,
                    hi,
                    pos: 0,
                });
                return self.feed(t, b, out);
            }
            Node::Object { .. } | Node::Array { .. } if t.stack.len() >= MAX_DEPTH => None,
            Node::Object { .. } => (b == b'{').then_some(Frame::Object {
                node: id,
                seen: 0,
                count: 0,
                at: ObjAt::Open,
            }),
            Node::Array { .. } => (b == b'[').then_some(Frame::Array {
                node: id,
                count: 0,
                at: ArrAt::Open,
                used: 0,
            }),
            Node::Str { min, max } => (b == b'"').then(|| Frame::Str {
                len: 0,
                min: *min,
                max: max.unwrap_or(u32::MAX),
                chars: Chars::default(),
            }),
            Node::Pattern { regex, .. } => (b == b'"').then(|| Frame::Pattern {
                node: id,
                state: regex.regex.start(),
                len: 0,
            }),
            Node::Integer(range) => IntAt::first(b)
                .filter(|&at| range.reachable(at))
                .map(|at| Frame::Integer { node: id, at }),
            Node::Decimal(bounds) => DecAt::first(b)
                .filter(|&at| bounds.reachable(at))
                .map(|at| Frame::Decimal { node: id, at }),
            Node::Number { integer } => match b {
                b'-' => Some(NumAt::Minus),
                b'0' => Some(NumAt::Zero),
                b'1'..=b'9' => Some(NumAt::Int),
                _ => None,
            }
            .map(|at| Frame::Number {
                integer: *integer,
                at,
                len: 1,
            }),
        };
        if let Some(frame) = opened {
            t.stack.push(frame);
            Self::emit(t, out);
        }
    }
}
