//! The one error type of the HTTP layer, its status mapping, and the JSON body extractor.
//!
//! Every failure a client can see becomes an [`ApiError`], answered as
//! `{"error": {"message", "type", "param", "code"}}` with the status chosen in
//! [`ApiError::status`], and nowhere else.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;

use crate::dispatch::DispatchError;
use crate::protocol::ValidationError;
use crate::wire::ErrorCode;

/// Everything that can go wrong with one HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing, of the wrong type or out of range (400).
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// The body is not JSON (400).
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body is larger than `--max-body-bytes` (413).
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The body did not arrive within `BODY_READ_TIMEOUT` (408).
    #[error("the body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// The server wants an API key the request does not give (401).
    #[error("a valid API key is needed (Authorization: Bearer KEY)")]
    Unauthorized,
    /// No such route (404).
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    /// The route exists but the object it names does not (404), e.g. a stored response.
    #[error("{0}")]
    NoSuchObject(String),
    /// The route exists but not for this method (405).
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// No worker is ready (503).
    #[error("no worker is ready to serve requests")]
    NoWorkerReady,
    /// The worker's queue is full (429).
    #[error("the server is overloaded: {0}")]
    Overloaded(String),
    /// The worker failed the request; `code` decides the status.
    #[error("{message}")]
    Worker { code: ErrorCode, message: String },
    /// Anything on our side (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::NoSuchObject(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoWorkerReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Worker { code, .. } => match code {
                ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::InvalidRequest | ErrorCode::TooLong => StatusCode::BAD_REQUEST,
                ErrorCode::Protocol | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error object (`{"error": {...}}`).
    pub fn body(&self) -> Value {
        let status = self.status();
        let kind = match status.as_u16() {
            400 | 405 | 408 | 413 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable_error",
            _ => "server_error",
        };
        let param = match self {
            ApiError::Invalid(e) if !e.param.is_empty() => Value::String(e.param.clone()),
            _ => Value::Null,
        };
        json!({"error": {
            "message": self.to_string(),
            "type": kind,
            "param": param,
            "code": status.as_u16(),
        }})
    }

    /// The Messages API's error object (`{"type": "error", "error": {"type", "message"}}`), the
    /// message led by the field it is about.
    pub fn anthropic_body(&self) -> Value {
        let kind = match self.status().as_u16() {
            400 | 405 | 408 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            _ => "api_error",
        };
        let message = match self {
            // as Anthropic names the field: `messages.0.content: ...`
            ApiError::Invalid(e) if !e.param.is_empty() => format!("{}: {self}", e.param),
            _ => self.to_string(),
        };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }

    /// Logs the error as it is answered: a warning for our failures, a note for refusals.
    fn log(&self) {
        match (self.status(), self) {
            (StatusCode::INTERNAL_SERVER_ERROR, _) => tracing::warn!("request failed: {self}"),
            (status, ApiError::Invalid(e)) if !e.param.is_empty() => {
                tracing::info!(param = %e.param, "request refused ({status}): {self}");
            }
            (status, _) => tracing::info!("request refused ({status}): {self}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        (self.status(), Json(self.body())).into_response()
    }
}

/// An [`ApiError`] answered in the Messages API's shape ([`ApiError::anthropic_body`]).
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        AnthropicError(e)
    }
}

impl From<ValidationError> for AnthropicError {
    fn from(e: ValidationError) -> Self {
        AnthropicError(e.into())
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        self.0.log();
        (self.0.status(), Json(self.0.anthropic_body())).into_response()
    }
}

impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::NoWorkerReady => ApiError::NoWorkerReady,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::template::TemplateError> for ApiError {
    fn from(e: crate::template::TemplateError) -> Self {
        ApiError::Invalid(ValidationError::new("messages", e.to_string()))
    }
}

/// How long a request's body may take to arrive, from the end of its headers.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A request body parsed as a JSON object. Malformed JSON is a 400, an oversized body a 413
/// (the limit is axum's `DefaultBodyLimit`, set from `--max-body-bytes`).
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::BodyTooLarge { limit }); // without waiting for the body
        }
        let bytes = read_body(req, state, limit, BODY_READ_TIMEOUT).await?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        if !value.is_object() {
            return Err(ValidationError::new("", "the body must be a JSON object").into());
        }
        Ok(JsonBody(value))
    }
}

/// The body's bytes, or 408 when they have not all arrived within `timeout`.
async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(timeout, Bytes::from_request(req, state))
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout.as_secs()))?
        .map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge { limit }
            } else {
                ApiError::MalformedJson(e.body_text())
            }
        })
}

/// The body limit in force, put into request extensions so errors can state it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_408() {
        let never = futures::stream::pending::<Result<Bytes, std::io::Error>>();
        let req = Request::new(axum::body::Body::from_stream(never));
        let err = read_body(req, &(), 1000, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        let req = Request::new(axum::body::Body::from("{}"));
        let got = read_body(req, &(), 1000, Duration::from_millis(50)).await;
        assert_eq!(got.unwrap(), Bytes::from("{}"));
    }
}

#[cfg(test)]
mod anthropic_tests {
    use super::*;

    #[test]
    fn the_messages_shape_names_the_field_in_its_message() {
        let e = ApiError::from(ValidationError::new(
            "messages[0].role",
            "role must be user",
        ));
        let body = e.anthropic_body();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(
            body["error"]["message"],
            "messages[0].role: role must be user"
        );
        let busy = ApiError::NoWorkerReady.anthropic_body();
        assert_eq!(busy["error"]["type"], "overloaded_error");
        let ours = ApiError::Internal("x".into()).anthropic_body();
        assert_eq!(ours["error"]["type"], "api_error");
    }
}
