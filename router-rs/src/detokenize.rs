//! Incremental detokenization: token ids in, only the new text out.
//!
//! A token can end in the middle of a UTF-8 character (byte-level BPE splits CJK and emoji), and
//! some decoders change a token's text depending on its left neighbour. So each step decodes a
//! small window twice: the context tokens already emitted (`ids[..read_offset]`) and the window
//! with the new tokens, and emits the difference once it no longer ends in U+FFFD. After each
//! emission the window slides forward, so the work per token stays constant however long the
//! output grows.
//!
//! `skip_special_tokens` drops the ids of [`Tokenizer::output_skip_ids`]: control tokens such as
//! `<|user|>`, `[gMASK]` or eos go, but the tags the output parsers read (`<think>`,
//! `<tool_call>`, …) always reach them, even when the tokenizer file marks them special.

use std::sync::Arc;

use crate::tokenizer::{Tokenizer, TokenizerError};

/// Pending tokens after which text is emitted even if it ends in U+FFFD: a real UTF-8 character
/// needs at most 4 byte tokens, so a longer run is genuinely invalid bytes.
const MAX_PENDING: usize = 8;

/// Turns a stream of token ids into a stream of text pieces that never split a character.
#[derive(Debug)]
pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    /// The window: context tokens, then tokens not yet emitted.
    ids: Vec<u32>,
    /// `ids[..read_offset]` is the context, whose text has been emitted already.
    read_offset: usize,
    /// The context decoded, kept while characters are held back so it is decoded once per
    /// window position.
    prefix: Option<String>,
}

impl Detokenizer {
    /// A detokenizer with no context; special tokens other than the parser tags are dropped when
    /// `skip_special_tokens`.
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool) -> Self {
        Self::with_context(tokenizer, &[], skip_special_tokens)
    }

    /// A detokenizer whose first tokens are decoded after `context` (e.g. the prompt's last few
    /// ids), for decoders whose output depends on the previous token. The context itself is
    /// never emitted.
    pub fn with_context(
        tokenizer: Arc<Tokenizer>,
        context: &[u32],
        skip_special_tokens: bool,
    ) -> Self {
        let ids: Vec<u32> = context
            .iter()
            .copied()
            .filter(|id| !(skip_special_tokens && tokenizer.output_skip_ids().contains(id)))
            .collect();
        Self {
            tokenizer,
            skip_special_tokens,
            read_offset: ids.len(),
            ids,
            prefix: None,
        }
    }

    /// Adds `ids` and returns the text they complete, possibly empty (a character still
    /// incomplete is held back until its last byte arrives). Fails only on ids the tokenizer
    /// does not know; the detokenizer is then unchanged apart from the ids pushed before the
    /// failing one.
    pub fn push(&mut self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut out = String::new();
        for &id in ids {
            if self.skip_special_tokens && self.tokenizer.output_skip_ids().contains(&id) {
                continue;
            }
            self.ids.push(id);
            if let Err(e) = self.step(&mut out, false) {
                self.ids.pop();
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Returns whatever text is still held back (an incomplete character comes out as U+FFFD)
    /// and resets the window; pushing more ids afterwards continues the stream.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let mut out = String::new();
        if self.read_offset < self.ids.len() {
            self.step(&mut out, true)?;
        }
        Ok(out)
    }

    /// Number of ids in the decoding window (context plus held-back ids); stays small.
    pub fn window_len(&self) -> usize {
        self.ids.len()
    }

    /// Decodes the window; when the new text is complete (or `force`), appends it to `out` and
    /// slides the window so the emitted tokens become the next context.
    fn step(&mut self, out: &mut String, force: bool) -> Result<(), TokenizerError> {
        // Skipped ids never enter the window, so everything in it is decoded.
        let prefix = match &mut self.prefix {
            Some(prefix) => prefix,
            empty => empty.insert(
                self.tokenizer
                    .decode(&self.ids[..self.read_offset], false)?,
            ),
        };
        let full = self.tokenizer.decode(&self.ids, false)?;
        let pending = self.ids.len() - self.read_offset;
        let complete = full.len() > prefix.len() && !full.ends_with('\u{FFFD}');
        if !(complete || force || pending > MAX_PENDING) {
            return Ok(());
        }
        let new_text = match full.get(prefix.len()..) {
            Some(text) if full.starts_with(prefix.as_str()) => text,
            // The context decoded differently inside the longer window: emit what differs.
            _ => {
                let common = common_prefix_len(prefix, &full);
                &full[common..]
            }
        };
        out.push_str(new_text);
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        self.prefix = None;
        Ok(())
    }
}

/// Length in bytes of the longest common prefix of `a` and `b`, on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tests::tiny_tokenizer;

    fn detok(skip: bool) -> (Arc<Tokenizer>, Detokenizer) {
        let tok = Arc::new(tiny_tokenizer());
        (tok.clone(), Detokenizer::new(tok, skip))
    }

    #[test]
    fn cjk_and_emoji_split_across_tokens_are_never_emitted_in_halves() {
        let (tok, mut d) = detok(false);
        let text = "a你好😀b 世界!";
        let ids = tok.encode(text).unwrap();
        assert!(
            ids.len() > text.chars().count(),
            "some characters span several tokens"
        );
        let mut pieces = Vec::new();
        for id in &ids {
            pieces.push(d.push(&[*id]).unwrap());
        }
        pieces.push(d.finish().unwrap());
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert!(
            pieces.iter().any(String::is_empty),
            "a split character was held back"
        );
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn several_ids_at_once_give_the_same_text() {
        let (tok, mut d) = detok(false);
        let text = "你😀 hello 你";
        let ids = tok.encode(text).unwrap();
        let mut out = String::new();
        for chunk in ids.chunks(3) {
            out.push_str(&d.push(chunk).unwrap());
        }
        out.push_str(&d.finish().unwrap());
        assert_eq!(out, text);
    }

    #[test]
    fn skipping_drops_control_tokens_but_keeps_the_parser_tags() {
        let text = "[gMASK]<|user|>hi<think>x</think><|endoftext|>";
        let kept = "hi<think>x</think>";
        for (skip, want) in [(true, kept), (false, text)] {
            let (tok, mut d) = detok(skip);
            let ids = tok.encode(text).unwrap();
            let mut out: String = ids.iter().map(|id| d.push(&[*id]).unwrap()).collect();
            out.push_str(&d.finish().unwrap());
            assert_eq!(out, want);
        }
    }

    #[test]
    fn window_stays_small_on_long_outputs() {
        let (tok, mut d) = detok(false);
        let ids = tok.encode(&"hello 你好😀 ".repeat(2000)).unwrap();
        let mut max_window = 0;
        let mut total = 0;
        for id in &ids {
            total += d.push(&[*id]).unwrap().len();
            max_window = max_window.max(d.window_len());
        }
        assert!(max_window <= 8, "window grew to {max_window}");
        assert_eq!(total, "hello 你好😀 ".len() * 2000);
    }

    #[test]
    fn invalid_bytes_are_released_instead_of_held_forever() {
        let (tok, mut d) = detok(false);
        let continuation = 0x80; // id of byte 0x80, never valid on its own
        let mut out = String::new();
        for _ in 0..50 {
            out.push_str(&d.push(&[continuation]).unwrap());
            assert!(d.window_len() <= 2 * MAX_PENDING + 2);
        }
        assert!(out.contains('\u{FFFD}'));
        let _ = tok;
    }

    #[test]
    fn context_is_not_emitted() {
        let tok = Arc::new(tiny_tokenizer());
        let context = tok.encode("<|assistant|><think>").unwrap();
        let mut d = Detokenizer::with_context(tok.clone(), &context, false);
        let ids = tok.encode("ok 你").unwrap();
        let mut out = d.push(&ids).unwrap();
        out.push_str(&d.finish().unwrap());
        assert_eq!(out, "ok 你");
    }

    #[test]
    fn unknown_ids_decode_to_nothing() {
        let (_, mut d) = detok(false);
        assert_eq!(d.push(&[1_000_000, 104]).unwrap(), "h");
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_gives_the_full_text_without_broken_characters(
            text in "[a-e 你好世界😀é!]{0,30}",
            sizes in proptest::collection::vec(1usize..4, 1..40),
        ) {
            let (tok, mut d) = detok(false);
            let ids = tok.encode(&text).unwrap();
            let mut out = String::new();
            let mut rest = ids.as_slice();
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                let piece = d.push(chunk).unwrap();
                proptest::prop_assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "broken character in {:?}", piece);
                out.push_str(&piece);
                rest = tail;
            }
            out.push_str(&d.finish().unwrap());
            proptest::prop_assert_eq!(out, text);
        }
    }
}
