//! Cross-origin requests through the real router: any origin by default (as vLLM and SGLang
//! answer), preflights open under `--api-key`, and the `--allowed-*` flags narrowing them.

mod http_support;

use http_support::{setup, Server};
use serde_json::json;

/// A browser's preflight for a JSON POST to the chat route from `origin`.
async fn preflight(server: &Server, origin: &str) -> reqwest::Response {
    server
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", server.url),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .expect("answers")
}

fn allowed_origin(r: &reqwest::Response) -> Option<String> {
    let value = r.headers().get("access-control-allow-origin")?;
    Some(value.to_str().expect("ascii").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_is_allowed_by_default_even_under_an_api_key() {
    let (_model, _worker, server) = setup("ok", 1, &["--api-key", "k1"]).await;
    let answer = preflight(&server, "https://ui.example").await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(allowed_origin(&answer).as_deref(), Some("*"));
    let answer = server
        .client
        .post(format!("{}/v1/chat/completions", server.url))
        .header("origin", "https://ui.example")
        .bearer_auth("k1")
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("answers");
    assert_eq!(answer.status(), 200);
    assert_eq!(allowed_origin(&answer).as_deref(), Some("*"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_narrow_and_credentials_echo_the_origin() {
    let flags = [
        "--allowed-origins",
        r#"["https://ui.example"]"#,
        "--allow-credentials",
    ];
    let (_model, _worker, server) = setup("ok", 1, &flags).await;
    let answer = preflight(&server, "https://ui.example").await;
    assert_eq!(
        allowed_origin(&answer).as_deref(),
        Some("https://ui.example")
    );
    assert_eq!(answer.headers()["access-control-allow-credentials"], "true");
    let answer = preflight(&server, "https://elsewhere.example").await;
    assert_eq!(allowed_origin(&answer), None);
}
