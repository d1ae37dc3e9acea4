//! Token logprobs in the two OpenAI shapes, and prompt logprobs in vLLM's.

use serde_json::{Map, Value};

use crate::protocol::openai::{
    finite_logprob, ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs,
    PromptLogprobList, PromptPosition, PromptTokenLogprob,
};
use crate::state::{PromptLogprobs, TokenInfo};
use crate::tokenizer::Tokenizer;

/// How logprobs name tokens: by the text of each on its own (special tokens included), or as
/// `token_id:N` (vLLM's `return_tokens_as_token_ids`, for tokens whose text is not whole UTF-8).
#[derive(Clone, Copy)]
pub struct Names<'a> {
    tokenizer: &'a Tokenizer,
    as_ids: bool,
}

impl<'a> Names<'a> {
    pub fn new(tokenizer: &'a Tokenizer, as_ids: bool) -> Self {
        Names { tokenizer, as_ids }
    }

    fn of(&self, id: u32) -> String {
        if self.as_ids {
            return format!("token_id:{id}");
        }
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// The token's own bytes, whichever way it is named.
    fn bytes(&self, id: u32) -> Vec<u8> {
        self.tokenizer.token_bytes(id)
    }
}

/// `choices[i].logprobs` of a chat answer or chunk.
pub fn chat(names: Names<'_>, tokens: &[TokenInfo]) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|t| {
            let token = names.of(t.id);
            let top_logprobs = t
                .top
                .iter()
                .map(|&(id, logprob)| ChatTopLogprob {
                    bytes: names.bytes(id),
                    token: names.of(id),
                    logprob,
                })
                .collect();
            ChatTokenLogprob {
                bytes: names.bytes(t.id),
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
    names: Names<'_>,
    tokens: &[TokenInfo],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    push_tokens(&mut out, names, tokens, offset);
    out
}

/// Appends the entries of generated `tokens`.
fn push_tokens(
    out: &mut CompletionLogprobs,
    names: Names<'_>,
    tokens: &[TokenInfo],
    offset: &mut usize,
) {
    for t in tokens {
        let top = Some(&t.top[..]);
        push(out, names, t.id, &t.text, t.logprob, top, offset);
    }
}

/// Appends one token's entry: its text, where it starts, its logprob and alternatives (`None`:
/// null, for a token no logits came before).
fn push(
    out: &mut CompletionLogprobs,
    names: Names<'_>,
    id: u32,
    text: &str,
    logprob: Option<f32>,
    top: Option<&[(u32, f32)]>,
    offset: &mut usize,
) {
    let token = names.of(id);
    out.text_offset.push(*offset);
    *offset += text.chars().count();
    out.token_logprobs.push(logprob);
    out.top_logprobs.push(top.map(|alts| {
        // The same f32 as `token_logprobs` (its shortest form), so that equal logprobs compare
        // equal in the client (lm-eval's greedy check compares the two).
        // Tokens whose text is the same (byte pieces of one character all read "\u{fffd}") share
        // a key: it keeps the first, most likely one.
        let mut map: Map<String, Value> = Map::new();
        for &(id, logprob) in alts {
            map.entry(names.of(id)).or_insert(Value::from(logprob));
        }
        // The chosen token is always listed, so there may be k + 1 entries (OpenAI, vLLM), and
        // its key holds its own logprob (where a likelier alternative has its text too).
        if let Some(logprob) = logprob {
            map.insert(token.clone(), Value::from(logprob));
        }
        map
    }));
    out.tokens.push(token);
}

/// `choices[i].logprobs` of an echoed prompt followed by generated `tokens`: one entry per
/// prompt token, the first with null logprob and alternatives (no logits come before it), the
/// others with at most `top` alternatives (the worker may have scored more, for
/// `prompt_logprobs`); `pieces[i]` is the text prompt token i adds to the echo, so offsets
/// advance from `offset` through the echo (in characters). Missing `scores` (a request that
/// ended before its first token, a NaN for a position the worker did not score) read as null
/// too.
pub fn echoed_prompt(
    names: Names<'_>,
    ids: &[u32],
    pieces: &[String],
    scores: Option<&PromptLogprobs>,
    top: usize,
    tokens: &[TokenInfo],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (i, (&id, piece)) in ids.iter().zip(pieces).enumerate() {
        let scored = i.checked_sub(1).and_then(|j| {
            let s = scores?;
            let logprob = *s.logprobs.get(j).filter(|l| !l.is_nan())?;
            Some((logprob, alternatives(s, j, top)))
        });
        let (logprob, top) = (scored.map(|s| s.0), scored.map(|s| s.1));
        push(&mut out, names, id, piece, logprob, top, offset);
    }
    push_tokens(&mut out, names, tokens, offset);
    out
}

/// The best `top` alternatives `scores` holds at entry `j` (prompt token j + 1), best first.
fn alternatives(scores: &PromptLogprobs, j: usize, top: usize) -> &[(u32, f32)] {
    let all = scores.top.get(j).map_or(&[][..], Vec::as_slice);
    &all[..top.min(all.len())]
}

/// A prompt logprob as the JSON holds it: null for NaN (not scored), -9999 for -inf (as vLLM
/// clamps it).
fn json_logprob(logprob: f32) -> Option<f32> {
    (!logprob.is_nan()).then(|| finite_logprob(logprob))
}

/// vLLM's `prompt_logprobs` of prompt `ids`: null for the first token, then per token the
/// object of its position: the prompt's token first, with its logprob and its rank from the
/// worker (kept when the token is among the alternatives too: within a tie its place in the list
/// may be lower), then the best `top` alternatives other than it, each ranked by its place in
/// the best-first list. A position with no score (a NaN; every position when `scores` is
/// missing, for a request that ended before its first token) holds the prompt's token alone,
/// with null logprob and rank. A rank of 0, or one the worker did not send, reads as null.
pub fn prompt_list(
    names: Names<'_>,
    ids: &[u32],
    scores: Option<&PromptLogprobs>,
    top: usize,
) -> PromptLogprobList {
    let entry = |id: u32, logprob: Option<f32>, rank: Option<u32>| PromptTokenLogprob {
        logprob,
        rank,
        decoded_token: names.of(id),
    };
    let position = |j: usize, id: u32| {
        let logprob = scores.and_then(|s| s.logprobs.get(j).copied().and_then(json_logprob));
        let Some(s) = scores.filter(|_| logprob.is_some()) else {
            return PromptPosition(vec![(id, entry(id, None, None))]);
        };
        let rank = s.ranks.get(j).copied().filter(|&r| r > 0);
        let mut listed = vec![(id, entry(id, logprob, rank))];
        for (&(alt, l), place) in alternatives(s, j, top).iter().zip(1u32..) {
            if alt != id {
                listed.push((alt, entry(alt, json_logprob(l), Some(place))));
            }
        }
        PromptPosition(listed)
    };
    let rest = ids
        .iter()
        .skip(1)
        .enumerate()
        .map(|(j, &id)| Some(position(j, id)));
    ids.first().map(|_| None).into_iter().chain(rest).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::word_level(16)
    }

    /// The echo of prompt ids 1, 2 (with `pieces`) and no generated tokens.
    fn echo(
        tok: &Tokenizer,
        pieces: &[String],
        scores: Option<&PromptLogprobs>,
        top: usize,
        offset: &mut usize,
    ) -> CompletionLogprobs {
        echoed_prompt(
            Names::new(tok, false),
            &[1, 2],
            pieces,
            scores,
            top,
            &[],
            offset,
        )
    }

    #[test]
    fn an_echoed_prompt_has_null_where_nothing_was_scored() {
        let tok = tokenizer();
        let pieces: Vec<String> = ["ab", "é", "c"].iter().map(|s| s.to_string()).collect();
        let scores = PromptLogprobs {
            logprobs: vec![f32::NAN, -2.0],
            top: vec![vec![], vec![(3, -0.5)]],
            ranks: vec![0, 1],
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
            Names::new(&tok, false),
            &[1, 2, 3],
            &pieces,
            Some(&scores),
            1,
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
        let lp = echo(&tok, &pieces[..2], None, 1, &mut offset);
        assert_eq!(lp.token_logprobs, vec![None, None]);
    }

    #[test]
    fn an_echo_shows_only_the_alternatives_its_logprobs_asked_for() {
        let tok = tokenizer();
        let pieces: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let scores = PromptLogprobs {
            logprobs: vec![-1.0],
            top: vec![vec![(5, -0.5), (2, -1.0), (7, -2.0)]],
            ranks: vec![2],
        };
        let mut offset = 0;
        let lp = echo(&tok, &pieces, Some(&scores), 2, &mut offset);
        let alts = lp.top_logprobs[1].as_ref().expect("alternatives");
        assert_eq!(alts.keys().collect::<Vec<_>>(), ["t5", "t2"]);
        let lp = echo(&tok, &pieces, Some(&scores), 1, &mut offset);
        let alts = lp.top_logprobs[1].as_ref().expect("alternatives");
        assert_eq!(
            alts.keys().collect::<Vec<_>>(),
            ["t5", "t2"],
            "the token itself, after"
        );
        let lp = echo(&tok, &pieces, Some(&scores), 0, &mut offset);
        let alts = lp.top_logprobs[1].as_ref().expect("the token itself");
        assert_eq!(
            alts,
            &Map::from_iter([("t2".to_string(), Value::from(-1.0f32))])
        );
        // the two fields hold one number the same way
        let text = serde_json::to_string(&lp).unwrap();
        assert!(text.contains("\"token_logprobs\":[null,-1.0]") && text.contains("\"t2\":-1.0"));
    }

    #[test]
    fn alternatives_of_one_text_keep_the_most_likely() {
        let tok = tokenizer();
        let mut out = CompletionLogprobs::default();
        let names = Names::new(&tok, false);
        let same = names.of(3);
        let mut offset = 0;
        // two alternatives under one name (as the byte tokens of one character are; a list
        // naming one id twice stands for them here): the later, less likely one does not
        // overwrite the first
        let top = [(3, -1.5f32), (9, -2.0), (3, -4.0), (9, -5.0)];
        push(&mut out, names, 9, "x", Some(-2.0), Some(&top), &mut offset);
        let alts = out.top_logprobs[0].as_ref().expect("alternatives");
        assert_eq!(alts[&same], Value::from(-1.5f32));
        assert_eq!(alts[&names.of(9)], Value::from(-2.0f32));
        assert_eq!(alts.len(), 2);
        // the chosen token's key holds its own logprob
        push(&mut out, names, 3, "x", Some(-4.0), Some(&top), &mut offset);
        let alts = out.top_logprobs[1].as_ref().expect("alternatives");
        assert_eq!(alts[&same], Value::from(-4.0f32));
    }

    #[test]
    fn a_logprob_reads_alike_in_token_logprobs_and_top_logprobs() {
        let tok = tokenizer();
        let pieces: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let scores = PromptLogprobs {
            logprobs: vec![-4.865_332_6],
            top: vec![vec![(2, -4.865_332_6)]],
            ranks: vec![1],
        };
        let mut offset = 0;
        let lp = echo(&tok, &pieces, Some(&scores), 1, &mut offset);
        let text = serde_json::to_string(&lp).unwrap();
        assert!(
            text.contains("[null,-4.8653326]") && text.contains("{\"t2\":-4.8653326}"),
            "{text}"
        );
    }

    /// The JSON of a `prompt_list` answer.
    fn listed(ids: &[u32], scores: Option<&PromptLogprobs>, top: usize) -> Value {
        serde_json::to_value(prompt_list(
            Names::new(&tokenizer(), false),
            ids,
            scores,
            top,
        ))
        .expect("serializes")
    }

    #[test]
    fn a_prompt_list_starts_with_null_and_lists_the_prompt_token_with_its_rank() {
        let scores = PromptLogprobs {
            // Token 2 is in its position's top list; token 3 is not.
            logprobs: vec![-0.25, -3.0],
            top: vec![
                vec![(2, -0.25), (9, -2.0), (4, -2.5)],
                vec![(8, -0.5), (9, -1.0), (4, -1.5)],
            ],
            ranks: vec![1, 7],
        };
        let got = listed(&[1, 2, 3], Some(&scores), 2);
        let want = serde_json::json!([
            null,
            {
                "2": {"logprob": -0.25, "rank": 1, "decoded_token": "t2"},
                "9": {"logprob": -2.0, "rank": 2, "decoded_token": "t9"}
            },
            {
                "3": {"logprob": -3.0, "rank": 7, "decoded_token": "t3"},
                "8": {"logprob": -0.5, "rank": 1, "decoded_token": "t8"},
                "9": {"logprob": -1.0, "rank": 2, "decoded_token": "t9"}
            }
        ]);
        assert_eq!(got, want);
        let keys: Vec<&String> = got[2].as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            ["3", "8", "9"],
            "the prompt's token first, then best first"
        );
        // k = 0: the prompt's token alone.
        let alone = listed(&[1, 2, 3], Some(&scores), 0);
        assert_eq!(
            alone[2],
            serde_json::json!({"3": {"logprob": -3.0, "rank": 7, "decoded_token": "t3"}})
        );
    }

    #[test]
    fn unscored_positions_and_infinite_logprobs_stay_valid_json() {
        let scores = PromptLogprobs {
            logprobs: vec![f32::NAN, f32::NEG_INFINITY],
            top: vec![vec![(5, -0.5)], vec![(5, -0.5)]],
            ranks: vec![0, 16],
        };
        let got = listed(&[1, 2, 3], Some(&scores), 1);
        let null_entry = serde_json::json!({"logprob": null, "rank": null, "decoded_token": "t2"});
        assert_eq!(got[1], serde_json::json!({ "2": null_entry }));
        assert_eq!(got[2]["3"]["logprob"], -9999.0);
        assert_eq!(got[2]["5"]["rank"], 1);
        let text = serde_json::to_string(&got).expect("serializes");
        assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
        // No scores at all (the request ended first), or no ranks from the worker.
        let none = listed(&[1, 2], None, 1);
        assert_eq!(none[1]["2"]["logprob"], Value::Null);
        let unranked = PromptLogprobs {
            logprobs: vec![-1.0],
            ..PromptLogprobs::default()
        };
        let got = listed(&[1, 2], Some(&unranked), 1);
        assert_eq!(
            got[1],
            serde_json::json!({"2": {"logprob": -1.0, "rank": null, "decoded_token": "t2"}})
        );
        assert_eq!(listed(&[7], Some(&unranked), 1), serde_json::json!([null]));
    }
}
