//! `/tokenize`, `/detokenize` and `/version` through the real router.

mod http_support;

use http_support::setup;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_chat_prompts_tokenize_as_generation_would_see_them() {
    let (model, _worker, server) = setup("x", 1, &[]).await;
    let (status, body) = server
        .post(
            "/tokenize",
            json!({"prompt": "héllo", "return_token_strs": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids = model.encode("héllo");
    assert_eq!(body["tokens"], json!(ids));
    assert_eq!(body["count"], ids.len());
    assert_eq!(body["max_model_len"], 4096);
    assert_eq!(body["token_strs"][0], "h");
    let chat = json!({"messages": [{"role": "user", "content": "hi"}],
                      "chat_template_kwargs": {"enable_thinking": false}});
    let (status, body) = server.post("/tokenize", chat).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["tokens"],
        json!(model.encode("<|user|>hi<|assistant|></think>"))
    );
    assert!(body.get("token_strs").is_none());

    let (status, body) = server
        .post(
            "/detokenize",
            json!({"tokens": model.encode("<|user|>héllo")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prompt"], "<|user|>héllo");
    // SGLang's spellings under /v1 answer the same
    let (status, again) = server
        .post(
            "/v1/detokenize",
            json!({"tokens": model.encode("<|user|>héllo")}),
        )
        .await;
    assert_eq!((status, &again), (200, &body));
    let (status, again) = server
        .post("/v1/tokenize", json!({"prompt": "héllo"}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["tokens"], json!(model.encode("héllo")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokenize_bodies_get_a_400_naming_the_field() {
    let (_model, _worker, server) = setup("x", 1, &[]).await;
    for (body, param) in [
        (json!({}), "prompt"),
        (json!({"prompt": "a", "messages": []}), "messages"),
        (json!({"prompt": 5}), "prompt"),
    ] {
        let (status, answer) = server.post("/tokenize", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}");
    }
    for tokens in [json!("abc"), json!([1, -2]), json!([99_999_999])] {
        let (status, answer) = server.post("/detokenize", json!({"tokens": tokens})).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], "tokens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_the_package_version() {
    let (_model, _worker, server) = setup("x", 1, &[]).await;
    let answer: serde_json::Value = server
        .client
        .get(format!("{}/version", server.url))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_template_flag_replaces_the_model_directorys() {
    let template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}";
    let (model, _worker, server) = setup("x", 1, &["--chat-template", template]).await;
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = server.post("/tokenize", chat.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tokens"], json!(model.encode("[user]hi")));
    // a model directory without a template of its own serves with the flag's
    let bare = http_support::ModelDir::create();
    std::fs::remove_file(bare.path.join("chat_template.jinja")).expect("remove");
    let worker = http_support::FakeWorker::start(http_support::Script::reply(vec![1], 1), 4096);
    let args = ["--chat-template", template];
    let server = http_support::Server::start(&bare, &worker.addr, &args, true).await;
    let (status, body) = server.post("/tokenize", chat).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tokens"], json!(bare.encode("[user]hi")));
}
