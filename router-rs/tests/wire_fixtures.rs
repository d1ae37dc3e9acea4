//! The router's codec against the shared fixtures of docs/wire.md (tests/wire_fixtures/).

use std::path::PathBuf;

use glm47_router::wire::{self, ErrorCode, FinishReason, Message};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/wire_fixtures")
}

/// Every fixture as (name, bytes, JSON value).
fn fixtures() -> Vec<(String, Vec<u8>, serde_json::Value)> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(fixture_dir()).expect("fixture folder exists");
    for entry in entries {
        let path = entry.expect("readable entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
        let hex_text = doc["hex"].as_str().expect("fixture has a hex string");
        let bytes = hex::decode(hex_text).expect("hex decodes");
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        out.push((name.to_owned(), bytes, doc["value"].clone()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn fixture(name: &str) -> Message {
    let (_, bytes, _) = fixtures()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("fixture {name} exists"));
    wire::decode(&bytes).expect("fixture decodes")
}

#[test]
fn every_fixture_decodes_to_its_value_and_survives_reencoding() {
    let all = fixtures();
    assert!(
        all.len() >= 10,
        "expected the full fixture set, found {}",
        all.len()
    );
    for (name, bytes, value) in all {
        let decoded = wire::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = wire::from_json(value).unwrap_or_else(|e| panic!("{name} value: {e}"));
        assert_eq!(decoded, expected, "{name}: bytes and value disagree");
        let again = wire::encode(&decoded).unwrap_or_else(|e| panic!("{name}: {e}"));
        let twice = wire::decode(&again).unwrap_or_else(|e| panic!("{name} re-encoded: {e}"));
        assert_eq!(twice, decoded, "{name}: re-encoding changed the message");
    }
}

#[test]
fn the_minimal_submit_gets_the_documented_defaults() {
    let Message::Submit(submit) = fixture("submit_minimal") else {
        panic!("submit_minimal is not a submit");
    };
    let req = &submit.reqs[0];
    assert_eq!(req.rid, "gen-7");
    assert_eq!(req.input_ids, vec![1, 2, 3]);
    assert_eq!(req.max_new_tokens, 1);
    assert_eq!(*req, wire::Request::new("gen-7", vec![1, 2, 3], 1));
    assert_eq!(req.temperature, 1.0);
    assert_eq!(req.top_k, -1);
    assert_eq!(req.logprobs, -1);
    assert!(req.mtp);
    assert_eq!(submit.reqs[1].seed, None);
}

#[test]
fn the_full_submit_keeps_every_field() {
    let Message::Submit(submit) = fixture("submit_full") else {
        panic!("submit_full is not a submit");
    };
    let req = &submit.reqs[0];
    assert_eq!(req.min_new_tokens, 2);
    assert_eq!(req.top_k, 40);
    assert_eq!(req.seed, Some(1234));
    assert_eq!(req.stop_token_ids, vec![151336, 151338]);
    assert!(req.ignore_eos);
    assert_eq!(req.logprobs, 3);
    assert_eq!(req.prompt_logprobs, 2);
    assert_eq!(req.logit_bias, vec![(13, -100.0), (872, 2.5)]);
    let grammar = req.grammar.as_ref().expect("the grammar");
    assert_eq!(grammar.schema.as_deref(), Some(r#"{"type": "object"}"#));
    assert_eq!(grammar.start_after, Some(151351));
    let budget = wire::ReasoningBudget {
        tokens: 512,
        end_id: 151351,
    };
    assert_eq!(req.reasoning_budget, Some(budget));
    assert!(!req.mtp);
    assert!((req.repetition_penalty - 1.1).abs() < 1e-12);
}

#[test]
fn the_step_fixture_carries_logprobs_finishes_and_stats() {
    let Message::Step(step) = fixture("step") else {
        panic!("step is not a step");
    };
    let first = &step.outs[0];
    assert_eq!(first.logprobs, Some(vec![-0.125, -2.0625]));
    let top = first.top_logprobs.as_ref().expect("top logprobs");
    assert_eq!(top[1][0], (11, -2.0625));
    assert_eq!(first.finish, None);
    assert_eq!(first.prompt_tokens, Some(5));
    assert_eq!(first.prompt_logprobs, Some(vec![-7.5, -0.375, -1.25, -2.0]));
    let prompt_top = first
        .prompt_top_logprobs
        .as_ref()
        .expect("prompt top logprobs");
    assert_eq!(prompt_top[2], vec![(11, -0.25), (198, -1.25)]);
    assert_eq!(first.prompt_ranks, Some(vec![40, 1, 2, 1]));
    assert_eq!(step.outs[1].prompt_logprobs, None);
    assert_eq!(step.outs[1].prompt_ranks, None);
    assert_eq!(step.outs[1].finish, Some(FinishReason::Stop));
    assert_eq!(step.outs[2].finish, Some(FinishReason::Abort));
    assert!(step.outs[2].ids.is_empty());
    assert_eq!(step.outs[3].finish, Some(FinishReason::Length));
    assert_eq!(step.stats.kv_pages_total, Some(4096));
    assert_eq!(step.stats.spec_accepted, Some(250));
}

#[test]
fn single_precision_floats_are_accepted() {
    let Message::Step(step) = fixture("step_float32") else {
        panic!("step_float32 is not a step");
    };
    assert_eq!(step.outs[0].logprobs, Some(vec![-0.5]));
    assert_eq!(step.stats, wire::Stats::default());
}

#[test]
fn errors_keep_their_rid_code_and_fatality() {
    let Message::Error(err) = fixture("error_request") else {
        panic!("error_request is not an error");
    };
    assert_eq!(err.rid.as_deref(), Some("chat-1"));
    assert_eq!(err.code, ErrorCode::TooLong);
    assert!(!err.fatal);
    let Message::Error(err) = fixture("error_fatal") else {
        panic!("error_fatal is not an error");
    };
    assert_eq!(err.rid, None);
    assert_eq!(err.code, ErrorCode::Protocol);
    assert!(err.fatal);
}

#[test]
fn ready_describes_the_worker() {
    let Message::Ready(ready) = fixture("ready") else {
        panic!("ready is not a ready");
    };
    assert_eq!(ready.protocol, 1);
    assert_eq!(ready.model, "GLM-4.7-Flash");
    assert_eq!(ready.eos_token_ids, vec![151329, 151336, 151338]);
    assert_eq!(ready.max_req_total_len, 202752);
    assert_eq!(ready.mtp_step, 4);
}
