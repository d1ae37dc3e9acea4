//! Drives submitted requests: worker events → each choice's pipeline → a merged stream of
//! deltas. Streaming answers forward the stream; non-streaming answers [`collect`] it. Dropping
//! the stream drops the request handles, which aborts unfinished requests in the worker.

use std::collections::{HashMap, HashSet, VecDeque};

use futures::stream::{self, BoxStream, StreamExt};

use super::ApiError;
use crate::dispatch::{RequestEvent, RequestHandle};
use crate::state::{Collected, Delta, Pipeline, PromptLogprobs};

/// A delta of choice `index`.
#[derive(Debug)]
pub struct ChoiceDelta {
    pub index: u32,
    pub delta: Delta,
}

/// All choices of one HTTP request, interleaved as their outputs arrive.
pub type ChoiceStream = BoxStream<'static, Result<ChoiceDelta, ApiError>>;

/// Runs `handles[i]` through `pipelines[i]` as choice `first_index + i`.
pub fn drive(
    handles: Vec<RequestHandle>,
    pipelines: Vec<Pipeline>,
    first_index: u32,
) -> ChoiceStream {
    let choices = handles
        .into_iter()
        .zip(pipelines)
        .zip(first_index..)
        .map(|((handle, pipeline), index)| choice(index, handle, pipeline).boxed());
    stream::select_all(choices).boxed()
}

/// Merges the streams of several prompts (completions with a list of prompts).
pub fn merge(streams: Vec<ChoiceStream>) -> ChoiceStream {
    stream::select_all(streams).boxed()
}

fn choice(
    index: u32,
    handle: RequestHandle,
    pipeline: Pipeline,
) -> impl futures::Stream<Item = Result<ChoiceDelta, ApiError>> {
    stream::unfold(Some((handle, pipeline)), move |slot| async move {
        let (mut handle, mut pipeline) = slot?;
        loop {
            let event = match handle.next().await {
                Some(event) => event,
                None => {
                    let err = ApiError::Internal(
                        "the worker ended a request without finishing it".into(),
                    );
                    return Some((Err(err), None));
                }
            };
            let out = match event {
                RequestEvent::Output(out) => out,
                RequestEvent::Error { code, message } => {
                    return Some((Err(ApiError::Worker { code, message }), None));
                }
            };
            let delta = pipeline.push(&out);
            if pipeline.is_done() {
                // A stop string may end the choice before the worker does: stop the request.
                handle.stop_early();
                return Some((Ok(ChoiceDelta { index, delta }), None));
            }
            if !delta.is_empty() {
                return Some((Ok(ChoiceDelta { index, delta }), Some((handle, pipeline))));
            }
        }
    })
}

/// Shares each prompt's scores among its `n` choices (choices `p * n .. p * n + n` answer prompt
/// `p`). Only the first choice of a prompt has the worker score it (`wire_requests`): its
/// siblings' deltas wait until that choice's first delta brings the scores (or it ends without
/// them), and each sibling's first delta then carries a copy. Errors pass through at once.
pub fn share_prompt_scores(stream: ChoiceStream, n: u32) -> ChoiceStream {
    if n <= 1 {
        return stream;
    }
    let sharing = ScoreSharing {
        n,
        known: HashMap::new(),
        waiting: HashMap::new(),
        given: HashSet::new(),
    };
    stream::unfold(
        (stream, sharing, VecDeque::new(), false),
        |(mut inner, mut sharing, mut ready, mut ended)| async move {
            loop {
                if let Some(item) = ready.pop_front() {
                    return Some((item, (inner, sharing, ready, ended)));
                }
                if ended {
                    return None;
                }
                match inner.next().await {
                    Some(Ok(choice)) => sharing.take(choice, &mut ready),
                    Some(Err(e)) => ready.push_back(Err(e)),
                    None => {
                        // The stream ended with siblings still waiting: they go out as they are.
                        ended = true;
                        sharing.release_all(&mut ready);
                    }
                }
            }
        },
    )
    .boxed()
}

/// The state of [`share_prompt_scores`].
struct ScoreSharing {
    n: u32,
    /// The scores of each prompt whose first choice has sent them (None: it ended without).
    known: HashMap<u32, Option<PromptLogprobs>>,
    /// Deltas of siblings whose prompt's scores are not known yet, by choice.
    waiting: HashMap<u32, Vec<ChoiceDelta>>,
    /// The choices whose first delta has gone out.
    given: HashSet<u32>,
}

type Ready = VecDeque<Result<ChoiceDelta, ApiError>>;

impl ScoreSharing {
    fn take(&mut self, mut choice: ChoiceDelta, ready: &mut Ready) {
        let prompt = choice.index / self.n;
        if choice.index.is_multiple_of(self.n) {
            let delta = &choice.delta;
            let settles = !self.known.contains_key(&prompt)
                && (delta.prompt_logprobs.is_some() || delta.finish.is_some());
            if settles {
                self.known.insert(prompt, delta.prompt_logprobs.clone());
            }
            ready.push_back(Ok(choice));
            if settles {
                self.release(prompt, ready);
            }
        } else if self.known.contains_key(&prompt) {
            self.stamp(&mut choice);
            ready.push_back(Ok(choice));
        } else {
            self.waiting.entry(choice.index).or_default().push(choice);
        }
    }

    /// Sends the waiting deltas of prompt `prompt`'s siblings, in order.
    fn release(&mut self, prompt: u32, ready: &mut Ready) {
        let first = prompt * self.n;
        for index in first + 1..first + self.n {
            for mut choice in self.waiting.remove(&index).unwrap_or_default() {
                self.stamp(&mut choice);
                ready.push_back(Ok(choice));
            }
        }
    }

    fn release_all(&mut self, ready: &mut Ready) {
        let mut prompts: Vec<u32> = self.waiting.keys().map(|i| i / self.n).collect();
        prompts.sort_unstable();
        prompts.dedup();
        for prompt in prompts {
            self.known.entry(prompt).or_insert(None);
            self.release(prompt, ready);
        }
    }

    /// Gives a sibling's first delta its prompt's scores.
    fn stamp(&mut self, choice: &mut ChoiceDelta) {
        if !self.given.insert(choice.index) {
            return;
        }
        let scores = self.known.get(&(choice.index / self.n)).cloned().flatten();
        if choice.delta.prompt_logprobs.is_none() {
            choice.delta.prompt_logprobs = scores;
        }
    }
}

/// Folds a whole stream into one [`Collected`] per choice (`choices` of them, indexed from 0).
pub async fn collect(mut stream: ChoiceStream, choices: usize) -> Result<Vec<Collected>, ApiError> {
    let mut collected = vec![Collected::default(); choices];
    while let Some(item) = stream.next().await {
        let ChoiceDelta { index, delta } = item?;
        if let Some(slot) = collected.get_mut(index as usize) {
            slot.absorb(delta);
        }
    }
    Ok(collected)
}

/// vLLM's `continuous_usage_stats`: the usage a chunk of choice `index` carries, its prompt and
/// the tokens it has so far (silent deltas count too, so `add` takes every delta); the cached
/// prompt tokens are known from the choice's finish on (0 before).
pub struct RunningUsage {
    /// Prompt tokens by choice.
    prompt: Vec<u32>,
    /// Completion tokens so far by choice.
    completion: Vec<u32>,
    /// Prompt tokens the prefix cache served, by choice (known at its finish).
    cached: Vec<u32>,
}

impl RunningUsage {
    /// Usage for choices answering prompts of these lengths (by choice).
    pub fn new(prompt: Vec<u32>) -> Self {
        let completion = vec![0; prompt.len()];
        let cached = completion.clone();
        RunningUsage {
            prompt,
            completion,
            cached,
        }
    }

    /// The usage of choice `index` so far.
    pub fn of(&self, index: u32) -> crate::protocol::openai::Usage {
        let i = index as usize;
        let at = |v: &[u32]| v.get(i).copied().unwrap_or(0);
        crate::protocol::openai::Usage::new(
            at(&self.prompt),
            at(&self.completion),
            at(&self.cached),
        )
    }

    /// Counts `delta`'s tokens (at a finish, the worker's count) for choice `index`.
    pub fn add(&mut self, index: u32, delta: &Delta) {
        let i = index as usize;
        if let (Some(done), Some(cached)) = (self.completion.get_mut(i), self.cached.get_mut(i)) {
            *done = match &delta.finish {
                Some(f) => f.completion_tokens,
                None => *done + delta.tokens.len() as u32,
            };
            *cached = delta.finish.as_ref().map_or(*cached, |f| f.cached_tokens);
        }
    }
}

/// A piece of a delta's text.
pub enum Piece {
    Call(crate::protocol::openai::ToolCallDelta),
    Reasoning(String),
    Text(String),
}

/// The text of `delta` (taken out of it) in the order it was written: the fragments of
/// `open_call` (the call being written: text after a call ends it), reasoning, answer text, then
/// the other calls.
pub fn written_order(delta: &mut crate::state::Delta, open_call: Option<usize>) -> Vec<Piece> {
    let (tail, calls): (Vec<_>, Vec<_>) = std::mem::take(&mut delta.tool_calls)
        .into_iter()
        .partition(|c| Some(c.index) == open_call);
    let mut pieces: Vec<Piece> = tail.into_iter().map(Piece::Call).collect();
    let reasoning = std::mem::take(&mut delta.reasoning);
    if !reasoning.is_empty() {
        pieces.push(Piece::Reasoning(reasoning));
    }
    let content = std::mem::take(&mut delta.content);
    if !content.is_empty() {
        pieces.push(Piece::Text(content));
    }
    pieces.extend(calls.into_iter().map(Piece::Call));
    pieces
}

/// What turns a choice's deltas into the events of a stream (the Responses and Messages
/// APIs): each delta adds its events, taken after it.
pub trait EventBuilder: Send + 'static {
    fn delta(&mut self, delta: crate::state::Delta);
    fn take_events(&mut self) -> Vec<serde_json::Value>;
    /// The events that tell `err` and end the stream, where the API has its own (None: the
    /// error object ends it).
    fn failed(&mut self, _err: &ApiError) -> Option<Vec<serde_json::Value>> {
        None
    }
}

/// The events `builder` makes of `stream`'s deltas (of its one choice), in order; a failure
/// ends them (with the builder's own events for it, if it has them).
pub fn built_events(
    builder: impl EventBuilder,
    stream: ChoiceStream,
) -> BoxStream<'static, Result<serde_json::Value, ApiError>> {
    let builder = std::sync::Arc::new(std::sync::Mutex::new(builder));
    stream
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            *failed = item.is_err();
            futures::future::ready(Some(item))
        })
        .map(move |item| {
            let mut b = builder.lock().unwrap_or_else(|e| e.into_inner());
            match item {
                Ok(ChoiceDelta { delta, .. }) => {
                    b.delta(delta);
                    Ok(b.take_events())
                }
                Err(e) => b.failed(&e).ok_or(e),
            }
        })
        .flat_map(|r: Result<Vec<serde_json::Value>, ApiError>| match r {
            Ok(events) => stream::iter(events.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        })
        .boxed()
}

/// Waits for the first delta so that an early failure (queue full, prompt rejected by the worker)
/// is answered with its HTTP status instead of inside an event stream.
pub async fn start(mut stream: ChoiceStream) -> Result<ChoiceStream, ApiError> {
    match stream.next().await {
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(stream::once(async { Ok(first) }).chain(stream).boxed()),
        None => Ok(stream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openai::FinishReason;
    use crate::state::Finish;

    fn scores(v: f32) -> PromptLogprobs {
        PromptLogprobs {
            logprobs: vec![v],
            ..PromptLogprobs::default()
        }
    }

    fn delta(index: u32, text: &str, scored: Option<f32>, last: bool) -> ChoiceDelta {
        let finish = last.then_some(Finish {
            reason: FinishReason::Length,
            stop_reason: None,
            prompt_tokens: 2,
            completion_tokens: 1,
            cached_tokens: 0,
            accepted_draft_tokens: 0,
            inside_call: false,
            called_tool: false,
            reasoning_tokens: 0,
        });
        let delta = Delta {
            content: text.into(),
            finish,
            prompt_logprobs: scored.map(scores),
            ..Delta::default()
        };
        ChoiceDelta { index, delta }
    }

    /// (index, text, the first score when the delta carries scores) of what comes out.
    async fn shared(items: Vec<ChoiceDelta>, n: u32) -> Vec<(u32, String, Option<f32>)> {
        let input = stream::iter(items.into_iter().map(Ok)).boxed();
        share_prompt_scores(input, n)
            .map(|item| {
                let ChoiceDelta { index, delta } = item.expect("no error");
                let first = delta.prompt_logprobs.map(|p| p.logprobs[0]);
                (index, delta.content, first)
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn siblings_wait_for_their_prompts_scores_and_carry_them_once() {
        // two prompts of three choices; choice 4's deltas come before choice 3's scores
        let items = vec![
            delta(1, "a", None, false),
            delta(0, "x", Some(-1.0), false),
            delta(1, "b", None, true),
            delta(4, "c", None, false),
            delta(5, "d", None, true),
            delta(3, "y", Some(-2.0), true),
            delta(4, "e", None, true),
            delta(2, "f", None, true),
        ];
        let out = shared(items, 3).await;
        let expect: Vec<(u32, String, Option<f32>)> = vec![
            (0, "x".into(), Some(-1.0)),
            (1, "a".into(), Some(-1.0)),
            (1, "b".into(), None),
            (3, "y".into(), Some(-2.0)),
            (4, "c".into(), Some(-2.0)),
            (5, "d".into(), Some(-2.0)),
            (4, "e".into(), None),
            (2, "f".into(), Some(-1.0)),
        ];
        assert_eq!(out, expect);
    }

    #[tokio::test]
    async fn a_first_choice_that_ends_unscored_releases_its_siblings_bare() {
        let items = vec![delta(1, "a", None, true), delta(0, "x", None, true)];
        let out = shared(items, 2).await;
        assert_eq!(out, vec![(0, "x".into(), None), (1, "a".into(), None)]);
        // the stream ends with a sibling still waiting: it goes out as it is
        let out = shared(vec![delta(3, "s", None, true)], 2).await;
        assert_eq!(out, vec![(3, "s".into(), None)]);
    }

    #[tokio::test]
    async fn errors_pass_through_and_one_choice_is_left_alone() {
        let items: Vec<Result<ChoiceDelta, ApiError>> = vec![
            Ok(delta(1, "a", None, false)),
            Err(ApiError::Internal("gone".into())),
        ];
        let mut out = share_prompt_scores(stream::iter(items).boxed(), 2);
        assert!(matches!(out.next().await, Some(Err(ApiError::Internal(_)))));
        let kept = out
            .next()
            .await
            .expect("the waiting delta")
            .expect("no error");
        assert_eq!((kept.index, kept.delta.prompt_logprobs), (1, None));
        let items = vec![delta(0, "x", None, false), delta(0, "y", Some(-1.0), true)];
        assert_eq!(
            shared(items, 1).await,
            vec![(0, "x".into(), None), (0, "y".into(), Some(-1.0))]
        );
    }
}
