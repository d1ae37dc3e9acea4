//! The stepping rules: what a thread becomes after one byte, frame by frame.

use super::chars::{CharStep, Chars};
use super::frame::{with_top, ArrAt, Frame, NumAt, ObjAt, Thread};
use super::lengths::Lengths;
use super::matcher::{Grammar, MAX_NUMBER_BYTES};
use super::schema::{narrow, Node, NodeId};

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

impl Grammar {
    pub(super) fn emit(mut t: Thread, out: &mut Vec<Thread>) {
        t.ws = 0;
        if !out.contains(&t) {
            out.push(t);
        }
    }

    fn space(&self, mut t: Thread, out: &mut Vec<Thread>) {
        if t.ws < self.max_ws {
            t.ws += 1;
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }

    /// The required keys of object `node` not in `seen`.
    fn missing(&self, node: NodeId, seen: u128) -> u32 {
        let Node::Object { props, .. } = &self.schema.nodes[node] else {
            unreachable!("an object frame holds an object node")
        };
        let missing = props
            .iter()
            .enumerate()
            .filter(|(i, p)| p.required && seen & (1 << i) == 0);
        missing.count() as u32
    }

    /// Whether an object of `node` with the listed keys `seen` given and `count` members may
    /// take a member other than its missing required ones (they must still fit under
    /// `maxProperties` after it).
    pub(super) fn room_for_others(&self, node: NodeId, seen: u128, count: u32) -> bool {
        match &self.schema.nodes[node] {
            Node::Object { max: None, .. } => true,
            Node::Object { max: Some(max), .. } => count + 1 + self.missing(node, seen) <= *max,
            _ => unreachable!("an object frame holds an object node"),
        }
    }

    /// The texts already given in the array below a choice frame of `node`, where that array
    /// is `unique` and `node` its items; None otherwise.
    fn unique_items(&self, t: &Thread, node: NodeId) -> Option<u128> {
        let n = t.stack.len();
        let Frame::Array {
            node: array, used, ..
        } = *t.stack.get(n.checked_sub(2)?)?
        else {
            return None;
        };
        match &self.schema.nodes[array] {
            Node::Array {
                unique: true,
                items,
                ..
            } if *items == node => Some(used),
            _ => None,
        }
    }

    /// Whether `b` would make a JSON string (at `chars`) hold `</` where that is not allowed.
    fn close_tag(&self, chars: &Chars, b: u8) -> bool {
        self.schema.no_close_tags && b == b'/' && chars.after_lt()
    }

    /// Appends to `out` what `t` becomes after byte `b` (nothing: it dies).
    pub(super) fn feed(&self, mut t: Thread, b: u8, out: &mut Vec<Thread>) {
        let Some(top) = t.stack.last_mut() else {
            return; // the document is complete: nothing may follow
        };
        if top.is_raw() {
            return self.feed_raw(t, b, out);
        }
        match top {
            Frame::Value(id) => {
                let id = *id;
                if is_ws(b) {
                    return self.space(t, out);
                }
                t.stack.pop();
                self.start_value(t, id, b, out);
            }
            Frame::Object {
                node,
                seen,
                count,
                at,
            } => {
                let (node, seen, count, at) = (*node, *seen, *count, *at);
                let Node::Object {
                    props,
                    additional,
                    min,
                    ..
                } = &self.schema.nodes[node]
                else {
                    unreachable!("an object frame holds an object node")
                };
                if is_ws(b) {
                    return self.space(t, out);
                }
                let (missing, room) = (
                    self.missing(node, seen),
                    self.room_for_others(node, seen, count),
                );
                let others = additional.is_some() || (seen.count_ones() as usize) < props.len();
                let more = missing > 0 || (room && others);
                let done = missing == 0 && count >= *min;
                let object = |at| Frame::Object {
                    node,
                    seen,
                    count,
                    at,
                };
                match (at, b) {
                    (ObjAt::Open | ObjAt::Comma, b'"') if more => {
                        t.stack.push(Frame::Key {
                            node,
                            lo: 0,
                            hi: props.len() as u32,
                            pos: 0,
                            chars: Chars::default(),
                        });
                        Self::emit(t, out);
                    }
                    (ObjAt::Open | ObjAt::Value, b'}') if done => {
                        t.stack.pop();
                        Self::emit(t, out);
                    }
                    (ObjAt::Value, b',') if more => {
                        Self::emit(with_top(t, object(ObjAt::Comma)), out);
                    }
                    (ObjAt::Colon(target), b':') => {
                        let mut t = with_top(t, object(ObjAt::Value));
                        t.stack.push(Frame::Value(target));
                        Self::emit(t, out);
                    }
                    _ => {}
                }
            }
            Frame::Key { node, .. } => {
                let node = *node;
                let Node::Object {
                    props, additional, ..
                } = &self.schema.nodes[node]
                else {
                    unreachable!("a key frame holds an object node")
                };
                let n = t.stack.len();
                let Frame::Object { seen, count, .. } = t.stack[n - 2] else {
                    unreachable!("a key frame sits on its object frame")
                };
                // Under maxProperties with required members missing, only those may come.
                let room = self.room_for_others(node, seen, count);
                let Frame::Key {
                    lo, hi, pos, chars, ..
                } = &mut t.stack[n - 1]
                else {
                    unreachable!()
                };
                if chars.at_boundary() && b == b'"' {
                    // The name is complete: a listed one not given yet, or another member.
                    let exact = (*lo < *hi && props[*lo as usize].key.len() == *pos as usize)
                        .then_some(*lo as usize);
                    let (seen, target) = match exact {
                        Some(i) if seen & (1 << i) == 0 && (room || props[i].required) => {
                            (seen | (1 << i), props[i].node)
                        }
                        Some(_) => return, // given twice, or no room left for it
                        None => match additional {
                            Some(a) if room => (seen, *a),
                            _ => return,
                        },
                    };
                    t.stack.pop();
                    t.stack[n - 2] = Frame::Object {
                        node,
                        seen,
                        count: count + 1,
                        at: ObjAt::Colon(target),
                    };
                    return Self::emit(t, out);
                }
                if !chars.keeps_name_canonical(b)
                    || self.close_tag(chars, b)
                    || matches!(chars.step(b), CharStep::Dead)
                {
                    return;
                }
                (*lo, *hi) = narrow(&self.texts[node], *lo, *hi, *pos, b);
                *pos += 1;
                let listed_left = (*lo..*hi)
                    .any(|i| seen & (1 << i) == 0 && (room || props[i as usize].required));
                if (additional.is_none() || !room) && !listed_left {
                    return;
                }
                Self::emit(t, out);
            }
            Frame::Array {
                node,
                count,
                at,
                used,
            } => {
                let (node, count, at, used) = (*node, *count, *at, *used);
                let Node::Array {
                    prefix,
                    items,
                    min,
                    max,
                    ..
                } = &self.schema.nodes[node]
                else {
                    unreachable!("an array frame holds an array node")
                };
                if is_ws(b) {
                    return self.space(t, out);
                }
                let room = max.is_none_or(|m| count < m);
                let array = |count, at| Frame::Array {
                    node,
                    count,
                    at,
                    used,
                };
                match (at, b) {
                    (ArrAt::Open | ArrAt::Value, b']') if count >= *min => {
                        t.stack.pop();
                        Self::emit(t, out);
                    }
                    (ArrAt::Value, b',') if room => {
                        Self::emit(with_top(t, array(count, ArrAt::Comma)), out);
                    }
                    (ArrAt::Open | ArrAt::Comma, _) if room => {
                        // the item after `count` others: the tuple's schema there, or `items`
                        let items = prefix.get(count as usize).copied().unwrap_or(*items);
                        let t = with_top(t, array(count + 1, ArrAt::Value));
                        self.start_value(t, items, b, out);
                    }
                    _ => {}
                }
            }
            Frame::Str {
                len,
                min,
                max,
                chars,
            } => {
                if chars.at_boundary() {
                    if b == b'"' {
                        if *len >= *min {
                            t.stack.pop();
                            Self::emit(t, out);
                        }
                        return;
                    }
                    if *len >= *max {
                        return;
                    }
                    *len += 1;
                }
                if self.close_tag(chars, b) {
                    return;
                }
                match chars.step(b) {
                    CharStep::Dead => {}
                    step => {
                        if matches!(step, CharStep::Paired) {
                            *len -= 1; // the pair's first escape began its one character
                        }
                        Self::emit(t, out);
                    }
                }
            }
            Frame::Number { integer, at, len } => {
                let (integer, at, len) = (*integer, *at, *len);
                let digit = b.is_ascii_digit();
                let next = match (at, b) {
                    (NumAt::Minus, b'0') => Some(NumAt::Zero),
                    (NumAt::Minus | NumAt::Int, _) if digit => Some(NumAt::Int),
                    (NumAt::Zero | NumAt::Int, b'.') if !integer => Some(NumAt::Dot),
                    (NumAt::Dot | NumAt::Frac, _) if digit => Some(NumAt::Frac),
                    (NumAt::Zero | NumAt::Int | NumAt::Frac, b'e' | b'E') if !integer => {
                        Some(NumAt::Exp)
                    }
                    (NumAt::Exp, b'+' | b'-') => Some(NumAt::ExpSign),
                    (NumAt::Exp | NumAt::ExpSign | NumAt::ExpDigits, _) if digit => {
                        Some(NumAt::ExpDigits)
                    }
                    _ => None,
                };
                let next = next
                    .filter(|_| len < MAX_NUMBER_BYTES)
                    .map(|at| Frame::Number {
                        integer,
                        at,
                        len: len + 1,
                    });
                self.number_step(t, b, out, next, at.complete());
            }
            Frame::Integer { node, at } => {
                let (node, at, range) = (*node, *at, self.int_range(*node));
                let next = at.push(b).filter(|&next| range.reachable(next));
                let next = next.map(|at| Frame::Integer { node, at });
                self.number_step(t, b, out, next, range.holds(at));
            }
            Frame::Decimal { node, at } => {
                let (node, at, bounds) = (*node, *at, self.bounds(*node));
                let next = at.push(b).filter(|&next| bounds.reachable(next));
                let next = next.map(|at| Frame::Decimal { node, at });
                self.number_step(t, b, out, next, bounds.holds(at));
            }
            Frame::Regex { node, state } => {
                let (node, state) = (*node, *state);
                let regex = self.pattern(node);
                // a tool call's value: no `<`, and only states that still reach a match
                let live = match &self.schema.nodes[node] {
                    Node::RawRegex(p) if p.no_lt => Some(&p.chars_to_match),
                    _ => None,
                };
                let next = regex
                    .next(state, b)
                    .filter(|&next| live.is_none_or(|live| b != b'<' && live.get(next).is_some()));
                if let Some(next) = next {
                    let frame = Frame::Regex { node, state: next };
                    Self::emit(with_top(t.clone(), frame), out);
                }
                // inside raw text (a tool call's value): a whole match may end before `b`
                if t.stack.len() > 1 && regex.can_end(state) {
                    t.stack.pop();
                    self.feed(t, b, out);
                }
            }
            Frame::Pattern { node, state, len } => {
                let (node, state, len) = (*node, *state, *len);
                let Node::Pattern {
                    regex,
                    max,
                    lengths,
                } = &self.schema.nodes[node]
                else {
                    unreachable!("a pattern frame reads a pattern node");
                };
                if b == b'"' {
                    if regex.regex.can_end(state) && Lengths::closes(lengths.as_ref(), len) {
                        t.stack.pop();
                        Self::emit(t, out);
                    }
                    return;
                }
                // characters counted at their first byte; a state is taken only while a match
                // can still follow within the length
                let len = len + u32::from(b & 0xC0 != 0x80);
                let Some((state, rest)) = regex.step(state, b) else {
                    return;
                };
                let fits = lengths.as_ref().map(|l| l.fits(state, len));
                if fits.unwrap_or_else(|| max.is_none_or(|max| len + rest <= max)) {
                    Self::emit(with_top(t, Frame::Pattern { node, state, len }), out);
                }
            }
            Frame::Choice { node, lo, hi, pos } => {
                let (node, lo, hi, pos) = (*node, *lo, *hi, *pos);
                let texts = &self.texts[node];
                let exact = lo < hi && texts[lo as usize].len() == pos as usize;
                let (nlo, nhi) = narrow(texts, lo, hi, pos, b);
                // an item of a unique array: only the texts not given yet
                let used = self.unique_items(&t, node);
                let unused = |i: u32| used.is_none_or(|u| u & (1 << i) == 0);
                if nlo < nhi && (nlo..nhi).any(unused) {
                    let (lo, hi, pos) = (nlo, nhi, pos + 1);
                    Self::emit(
                        with_top(t.clone(), Frame::Choice { node, lo, hi, pos }),
                        out,
                    );
                }
                if exact && unused(lo) {
                    t.stack.pop();
                    if used.is_some() {
                        if let Some(Frame::Array { used, .. }) = t.stack.last_mut() {
                            *used |= 1 << lo;
                        }
                    }
                    self.feed(t, b, out);
                }
            }
            _ => unreachable!("raw-text frames step in feed_raw"),
        }
    }

    /// A number frame after byte `b`: `next` (the frame that takes it) if any, and, where the
    /// number read so far is `complete`, the number closed and `b` fed to what holds it.
    fn number_step(
        &self,
        mut t: Thread,
        b: u8,
        out: &mut Vec<Thread>,
        next: Option<Frame>,
        complete: bool,
    ) {
        if let Some(frame) = next {
            Self::emit(with_top(t.clone(), frame), out);
        }
        if complete {
            t.stack.pop();
            self.feed(t, b, out);
        }
    }
}
