//! Adversarial streaming tests of the GLM-4.5 reasoning parser, alone and chained into the tool
//! parser, and of the whole output pipeline with one token per byte (tokens split inside UTF-8
//! characters and tags): every split gives the one-shot result.

mod http_support;
mod stream_support;

use std::sync::Arc;

use glm47_router::detokenize::Detokenizer;
use glm47_router::parsers::{Glm45ReasoningParser, Glm47ToolParser, ReasoningDelta};
use glm47_router::state::{Collected, Pipeline};
use glm47_router::stop::StopMatcher;
use glm47_router::wire;
use proptest::prelude::*;
use stream_support::*;

// ---------------------------------------------------------------------------------------------
// Reasoning parser
// ---------------------------------------------------------------------------------------------

fn stream_reasoning(in_reasoning: bool, chunks: &[&str]) -> ReasoningDelta {
    let mut p = Glm45ReasoningParser::new(in_reasoning);
    let mut out = ReasoningDelta::default();
    for c in chunks {
        let d = p.feed(c);
        out.reasoning.push_str(&d.reasoning);
        out.content.push_str(&d.content);
    }
    let d = p.finish();
    out.reasoning.push_str(&d.reasoning);
    out.content.push_str(&d.content);
    out
}

fn check_reasoning_splits(text: &str) {
    for in_reasoning in [true, false] {
        let want = stream_reasoning(in_reasoning, &[text]);
        let cuts = char_cuts(text);
        for (i, &a) in cuts.iter().enumerate() {
            for &b in &cuts[i..] {
                assert_eq!(
                    stream_reasoning(in_reasoning, &split_at(text, &[a, b])),
                    want,
                    "{text:?} cut {a},{b} in_reasoning={in_reasoning}"
                );
            }
        }
        let inner = &cuts[1..cuts.len().saturating_sub(1).max(1)];
        assert_eq!(stream_reasoning(in_reasoning, &split_at(text, inner)), want);
    }
}

const REASONING_CORPUS: &[&str] = &[
    "plan 🤔 x < y </thin </think>answer <think> ok",
    "<think>a</think>b",
    "\n \t<think>\nr</think>\n\nc",
    "</think>x",
    "  </think>  <think>y",
    "<thinkx>a</think>b",
    "r1 <think> r2 </think> c1 </think> c2",
    "<",
    "</th",
    "é<think>",
    "<tool_call>f</tool_call></think><tool_call>g",
];

#[test]
fn reasoning_corpus_streams_to_the_one_shot_result() {
    for text in REASONING_CORPUS {
        check_reasoning_splits(text);
    }
}

#[test]
fn reasoning_semantics() {
    let r = |ir: bool, t: &str| {
        let d = stream_reasoning(ir, &[t]);
        (d.reasoning, d.content)
    };
    assert_eq!(r(true, "a</think>b"), ("a".into(), "b".into()));
    assert_eq!(r(true, "<think>a</think>b"), ("a".into(), "b".into()));
    assert_eq!(r(true, "a</th"), ("a</th".into(), "".into()));
    assert_eq!(
        r(false, "hello <think>x</think>"),
        ("".into(), "hello <think>x</think>".into())
    );
    assert_eq!(r(false, "<think>x</think>y"), ("x".into(), "y".into()));
    assert_eq!(
        r(true, "r1 <think> r2 </think> c1 </think> c2"),
        ("r1  r2 ".into(), " c1 </think> c2".into())
    );
}

const REASONING_PIECES: &[&str] = &[
    "<think>",
    "</think>",
    "<th",
    "</th",
    "<",
    "</",
    ">",
    "think",
    "a",
    " ",
    "\n",
    "é",
    "😀",
    "<tool_call>noop</tool_call>",
    "<tool_call>",
    "</tool_call>",
    "x<y",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_reasoning_texts_stream_to_the_one_shot_result(
        pieces in prop::collection::vec(prop::sample::select(REASONING_PIECES), 0..25),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        in_reasoning in any::<bool>(),
    ) {
        let text = pieces.concat();
        let want = stream_reasoning(in_reasoning, &[&text]);
        let got = stream_reasoning(in_reasoning, &split_at(&text, &random_cuts(&text, &picks)));
        prop_assert_eq!(got, want);
    }

    /// Reasoning then tool parser, chained as the HTTP layer does.
    #[test]
    fn random_chained_texts_stream_to_the_one_shot_result(
        text in texts(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        in_reasoning in any::<bool>(),
    ) {
        let want = chain(in_reasoning, &[&text]);
        let got = chain(in_reasoning, &split_at(&text, &random_cuts(&text, &picks)));
        prop_assert_eq!(got, want);
    }
}

fn chain(in_reasoning: bool, chunks: &[&str]) -> (String, Stream) {
    let mut r = Glm45ReasoningParser::new(in_reasoning);
    let mut t = Glm47ToolParser::with_options(&tools(), "", Some(5));
    let mut reasoning = String::new();
    let mut out = Stream::default();
    for c in chunks {
        let d = r.feed(c);
        reasoning.push_str(&d.reasoning);
        let ev = t.feed(&d.content);
        absorb_checked(&mut out, ev, "chain");
    }
    let d = r.finish();
    reasoning.push_str(&d.reasoning);
    let ev = t.finish_with(&d.content);
    absorb_checked(&mut out, ev, "chain finish");
    (reasoning, out)
}

// ---------------------------------------------------------------------------------------------
// Full pipeline with a byte-level tokenizer: tokens split inside UTF-8 characters and tags
// ---------------------------------------------------------------------------------------------

fn byte_tokenizer() -> (
    tokenizers::Tokenizer,
    Arc<glm47_router::tokenizer::Tokenizer>,
) {
    let mut tok = http_support::byte_level_tokenizer();
    tok.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
    let eos = tok.token_to_id("<|endoftext|>").expect("eos");
    let ours = glm47_router::tokenizer::Tokenizer::new(tok.clone(), vec![eos]);
    (tok, Arc::new(ours))
}

fn pipeline_run(text: &str, group: usize, in_reasoning: bool, parallel: bool) -> Collected {
    let (raw, tok) = byte_tokenizer();
    let ids = raw.encode(text, false).expect("encode").get_ids().to_vec();
    let detok = Detokenizer::new(tok.clone(), true);
    let stop = StopMatcher::new(Vec::<String>::new());
    let mut p = Pipeline::new(tok, Box::new(detok), Box::new(stop))
        .with_reasoning(Glm45ReasoningParser::new(in_reasoning))
        .with_tools(Glm47ToolParser::new(&tools()), parallel);
    let mut all = Collected::default();
    let chunks: Vec<&[u32]> = ids.chunks(group.max(1)).collect();
    for (i, c) in chunks.iter().enumerate() {
        let out = wire::Output {
            rid: "r".into(),
            ids: c.to_vec(),
            finish: (i + 1 == chunks.len()).then_some(wire::FinishReason::Stop),
            ..wire::Output::default()
        };
        all.absorb(p.push(&out));
    }
    if chunks.is_empty() {
        all.absorb(p.push(&wire::Output {
            rid: "r".into(),
            finish: Some(wire::FinishReason::Stop),
            ..wire::Output::default()
        }));
    }
    all.tokens.clear();
    all
}

#[test]
fn pipeline_byte_tokens_split_inside_utf8_and_tags() {
    let text = "思考 🤔 <tool_call>x</think>回答 é\n<tool_call>get_weather<arg_key>city</arg_key>\
                <arg_value>北京😀</arg_value><arg_key>days</arg_key><arg_value>3</arg_value>\
                </tool_call><tool_call>search<arg_key>query</arg_key><arg_value>ü</arg_value>\
                </tool_call>末尾😀";
    let want = pipeline_run(text, usize::MAX, true, true);
    assert_eq!(want.reasoning, "思考 🤔 <tool_call>x");
    assert_eq!(want.content, "回答 é\n末尾😀");
    assert_eq!(want.tool_calls.len(), 2);
    for group in 1..=7 {
        let got = pipeline_run(text, group, true, true);
        assert_eq!(got.content, want.content, "group {group}");
        assert_eq!(got.reasoning, want.reasoning, "group {group}");
        let strip = |c: &Collected| -> Vec<(String, String)> {
            c.tool_calls
                .iter()
                .map(|(_, n, a)| (n.clone(), a.clone()))
                .collect()
        };
        assert_eq!(strip(&got), strip(&want), "group {group}");
        assert!(!got.content.contains('\u{fffd}'));
    }
    let single = pipeline_run(text, 3, true, false);
    assert_eq!(single.tool_calls.len(), 1);
    assert_eq!(single.content, want.content);
}
