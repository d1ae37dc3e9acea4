//! The Responses builder (responses.rs): output items from deltas.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::background::Unfinished;
use super::{EventLog, Input, Meta, Output};
use crate::http::response_store::ResponseStore;
use crate::protocol::openai::{FinishReason, ToolCallDelta};
use crate::state::{Delta, Finish};

/// A builder with no request fields to repeat.
fn output(id: &str) -> Output {
    let meta = Meta {
        id: id.into(),
        created: 0,
        model: "m".into(),
    };
    Output::new(meta, Map::new())
}

/// The last delta: a finish for `reason` after `completion_tokens` tokens.
fn finished(reason: FinishReason, completion_tokens: u32) -> Delta {
    Delta {
        finish: Some(Finish {
            reason,
            stop_reason: None,
            prompt_tokens: 3,
            completion_tokens,
            cached_tokens: 0,
            accepted_draft_tokens: 0,
            inside_call: false,
            called_tool: false,
            reasoning_tokens: 0,
        }),
        ..Delta::default()
    }
}

fn text(content: &str, calls: Vec<ToolCallDelta>) -> Delta {
    Delta {
        content: content.into(),
        tool_calls: calls,
        ..Delta::default()
    }
}

#[test]
fn a_delta_ending_one_call_and_starting_another_keeps_each_call_whole() {
    let mut out = output("resp_x");
    out.delta(text(
        "Checking.",
        vec![ToolCallDelta::fragment(0, Some("w"), "{\"city\": \"Pa")],
    ));
    // the end of call 0, the newline after it and call 1, all in one delta
    out.delta(text(
        "\n",
        vec![
            ToolCallDelta::fragment(0, None, "ris\"}"),
            ToolCallDelta::fragment(1, Some("w"), "{}"),
        ],
    ));
    out.delta(finished(FinishReason::ToolCalls, 9));
    let r = out.response();
    let items: Vec<(&str, &str)> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["type"].as_str().unwrap(),
                i["arguments"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            ("message", ""),
            ("function_call", "{\"city\": \"Paris\"}"),
            ("function_call", "{}")
        ]
    );
    assert_eq!(r["output"][0]["content"][0]["text"], "Checking.");
    assert_eq!(r["status"], "completed");
    let kinds: Vec<Value> = out.events.iter().map(|e| e["type"].clone()).collect();
    assert_eq!(kinds.last().unwrap(), "response.completed");
    let seq: Vec<u64> = out
        .events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(seq.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn a_messages_logprobs_are_its_texts_tokens_and_the_stream_adds_up_to_them() {
    use crate::state::TokenInfo;
    let token = |id: u32, text: &str| TokenInfo {
        id,
        text: text.into(),
        logprob: Some(-0.5),
        top: Vec::new(),
        special: false,
    };
    let mut out = output("resp_lp");
    out.logprobs = Some(Arc::new(crate::tokenizer::Tokenizer::word_level(16)));
    let mut said = text("Let me check.", vec![]);
    said.tokens = vec![token(1, "Let me"), token(2, " check.")];
    out.delta(said);
    // the parser holds the call's opening tag and name, then the call comes
    let mut held = text("", vec![]);
    held.tokens = vec![token(3, "<tool_call>"), token(4, "w")];
    out.delta(held);
    let mut call = text("", vec![ToolCallDelta::fragment(0, Some("w"), "{}")]);
    call.tokens = vec![token(5, "</tool_call>")];
    out.delta(call);
    out.delta(finished(FinishReason::ToolCalls, 5));
    let r = out.response();
    let final_lps = r["output"][0]["content"][0]["logprobs"]
        .as_array()
        .unwrap()
        .len();
    let streamed: usize = out
        .events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["logprobs"].as_array().map_or(0, Vec::len))
        .sum();
    let done = out
        .events
        .iter()
        .find(|e| e["type"] == "response.output_text.done")
        .map(|e| e["logprobs"].as_array().unwrap().len());
    assert_eq!((final_lps, streamed, done), (2, 2, Some(2)));
}

#[test]
fn a_call_the_token_budget_cuts_off_is_incomplete_and_one_it_ends_after_is_whole() {
    for inside_call in [true, false] {
        let mut out = output("resp_y");
        out.delta(text(
            "",
            vec![ToolCallDelta::fragment(0, Some("w"), "{\"city\": \"Pa")],
        ));
        let mut last = finished(FinishReason::Length, 4);
        last.finish.as_mut().unwrap().inside_call = inside_call;
        out.delta(last);
        let r = out.response();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["output"][0]["type"], "function_call");
        let status = if inside_call {
            "incomplete"
        } else {
            "completed"
        };
        assert_eq!(r["output"][0]["status"], status);
    }
}

#[test]
fn reasoning_and_a_message_the_token_budget_cuts_off_are_incomplete() {
    let mut out = output("resp_m");
    out.delta(Delta {
        reasoning: "Think".into(),
        ..Delta::default()
    });
    out.delta(text("Half an ans", vec![]));
    out.delta(finished(FinishReason::Length, 4));
    let r = out.response();
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r["output"][0]["type"], "reasoning");
    assert_eq!(
        r["output"][0]["status"], "completed",
        "the answer came after it"
    );
    assert_eq!(r["output"][1]["type"], "message");
    assert_eq!(r["output"][1]["status"], "incomplete");
}

#[test]
fn a_request_aborted_by_abort_request_ends_cancelled_with_its_item_incomplete() {
    let mut out = output("resp_a");
    out.opening();
    out.delta(text("Cut sho", vec![]));
    out.delta(finished(FinishReason::Abort, 2));
    let last = out.events.last().unwrap();
    assert_eq!(last["type"], "response.cancelled");
    assert_eq!(last["response"]["status"], "cancelled");
    assert_eq!(last["response"]["error"], Value::Null);
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");
}

#[test]
fn a_cancelled_response_closes_its_open_item_and_ends_cancelled() {
    let mut out = output("resp_z");
    out.opening();
    out.delta(text("Half an ans", vec![]));
    out.cancelled = true;
    out.stop();
    let kinds: Vec<&str> = out
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["response.output_item.done", "response.cancelled"]
    );
    let r = &out.events.last().unwrap()["response"];
    assert_eq!(r["status"], "cancelled");
    assert_eq!(r["output"][0]["status"], "incomplete");
    assert_eq!(r["output"][0]["content"][0]["text"], "Half an ans");
    // a response that had finished is left as it was
    let mut done = output("resp_w");
    done.delta(finished(FinishReason::Stop, 1));
    let before = done.events.len();
    done.stop();
    assert_eq!(done.events.len(), before);
    assert_eq!(done.response()["status"], "completed");
}

impl AsRef<ResponseStore> for ResponseStore {
    fn as_ref(&self) -> &ResponseStore {
        self
    }
}

#[tokio::test]
async fn a_background_task_that_panics_ends_its_log_and_is_stored_failed() {
    let store = Arc::new(ResponseStore::new(10));
    let log = Arc::new(EventLog::default());
    let (id, first) = ("resp_p", json!({"id": "resp_p", "status": "in_progress"}));
    let kept = Some(log.clone());
    store.insert_with_events(id.into(), Input::default(), first.clone(), kept.clone());
    let task = store.start_background(id);
    log.extend((0..2).map(|n| json!({"sequence_number": n})).collect());
    let reader = tokio::spawn(log.clone().follow(None).collect::<Vec<_>>());
    let unfinished = Unfinished::new(store.clone(), id, Input::default(), &first, kept, &task);
    let ran = tokio::spawn(async move {
        let _unfinished = unfinished;
        tokio::task::yield_now().await;
        panic!("a bug in the task");
    });
    assert!(ran.await.unwrap_err().is_panic());
    let read = tokio::time::timeout(Duration::from_secs(5), reader).await;
    let read = read.expect("the reader ends").expect("joined");
    let last: Value = serde_json::from_str(&read.last().unwrap().as_ref().unwrap().1).unwrap();
    assert_eq!((read.len(), &last["type"]), (3, &json!("response.failed")));
    assert_eq!(last["sequence_number"], 2);
    assert!(store.background(id).is_none());
    let stored = store.get(id).expect("stored");
    assert_eq!(stored.response["status"], "failed");
    assert_eq!(stored.response["error"]["code"], "server_error");
    // a task that ends as it should is left as it stored itself
    let task = store.start_background("resp_q");
    let mut done = Unfinished::new(
        store.clone(),
        "resp_q",
        Input::default(),
        &first,
        None,
        &task,
    );
    done.ended = true;
    drop(done);
    assert!(store.background("resp_q").is_some());
}

#[tokio::test]
async fn a_stream_that_fails_ends_with_an_error_event_and_response_failed() {
    use crate::http::run::{built_events, ChoiceDelta};
    use crate::http::ApiError;
    let mut out = output("resp_f");
    out.opening();
    let deltas: Vec<Result<ChoiceDelta, ApiError>> = vec![
        Ok(ChoiceDelta {
            index: 0,
            delta: text("Half", vec![]),
        }),
        Err(ApiError::Internal("the worker went away".into())),
        Ok(ChoiceDelta {
            index: 0,
            delta: text(" more", vec![]),
        }),
    ];
    let mut events: Vec<Value> = std::mem::take(&mut out.events);
    let built: Vec<_> = built_events(out, futures::stream::iter(deltas).boxed())
        .collect()
        .await;
    events.extend(
        built
            .into_iter()
            .map(|e| e.expect("the failure is told in events")),
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["error", "response.failed"],
        "{kinds:?}"
    );
    let seq: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>());
    let error = &events[events.len() - 2];
    assert_eq!(error["code"], "server_error");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("the worker went away"));
    let failed = &events.last().unwrap()["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["output"][0]["content"][0]["text"], "Half");
    assert_eq!(failed["output"][0]["status"], "incomplete");
    let texts: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(texts, "Half", "nothing after the failure");
}
