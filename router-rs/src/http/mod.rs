//! The HTTP server: routes, shared state, and the entry point [`serve`].
//!
//! Handlers parse and validate bodies into `protocol` types (the only place client errors arise),
//! prepare prompts on the blocking pool (`prepare`), submit to the dispatcher and run every choice
//! through the shared output pipeline (`run`, `crate::state`), then shape OpenAI or `/generate`
//! answers (`openai`, `generate`). Errors of every kind go through [`ApiError`].

mod auth;
mod chat;
mod completions;
pub mod cors;
mod error;
mod generate;
mod logprobs;
mod messages;
mod prepare;
mod prompt;
mod request_id;
mod response_store;
mod responses;
mod run;
mod server_info;
mod serving;
mod sglang;
mod sse;
mod tokenize;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::config::{ReasoningParser, RouterConfig, ToolCallParser};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::template::ChatTemplate;
use crate::tokenizer::ModelFiles;
pub use serving::{bind, serve, serve_on, tune_accepted};

pub use error::{ApiError, BodyLimit, JsonBody};

/// Settings of the HTTP layer taken from [`RouterConfig`].
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Model name in answers; `None`: the worker's, else the model directory's name.
    pub served_model_name: Option<String>,
    /// Longest prompt + output; the worker's own limit also applies.
    pub max_req_total_len: Option<u32>,
    pub tool_call_parser: Option<ToolCallParser>,
    pub reasoning_parser: Option<ReasoningParser>,
    pub max_body_bytes: usize,
    /// Keys a client must give on the `/v1` routes; empty: no key needed.
    pub api_keys: Vec<String>,
    /// How long `/health_generate` waits for a token.
    pub health_generate_timeout: std::time::Duration,
    /// Cross-origin requests.
    pub cors: cors::CorsOptions,
}

impl HttpOptions {
    pub fn from_config(config: &RouterConfig) -> Self {
        Self {
            served_model_name: config.served_model_name.clone(),
            max_req_total_len: config.max_req_total_len,
            tool_call_parser: config.tool_call_parser,
            reasoning_parser: config.reasoning_parser,
            max_body_bytes: config.max_body_bytes,
            api_keys: auth::api_keys(&config.api_key),
            health_generate_timeout: std::time::Duration::from_secs_f64(
                config.health_generate_timeout,
            ),
            cors: cors::CorsOptions {
                origins: config.allowed_origins.0.clone(),
                methods: config.allowed_methods.0.clone(),
                headers: config.allowed_headers.0.clone(),
                credentials: config.allow_credentials,
            },
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub dispatcher: Arc<Dispatcher>,
    pub model: ModelFiles,
    pub template: ChatTemplate,
    pub options: HttpOptions,
    /// `/v1/responses` kept for `previous_response_id` and `GET /v1/responses/{id}`.
    pub responses: response_store::ResponseStore,
}

impl AppState {
    /// The model name reported in answers and by `/v1/models`.
    pub fn model_name(&self) -> String {
        if let Some(name) = &self.options.served_model_name {
            return name.clone();
        }
        match self.dispatcher.ready_worker() {
            Some(info) if !info.model.is_empty() => info.model,
            _ => self.model.name.clone(),
        }
    }

    fn metrics(&self) -> &Arc<Metrics> {
        self.dispatcher.metrics()
    }
}

/// Fields every chunk and answer of one OpenAI request repeats.
#[derive(Clone)]
struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    /// A fresh answer id (`id_prefix` and the client's `X-Request-Id`, or random characters),
    /// the current time and model name.
    fn new(state: &AppState, id_prefix: &str) -> Self {
        Self::named(state, request_id::answer_id(id_prefix))
    }

    /// The same with an id of random characters whatever the client gave (stored responses).
    fn unique(state: &AppState, id_prefix: &str) -> Self {
        Self::named(state, request_id::unique_answer_id(id_prefix))
    }

    fn named(state: &AppState, id: String) -> Self {
        Self {
            id,
            created: crate::protocol::openai::unix_now(),
            model: state.model_name(),
        }
    }
}

/// Every route, the JSON 404 and 405 answers, the body limit and request counting.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.options.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::responses))
        .route(
            "/v1/responses/{id}",
            get(response_store::get).delete(response_store::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(response_store::input_items),
        )
        .route("/v1/responses/{id}/cancel", post(response_store::cancel))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/generate", post(generate::generate))
        .route("/generate_stream", post(generate::generate_stream))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/v1/tokenize", post(tokenize::tokenize))
        .route("/v1/detokenize", post(tokenize::detokenize))
        .route("/v1/models", get(models))
        .route("/v1/models/{*name}", get(model))
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/invocations", post(invocations))
        .route("/version", get(version))
        .route("/health_generate", get(server_info::health_generate))
        .route("/get_model_info", get(server_info::model_info))
        .route("/get_server_info", get(server_info::server_info))
        .route(
            "/flush_cache",
            get(server_info::flush_cache).post(server_info::flush_cache),
        )
        .route("/reset_prefix_cache", post(server_info::flush_cache))
        .route("/get_load", get(server_info::get_load))
        .route("/load", get(server_info::load))
        .route(
            "/abort_request",
            post(server_info::abort_request).put(server_info::abort_request),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn count_requests(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut()
        .insert(BodyLimit(state.options.max_body_bytes));
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let arrived = std::time::Instant::now();
    let large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n >= LARGE_BODY_BYTES);
    let given = request_id::given(req.headers());
    let (mut response, id) = request_id::scoped(given, next.run(req)).await;
    if let Some(value) = id.as_deref().and_then(request_id::header_value) {
        response.headers_mut().insert(request_id::HEADER, value);
    }
    if large {
        // Tokenizing megabytes leaves hundreds of megabytes freed but held by the allocator.
        tokio::task::spawn_blocking(crate::app::release_freed_memory);
    }
    if let Some(path) = path {
        state
            .metrics()
            .inc_request(&path, response.status().as_u16());
    }
    // A stream's handler answers once the first event is ready, so this is the time to the
    // first chunk, everything in the router included.
    if response.status() == StatusCode::OK && is_event_stream(&response) {
        state
            .metrics()
            .first_chunk
            .observe(arrived.elapsed().as_secs_f64());
    }
    response
}

/// A request body this large has its freed memory handed back to the system after it is
/// answered (`app::release_freed_memory`).
const LARGE_BODY_BYTES: usize = 1 << 20;

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

async fn not_found(method: Method, uri: Uri) -> Response {
    in_shape_of(
        &uri,
        ApiError::NotFound {
            method: method.to_string(),
            path: uri.path().to_owned(),
        },
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    in_shape_of(
        &uri,
        ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: uri.path().to_owned(),
        },
    )
}

/// `e` in the error shape of the API `uri` belongs to (Anthropic's under `/v1/messages`).
fn in_shape_of(uri: &Uri, e: ApiError) -> Response {
    if uri.path().starts_with("/v1/messages") {
        return error::AnthropicError(e).into_response();
    }
    e.into_response()
}

/// SageMaker's `/invocations`: a body with `messages` is a chat completion, one with `prompt` a
/// completion (as vLLM routes it).
async fn invocations(state: State<Arc<AppState>>, JsonBody(body): JsonBody) -> Response {
    let answer = if body.get("messages").is_some() {
        chat::chat(state, JsonBody(body)).await
    } else if body.get("prompt").is_some() {
        completions::completions(state, JsonBody(body)).await
    } else {
        let msg = "an invocation needs messages (a chat) or prompt (a completion)";
        Err(crate::protocol::ValidationError::new("", msg).into())
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// 200 while a worker is ready, else 503.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.dispatcher.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else {
        // not logged: a supervisor polls it while the workers load (ApiError's answers are)
        let err = ApiError::NoWorkerReady;
        (err.status(), Json(err.body())).into_response()
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [model_card(&state)]}))
}

/// `GET /v1/models/{name}` (the `openai` client's `models.retrieve`): the served model, by the
/// name `/v1/models` lists.
async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if name != state.model_name() {
        return Err(ApiError::NotFound {
            method: "GET".into(),
            path: format!(
                "/v1/models/{name} (the model served is {})",
                state.model_name()
            ),
        });
    }
    Ok(Json(model_card(&state)))
}

fn model_card(state: &AppState) -> serde_json::Value {
    let max_len = prompt::context_length(state);
    json!({
        "id": state.model_name(),
        "object": "model",
        "created": crate::protocol::openai::unix_now(),
        "owned_by": "glm47",
        "max_model_len": max_len,
    })
}

/// The router's version (vLLM's `/version`).
async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
