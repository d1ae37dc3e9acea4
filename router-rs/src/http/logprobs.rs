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

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let vocab = (0u32..16).map(|i| (format!("t{i}"), i)).collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab)
            .unk_token("t0".into())
            .build()
            .expect("vocab builds");
        Tokenizer::new(tokenizers::Tokenizer::new(model), vec![0])
    }

    #[test]
    fn an_echoed_prompt_has_null_where_nothing_was_scored() {
        let tok = tokenizer();
        let pieces: Vec<String> = ["ab", "é", "c"].iter().map(|s| s.to_string()).collect();
        let scores = PromptLogprobs {
            logprobs: vec![f32::NAN, -2.0],
            top: vec![vec![], vec![(3, -0.5)]],
        };
        let generated = [TokenInfo {
            id: 4,
            text: "d".into(),
            logprob: Some(-1.0),
            top: vec![],
            special: false,
        }];
        let mut offset = 0;
        let lp = echoed_prompt(
            &tok,
            &[1, 2, 3],
            &pieces,
            Some(&scores),
            &generated,
            &mut offset,
        );
        assert_eq!(lp.token_logprobs, vec![None, None, Some(-2.0), Some(-1.0)]);
        assert_eq!(lp.top_logprobs[0], None);
        assert_eq!(lp.top_logprobs[1], None, "a NaN score is not a score");
        assert_eq!(lp.top_logprobs[2].as_ref().map(Map::len), Some(1));
        assert_eq!(lp.text_offset, vec![0, 2, 3, 4], "offsets count characters");
        assert_eq!(offset, 5);
        let mut offset = 0;
        let lp = echoed_prompt(&tok, &[1, 2], &pieces[..2], None, &[], &mut offset);
        assert_eq!(lp.token_logprobs, vec![None, None]);
    }
}
