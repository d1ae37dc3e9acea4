//! The stepping rules of raw text (the nodes of tool calls, tools.rs): sequences, text up to a
//! stop, a call's arguments, repetition. No whitespace is skipped anywhere in them.

use super::chars::Utf8;
use super::frame::{with_top, Frame, Thread};
use super::matcher::Grammar;
use super::schema::{narrow, Node, NodeId};

/// Most frames a thread of raw text holds (an EBNF grammar's recursion grows them).
pub(super) const MAX_RAW_DEPTH: usize = 1024;

/// Where raw text stands after `b`, the last `matched` bytes having begun its stop (bit 0 of
/// `begin`) or its banned text (bit 1): both start with `<` and hold no other, so a `<` starts
/// both again and any other byte that continues neither starts nothing.
fn next_match(stop: &[u8], banned: &[u8], matched: u8, begin: u8, b: u8) -> (u8, u8) {
    let at = matched as usize;
    let goes_on = |text: &[u8], bit: u8| if text.get(at) == Some(&b) { bit } else { 0 };
    let still = if matched > 0 {
        begin & (goes_on(stop, 1) | goes_on(banned, 2))
    } else {
        0
    };
    match (still, b) {
        (0, b'<') => (1, 3),
        (0, _) => (0, 0),
        _ => (matched + 1, still),
    }
}

/// A repetition's count once one more item starts, None where `max` items started already.
/// Unbounded, only whether `min` is reached matters, so the count stops there (equal
/// positions stay equal threads).
fn item_count(count: u32, min: u32, max: Option<u32>) -> Option<u32> {
    match max {
        None => Some((count + 1).min(min)),
        Some(m) => (count < m).then_some(count + 1),
    }
}

/// What raw text up to a stop (`Node::Text`) makes of one byte.
pub(super) enum TextStep {
    /// The byte breaks UTF-8 or completes the banned text.
    Dead,
    /// Still inside, the last `matched` bytes beginning the stop or the banned text (`begin`).
    Inside { matched: u8, begin: u8 },
    /// The byte completes the stop: the text is read.
    Stopped,
}

/// One byte of raw text up to `stop` without `banned`, standing at (`chars`, `matched`, `begin`).
pub(super) fn text_step(
    stop: &[u8],
    banned: &[u8],
    chars: &mut Utf8,
    matched: u8,
    begin: u8,
    b: u8,
) -> TextStep {
    if !chars.step(b) {
        return TextStep::Dead;
    }
    let (matched, begin) = next_match(stop, banned, matched, begin, b);
    let whole = |text: &[u8], bit: u8| begin & bit != 0 && text.len() == matched as usize;
    if whole(banned, 2) {
        TextStep::Dead
    } else if whole(stop, 1) {
        TextStep::Stopped
    } else {
        TextStep::Inside { matched, begin }
    }
}

impl Grammar {
    /// Whether a raw-text node may read nothing (a sequence whose rest may then end at once).
    pub(super) fn nullable(&self, id: NodeId) -> bool {
        match &self.schema.nodes[id] {
            Node::Seq(items) => items.iter().all(|&i| self.nullable(i)),
            Node::Repeat { item, min, .. } => *min == 0 || self.nullable(*item),
            Node::Args { props, .. } => props.iter().all(|p| !p.required),
            Node::AnyOf(alts) => alts.iter().any(|&a| self.nullable(a)),
            Node::Choices(texts) => texts.iter().any(Vec::is_empty),
            Node::Free { open, .. } => *open,
            _ => false,
        }
    }

    /// Whether a raw-text frame is complete: what it read may end there.
    pub(super) fn raw_complete(&self, frame: &Frame) -> bool {
        match *frame {
            Frame::Seq { node, next } => match &self.schema.nodes[node] {
                Node::Seq(items) => items[next as usize..].iter().all(|&i| self.nullable(i)),
                _ => unreachable!("a sequence frame reads a sequence node"),
            },
            Frame::Repeat { node, count } => match &self.schema.nodes[node] {
                Node::Repeat { min, .. } => count >= *min,
                _ => unreachable!("a repeat frame reads a repeat node"),
            },
            Frame::Args { node, seen } => self.args_given(node, seen),
            Frame::Free { node, chars, .. } => {
                chars.at_boundary()
                    && matches!(self.schema.nodes[node], Node::Free { open: true, .. })
            }
            _ => false,
        }
    }

    /// Whether the keys in `seen` include every required key of `Node::Args` `node`.
    fn args_given(&self, node: NodeId, seen: u128) -> bool {
        let Node::Args { props, .. } = &self.schema.nodes[node] else {
            unreachable!("an arguments frame reads an arguments node")
        };
        props
            .iter()
            .enumerate()
            .all(|(i, p)| !p.required || seen & (1 << i) != 0)
    }

    /// The threads `threads` stand for, each raw frame that waits for a byte entered as far
    /// as no byte is needed (a sequence's next item, a repetition's next item or its end,
    /// each alternative, free text, a whole single literal left): every byte reads them as it
    /// reads `threads`. The masks' free-text short path looks through them.
    pub(crate) fn settled(&self, threads: &[Thread]) -> Vec<Thread> {
        let mut out = Vec::new();
        for t in threads {
            self.settle(t.clone(), &mut out, 0);
        }
        out
    }

    fn settle(&self, mut t: Thread, out: &mut Vec<Thread>, steps: usize) {
        let keep = |t: Thread, out: &mut Vec<Thread>| {
            if !out.contains(&t) {
                out.push(t);
            }
        };
        let Some(top) = t.stack.last().cloned() else {
            return keep(t, out);
        };
        if steps > 64 || t.stack.len() + 1 >= MAX_RAW_DEPTH {
            return keep(t, out); // as it is: the bytes read it the same
        }
        let next = steps + 1;
        match top {
            Frame::Raw(id) => match &self.schema.nodes[id] {
                Node::Seq(_) => {
                    self.settle(with_top(t, Frame::Seq { node: id, next: 0 }), out, next)
                }
                Node::Repeat { .. } => {
                    self.settle(with_top(t, Frame::Repeat { node: id, count: 0 }), out, next)
                }
                Node::AnyOf(alts) => {
                    for &alt in alts {
                        self.settle(with_top(t.clone(), Frame::Raw(alt)), out, next);
                    }
                }
                Node::Free { words, .. } => {
                    let state = words.start();
                    let chars = Default::default();
                    keep(
                        with_top(
                            t,
                            Frame::Free {
                                node: id,
                                state,
                                chars,
                            },
                        ),
                        out,
                    );
                }
                _ => keep(t, out),
            },
            Frame::Seq { node, next: k } => {
                let Node::Seq(items) = &self.schema.nodes[node] else {
                    unreachable!("a sequence frame reads a sequence node")
                };
                match items.get(k as usize) {
                    Some(&item) => {
                        let mut t = with_top(t, Frame::Seq { node, next: k + 1 });
                        t.stack.push(Frame::Raw(item));
                        self.settle(t, out, next);
                    }
                    None => {
                        t.stack.pop();
                        self.settle(t, out, next);
                    }
                }
            }
            Frame::Repeat { node, count } => {
                let Node::Repeat { item, min, max } = &self.schema.nodes[node] else {
                    unreachable!("a repeat frame reads a repeat node")
                };
                if let Some(count) = item_count(count, *min, *max) {
                    let mut n = with_top(t.clone(), Frame::Repeat { node, count });
                    n.stack.push(Frame::Raw(*item));
                    self.settle(n, out, next);
                }
                if count >= *min {
                    t.stack.pop();
                    self.settle(t, out, next);
                }
            }
            // a whole literal that nothing longer shares: what holds it reads the next byte
            Frame::Choice { node, lo, hi, pos }
                if hi == lo + 1
                    && self.texts[node][lo as usize].len() == pos as usize
                    && t.stack.len() >= 2
                    && t.stack[t.stack.len() - 2].is_raw() =>
            {
                t.stack.pop();
                self.settle(t, out, next);
            }
            _ => keep(t, out),
        }
    }

    /// `b` is the first byte of raw text of `id` (a `Seq`, `Text`, `Args` or `Repeat` node).
    pub(super) fn start_raw(&self, mut t: Thread, id: NodeId, b: u8, out: &mut Vec<Thread>) {
        if t.stack.len() >= MAX_RAW_DEPTH {
            return; // an EBNF grammar's recursion this deep is cut
        }
        let frame = match &self.schema.nodes[id] {
            Node::Seq(_) => Frame::Seq { node: id, next: 0 },
            Node::Text { .. } => Frame::Text {
                node: id,
                matched: 0,
                begin: 0,
                chars: Default::default(),
            },
            Node::Free { words, .. } => Frame::Free {
                node: id,
                state: words.start(),
                chars: Default::default(),
            },
            Node::Args { .. } => Frame::Args { node: id, seen: 0 },
            Node::Repeat { .. } => Frame::Repeat { node: id, count: 0 },
            _ => unreachable!("start_raw takes the raw-text nodes"),
        };
        t.stack.push(frame);
        self.feed_raw(t, b, out);
    }

    /// `feed` for the raw-text frames: what `t` becomes after byte `b`.
    pub(super) fn feed_raw(&self, mut t: Thread, b: u8, out: &mut Vec<Thread>) {
        let top = t.stack.last().expect("a raw-text frame").clone();
        match top {
            Frame::Raw(id) => {
                t.stack.pop();
                self.start_value(t, id, b, out);
            }
            Frame::Seq { node, next } => {
                let Node::Seq(items) = &self.schema.nodes[node] else {
                    unreachable!("a sequence frame reads a sequence node")
                };
                match items.get(next as usize) {
                    Some(&item) => {
                        let t = with_top(
                            t,
                            Frame::Seq {
                                node,
                                next: next + 1,
                            },
                        );
                        self.start_value(t, item, b, out);
                    }
                    None => {
                        t.stack.pop();
                        self.feed(t, b, out);
                    }
                }
            }
            Frame::Text {
                node,
                matched,
                begin,
                mut chars,
            } => {
                let Node::Text { stop, banned } = &self.schema.nodes[node] else {
                    unreachable!("a text frame reads a text node")
                };
                match text_step(stop, banned, &mut chars, matched, begin, b) {
                    TextStep::Dead => {}
                    TextStep::Stopped => {
                        t.stack.pop();
                        Self::emit(t, out);
                    }
                    TextStep::Inside { matched, begin } => {
                        let frame = Frame::Text {
                            node,
                            matched,
                            begin,
                            chars,
                        };
                        Self::emit(with_top(t, frame), out);
                    }
                }
            }
            Frame::Free {
                node,
                state,
                mut chars,
            } => {
                let Node::Free { words, then, open } = &self.schema.nodes[node] else {
                    unreachable!("a free-text frame reads a free-text node")
                };
                if *open && chars.at_boundary() {
                    // the text may end here: what holds it reads `b`
                    let mut done = t.clone();
                    done.stack.pop();
                    self.feed(done, b, out);
                }
                if !chars.step(b) {
                    return;
                }
                let state = words.step(state, b);
                let ended = words.ends(state);
                if ended.is_empty() {
                    return Self::emit(with_top(t, Frame::Free { node, state, chars }), out);
                }
                // a word ends here: the text is read, unless it may not hold that word
                let Some(next) = ended
                    .iter()
                    .map(|&k| then[k as usize])
                    .collect::<Option<Vec<NodeId>>>()
                else {
                    return;
                };
                for n in next {
                    Self::emit(with_top(t.clone(), Frame::Raw(n)), out);
                }
            }
            Frame::Args { node, seen } => {
                let Node::Args { props, additional } = &self.schema.nodes[node] else {
                    unreachable!("an arguments frame reads an arguments node")
                };
                if (seen.count_ones() as usize) < props.len() {
                    let mut key = t.clone();
                    let hi = props.len() as u32;
                    key.stack.push(Frame::ArgKey {
                        node,
                        lo: 0,
                        hi,
                        pos: 0,
                    });
                    self.feed_raw(key, b, out);
                }
                if let Some(pair) = *additional {
                    self.start_value(t.clone(), pair, b, out);
                }
                if self.args_given(node, seen) {
                    t.stack.pop();
                    self.feed(t, b, out);
                }
            }
            Frame::ArgKey { node, lo, hi, pos } => {
                let texts = &self.texts[node];
                let (lo, hi) = narrow(texts, lo, hi, pos, b);
                let n = t.stack.len();
                let Frame::Args { seen, .. } = t.stack[n - 2] else {
                    unreachable!("a key frame sits on its arguments frame")
                };
                if !(lo..hi).any(|i| seen & (1 << i) == 0) {
                    return; // no key left that these bytes begin
                }
                let pos = pos + 1;
                if texts[lo as usize].len() == pos as usize {
                    // a whole opening (none is the start of another: keys hold no `<`)
                    let Node::Args { props, .. } = &self.schema.nodes[node] else {
                        unreachable!("a key frame reads an arguments node")
                    };
                    let seen = seen | (1 << lo);
                    t.stack[n - 2] = Frame::Args { node, seen };
                    let value = props[lo as usize].node;
                    return Self::emit(with_top(t, Frame::Raw(value)), out);
                }
                Self::emit(with_top(t, Frame::ArgKey { node, lo, hi, pos }), out);
            }
            Frame::Repeat { node, count } => {
                let Node::Repeat { item, min, max } = &self.schema.nodes[node] else {
                    unreachable!("a repeat frame reads a repeat node")
                };
                if let Some(count) = item_count(count, *min, *max) {
                    let next = with_top(t.clone(), Frame::Repeat { node, count });
                    self.start_value(next, *item, b, out);
                }
                if count >= *min {
                    t.stack.pop();
                    self.feed(t, b, out);
                }
            }
            _ => unreachable!("feed_raw takes the raw-text frames"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_match;

    /// (matched, begin) after each byte of `text`.
    fn walk(text: &[u8]) -> Vec<(u8, u8)> {
        let mut at = (0, 0);
        text.iter()
            .map(|&b| {
                at = next_match(b"</arg_value>", b"</tool_call>", at.0, at.1, b);
                at
            })
            .collect()
    }

    #[test]
    fn the_stop_and_the_banned_text_are_followed_together() {
        assert_eq!(walk(b"a<"), [(0, 0), (1, 3)]);
        assert_eq!(walk(b"</a")[2], (3, 1)); // only the stop goes on
        assert_eq!(walk(b"</t")[2], (3, 2)); // only the banned text
        assert_eq!(walk(b"</x")[2], (0, 0));
        assert_eq!(walk(b"</a<")[3], (1, 3)); // a `<` starts both again
        assert_eq!(walk(b"</arg_value>").last(), Some(&(12, 1)));
        assert_eq!(walk(b"</tool_call>").last(), Some(&(12, 2)));
    }
}
