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
    for t in tokens {
        let token = token_text(tokenizer, t.id);
        out.text_offset.push(*offset);
        *offset += t.text.chars().count();
        out.token_logprobs.push(t.logprob);
        let top: Map<String, Value> = t
            .top
            .iter()
            .map(|&(id, logprob)| (token_text(tokenizer, id), Value::from(f64::from(logprob))))
            .collect();
        out.top_logprobs.push(Some(top));
        out.tokens.push(token);
    }
    out
}

/// `choices[i].logprobs` of an echoed prompt: one entry per prompt token, the first with null
/// logprob and alternatives (no logits come before it); `pieces[i]` is the text token i adds to
/// the echo, so offsets advance from `offset` to the echo's end (in characters). Missing
/// `scores` (a request that ended before its first token, a NaN for a position the worker did
/// not score) read as null too.
pub fn echoed_prompt(
    tokenizer: &Tokenizer,
    ids: &[u32],
    pieces: &[String],
    scores: Option<&PromptLogprobs>,
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (i, (&id, piece)) in ids.iter().zip(pieces).enumerate() {
        out.tokens.push(token_text(tokenizer, id));
        out.text_offset.push(*offset);
        *offset += piece.chars().count();
        let scored = i.checked_sub(1).and_then(|j| {
            let s = scores?;
            let logprob = *s.logprobs.get(j).filter(|l| !l.is_nan())?;
            Some((logprob, s.top.get(j)))
        });
        out.token_logprobs.push(scored.map(|(logprob, _)| logprob));
        out.top_logprobs.push(scored.map(|(_, top)| {
            top.into_iter()
                .flatten()
                .map(|&(id, logprob)| (token_text(tokenizer, id), Value::from(f64::from(logprob))))
                .collect()
        }));
    }
    out
}

/// `first` followed by `then`.
pub fn join(mut first: CompletionLogprobs, then: CompletionLogprobs) -> CompletionLogprobs {
    first.tokens.extend(then.tokens);
    first.token_logprobs.extend(then.token_logprobs);
    first.top_logprobs.extend(then.top_logprobs);
    first.text_offset.extend(then.text_offset);
    first
}
