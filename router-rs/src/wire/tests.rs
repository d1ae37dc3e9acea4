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
        ..Step::default()
    }));
}

#[test]
fn an_unreadable_output_is_set_apart_and_the_rest_of_its_step_kept() {
    use rmpv::Value as V;
    let out =
        |fields: Vec<(&str, V)>| V::Map(fields.into_iter().map(|(k, v)| (V::from(k), v)).collect());
    let body = out(vec![
        (
            "outs",
            V::Array(vec![
                out(vec![
                    ("rid", V::from("good")),
                    ("ids", V::Array(vec![V::from(5)])),
                    ("finish", V::from("stop")),
                ]),
                out(vec![
                    ("rid", V::from("bad")),
                    ("ids", V::Array(vec![V::from(-1)])),
                ]),
                out(vec![
                    ("rid", V::from("odd")),
                    ("finish", V::from("exploded")),
                ]),
                V::from(7),
            ]),
        ),
        (
            "stats",
            out(vec![("running", V::from(2)), ("waiting", V::from(-5))]),
        ),
    ]);
    let envelope = V::Array(vec![V::from("step"), V::from(1), body]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &envelope).expect("encodes");
    let Message::Step(step) = decode(&bytes).expect("decodes") else {
        panic!("not a step");
    };
    assert_eq!(step.outs.len(), 1);
    assert_eq!(step.outs[0].rid, "good");
    assert_eq!(step.outs[0].finish, Some(FinishReason::Stop));
    let rids: Vec<Option<&str>> = step.unreadable.iter().map(|(r, _)| r.as_deref()).collect();
    assert_eq!(rids, [Some("bad"), Some("odd"), None]);
    assert_eq!((step.stats.running, step.stats.waiting), (Some(2), None));
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
