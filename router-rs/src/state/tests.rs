use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::protocol::openai::FinishReason;

/// Each id is one ASCII character.
struct CharDetok;

impl Detokenize for CharDetok {
    fn push(&mut self, id: u32) -> String {
        char::from_u32(id).map(String::from).unwrap_or_default()
    }
    fn finish(&mut self) -> String {
        String::new()
    }
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::word_level(128))
}

fn pipeline(stop: &str) -> Pipeline {
    let stop = crate::stop::StopMatcher::new([stop]);
    Pipeline::new(tokenizer(), Box::new(CharDetok), Box::new(stop))
}

fn output(text: &str, finish: Option<wire::FinishReason>) -> wire::Output {
    wire::Output {
        rid: "r".into(),
        ids: text.chars().map(u32::from).collect(),
        logprobs: None,
        top_logprobs: None,
        finish,
        prompt_tokens: Some(7),
        cached_tokens: Some(2),
        ..wire::Output::default()
    }
}

fn run(mut p: Pipeline, chunks: &[(&str, Option<wire::FinishReason>)]) -> Collected {
    let mut all = Collected::default();
    for (text, finish) in chunks {
        all.absorb(p.push(&output(text, *finish)));
    }
    all
}

#[test]
fn worker_finish_ends_the_choice_and_releases_held_text() {
    let got = run(
        pipeline("XYZ"),
        &[("ab X", None), ("Y", Some(wire::FinishReason::Length))],
    );
    assert_eq!(got.content, "ab XY");
    let finish = got.finish.expect("finished");
    assert_eq!(finish.reason, FinishReason::Length);
    assert_eq!(
        (
            finish.prompt_tokens,
            finish.completion_tokens,
            finish.cached_tokens
        ),
        (7, 5, 2)
    );
}

#[test]
fn a_stop_string_split_over_outputs_ends_the_choice_and_drops_later_tokens() {
    let mut p = pipeline("END");
    let first = p.push(&output("hello E", None));
    assert_eq!(first.content, "hello ");
    let second = p.push(&output("N", None));
    assert_eq!(second.content, "");
    let third = p.push(&output("D tail", None));
    assert_eq!(third.finish.map(|f| f.reason), Some(FinishReason::Stop));
    assert_eq!(
        third.tokens.len(),
        1,
        "tokens after the match are not consumed"
    );
    assert!(p.is_done());
    assert!(p.push(&output("more", None)).is_empty());
}

#[test]
fn no_stop_string_ends_within_min_tokens_but_one_may_begin_there() {
    // "ab" within the first 4 tokens stays; the "a" of token 4 and the "b" of token 5 stop, as
    // vLLM finds a stop string ending in a token after `min_tokens`
    let got = run(
        pipeline("ab").with_min_tokens(4),
        &[("xaba", None), ("b ab tail", None)],
    );
    assert_eq!(got.content, "xab");
    assert_eq!(got.finish.map(|f| f.reason), Some(FinishReason::Stop));
    // wholly within them: the next whole one stops
    let got = run(
        pipeline("ab").with_min_tokens(4),
        &[("xabx", None), ("y ab tail", None)],
    );
    assert_eq!(got.content, "xabxy ");
    let got = run(pipeline("ab").with_min_tokens(0), &[("xab", None)]);
    assert_eq!(got.content, "x");
    // a stop string's start at the end of the first tokens is held back, then released
    let got = run(
        pipeline("ab").with_min_tokens(2),
        &[("xa", None), ("c", Some(wire::FinishReason::Length))],
    );
    assert_eq!(got.content, "xac");
}

#[test]
fn a_stop_string_decided_only_by_the_end_of_the_output_finishes_as_stop() {
    // "/" is whole but "b/<" may still start before it; the output ends first, so "/" stops
    // the choice: its text ends before the "/" and the reason is a stop, not the length.
    let stop = crate::stop::StopMatcher::new(["b/<", "/"]);
    let p = Pipeline::new(tokenizer(), Box::new(CharDetok), Box::new(stop));
    let got = run(p, &[("ab/", None), ("", Some(wire::FinishReason::Length))]);
    assert_eq!(got.content, "ab");
    assert_eq!(got.finish.map(|f| f.reason), Some(FinishReason::Stop));
}

#[test]
fn the_stop_reason_names_the_stop_string_or_stop_id_and_is_null_otherwise() {
    let matcher = || Box::new(crate::stop::StopMatcher::new(["b/<", "/"]));
    let p = Pipeline::new(tokenizer(), Box::new(CharDetok), matcher());
    let got = run(p, &[("ab/", None), ("", Some(wire::FinishReason::Length))]);
    assert_eq!(
        got.finish.and_then(|f| f.stop_reason),
        Some(StopReason::Text("/".into()))
    );
    // a finish on a stop id reports it; on any other id (an eos) nothing
    for (last, reason) in [('z', Some(StopReason::Token('z' as u32))), ('y', None)] {
        let p = Pipeline::new(tokenizer(), Box::new(CharDetok), matcher())
            .with_stop_token_ids(&['z' as u32]);
        let got = run(p, &[(&format!("a{last}"), Some(wire::FinishReason::Stop))]);
        assert_eq!(
            got.finish.as_ref().map(|f| f.reason),
            Some(FinishReason::Stop)
        );
        assert_eq!(got.finish.and_then(|f| f.stop_reason), reason, "{last}");
    }
    let p = Pipeline::new(tokenizer(), Box::new(CharDetok), matcher())
        .with_stop_token_ids(&['z' as u32]);
    let got = run(p, &[("az", Some(wire::FinishReason::Length))]);
    assert_eq!(
        got.finish.and_then(|f| f.stop_reason),
        None,
        "a length finish"
    );
}

#[test]
fn logprobs_follow_their_tokens() {
    let mut out = output("ab", Some(wire::FinishReason::Stop));
    out.logprobs = Some(vec![-0.5, -1.5]);
    out.top_logprobs = Some(vec![vec![(97, -0.5)], vec![(98, -1.5), (99, -2.0)]]);
    let delta = pipeline("zz").push(&out);
    assert_eq!(delta.tokens[1].text, "b");
    assert_eq!(delta.tokens[1].logprob, Some(-1.5));
    assert_eq!(delta.tokens[1].top, vec![(98, -1.5), (99, -2.0)]);
    // a masked alternative (-inf) is written as vLLM writes it
    let mut masked = output("a", None);
    masked.logprobs = Some(vec![0.0]);
    masked.top_logprobs = Some(vec![vec![(97, 0.0), (98, f64::NEG_INFINITY)]]);
    let delta = pipeline("zz").push(&masked);
    assert_eq!(delta.tokens[0].top, vec![(97, 0.0), (98, -9999.0)]);
}

#[test]
fn reasoning_then_tool_calls_are_split_and_finish_as_tool_calls() {
    let tools = [
        json!({"type": "function", "function": {"name": "get", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}}}}),
    ];
    let p = pipeline("\u{1}")
        .with_reasoning(Glm45ReasoningParser::new(true))
        .with_tools(Glm47ToolParser::new(&tools), true);
    let got = run(
        p,
        &[
            ("hmm</thi", None),
            ("nk>ok<tool_call>get<arg_key>city</arg_key>", None),
            (
                "<arg_value>Paris</arg_value></tool_call>",
                Some(wire::FinishReason::Stop),
            ),
        ],
    );
    assert_eq!(got.reasoning, "hmm");
    assert_eq!(got.content, "ok");
    assert_eq!(got.tool_calls.len(), 1);
    assert_eq!(got.tool_calls[0].1, "get");
    let args: serde_json::Value = serde_json::from_str(&got.tool_calls[0].2).expect("json");
    assert_eq!(args, json!({"city": "Paris"}));
    assert!(got.tool_calls[0].0.starts_with("call_"));
    assert_eq!(got.finish.map(|f| f.reason), Some(FinishReason::ToolCalls));
}

#[test]
fn without_parallel_tool_calls_only_the_first_call_is_returned() {
    let tools = [json!({"type": "function", "function": {"name": "f"}})];
    let p = pipeline("\u{1}").with_tools(Glm47ToolParser::new(&tools), false);
    let call = "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>";
    let got = run(
        p,
        &[(&format!("{call}{call}"), Some(wire::FinishReason::Stop))],
    );
    assert_eq!(got.tool_calls.len(), 1);
    assert_eq!(got.tool_calls[0].1, "f");
    assert_eq!(got.finish.map(|f| f.reason), Some(FinishReason::ToolCalls));
}

#[test]
fn accepted_drafts_add_up_into_the_finish() {
    let mut p = pipeline("XYZ");
    let mut first = output("abc", None);
    first.spec_accepted = Some(2);
    p.push(&first);
    p.push(&output("d", None));
    let mut last = output("ef", Some(wire::FinishReason::Length));
    last.spec_accepted = Some(1);
    let finish = p.push(&last).finish.expect("finished");
    assert_eq!(
        (finish.completion_tokens, finish.accepted_draft_tokens),
        (6, 3)
    );
}

#[test]
fn usage_reports_accepted_predictions_only_when_there_were_some() {
    use crate::protocol::openai::Usage;
    let plain = serde_json::to_value(Usage::new(3, 4, 0).with_accepted_drafts(0)).unwrap();
    assert!(plain.get("completion_tokens_details").is_none());
    let spec = Usage::new(3, 4, 0)
        .with_accepted_drafts(2)
        .with_accepted_drafts(1);
    assert_eq!(
        serde_json::to_value(spec).unwrap()["completion_tokens_details"],
        json!({"accepted_prediction_tokens": 3})
    );
}

#[test]
fn a_calls_feed_and_finish_pieces_share_one_entry_and_its_header_carries_arguments() {
    let tools = [
        json!({"type": "function", "function": {"name": "get", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}}}}),
    ];
    let mut p = pipeline("\u{1}").with_tools(Glm47ToolParser::new(&tools), true);
    let first = p.push(&output("<tool_call>get<arg_key>city</arg_key>", None));
    assert_eq!(first.tool_calls.len(), 1);
    assert_eq!(first.tool_calls[0].function.name.as_deref(), Some("get"));
    assert_eq!(first.tool_calls[0].function.arguments.as_deref(), Some(""));
    // The last output streams "Pa" (feed) and closes the cut-off call (finish): one entry.
    let last = p.push(&output("<arg_value>Pa", Some(wire::FinishReason::Length)));
    assert_eq!(last.tool_calls.len(), 1);
    assert_eq!(last.tool_calls[0].index, 0);
    assert!(last.tool_calls[0].id.is_none());
    let tail = last.tool_calls[0]
        .function
        .arguments
        .as_deref()
        .unwrap_or("");
    let whole = format!(
        "{}{tail}",
        first.tool_calls[0]
            .function
            .arguments
            .as_deref()
            .unwrap_or("")
    );
    let args: serde_json::Value = serde_json::from_str(&whole).expect("json");
    assert_eq!(args, json!({"city": "Pa"}));
    assert_eq!(last.finish.map(|f| f.reason), Some(FinishReason::Length));
}

#[test]
fn think_tags_inside_a_tool_argument_stay_in_the_argument() {
    let tools = [
        json!({"type": "function", "function": {"name": "w", "parameters":
        {"type": "object", "properties": {"c": {"type": "string"}}}}}),
    ];
    let p = pipeline("\u{1}")
        .with_reasoning(Glm45ReasoningParser::new(true))
        .with_tools(Glm47ToolParser::new(&tools), true);
    let text = "x</think><tool_call>w<arg_key>c</arg_key><arg_value>use <think> tags\
                </arg_value></tool_call>done";
    let got = run(p, &[(text, Some(wire::FinishReason::Stop))]);
    assert_eq!(got.reasoning, "x");
    assert_eq!(got.content, "done");
    let args: serde_json::Value = serde_json::from_str(&got.tool_calls[0].2).expect("json");
    assert_eq!(args, json!({"c": "use <think> tags"}));
}

#[test]
fn the_prompt_scores_and_ranks_of_the_first_output_reach_the_first_delta_only() {
    let mut p = pipeline("END");
    let first = wire::Output {
        prompt_logprobs: Some(vec![-1.5, f64::NAN]),
        prompt_top_logprobs: Some(vec![vec![(3, -0.25)], vec![]]),
        prompt_ranks: Some(vec![4, 0]),
        ..output("a", None)
    };
    let delta = p.push(&first);
    let scores = delta.prompt_logprobs.expect("scores on the first delta");
    assert_eq!(scores.logprobs[0], -1.5);
    assert!(scores.logprobs[1].is_nan());
    assert_eq!(scores.top, vec![vec![(3, -0.25)], vec![]]);
    assert_eq!(scores.ranks, vec![4, 0]);
    assert_eq!(p.push(&output("b", None)).prompt_logprobs, None);
    // A worker without ranks: the scores come with none.
    let older = wire::Output {
        prompt_logprobs: Some(vec![-1.0]),
        ..output("a", None)
    };
    let scores = pipeline("END")
        .push(&older)
        .prompt_logprobs
        .expect("scores");
    assert!(scores.ranks.is_empty() && scores.top.is_empty());
}
