//! What the fake worker answers: the script of a test, and the steps it turns into.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use glm47_router::wire::{self, ErrorCode, Message};

/// What the fake worker answers to every submitted request.
#[derive(Clone)]
pub struct Script {
    /// Generated ids (cut at `max_new_tokens`, which then finishes with `length`).
    pub reply: Vec<u32>,
    /// Ids per `step` message.
    pub chunk: usize,
    /// Finish reason after the whole reply.
    pub finish: wire::FinishReason,
    /// Answer every request with this error, after `error_after` steps.
    pub error: Option<ErrorCode>,
    pub error_after: usize,
    /// Answer `logprobs` requests with logprob `-0.5 * (k + 1)` for the k-th id.
    pub logprobs: bool,
    /// Pause before each `step` after the first.
    pub delay: Duration,
    /// How `/health_generate`'s probes are answered.
    pub probes: Probes,
}

/// How the fake worker treats health probes (`PROBE_PREFIX` ids).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Probes {
    /// Like any request.
    Answer,
    /// Never: a worker stuck, or too busy to reach them.
    Ignore,
    /// With this error at once, as a worker with a full queue does, even mid-stream.
    Refuse(ErrorCode),
}

impl Script {
    pub fn reply(ids: Vec<u32>, chunk: usize) -> Self {
        Self {
            reply: ids,
            chunk,
            finish: wire::FinishReason::Stop,
            error: None,
            error_after: 0,
            logprobs: true,
            delay: Duration::ZERO,
            probes: Probes::Answer,
        }
    }
}

/// Queues `steps` (each after its pause) behind what is already due: requests are answered one
/// after another.
pub(super) fn schedule(
    due: &mut VecDeque<(Instant, Vec<u8>, Message)>,
    id: &[u8],
    steps: Vec<(Duration, Message)>,
) {
    let mut at = due.back().map_or_else(Instant::now, |(at, _, _)| *at);
    at = at.max(Instant::now());
    for (pause, m) in steps {
        at += pause;
        due.push_back((at, id.to_vec(), m));
    }
}

pub(super) fn worker_error(req: &wire::Request, code: ErrorCode) -> wire::WorkerError {
    wire::WorkerError {
        rid: Some(req.rid.clone()),
        code,
        message: "scripted".into(),
        fatal: false,
    }
}

/// The messages answering `req`, each with the pause before it.
pub(super) fn answer(script: &Script, req: &wire::Request) -> Vec<(Duration, Message)> {
    let mut steps = Vec::new();
    let budget = req.max_new_tokens as usize;
    let (ids, finish) = if script.reply.len() > budget {
        (&script.reply[..budget], wire::FinishReason::Length)
    } else {
        (&script.reply[..], script.finish)
    };
    let chunks: Vec<&[u32]> = ids.chunks(script.chunk.max(1)).collect();
    let mut done = 0usize;
    for (k, chunk) in chunks.iter().enumerate() {
        if let Some(code) = script.error.filter(|_| k == script.error_after) {
            steps.push((Duration::ZERO, Message::Error(worker_error(req, code))));
            return steps;
        }
        let last = k + 1 == chunks.len();
        let pause = if k > 0 { script.delay } else { Duration::ZERO };
        let want = req.logprobs >= 0 && script.logprobs;
        let logprobs: Vec<f64> = (done..done + chunk.len())
            .map(|i| -0.5 * (i as f64 + 1.0))
            .collect();
        let top = chunk
            .iter()
            .map(|&id| vec![(id, -0.5), (id + 1, -1.5)])
            .collect();
        done += chunk.len();
        // Prompt logprobs: -0.25 * position for prompt tokens 1..P-1, each ranked first, the
        // best two at each position being the token itself and the next id (the first
        // `prompt_logprobs` of them are sent).
        let prompt_logprobs = (k == 0 && req.prompt_logprobs >= 0).then(|| {
            (1..req.input_ids.len())
                .map(|i| -0.25 * i as f64)
                .collect::<Vec<_>>()
        });
        let prompt_top = (k == 0 && req.prompt_logprobs > 0).then(|| {
            req.input_ids[1..]
                .iter()
                .zip(1..)
                .map(|(&id, i)| {
                    let best = [(id, -0.25 * f64::from(i)), (id + 1, -3.0)];
                    best.into_iter()
                        .take(req.prompt_logprobs as usize)
                        .collect()
                })
                .collect::<Vec<_>>()
        });
        let prompt_ranks = prompt_logprobs.as_ref().map(|l| vec![1; l.len()]);
        let out = wire::Output {
            rid: req.rid.clone(),
            ids: chunk.to_vec(),
            logprobs: want.then_some(logprobs),
            top_logprobs: (want && req.logprobs > 0).then_some(top),
            finish: last.then_some(finish),
            prompt_tokens: (k == 0).then_some(req.input_ids.len() as u32),
            cached_tokens: (k == 0).then_some(1),
            spec_accepted: None,
            prompt_logprobs,
            prompt_top_logprobs: prompt_top,
            prompt_ranks,
        };
        let step = wire::Step {
            outs: vec![out],
            ..wire::Step::default()
        };
        steps.push((pause, Message::Step(step)));
    }
    steps
}
