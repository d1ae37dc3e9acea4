//! `--api-key`: which requests need a key, and checking the one given.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{error, ApiError, AppState};

/// Routes open without a key under `--api-key`: health, version and metrics (for probes and
/// scrapers), and tokenizing (the model's public tokenizer; vLLM leaves them open too).
const OPEN_ROUTES: [&str; 9] = [
    "/health",
    "/health_generate",
    "/ping",
    "/version",
    "/metrics",
    "/tokenize",
    "/detokenize",
    "/v1/tokenize",
    "/v1/detokenize",
];

/// With `--api-key`, a request without one of the keys (`Authorization: Bearer KEY` or
/// `x-api-key: KEY`) is a 401, on every route but `OPEN_ROUTES`.
pub(super) async fn authorize(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.options.api_keys.is_empty() {
        return next.run(req).await;
    }
    let (open, messages) = {
        let keys = &state.options.api_keys;
        let path = req.uri().path();
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        // the scheme's case does not matter (RFC 9110)
        let bearer = header("authorization")
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        let given = [bearer, header("x-api-key")];
        let known = given
            .into_iter()
            .flatten()
            .any(|g| keys.iter().any(|k| same_key(k, g)));
        let open = OPEN_ROUTES.contains(&path) || known;
        (open, path.starts_with("/v1/messages"))
    };
    if open {
        return next.run(req).await;
    }
    if messages {
        return error::AnthropicError(ApiError::Unauthorized).into_response();
    }
    ApiError::Unauthorized.into_response()
}

/// The keys clients must give: the non-empty ones of `--api-key`. Only empty ones given (an
/// unset variable in a script, say) leave the server open, which is logged.
pub(super) fn api_keys(given: &[String]) -> Vec<String> {
    let keys: Vec<String> = given.iter().filter(|k| !k.is_empty()).cloned().collect();
    if keys.is_empty() && !given.is_empty() {
        tracing::warn!("--api-key (or GLM47_API_KEY) is empty: requests are not authenticated");
    }
    keys
}

/// Key equality in time independent of where the keys differ.
fn same_key(key: &str, given: &str) -> bool {
    let (a, b) = (key.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}
