//! `/v1/responses` with `background: true` through the real router: answered at once, polled
//! until it ends, cancelled (its request aborted in the worker).

mod http_support;

use std::time::{Duration, Instant};

use http_support::{setup, setup_with, FakeWorker, ModelDir, Server};
use serde_json::json;

/// A slow background response, 200 ms into its run: the model dir, the worker, the server and
/// the response's id.
async fn running_background_response() -> (ModelDir, FakeWorker, Server, String) {
    let slow = |s: &mut http_support::Script| s.delay = Duration::from_millis(50);
    let (model, worker, server) =
        setup_with("a long answer that takes many steps", &[], slow).await;
    let body = json!({"input": "hi", "background": true});
    let (_, first) = server.post("/v1/responses", body).await;
    let id = first["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    (model, worker, server, id)
}

/// Waits (up to 8 s) for the worker to be sent an abort.
async fn aborts_sent(worker: &FakeWorker) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while worker.aborts.lock().expect("lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_response_is_answered_at_once_and_polled_until_it_completes() {
    let slow = |s: &mut http_support::Script| s.delay = Duration::from_millis(30);
    let (_model, _worker, server) = setup_with("hello there", &[], slow).await;
    let body = json!({"input": "hi", "background": true});
    let (status, first) = server.post("/v1/responses", body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "in_progress");
    assert_eq!(first["background"], true);
    assert!(
        first["output"].as_array().is_some_and(Vec::is_empty),
        "{first}"
    );
    let id = first["id"].as_str().expect("id").to_owned();
    let done = server.settled(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"][0]["content"][0]["text"], "hello there");
    assert!(done["usage"]["output_tokens"]
        .as_u64()
        .is_some_and(|n| n > 0));
    // a finished background response is answered as it is
    let (status, again) = server
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!((status, &again["status"]), (200, &json!("completed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_background_response_and_aborts_its_request() {
    let (_model, worker, server, id) = running_background_response().await;
    let (status, cancelled) = server
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let (_, stored) = server.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(stored["status"], "cancelled");
    aborts_sent(&worker).await;
    let rid = worker.requests()[0].rid.clone();
    assert_eq!(*worker.aborts.lock().expect("lock"), vec![rid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_run_in_the_background_is_refused() {
    let (_model, _worker, server) = setup("x", 1, &[]).await;
    let body = json!({"input": "hi", "background": true, "store": false});
    let (status, answer) = server.post("/v1/responses", body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "background");
    let (_, plain) = server.post("/v1/responses", json!({"input": "hi"})).await;
    assert_eq!(plain["background"], false);
    let id = plain["id"].as_str().expect("id");
    let (status, answer) = server
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = server
        .post("/v1/responses/resp_nope/cancel", json!({}))
        .await;
    assert_eq!(status, 404);
    let (_model, _worker, none) = setup("x", 1, &["--max-stored-responses", "0"]).await;
    let (status, answer) = none
        .post("/v1/responses", json!({"input": "hi", "background": true}))
        .await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_background_response_stops_it_for_good() {
    let (_model, worker, server, id) = running_background_response().await;
    let (_, deleted) = server.delete(&format!("/v1/responses/{id}")).await;
    assert_eq!(deleted["deleted"], true, "{deleted}");
    // its request is aborted, and the task's end does not store it again
    aborts_sent(&worker).await;
    assert_eq!(worker.aborts.lock().expect("lock").len(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = server.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_background_response_the_store_dropped_answers_deleted() {
    let slow = |s: &mut http_support::Script| s.delay = Duration::from_millis(50);
    let extra = ["--max-stored-responses", "1"];
    let (_model, worker, server) =
        setup_with("a long answer that takes many steps", &extra, slow).await;
    let body = json!({"input": "hi", "background": true});
    let (_, first) = server.post("/v1/responses", body).await;
    let id = first["id"].as_str().expect("id").to_owned();
    // one more pushes it out of the store while it runs
    let body = json!({"input": "more", "background": true});
    let (_, second) = server.post("/v1/responses", body).await;
    assert_ne!(second["id"], first["id"]);
    let (status, _) = server.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(status, 404);
    let (status, deleted) = server.delete(&format!("/v1/responses/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    aborts_sent(&worker).await;
    // the first is aborted, the second runs on
    assert_eq!(worker.aborts.lock().expect("lock").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_response_cannot_be_continued_until_it_ends() {
    let (_model, _worker, server, id) = running_background_response().await;
    let body = json!({"input": "and then?", "previous_response_id": id});
    let (status, answer) = server.post("/v1/responses", body.clone()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "previous_response_id");
    assert!(answer["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("still in progress")));
    assert_eq!(server.settled(&id).await["status"], "completed");
    let (status, answer) = server.post("/v1/responses", body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_ids_are_the_servers_own_whatever_x_request_id_says() {
    let (_model, _worker, server) = setup("hello", 1, &[]).await;
    let mut ids = Vec::new();
    for input in ["first", "second"] {
        let answer: serde_json::Value = server
            .client
            .post(format!("{}/v1/responses", server.url))
            .header("X-Request-Id", "same-id")
            .json(&json!({"input": input}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(answer["id"].as_str().expect("id").to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    assert!(ids
        .iter()
        .all(|id| id.starts_with("resp_") && id != "resp_same-id"));
    // each is stored as itself: the second did not replace the first
    for (id, input) in ids.iter().zip(["first", "second"]) {
        let (status, items) = server.get(&format!("/v1/responses/{id}/input_items")).await;
        assert_eq!(status, 200, "{items}");
        assert_eq!(items["data"][0]["content"][0]["text"], input, "{items}");
    }
}
