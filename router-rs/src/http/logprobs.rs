//! Token logprobs in the two OpenAI shapes.

use serde_json::{Map, Value};

use crate::protocol::openai::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};
use crate::state::TokenInfo;
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
/// of the text already returned for this choice) and advance by each token's text.
pub fn completion(
    tokenizer: &Tokenizer,
    tokens: &[TokenInfo],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let token = token_text(tokenizer, t.id);
        out.text_offset.push(*offset);
        *offset += t.text.len();
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
