//! `--api-key`: which routes need a key, in which headers, and the errors without one.

mod http_support;

use http_support::setup;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_the_v1_routes_need_it() {
    let (_model, _worker, server) = setup("x", 1, &["--api-key", "k1", "--api-key", "k2"]).await;
    let get = |path: &str, header: Option<(&str, &str)>| {
        let mut req = server.client.get(format!("{}{path}", server.url));
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        req.send()
    };
    let refused = get("/v1/models", None).await.expect("answers");
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["type"], "authentication_error");
    let wrong = get("/v1/models", Some(("Authorization", "Bearer k3"))).await;
    assert_eq!(wrong.expect("answers").status(), 401);
    for bad in ["Basic k1", "Bearerk1", "k1"] {
        let wrong = get("/v1/models", Some(("Authorization", bad))).await;
        assert_eq!(wrong.expect("answers").status(), 401, "{bad}");
    }
    // the scheme in any case, as RFC 9110 has it
    for key in [
        ("Authorization", "Bearer k1"),
        ("Authorization", "bearer k1"),
        ("Authorization", "BEARER k2"),
        ("x-api-key", "k2"),
    ] {
        let ok = get("/v1/models", Some(key)).await.expect("answers");
        assert_eq!(ok.status(), 200, "{key:?}");
    }
    assert_eq!(get("/health", None).await.expect("answers").status(), 200);
    let (status, _) = server
        .post(
            "/generate",
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 1}}),
        )
        .await;
    assert_eq!(status, 401, "generation needs the key on every route");
    let (status, _) = server.post("/tokenize", json!({"prompt": "hi"})).await;
    assert_eq!(status, 200);
    // the Messages API answers in its own shape
    let (status, body) = server
        .post("/v1/messages", json!({"max_tokens": 5, "messages": []}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
}
