//! SGLang's native `POST /generate` (protocol/sglang.rs), served beside LightLLM's on the same
//! route: each prompt's text, output ids and `meta_info`; streamed, one event per delta with the
//! text and ids so far (and the prompt's `index`), then `data: [DONE]`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::StreamExt;
use serde_json::{json, Value};

use super::prepare::{
    check_sequences, max_new_tokens, plain_pipeline, ready_worker, wire_requests,
};
use super::prompt::{prompt_ids, PromptUse};
use super::run::{collect, drive, merge, start, ChoiceDelta};
use super::{sse, ApiError, AppState};
use crate::protocol::openai::random_id;
use crate::protocol::sglang::{finish_reason, SglangRequest};
use crate::state::{Finish, TokenInfo};

pub async fn generate(state: Arc<AppState>, body: Value) -> Result<Response, ApiError> {
    let req = SglangRequest::from_json(&body)?;
    let worker = ready_worker(&state)?;
    check_sequences(&worker, req.prompts.len())?;
    let prompts = prompt_ids(&state, req.prompts.clone(), "text", PromptUse::Generation).await?;
    // the client's ids (else fresh ones) name the answers; what `/abort_request` names is the
    // client's id, else an `X-Request-Id` (as on the other routes), else the answer's id
    let given = super::request_id::given_id();
    let rids =
        (req.rids.clone()).unwrap_or_else(|| prompts.iter().map(|_| random_id("")).collect());
    let mut streams = Vec::with_capacity(prompts.len());
    for (ids, index) in prompts.iter().zip(0u32..) {
        let sampling = req.sampling_of(index as usize);
        let budget = max_new_tokens(&state, &worker, ids.len(), sampling, "text")?;
        let mut reqs = wire_requests(&state, ids, sampling, budget, 1);
        let own = req.rids.as_ref().map(|ids| ids[index as usize].as_str());
        if let Some(prefix) = own.and_then(super::request_id::loggable) {
            reqs.iter_mut().for_each(|r| r.rid = prefix.clone()); // the worker's logs name it
        }
        let client = own.or(given.as_deref()).or(Some(&rids[index as usize]));
        let handles = state.dispatcher.submit_many_for(reqs, client)?;
        let pipeline = plain_pipeline(&state, sampling, ids.len());
        streams.push(drive(handles, vec![pipeline], index));
    }
    let stream = merge(streams);
    let lens: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let top = req.sampling_of(0).logprobs;
    if req.stream {
        let stream = start(stream).await?;
        let mut so_far: Vec<Answer> = rids.iter().map(|_| Answer::default()).collect();
        let batched = req.batched;
        let events = stream.map(move |item| {
            let ChoiceDelta { index, delta } = item?;
            let i = index as usize;
            let answer = &mut so_far[i];
            answer.text.push_str(&delta.content);
            answer.tokens.extend(delta.tokens);
            answer.finish = delta.finish.or(answer.finish.take());
            let mut out = answer.json(&rids[i], lens[i], top);
            if batched {
                out["index"] = json!(index);
            }
            sse::json(&out)
        });
        return Ok(sse::respond(events.boxed(), true));
    }
    let collected = collect(stream, prompts.len()).await?;
    let answers: Vec<Value> = collected
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let answer = Answer {
                text: c.content,
                tokens: c.tokens,
                finish: c.finish,
            };
            answer.json(&rids[i], lens[i], top)
        })
        .collect();
    let body = match (req.batched, answers.as_slice()) {
        (false, [one]) => one.clone(),
        _ => Value::Array(answers),
    };
    Ok(Json(body).into_response())
}

/// One prompt's answer so far.
#[derive(Default)]
struct Answer {
    text: String,
    tokens: Vec<TokenInfo>,
    finish: Option<Finish>,
}

impl Answer {
    /// SGLang's object for it; `top` the logprobs asked for (-1: none; k: also the top k).
    fn json(&self, rid: &str, prompt_tokens: u32, top: i32) -> Value {
        let f = self.finish.as_ref();
        let mut meta = json!({
            "id": rid,
            "finish_reason": finish_reason(f, self.tokens.last()),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": f.map_or(self.tokens.len() as u32, |f| f.completion_tokens),
            "cached_tokens": f.map_or(0, |f| f.cached_tokens),
        });
        if top >= 0 {
            let entry = |lp: Option<f32>, id: u32| json!([lp, id, null]);
            let lps: Vec<Value> = self.tokens.iter().map(|t| entry(t.logprob, t.id)).collect();
            meta["output_token_logprobs"] = json!(lps);
            if top > 0 {
                let tops: Vec<Value> = self
                    .tokens
                    .iter()
                    .map(|t| {
                        json!(t
                            .top
                            .iter()
                            .map(|&(id, lp)| entry(Some(lp), id))
                            .collect::<Vec<_>>())
                    })
                    .collect();
                meta["output_top_logprobs"] = json!(tops);
            }
        }
        let ids: Vec<u32> = self.tokens.iter().map(|t| t.id).collect();
        json!({"text": self.text, "output_ids": ids, "meta_info": meta})
    }
}
