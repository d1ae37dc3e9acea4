//! Token logprobs in the two OpenAI shapes.

use serde_json::{Map, Value};

use crate::protocol::openai::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};
use crate::state::{PromptLogprobs, TokenInfo};
use crate::tokenizer::Tokenizer;

/// The text of one token on its own (special tokens included).
fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// `choices[i].logprobs` of a chat answer or chunk.
pub fn chat(tokenizer: &Tokenizer, tokens: &[TokenInfo]) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|t| {
            let token = token_text(tokenizer, t.id);
            let top_logprobs = t
                .top
                .iter()
                .map(|&(id, logprob)| {
                    let token = token_text(tokenizer, id);
                    ChatTopLogprob {
                        bytes: token.as_bytes().to_vec(),
                        token,
                        logprob,
                    }
                })
                .collect();
            ChatTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: t.logprob.unwrap_or(f32::NAN),
                top_logprobs,
            }
        })
        .collect();
    ChatLogprobs { content }
}

/// `choices[i].logprobs` of a completions answer or chunk; offsets start at `offset` (the length
/// of the text already returned for this choice) and advance by each token's text, counted in
/// characters (as OpenAI and vLLM count them).
pub fn completion(
    tokenizer: &Tokenizer,
    tokens: &[TokenInfo],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    push_tokens(&mut out, tokenizer, tokens, offset);
    out
}

/// Appends the entries of generated `tokens`.
fn push_tokens(
    out: &mut CompletionLogprobs,
    tokenizer: &Tokenizer,
    tokens: &[TokenInfo],
    offset: &mut usize,
) {
    for t in tokens {
        let top = Some(&t.top[..]);
        push(out, tokenizer, t.id, &t.text, t.logprob, top, offset);
    }
}

/// Appends one token's entry: its text, where it starts, its logprob and alternatives (`None`:
/// null, for a token no logits came before).
fn push(
    out: &mut CompletionLogprobs,
    tokenizer: &Tokenizer,
    id: u32,
    text: &str,
    logprob: Option<f32>,
    top: Option<&[(u32, f32)]>,
    offset: &mut usize,
) {
    out.tokens.push(token_text(tokenizer, id));
    out.text_offset.push(*offset);
    *offset += text.chars().count();
    out.token_logprobs.push(logprob);
    out.top_logprobs.push(top.map(|alts| {
        alts.iter()
            .map(|&(id, logprob)| (token_text(tokenizer, id), Value::from(f64::from(logprob))))
            .collect::<Map<String, Value>>()
    }));
}

/// `choices[i].logprobs` of an echoed prompt followed by generated `tokens`: one entry per
/// prompt token, the first with null logprob and alternatives (no logits come before it);
/// `pieces[i]` is the text prompt token i adds to the echo, so offsets advance from `offset`
/// through the echo (in characters). Missing `scores` (a request that ended before its first
/// token, a NaN for a position the worker did not score) read as null too.
pub fn echoed_prompt(
    tokenizer: &Tokenizer,
    ids: &[u32],
    pieces: &[String],
    scores: Option<&PromptLogprobs>,
    tokens: &[TokenInfo],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (i, (&id, piece)) in ids.iter().zip(pieces).enumerate() {
        let scored = i.checked_sub(1).and_then(|j| {
            let s = scores?;
            let logprob = *s.logprobs.get(j).filter(|l| !l.is_nan())?;
            Some((logprob, s.top.get(j).map_or(&[][..], Vec::as_slice)))
        });
        let (logprob, top) = (scored.map(|s| s.0), scored.map(|s| s.1));
        push(&mut out, tokenizer, id, piece, logprob, top, offset);
    }
    push_tokens(&mut out, tokenizer, tokens, offset);
    out
}
