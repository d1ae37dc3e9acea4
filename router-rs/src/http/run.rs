//! Drives submitted requests: worker events → each choice's pipeline → a merged stream of
//! deltas. Streaming answers forward the stream; non-streaming answers [`collect`] it. Dropping
//! the stream drops the request handles, which aborts unfinished requests in the worker.

use futures::stream::{self, BoxStream, StreamExt};

use super::ApiError;
use crate::dispatch::{RequestEvent, RequestHandle};
use crate::state::{Collected, Delta, Pipeline};

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

/// Waits for the first delta so that an early failure (queue full, prompt rejected by the worker)
/// is answered with its HTTP status instead of inside an event stream.
pub async fn start(mut stream: ChoiceStream) -> Result<ChoiceStream, ApiError> {
    match stream.next().await {
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(stream::once(async { Ok(first) }).chain(stream).boxed()),
        None => Ok(stream),
    }
}
