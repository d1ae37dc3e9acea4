//! How many more characters can complete a match of a string's pattern, per DFA state: what a
//! `minLength` beside a `pattern` needs. The string may close only at a match of `min..=max`
//! characters, so the matcher enters a state only where such a match can still follow.

use std::collections::HashMap;
use std::sync::Arc;

use super::compile::err;
use super::regex::{CharsToMatch, Regex};
use super::schema::{unescaped, Pattern, SchemaError};

/// Most mask words (64 bits each) the sets of lengths may take over all states.
const MAX_SET_WORDS: usize = 1 << 20;
/// Most word operations the sets' fixed point may take.
const MAX_SET_WORK: usize = 1 << 26;
/// `Kind::Longest` of a state from which matches of any length follow.
const ANY: u32 = u32::MAX;

/// The lengths of the matches that can follow each state, for strings of `min..=max` characters.
#[derive(Debug, PartialEq)]
pub struct Lengths {
    min: u32,
    max: Option<u32>,
    /// Dense index of each state that can reach a match.
    index: HashMap<u32, u32>,
    kind: Kind,
}

#[derive(Debug, PartialEq)]
enum Kind {
    /// No maximum: per state, the most characters a match can still take (ANY: unbounded).
    Longest(Vec<u32>),
    /// Per state, `words` words of bits: bit c set where a match c characters on exists (c up
    /// to the maximum).
    Sets { words: usize, bits: Vec<u64> },
}

impl Lengths {
    /// The lengths of `regex`'s matches over the bytes `allowed`, from the states `live` says
    /// can reach a match; an error where that takes too much memory or work.
    pub(crate) fn new(
        regex: &Regex,
        allowed: impl Fn(u8) -> bool,
        live: &CharsToMatch,
        min: u32,
        max: Option<u32>,
    ) -> Result<Self, String> {
        // the live states and their steps (to state, characters the byte starts: 0 or 1)
        let mut index: HashMap<u32, u32> = HashMap::from([(regex.start(), 0)]);
        let mut states = vec![regex.start()];
        let mut steps: Vec<Vec<(u32, u32)>> = Vec::new();
        let mut i = 0;
        while i < states.len() {
            let state = states[i];
            let mut out = Vec::new();
            for b in (0..=255u8).filter(|&b| allowed(b)) {
                let Some(next) = regex.next(state, b).filter(|&n| live.get(n).is_some()) else {
                    continue;
                };
                let n = *index.entry(next).or_insert_with(|| {
                    states.push(next);
                    (states.len() - 1) as u32
                });
                out.push((n, u32::from(b & 0xC0 != 0x80)));
            }
            out.sort_unstable();
            out.dedup();
            steps.push(out);
            i += 1;
        }
        let ends: Vec<bool> = states.iter().map(|&s| regex.can_end(s)).collect();
        let kind = match max {
            None => Kind::Longest(longest(&steps, &ends)),
            Some(max) => sets(&steps, &ends, max)?,
        };
        Ok(Lengths {
            min,
            max,
            index,
            kind,
        })
    }

    /// What a string of `pattern` with `min..=max` characters needs: None without a minimum
    /// (the pattern's own `chars_to_match` keeps the maximum); an error where no string of
    /// the pattern has that many characters, or working that out costs too much.
    pub(crate) fn of_string(
        pattern: &Pattern,
        min: u32,
        max: Option<u32>,
        path: &str,
    ) -> Result<Option<Arc<Self>>, SchemaError> {
        if min == 0 {
            return Ok(None);
        }
        let allowed = |b: u8| unescaped(b) && !(pattern.no_lt && b == b'<');
        let regex = &pattern.regex;
        let lengths = Lengths::new(regex, allowed, &pattern.chars_to_match, min, max)
            .map_err(|m| err(path, m))?;
        if !lengths.fits(regex.start(), 0) {
            return Err(err(
                path,
                "no string of the pattern has that many characters",
            ));
        }
        Ok(Some(Arc::new(lengths)))
    }

    /// Whether a string of `len` characters at `state` may close (a match `min` long at least:
    /// the caller checks the match).
    pub(crate) fn closes(lengths: Option<&Arc<Self>>, len: u32) -> bool {
        lengths.is_none_or(|l| len >= l.min)
    }

    /// Whether from `state`, `len` characters read, a match of `min..=max` characters can
    /// still follow.
    pub(crate) fn fits(&self, state: u32, len: u32) -> bool {
        let Some(&i) = self.index.get(&state) else {
            return false;
        };
        let i = i as usize;
        let lo = self.min.saturating_sub(len);
        match &self.kind {
            Kind::Longest(most) => most[i] == ANY || most[i] >= lo,
            Kind::Sets { words, bits } => {
                let Some(hi) = self.max.and_then(|m| m.checked_sub(len)) else {
                    return false;
                };
                let set = &bits[i * words..(i + 1) * words];
                lo <= hi && any_in(set, lo as usize, hi as usize)
            }
        }
    }
}

/// Whether `set` has a bit in `lo..=hi`, a word at a time.
fn any_in(set: &[u64], lo: usize, hi: usize) -> bool {
    let (first, last) = (lo / 64, (hi / 64).min(set.len() - 1));
    (first..=last).any(|w| {
        let mut word = set[w];
        if w == first {
            word &= u64::MAX << (lo % 64);
        }
        if w == hi / 64 {
            word &= u64::MAX >> (63 - hi % 64);
        }
        word != 0
    })
}

/// Per state, the most characters to a match (ANY where a cycle that reads characters can be
/// taken on the way): over the strongly connected components, sinks first.
fn longest(steps: &[Vec<(u32, u32)>], ends: &[bool]) -> Vec<u32> {
    let comp = components(steps);
    let count = comp.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (s, &c) in comp.iter().enumerate() {
        members[c as usize].push(s);
    }
    let mut value = vec![0u32; count];
    for c in 0..count {
        // components are numbered sinks first: every step out of c leads to a lower number
        let mut best: Option<u32> = None;
        let mut grows = false;
        for &s in &members[c] {
            if ends[s] {
                best = best.max(Some(0));
            }
            for &(t, w) in &steps[s] {
                let tc = comp[t as usize] as usize;
                if tc == c {
                    grows |= w == 1;
                } else {
                    let v = value[tc];
                    best = best.max(Some(if v == ANY { ANY } else { v + w }));
                }
            }
        }
        value[c] = if grows { ANY } else { best.unwrap_or(0) };
    }
    comp.iter().map(|&c| value[c as usize]).collect()
}

/// The strongly connected component of each state, numbered in the order Tarjan's algorithm
/// closes them (a component's steps lead only to itself or to lower numbers).
fn components(steps: &[Vec<(u32, u32)>]) -> Vec<u32> {
    let n = steps.len();
    let (mut order, mut low) = (vec![u32::MAX; n], vec![0u32; n]);
    let mut comp = vec![u32::MAX; n];
    let (mut stack, mut on_stack) = (Vec::new(), vec![false; n]);
    let (mut next_order, mut next_comp) = (0u32, 0u32);
    for root in 0..n {
        if order[root] != u32::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)]; // (state, next step to try)
        while let Some(&mut (s, ref mut k)) = work.last_mut() {
            if *k == 0 && order[s] == u32::MAX {
                order[s] = next_order;
                low[s] = next_order;
                next_order += 1;
                stack.push(s);
                on_stack[s] = true;
            }
            if let Some(&(t, _)) = steps[s].get(*k) {
                *k += 1;
                let t = t as usize;
                if order[t] == u32::MAX {
                    work.push((t, 0));
                } else if on_stack[t] {
                    low[s] = low[s].min(order[t]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[s]);
            }
            if low[s] == order[s] {
                loop {
                    let m = stack.pop().expect("a state on the stack");
                    on_stack[m] = false;
                    comp[m] = next_comp;
                    if m == s {
                        break;
                    }
                }
                next_comp += 1;
            }
        }
    }
    comp
}

/// Per state, the set of match lengths up to `max`, to a fixed point from the ends back.
fn sets(steps: &[Vec<(u32, u32)>], ends: &[bool], max: u32) -> Result<Kind, String> {
    let words = max as usize / 64 + 1;
    let n = steps.len();
    if n.saturating_mul(words) > MAX_SET_WORDS {
        return Err("minLength and maxLength beside this pattern take too much memory".into());
    }
    let mut into: Vec<Vec<(usize, u32)>> = vec![Vec::new(); n];
    for (s, out) in steps.iter().enumerate() {
        for &(t, w) in out {
            into[t as usize].push((s, w));
        }
    }
    let mut bits = vec![0u64; n * words];
    let mut queued = vec![false; n];
    let mut todo = Vec::new();
    for s in (0..n).filter(|&s| ends[s]) {
        bits[s * words] = 1;
        queued[s] = true;
        todo.push(s);
    }
    let top = if (max + 1).is_multiple_of(64) {
        u64::MAX
    } else {
        (1u64 << ((max + 1) % 64)) - 1
    };
    let mut work = 0usize;
    let mut from = vec![0u64; words];
    while let Some(t) = todo.pop() {
        queued[t] = false;
        from.copy_from_slice(&bits[t * words..(t + 1) * words]);
        for &(p, w) in &into[t] {
            work += words;
            if work > MAX_SET_WORK {
                return Err("minLength and maxLength beside this pattern take too long".into());
            }
            let mut changed = false;
            let mut carry = 0u64;
            for k in 0..words {
                let mut v = if w == 1 {
                    (from[k] << 1) | carry
                } else {
                    from[k]
                };
                carry = from[k] >> 63;
                if k + 1 == words {
                    v &= top;
                }
                let old = bits[p * words + k];
                if old | v != old {
                    bits[p * words + k] = old | v;
                    changed = true;
                }
            }
            if changed && !queued[p] {
                queued[p] = true;
                todo.push(p);
            }
        }
    }
    Ok(Kind::Sets { words, bits })
}

#[cfg(test)]
mod tests {
    use super::{components, longest, sets, Kind, ANY};

    #[test]
    fn the_longest_match_is_unbounded_only_past_a_cycle_that_reads_characters() {
        // 0 -1-> 1 -0-> 2 -0-> 1 (a cycle of continuation bytes), 2 -1-> 3 (end); 4 -1-> 4 -1-> 3
        let steps = vec![
            vec![(1, 1)],
            vec![(2, 0)],
            vec![(1, 0), (3, 1)],
            vec![],
            vec![(4, 1), (3, 1)],
        ];
        let ends = [false, false, false, true, false];
        let comp = components(&steps);
        assert_eq!(comp[1], comp[2]);
        assert!(comp[3] < comp[1] && comp[1] < comp[0]);
        assert_eq!(longest(&steps, &ends), vec![2, 1, 1, 0, ANY]);
        let Ok(Kind::Sets { words: 1, bits }) = sets(&steps, &ends, 3) else {
            panic!("one word of lengths");
        };
        assert_eq!(bits, vec![0b100, 0b10, 0b10, 0b1, 0b1110]);
    }
}

#[cfg(test)]
mod range_tests {
    use super::any_in;

    #[test]
    fn a_range_test_by_words_equals_the_bit_by_bit_one() {
        let set = [0x8000_0000_0000_0001u64, 0, 0x10];
        for lo in 0..192 {
            for hi in lo..192 {
                let slow = (lo..=hi).any(|c| set[c / 64] & (1 << (c % 64)) != 0);
                assert_eq!(any_in(&set, lo, hi), slow, "{lo}..={hi}");
            }
        }
    }
}
