//! Codec tests beyond the shared fixtures.

use super::*;

fn roundtrip(msg: Message) {
    let bytes = encode(&msg).expect("encodes");
    assert_eq!(decode(&bytes).expect("decodes"), msg);
}

#[test]
fn every_message_kind_survives_a_roundtrip() {
    roundtrip(Message::Hello(Hello {
        client: Some("glm47-router".into()),
    }));
    roundtrip(Message::Submit(Submit {
        reqs: vec![Request::new("a", vec![1, 2, 3], 8)],
    }));
    roundtrip(Message::Abort(Abort {
        rids: vec!["a".into()],
    }));
    roundtrip(Message::Step(Step {
        outs: vec![Output {
            rid: "a".into(),
            ids: vec![5, 6],
            top_logprobs: Some(vec![vec![(5, -0.5), (9, -1.5)], vec![(6, -0.25)]]),
            finish: Some(FinishReason::Length),
            ..Output::default()
        }],
        stats: Stats {
            running: Some(1),
            ..Stats::default()
        },
    }));
}

#[test]
fn a_body_with_unknown_keys_and_missing_optionals_decodes_with_defaults() {
    let bytes = rmp_serde::to_vec(&(
        "error",
        1,
        std::collections::BTreeMap::from([("code", "queue_full"), ("future_key", "x")]),
    ))
    .expect("encodes");
    let Message::Error(err) = decode(&bytes).expect("decodes") else {
        panic!("not an error message");
    };
    assert_eq!(err.code, ErrorCode::QueueFull);
    assert_eq!(err.rid, None);
    assert!(!err.fatal);
}

#[test]
fn an_unknown_error_code_reads_as_internal() {
    let value = serde_json::json!(["error", 1, {"code": "gpu_on_fire", "message": "m"}]);
    let Message::Error(err) = from_json(value).expect("decodes") else {
        panic!("not an error message");
    };
    assert_eq!(err.code, ErrorCode::Internal);
}

#[test]
fn a_wrong_version_is_rejected() {
    let bytes = rmp_serde::to_vec_named(&("hello", 2, Hello::default())).expect("encodes");
    assert!(matches!(decode(&bytes), Err(WireError::Version(2))));
}

#[test]
fn a_missing_required_key_is_a_body_error() {
    let bytes = rmp_serde::to_vec(&("abort", 1, std::collections::BTreeMap::<&str, i32>::new()))
        .expect("encodes");
    assert!(matches!(
        decode(&bytes),
        Err(WireError::Body { kind: "abort", .. })
    ));
}

#[test]
fn garbage_and_non_envelopes_are_rejected() {
    assert!(matches!(decode(&[0x93, 0xa5]), Err(WireError::Msgpack(_))));
    assert!(matches!(decode(&[0x90, 0x90]), Err(WireError::Msgpack(_))));
    let bytes = rmp_serde::to_vec(&("hello", 1)).expect("encodes");
    assert!(matches!(decode(&bytes), Err(WireError::Envelope(_))));
    let bytes = rmp_serde::to_vec_named(&("nope", 1, Hello::default())).expect("encodes");
    assert!(matches!(decode(&bytes), Err(WireError::UnknownType(_))));
}
