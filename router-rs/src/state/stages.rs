//! The text stages of a [`super::Pipeline`] as small interfaces, so that a choice can run with
//! any detokenizer and stop matcher (and tests can script them).

/// Turns token ids into text, one id at a time, never splitting a UTF-8 character.
pub trait Detokenize: Send {
    /// Text added by `id` (empty while a character is still incomplete).
    fn push(&mut self, id: u32) -> String;
    /// Whatever is still held back at the end of the output.
    fn finish(&mut self) -> String;
}

/// Holds back text a stop string may still claim and reports when one matched.
pub trait StopStrings: Send {
    /// Feeds `text`; returns the text now safe to release and whether a stop string matched (the
    /// match and everything after it are never released).
    fn push(&mut self, text: &str) -> (String, bool);
    /// Feeds `text` in which no stop string may end (the tokens before `min_tokens`); a match
    /// ending in later text may still begin in it. Returns the text now safe to release.
    fn push_unchecked(&mut self, text: &str) -> String;
    /// Releases the text held back at the end of the output, and whether a stop string matched
    /// in it.
    fn finish(&mut self) -> (String, bool);
    /// The stop string that matched, if one did.
    fn matched(&self) -> Option<String> {
        None
    }
}

impl Detokenize for crate::detokenize::Detokenizer {
    fn push(&mut self, id: u32) -> String {
        crate::detokenize::Detokenizer::push(self, &[id]).unwrap_or_else(|e| {
            tracing::warn!("dropping undecodable token {id}: {e}");
            String::new()
        })
    }

    fn finish(&mut self) -> String {
        crate::detokenize::Detokenizer::finish(self).unwrap_or_else(|e| {
            tracing::warn!("dropping undecodable tail: {e}");
            String::new()
        })
    }
}

impl StopStrings for crate::stop::StopMatcher {
    fn push(&mut self, text: &str) -> (String, bool) {
        crate::stop::StopMatcher::push(self, text)
    }

    fn push_unchecked(&mut self, text: &str) -> String {
        crate::stop::StopMatcher::push_unchecked(self, text)
    }

    fn finish(&mut self) -> (String, bool) {
        crate::stop::StopMatcher::finish(self)
    }

    fn matched(&self) -> Option<String> {
        crate::stop::StopMatcher::matched(self).map(str::to_owned)
    }
}
