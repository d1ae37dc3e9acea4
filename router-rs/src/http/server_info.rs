//! SGLang's server routes: `GET /health_generate` (healthy only when a worker generates a
//! token), `GET /get_model_info`, `GET /get_server_info`, `/flush_cache` (vLLM's
//! `POST /reset_prefix_cache`), `/abort_request`, `GET /get_load` and vLLM's `GET /load`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::prepare::{plain_pipeline, ready_worker, wire_requests};
use super::run::{collect, drive};
use super::{ApiError, AppState, JsonBody};
use crate::dispatch::PROBE_PREFIX;
use crate::protocol::sampling::SamplingParams;
use crate::protocol::ValidationError;

/// How often `/health_generate` looks for client tokens after its probe was refused.
const PROGRESS_POLL: Duration = Duration::from_millis(10);

/// One greedy token from the prompt "hi" through a ready worker (a probe, left out of the
/// metrics): 200 when it comes back within `--health-generate-timeout`, or when the probe waited
/// or was refused but the workers generated tokens for clients meanwhile (busy, not stuck); else
/// 503 (a worker that answers hellos but cannot run a step).
pub async fn health_generate(State(state): State<Arc<AppState>>) -> Response {
    let timeout = state.options.health_generate_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let before = state.metrics().generation_tokens();
    let outcome = tokio::time::timeout_at(deadline, generate_one(&state)).await;
    if matches!(outcome, Ok(Ok(()))) || progressed(&state, before, deadline).await {
        return (StatusCode::OK, Json(json!({"status": "ok"}))).into_response();
    }
    match outcome {
        Ok(Err(err)) => {
            tracing::warn!("health_generate: {err}");
            unhealthy(&err.to_string())
        }
        _ => {
            tracing::warn!("health_generate: no token within {timeout:?}");
            unhealthy("no token generated in time")
        }
    }
}

/// Whether clients got tokens since `before`. A refusal (a full queue) comes at once, long before
/// the next step could show progress, so while client requests are in flight this waits for
/// their tokens until `deadline`.
async fn progressed(state: &AppState, before: u64, deadline: tokio::time::Instant) -> bool {
    loop {
        if state.metrics().generation_tokens() > before {
            return true;
        }
        let idle = state.dispatcher.in_flight().iter().sum::<usize>() == 0;
        if idle || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(PROGRESS_POLL).await;
    }
}

fn unhealthy(why: &str) -> Response {
    let body = json!({"status": "unhealthy", "message": why});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn generate_one(state: &AppState) -> Result<(), ApiError> {
    ready_worker(state)?;
    let mut ids = state.model.tokenizer.encode("hi").unwrap_or_default();
    if ids.is_empty() {
        ids.push(0);
    }
    let sampling = SamplingParams {
        max_new_tokens: Some(1),
        temperature: Some(0.0),
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let mut reqs = wire_requests(state, &ids, &sampling, 1, 1);
    for r in &mut reqs {
        r.rid = PROBE_PREFIX.to_owned();
    }
    let handles = state.dispatcher.submit_many(reqs)?;
    let stream = drive(
        handles,
        vec![plain_pipeline(state, &sampling, ids.len())],
        0,
    );
    let answers = collect(stream, 1).await?;
    match answers.first() {
        Some(answer) if !answer.tokens.is_empty() => Ok(()),
        _ => Err(ApiError::Internal(
            "the worker answered without a token".into(),
        )),
    }
}

/// The model's directory and whether it generates (SGLang's `/get_model_info`).
pub async fn model_info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let dir = state.model.dir.to_string_lossy().into_owned();
    Json(json!({
        "model_path": dir,
        "tokenizer_path": dir,
        "served_model_name": state.model_name(),
        "is_generation": true,
    }))
}

/// The serving settings and each ready worker's (SGLang's `/get_server_info`).
pub async fn server_info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let workers: Vec<Value> = state
        .dispatcher
        .ready_workers()
        .into_iter()
        .map(|w| {
            json!({
                "worker_id": w.worker_id,
                "addr": w.addr,
                "max_req_total_len": w.max_req_total_len,
                "max_running_requests": w.max_running_requests,
                "max_waiting_requests": w.max_waiting_requests,
                "kv_capacity_tokens": w.kv_capacity_tokens,
                "mtp_step": w.mtp_step,
            })
        })
        .collect();
    let options = &state.options;
    let context = super::prompt::context_length(&state);
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "model_path": state.model.dir.to_string_lossy(),
        "served_model_name": state.model_name(),
        "context_length": context,
        "tool_call_parser": options.tool_call_parser.map(|_| "glm47"),
        "reasoning_parser": options.reasoning_parser.map(|_| "glm45"),
        "speculative_num_steps": workers.first().map(|w| w["mtp_step"].clone()),
        "workers": workers,
    }))
}

/// Every ready worker drops the prefix-cache pages no request holds (running requests keep
/// theirs); a request sent after this answer finds none of the dropped prefixes. 503 without a
/// ready worker.
pub async fn flush_cache(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let workers = state.dispatcher.flush_caches();
    if workers == 0 {
        return Err(ApiError::NoWorkerReady);
    }
    tracing::info!("prefix caches flushed on {workers} worker(s)");
    Ok(Json(json!({"status": "ok", "workers": workers})))
}

/// SGLang's `/abort_request`: `{"rid": id}` stops the in-flight requests of that client id (SGLang's
/// `rid`, `meta_info.id`, or an `X-Request-Id`), `{"abort_all": true}` every request; each ends
/// with finish reason `abort`. An unknown or finished id is no error (as in SGLang): 200 either
/// way.
pub async fn abort_request(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let all = match body.get("abort_all") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(all)) => *all,
        Some(_) => return Err(ValidationError::new("abort_all", "must be a boolean").into()),
    };
    let rid = match body.get("rid") {
        None | Some(Value::Null) => None,
        Some(Value::String(rid)) if !rid.is_empty() => Some(rid.as_str()),
        Some(Value::String(_)) if all => None,
        Some(_) => return Err(ValidationError::new("rid", "must be a non-empty string").into()),
    };
    if rid.is_none() && !all {
        let msg = "name the request to abort (rid), or set abort_all";
        return Err(ValidationError::new("rid", msg).into());
    }
    let client = if all { None } else { rid };
    if !state.dispatcher.abort_client(client) {
        return Err(ApiError::NoWorkerReady);
    }
    Ok(Json(json!({"status": "ok"})))
}

/// SGLang's `GET /get_load`: each ready worker's load as it last reported it, by `dp_rank` (its
/// place among the `--worker-addr`s): requests running and waiting (`num_reqs`), waiting alone, and the KV cache
/// tokens its running requests hold (`num_tokens`), with the requests this router has in flight
/// there.
pub async fn get_load(State(state): State<Arc<AppState>>) -> Json<Value> {
    let in_flight = state.dispatcher.client_load();
    let ranks = state.dispatcher.worker_addrs();
    let loads: Vec<Value> = state
        .dispatcher
        .ready_workers()
        .into_iter()
        .map(|w| {
            let rank = ranks.iter().position(|a| *a == w.addr);
            let stats = state.metrics().worker_stats(&w.addr);
            let (waiting, running) = (stats.waiting.unwrap_or(0), stats.running.unwrap_or(0));
            let page = match (stats.kv_pages_total, w.kv_capacity_tokens) {
                (Some(pages), tokens) if pages > 0 => tokens / pages,
                _ => 0,
            };
            json!({
                "dp_rank": rank,
                "addr": w.addr,
                "num_reqs": waiting + running,
                "num_waiting_reqs": waiting,
                "num_tokens": stats.kv_pages_used.unwrap_or(0) * page,
                "in_flight": in_flight.get(&w.addr).copied().unwrap_or(0),
            })
        })
        .collect();
    Json(Value::Array(loads))
}

/// vLLM's `GET /load`: the clients' requests in flight on the workers (`server_load`).
pub async fn load(State(state): State<Arc<AppState>>) -> Json<Value> {
    let total: usize = state.dispatcher.client_load().values().sum();
    Json(json!({ "server_load": total }))
}
