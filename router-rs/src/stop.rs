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
mod tests;
