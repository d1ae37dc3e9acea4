//! Stop strings over streamed text.
//!
//! Text arrives in pieces; a stop string may straddle any number of them. [`StopMatcher`] emits
//! text as soon as it cannot be the start of a stop string, holds back the longest tail that is
//! still a prefix of one, and on a match emits the text before the stop string (and the stop
//! string itself only when asked: vLLM's `include_stop_str_in_output`) and reports the stop. With
//! no stop strings nothing is ever held back. Text fed with [`StopMatcher::push_unchecked`] (the
//! tokens before vLLM's `min_tokens`) ends no match, but a match ending in later text may begin
//! in it, as vLLM finds one.

/// Finds the first occurrence of any stop string in a stream of text.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    /// Non-empty stop strings, in the order given.
    stops: Vec<String>,
    /// Text received but not yet emitted: a tail that may begin a stop string.
    held: String,
    /// Bytes at the start of `held` fed unchecked: a match must end after them.
    unchecked: usize,
    /// Index into `stops` of the string that matched, once one has.
    matched: Option<usize>,
    /// Emit the matched stop string too.
    include_match: bool,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s| !s.is_empty())
                .collect(),
            held: String::new(),
            unchecked: 0,
            matched: None,
            include_match: false,
        }
    }

    /// With `include` true, a match emits the stop string too (the text after it is still
    /// dropped).
    pub fn including_match(mut self, include: bool) -> Self {
        self.include_match = include;
        self
    }

    /// Feeds `text`; returns the text that is safe to emit and whether a stop string matched.
    /// When several stop strings occur, the one starting earliest wins (on a tie, the one given
    /// first). After a stop, every call returns `("", true)`.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.matched.is_some() {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        let keep_from = self.held_tail_start();
        if let Some((start, index)) = self.first_match() {
            // A stop string that starts earlier may still be completed by the text to come
            // ("b/" of "b/<" before a whole "/"): the match waits until that one is decided.
            if keep_from >= start {
                return (self.stop_at(start, index), true);
            }
        }
        (self.release_to(keep_from), false)
    }

    /// Feeds `text` in which no stop string may end; returns the text that is safe to emit (a
    /// tail that may begin a stop string ending in later text is held back).
    pub fn push_unchecked(&mut self, text: &str) -> String {
        if self.matched.is_some() {
            return String::new();
        }
        if self.stops.is_empty() {
            return text.to_string();
        }
        self.held.push_str(text);
        self.unchecked = self.held.len();
        self.release_to(self.held_tail_start())
    }

    /// Emits `held` up to byte `keep_from`, keeping the rest.
    fn release_to(&mut self, keep_from: usize) -> String {
        let rest = self.held.split_off(keep_from);
        self.unchecked = self.unchecked.saturating_sub(keep_from);
        std::mem::replace(&mut self.held, rest)
    }

    /// Ends the stream: returns the held-back text and whether a stop string matched in it (one
    /// that was waiting on an earlier, unfinished one). After a stop, `("", true)`.
    pub fn finish(&mut self) -> (String, bool) {
        if self.matched.is_some() {
            return (String::new(), true);
        }
        match self.first_match() {
            Some((start, index)) => (self.stop_at(start, index), true),
            None => (std::mem::take(&mut self.held), false),
        }
    }

    /// The stop string that matched, if any.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Whether a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// Stops at stop string `index`, found at byte `start` of `held`: the text before it (and
    /// the stop string, when included).
    fn stop_at(&mut self, start: usize, index: usize) -> String {
        self.matched = Some(index);
        let mut emit = std::mem::take(&mut self.held);
        emit.truncate(if self.include_match {
            start + self.stops[index].len()
        } else {
            start
        });
        emit
    }

    /// Byte offset in `held` and stop index of the earliest match that ends after the
    /// unchecked text.
    fn first_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, stop)| {
                let from = (self.unchecked + 1).saturating_sub(stop.len());
                let from = (from..=self.held.len()).find(|&b| self.held.is_char_boundary(b))?;
                self.held[from..]
                    .find(stop.as_str())
                    .map(|at| (from + at, i))
            })
            .min()
    }

    /// Start of the longest tail of `held` that is a prefix of some stop string (`held.len()`
    /// when there is none). No earlier text can begin a match.
    fn held_tail_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let lowest = self.held.len().saturating_sub(longest.saturating_sub(1));
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= lowest)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` and returns (all emitted text, stopped, chunk index of the stop).
    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool, Option<usize>) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let (emit, stopped) = m.push(chunk);
            out.push_str(&emit);
            if stopped {
                return (out, true, Some(i));
            }
        }
        let (tail, stopped) = m.finish();
        out.push_str(&tail);
        (out, stopped, None)
    }

    #[test]
    fn stop_split_across_many_chunks_is_found_and_excluded() {
        let (out, stopped, at) = run(
            &["</answer>"],
            &["The end", "<", "/an", "s", "wer", "> tail"],
        );
        assert_eq!((out.as_str(), stopped, at), ("The end", true, Some(5)));
    }

    #[test]
    fn unchecked_text_ends_no_match_but_may_begin_one() {
        let mut m = StopMatcher::new(["abc", "b"]);
        // "b" ends in the unchecked text; "ab" may begin "abc", so it is held
        assert_eq!(m.push_unchecked("xab"), "x");
        assert_eq!(m.push("c tail"), (String::new(), true));
        assert_eq!(m.matched(), Some("abc"));
        // the held "ab" released: "b" within it stays unmatched, the next "b" stops
        let mut m = StopMatcher::new(["abc", "b"]);
        assert_eq!(m.push_unchecked("xab"), "x");
        assert_eq!(m.push("xyb!"), ("abxy".to_string(), true));
        assert_eq!(m.matched(), Some("b"));
        // a whole stop string at the end of unchecked text: only a tail that may begin a later
        // match is held
        let mut m = StopMatcher::new(["éé"]);
        assert_eq!(m.push_unchecked("aéé"), "aé");
        assert_eq!(m.push("x"), ("éx".to_string(), false));
        // the search for "bc" would start inside the held "é": it starts after it
        let mut m = StopMatcher::new(["bc", "aéé"]);
        assert_eq!(m.push_unchecked("aé"), "");
        assert_eq!(m.push("bc"), ("aé".to_string(), true));
        let mut m = StopMatcher::new(["éé"]);
        assert_eq!(m.push_unchecked("é"), "");
        assert_eq!(m.push("é"), (String::new(), true));
        assert_eq!(m.finish(), (String::new(), true));
        // without stop strings nothing is held
        assert_eq!(
            StopMatcher::new(Vec::<String>::new()).push_unchecked("ab"),
            "ab"
        );
    }

    #[test]
    fn an_included_stop_string_is_emitted_and_what_follows_is_not() {
        let mut m = StopMatcher::new(["</a>", "b"]).including_match(true);
        assert_eq!(m.push("x</"), ("x".to_string(), false));
        assert_eq!(m.push("a> tail b"), ("</a>".to_string(), true));
        assert_eq!(m.matched(), Some("</a>"));
    }

    #[test]
    fn a_partial_stop_is_held_then_released_when_it_diverges() {
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("abST"), ("ab".to_string(), false));
        assert_eq!(m.push("O"), (String::new(), false));
        assert_eq!(m.push("P!"), (String::new(), true));
        assert_eq!(m.matched(), Some("STOP"));
        assert_eq!(m.push("more"), (String::new(), true));
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("xST"), ("x".to_string(), false));
        assert_eq!(m.push("Ox"), ("STOx".to_string(), false));
        assert_eq!(m.finish(), (String::new(), false));
    }

    #[test]
    fn overlapping_stops_match_at_the_earliest_position() {
        let (out, stopped, _) = run(&["bcd", "abcx", "cd"], &["xxab", "cd"]);
        assert_eq!((out.as_str(), stopped), ("xxa", true));
        let mut m = StopMatcher::new(["aab", "ab"]);
        assert_eq!(m.push("a").0, "");
        assert_eq!(m.push("a").0, "");
        assert_eq!(m.push("ab"), ("a".to_string(), true));
        assert_eq!(m.matched(), Some("aab"));
    }

    #[test]
    fn a_whole_stop_waits_for_an_earlier_one_still_in_progress() {
        // "/" is whole at byte 3 while "b/<" may still begin at byte 2: the text after "é" is
        // held until the next piece decides which stop string comes first.
        let mut m = StopMatcher::new(["b/<", "/"]);
        assert_eq!(m.push("éb/"), ("é".to_string(), false));
        assert_eq!(m.push("<x"), (String::new(), true));
        assert_eq!(m.matched(), Some("b/<"));
        let mut m = StopMatcher::new(["b/<", "/"]);
        assert_eq!(m.push("éb/"), ("é".to_string(), false));
        assert_eq!(m.push("x"), ("b".to_string(), true));
        assert_eq!(m.matched(), Some("/"));
        // The output ends while the earlier one is undecided: the whole one stops it.
        let mut m = StopMatcher::new(["b/<", "/"]).including_match(true);
        assert_eq!(m.push("éb/"), ("é".to_string(), false));
        assert_eq!(m.finish(), ("b/".to_string(), true));
        assert_eq!(m.matched(), Some("/"));
    }

    #[test]
    fn no_stop_strings_means_no_hold_back() {
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(m.push("<"), ("<".to_string(), false));
        let mut m = StopMatcher::new([""]);
        assert_eq!(m.push("abc"), ("abc".to_string(), false));
        assert!(!m.is_stopped());
    }

    #[test]
    fn unmatched_tail_comes_out_on_finish() {
        let (out, stopped, _) = run(&["###"], &["a#", "#"]);
        assert_eq!((out.as_str(), stopped), ("a##", false));
    }

    #[test]
    fn multibyte_text_is_held_on_character_boundaries() {
        let (out, stopped, _) = run(&["。\n"], &["你好", "。", "\n后"]);
        assert_eq!((out.as_str(), stopped), ("你好", true));
        let (out, stopped, _) = run(&["é!"], &["aé", "é", "x"]);
        assert_eq!((out.as_str(), stopped), ("aééx", false));
    }

    #[test]
    fn every_split_of_a_text_gives_the_same_result() {
        let text = "one two <stop> three";
        for cut1 in 0..=text.len() {
            for cut2 in cut1..=text.len() {
                let chunks = [&text[..cut1], &text[cut1..cut2], &text[cut2..]];
                let (out, stopped, _) = run(&["<stop>", "two  "], &chunks);
                assert_eq!((out.as_str(), stopped), ("one two ", true), "{chunks:?}");
            }
        }
    }

    /// The text before the earliest stop in the whole text, as a one-shot search finds it.
    fn one_shot(stops: &[String], text: &str) -> (String, bool) {
        let hit = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min();
        match hit {
            Some(at) => (text[..at].to_string(), true),
            None => (text.to_string(), false),
        }
    }

    proptest::proptest! {
        #[test]
        fn streaming_equals_one_shot_for_any_chunking(
            text in "[ab<>/é]{0,40}",
            stops in proptest::collection::vec("[ab<>/é]{0,4}", 0..4),
            cuts in proptest::collection::vec(0usize..40, 0..8),
        ) {
            let mut bounds: Vec<usize> = cuts
                .into_iter()
                .map(|c| c.min(text.len()))
                .filter(|&c| text.is_char_boundary(c))
                .collect();
            bounds.extend([0, text.len()]);
            bounds.sort_unstable();
            let chunks: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            let (out, stopped, _) = run(&refs, &chunks);
            proptest::prop_assert_eq!((out, stopped), one_shot(&stops, &text));
        }
    }
}
