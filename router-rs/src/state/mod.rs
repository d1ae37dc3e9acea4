//! The per-choice output pipeline, shared by streaming and non-streaming answers.
//!
//! Worker outputs flow through fixed stages, each fed what the previous one released:
//! token ids → incremental detokenizer → stop strings → (reasoning parser) → (tool-call parser)
//! → a [`Delta`]. A non-streaming answer folds the deltas of one choice into its final message
//! ([`Collected`]); a stream sends each delta as it comes. The pipeline is synchronous: the async
//! driver (`http::run`) reads the worker and drops the request handle (an abort) when a delta
//! reports that a stop string ended the choice.

mod stages;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::parsers::{Glm45ReasoningParser, Glm47ToolParser, ToolEvent};
use crate::protocol::openai::{
    finite_logprob, FinishReason, FunctionDelta, StopReason, ToolCallDelta,
};
use crate::tokenizer::Tokenizer;
use crate::wire;

pub use stages::{Detokenize, StopStrings};

/// One generated token, for logprobs and `/generate_stream`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub id: u32,
    /// The text this token added to the output (may be empty while a character is incomplete).
    pub text: String,
    pub logprob: Option<f32>,
    /// The best alternatives, best first (empty unless top logprobs were asked for).
    pub top: Vec<(u32, f32)>,
    pub special: bool,
}

/// The logprobs of a prompt's tokens after the first (echo with logprobs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptLogprobs {
    /// Logprob of prompt token i + 1 under the model's logits at position i.
    pub logprobs: Vec<f32>,
    /// Per entry of `logprobs`: the top k `(id, logprob)` at that position, best first (empty
    /// unless top logprobs were asked for).
    pub top: Vec<Vec<(u32, f32)>>,
    /// Per entry of `logprobs`: the token's rank at that position (1: the most likely), 0 where
    /// it was not scored; empty from a worker that sends no ranks.
    pub ranks: Vec<u32>,
}

impl PromptLogprobs {
    fn from_output(out: &wire::Output) -> Option<Self> {
        let logprobs = out.prompt_logprobs.as_ref()?;
        let top = out
            .prompt_top_logprobs
            .as_ref()
            .map_or_else(Vec::new, |rows| {
                rows.iter()
                    .map(|row| row.iter().map(|&(id, l)| (id, l as f32)).collect())
                    .collect()
            });
        Some(Self {
            logprobs: logprobs.iter().map(|&l| l as f32).collect(),
            top,
            ranks: out.prompt_ranks.clone().unwrap_or_default(),
        })
    }
}

/// How a choice ended, with its token counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    /// vLLM's `stop_reason`: the stop string or stop token id that ended the choice; None for an
    /// eos id, a complete JSON document or any other finish.
    pub stop_reason: Option<StopReason>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    /// Completion tokens that were accepted speculative drafts (MTP).
    pub accepted_draft_tokens: u32,
    /// The output ended inside a tool call (before its `</tool_call>`), which was closed with
    /// the arguments so far.
    pub inside_call: bool,
    /// A tool call reached the client.
    pub called_tool: bool,
    /// Completion tokens inside the reasoning (between the think tags, which are not counted).
    pub reasoning_tokens: u32,
}

impl Finish {
    /// The chat completion's `finish_reason`: `tool_calls` when a call reached the client and
    /// none was cut off, also where the token budget ran out after it (as vLLM reports it).
    pub fn chat_reason(&self) -> FinishReason {
        match self.reason {
            FinishReason::Length if self.called_tool && !self.inside_call => {
                FinishReason::ToolCalls
            }
            reason => reason,
        }
    }
}

/// What one worker output added to a choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Answer text (after stop strings and parsers).
    pub content: String,
    /// Reasoning text (only with a reasoning parser).
    pub reasoning: String,
    pub tool_calls: Vec<ToolCallDelta>,
    /// The tokens consumed, in order (tokens after a matched stop string are left out).
    pub tokens: Vec<TokenInfo>,
    /// Set on the choice's last delta.
    pub finish: Option<Finish>,
    /// The prompt's logprobs, on the first delta when the request asked for them.
    pub prompt_logprobs: Option<PromptLogprobs>,
}

impl Delta {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.is_silent(true)
    }

    /// True when nothing a client sees changed: no text, call or finish, and (where
    /// `tokens_matter`, e.g. for logprobs) no token.
    pub fn is_silent(&self, tokens_matter: bool) -> bool {
        self.content.is_empty()
            && self.reasoning.is_empty()
            && self.tool_calls.is_empty()
            && (!tokens_matter || (self.tokens.is_empty() && self.prompt_logprobs.is_none()))
            && self.finish.is_none()
    }
}

/// The stages of one choice.
pub struct Pipeline {
    tokenizer: Arc<Tokenizer>,
    detok: Box<dyn Detokenize>,
    stop: Box<dyn StopStrings>,
    reasoning: Option<Glm45ReasoningParser>,
    tools: Option<Glm47ToolParser>,
    /// Only the first tool call is returned (`parallel_tool_calls: false`).
    single_call: bool,
    prompt_tokens: u32,
    cached_tokens: u32,
    completion_tokens: u32,
    accepted_draft_tokens: u32,
    called_tool: bool,
    done: bool,
    /// The request's `stop_token_ids` (a finish on one reports it as `stop_reason`).
    stop_token_ids: Vec<u32>,
    /// Ids whose text is left out of the answer when the worker's stop finish is on them (the
    /// eos and stop token ids, as vLLM leaves them out unless `include_stop_str_in_output`).
    hidden_end_ids: Vec<u32>,
    /// No stop string may end in the text of the first this many tokens (vLLM's `min_tokens`);
    /// one ending later may begin there.
    min_tokens: u32,
    /// With a reasoning parser: the ids of `<think>` and `</think>`, whether the output is in
    /// reasoning after the tokens so far, and the tokens counted in it.
    think_ids: Option<(u32, u32)>,
    in_reasoning: bool,
    reasoning_tokens: u32,
}

impl Pipeline {
    /// A pipeline with no parser stage; add them with [`Pipeline::with_reasoning`] and
    /// [`Pipeline::with_tools`].
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        detok: Box<dyn Detokenize>,
        stop: Box<dyn StopStrings>,
    ) -> Self {
        Self {
            tokenizer,
            detok,
            stop,
            reasoning: None,
            tools: None,
            single_call: false,
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            accepted_draft_tokens: 0,
            called_tool: false,
            done: false,
            stop_token_ids: Vec::new(),
            hidden_end_ids: Vec::new(),
            min_tokens: 0,
            think_ids: None,
            in_reasoning: false,
            reasoning_tokens: 0,
        }
    }

    /// Lets no stop string end in the text of the first `n` tokens.
    pub fn with_min_tokens(mut self, n: u32) -> Self {
        self.min_tokens = n;
        self
    }

    /// Leaves the text of the token that ends the output out of the answer when it is one of
    /// `ids` (it stays in the token's logprobs and details).
    pub fn hiding_end_tokens(mut self, ids: &[u32]) -> Self {
        self.hidden_end_ids = ids.to_vec();
        self
    }

    /// The request's stop token ids, for `Finish::stop_reason`.
    pub fn with_stop_token_ids(mut self, ids: &[u32]) -> Self {
        self.stop_token_ids = ids.to_vec();
        self
    }

    /// Splits reasoning from the answer (the parser knows whether the prompt left the model
    /// inside `<think>`).
    pub fn with_reasoning(mut self, parser: Glm45ReasoningParser) -> Self {
        self.in_reasoning = parser.in_reasoning();
        let id = |tag: &str| self.tokenizer.token_to_id(tag);
        self.think_ids = id("<think>").zip(id("</think>"));
        self.reasoning = Some(parser);
        self
    }

    /// Parses tool calls out of the answer text; with `parallel` false, calls after the first
    /// are dropped.
    pub fn with_tools(mut self, parser: Glm47ToolParser, parallel: bool) -> Self {
        self.tools = Some(parser);
        self.single_call = !parallel;
        self
    }

    /// The prompt length to report until the worker reports its own.
    pub fn with_prompt_tokens(mut self, prompt_tokens: u32) -> Self {
        self.prompt_tokens = prompt_tokens;
        self
    }

    /// True once the choice has finished (worker finish or stop string).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Runs one worker output through every stage.
    pub fn push(&mut self, out: &wire::Output) -> Delta {
        let mut delta = Delta::default();
        if self.done {
            return delta;
        }
        if let Some(p) = out.prompt_tokens {
            self.prompt_tokens = p;
            self.cached_tokens = out.cached_tokens.unwrap_or(0);
        }
        self.accepted_draft_tokens += out.spec_accepted.unwrap_or(0);
        delta.prompt_logprobs = PromptLogprobs::from_output(out);
        let mut text = String::new();
        let mut reason = None;
        let mut stop_reason = None;
        let stop_finish = out.finish == Some(wire::FinishReason::Stop);
        for (k, &id) in out.ids.iter().enumerate() {
            self.completion_tokens += 1;
            if stop_finish && k + 1 == out.ids.len() && self.hidden_end_ids.contains(&id) {
                let text = self.tokenizer.decode(&[id], false).unwrap_or_default();
                delta.tokens.push(self.token_info(out, k, id, text));
                break;
            }
            self.count_reasoning(id);
            let piece = self.detok.push(id);
            let (emit, stopped) = self.stop_strings(&piece);
            delta.tokens.push(self.token_info(out, k, id, piece));
            text.push_str(&emit);
            if stopped {
                reason = Some(FinishReason::Stop);
                break;
            }
        }
        if reason.is_none() {
            reason = out.finish.map(finish_reason);
            let last = out.ids.last().copied();
            if reason == Some(FinishReason::Stop) {
                stop_reason = last
                    .filter(|id| self.stop_token_ids.contains(id))
                    .map(StopReason::Token);
            }
            if reason.is_some() {
                let tail = self.detok.finish(); // the rest of the last token's text
                let (emit, mut stopped) = self.stop_strings(&tail);
                text.push_str(&emit);
                if !stopped {
                    let (tail, tail_stopped) = self.stop.finish();
                    text.push_str(&tail);
                    stopped = tail_stopped;
                }
                if stopped {
                    reason = Some(FinishReason::Stop);
                }
            }
        }
        self.parse(&text, reason.is_some(), &mut delta);
        if let Some(reason) = reason {
            self.done = true;
            if let Some(matched) = self.stop.matched() {
                stop_reason = Some(StopReason::Text(matched));
            }
            delta.finish = Some(self.finish(reason, stop_reason));
        }
        delta
    }

    /// The latest token's text through the stop strings: the text now safe to release and
    /// whether one matched; none ends within the first `min_tokens` tokens.
    fn stop_strings(&mut self, text: &str) -> (String, bool) {
        if self.completion_tokens <= self.min_tokens {
            (self.stop.push_unchecked(text), false)
        } else {
            self.stop.push(text)
        }
    }

    /// Follows the think tags by their ids and counts the tokens between them.
    fn count_reasoning(&mut self, id: u32) {
        match self.think_ids {
            Some((open, _)) if id == open => self.in_reasoning = true,
            Some((_, close)) if id == close => self.in_reasoning = false,
            Some(_) if self.in_reasoning => self.reasoning_tokens += 1,
            _ => {}
        }
    }

    fn token_info(&self, out: &wire::Output, k: usize, id: u32, piece: String) -> TokenInfo {
        let logprob = out
            .logprobs
            .as_ref()
            .and_then(|l| l.get(k))
            .map(|&l| finite_logprob(l as f32));
        let top = out
            .top_logprobs
            .as_ref()
            .and_then(|t| t.get(k))
            .map(|alts| {
                alts.iter()
                    .map(|&(i, l)| (i, finite_logprob(l as f32)))
                    .collect()
            })
            .unwrap_or_default();
        TokenInfo {
            id,
            text: piece,
            logprob,
            top,
            special: self.tokenizer.is_special(id),
        }
    }

    fn finish(&self, reason: FinishReason, stop_reason: Option<StopReason>) -> Finish {
        let reason = match reason {
            FinishReason::Stop if self.called_tool => FinishReason::ToolCalls,
            other => other,
        };
        Finish {
            reason,
            stop_reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cached_tokens: self.cached_tokens,
            accepted_draft_tokens: self.accepted_draft_tokens,
            // a call dropped by `parallel_tool_calls: false` was never the client's
            inside_call: self
                .tools
                .as_ref()
                .and_then(Glm47ToolParser::call_cut_off)
                .is_some_and(|index| !self.single_call || index == 0),
            called_tool: self.called_tool,
            reasoning_tokens: self.reasoning_tokens,
        }
    }

    /// Reasoning parser, then tool parser; `last` flushes both.
    fn parse(&mut self, text: &str, last: bool, delta: &mut Delta) {
        let mut answer = match &mut self.reasoning {
            Some(parser) => {
                let mut r = parser.feed(text);
                if last {
                    let tail = parser.finish();
                    r.reasoning.push_str(&tail.reasoning);
                    r.content.push_str(&tail.content);
                }
                delta.reasoning = r.reasoning;
                r.content
            }
            None => text.to_owned(),
        };
        let Some(parser) = &mut self.tools else {
            delta.content = answer;
            return;
        };
        let events = if last {
            parser.finish_with(&answer)
        } else {
            parser.feed(&answer)
        };
        answer.clear();
        for event in events {
            match event {
                ToolEvent::Content(text) => answer.push_str(&text),
                ToolEvent::Call { index, .. } if self.single_call && index > 0 => {}
                ToolEvent::Call {
                    index,
                    id,
                    name,
                    arguments,
                } => {
                    self.called_tool = true;
                    // A call's first entry carries `arguments` too, "" if none yet (as OpenAI
                    // sends it: clients append to it).
                    let arguments = match (&id, arguments) {
                        (Some(_), None) => Some(String::new()),
                        (_, arguments) => arguments,
                    };
                    delta.tool_calls.push(ToolCallDelta {
                        index,
                        kind: id.as_ref().map(|_| "function"),
                        id,
                        function: FunctionDelta { name, arguments },
                    });
                }
            }
        }
        delta.content = answer;
    }
}

fn finish_reason(reason: wire::FinishReason) -> FinishReason {
    match reason {
        wire::FinishReason::Stop => FinishReason::Stop,
        wire::FinishReason::Length => FinishReason::Length,
        wire::FinishReason::Abort => FinishReason::Abort,
    }
}

/// A choice's deltas folded together: the non-streaming answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    pub content: String,
    pub reasoning: String,
    /// `(id, name, arguments)` per call, in index order.
    pub tool_calls: Vec<(String, String, String)>,
    pub tokens: Vec<TokenInfo>,
    pub finish: Option<Finish>,
    pub prompt_logprobs: Option<PromptLogprobs>,
}

impl Collected {
    /// Adds one delta.
    pub fn absorb(&mut self, delta: Delta) {
        self.content.push_str(&delta.content);
        self.reasoning.push_str(&delta.reasoning);
        for call in delta.tool_calls {
            if self.tool_calls.len() <= call.index {
                self.tool_calls.resize(call.index + 1, Default::default());
            }
            let slot = &mut self.tool_calls[call.index];
            if let Some(id) = call.id {
                slot.0 = id;
            }
            if let Some(name) = call.function.name {
                slot.1.push_str(&name);
            }
            if let Some(args) = call.function.arguments {
                slot.2.push_str(&args);
            }
        }
        self.tokens.extend(delta.tokens);
        if delta.prompt_logprobs.is_some() {
            self.prompt_logprobs = delta.prompt_logprobs;
        }
        if delta.finish.is_some() {
            self.finish = delta.finish;
        }
    }
}
