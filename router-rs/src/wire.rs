//! The router <-> worker wire protocol, version 1 (docs/wire.md).
//!
//! Every message is one ZeroMQ frame holding a msgpack array `[type, version, body]`, where `body` is
//! a map with string keys. Decoding ignores unknown keys and fills missing optional keys with their
//! documented defaults; a missing required key or a wrongly typed value is a [`WireError::Body`].

use serde::{Deserialize, Serialize};

/// The protocol version this module speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not one well-formed msgpack value.
    #[error("undecodable msgpack: {0}")]
    Msgpack(String),
    /// The value is not a `[type: str, version: int, body: map]` array.
    #[error("not a message envelope: {0}")]
    Envelope(&'static str),
    /// The envelope's version is not [`PROTOCOL_VERSION`].
    #[error("protocol version {0} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version(u64),
    /// The type tag names no known message.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The body misses a required key or holds a value of the wrong type.
    #[error("invalid {kind} body: {reason}")]
    Body { kind: &'static str, reason: String },
    /// Serialization failed (only possible for non-finite or unrepresentable values).
    #[error("cannot encode {kind}: {reason}")]
    Encode { kind: &'static str, reason: String },
}

/// Router → worker: sent after connecting and whenever the worker has been silent for a while.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hello {
    /// Free-form name and version of the router, for the worker's logs.
    pub client: Option<String>,
}

/// Router → worker: a batch of new requests, admitted in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    /// The new requests.
    pub reqs: Vec<Request>,
}

/// One generation request: prompt token ids and sampling parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Request id, unique per router connection.
    pub rid: String,
    /// Prompt token ids, non-empty.
    pub input_ids: Vec<u32>,
    /// At most this many tokens are generated (>= 1).
    pub max_new_tokens: u32,
    /// Eos and stop ids are ignored before this many tokens.
    #[serde(default)]
    pub min_new_tokens: u32,
    /// Sampling temperature; 0 means greedy.
    #[serde(default = "one_f64")]
    pub temperature: f64,
    /// Nucleus sampling, in (0, 1].
    #[serde(default = "one_f64")]
    pub top_p: f64,
    /// Top-k sampling; -1 (or 0) disables.
    #[serde(default = "minus_one")]
    pub top_k: i32,
    /// Drop tokens whose probability is below `min_p * p_max`.
    #[serde(default)]
    pub min_p: f64,
    /// OpenAI presence penalty, on generated tokens.
    #[serde(default)]
    pub presence_penalty: f64,
    /// OpenAI frequency penalty, on generated tokens.
    #[serde(default)]
    pub frequency_penalty: f64,
    /// CTRL/HF repetition penalty, on prompt and generated tokens.
    #[serde(default = "one_f64")]
    pub repetition_penalty: f64,
    /// Per-request seed: same seed, same prompt, same output.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Extra ids that finish the request with reason `stop`.
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// Do not stop at the model's eos ids.
    #[serde(default)]
    pub ignore_eos: bool,
    /// -1: no logprobs; 0: logprob of each sampled token; k > 0: also the top k.
    #[serde(default = "minus_one")]
    pub logprobs: i32,
    /// Allow speculative drafting for this request.
    #[serde(default = "true_bool")]
    pub mtp: bool,
}

impl Request {
    /// A request with the given ids and token budget and every optional field at its default.
    pub fn new(rid: impl Into<String>, input_ids: Vec<u32>, max_new_tokens: u32) -> Self {
        Self {
            rid: rid.into(),
            input_ids,
            max_new_tokens,
            min_new_tokens: 0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: -1,
            mtp: true,
        }
    }
}

/// Router → worker: stop these requests now; unknown ids are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    /// Requests to stop.
    pub rids: Vec<String>,
}

/// Worker → router: the answer to [`Hello`], describing what the worker serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Protocol version the worker speaks.
    pub protocol: u32,
    /// The model name served (for `/v1/models`).
    pub model: String,
    /// Size of the logits.
    #[serde(default)]
    pub vocab_size: u32,
    /// Ids that finish a request with `stop`.
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
    /// Longest prompt + output the worker accepts.
    pub max_req_total_len: u32,
    /// Capacity of the running batch.
    #[serde(default)]
    pub max_running_requests: u32,
    /// Tokens the KV cache holds.
    #[serde(default)]
    pub kv_capacity_tokens: u64,
    /// Draft tokens per step (0: no speculation).
    #[serde(default)]
    pub mtp_step: u32,
    /// A name for logs and metrics.
    #[serde(default)]
    pub worker_id: String,
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum FinishReason {
    /// An eos id or a stop id was sampled.
    Stop,
    /// `max_new_tokens` or the worker's `max_req_total_len` was reached.
    Length,
    /// The router aborted the request.
    Abort,
}

impl TryFrom<String> for FinishReason {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "stop" => Ok(Self::Stop),
            "length" => Ok(Self::Length),
            "abort" => Ok(Self::Abort),
            _ => Err(format!("unknown finish reason {s:?}")),
        }
    }
}

impl From<FinishReason> for &'static str {
    fn from(r: FinishReason) -> Self {
        r.as_str()
    }
}

impl FinishReason {
    /// The wire spelling (`stop`, `length`, `abort`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// Worker → router: the outputs of one engine step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Per-request news, in no particular order.
    #[serde(default)]
    pub outs: Vec<Output>,
    /// The worker's load after this step.
    #[serde(default)]
    pub stats: Stats,
}

/// New tokens (and possibly the finish) of one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Request id.
    pub rid: String,
    /// New token ids; several when speculative tokens were accepted, maybe empty on a finish.
    #[serde(default)]
    pub ids: Vec<u32>,
    /// Logprob of each id in `ids`, when the request asked for logprobs.
    #[serde(default)]
    pub logprobs: Option<Vec<f64>>,
    /// Per id: the top k `(token id, logprob)` pairs, best first.
    #[serde(default)]
    pub top_logprobs: Option<Vec<Vec<(u32, f64)>>>,
    /// Set on the request's last output.
    #[serde(default)]
    pub finish: Option<FinishReason>,
    /// Prompt length, on the first output.
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    /// Prompt tokens served from the prefix cache, on the first output.
    #[serde(default)]
    pub cached_tokens: Option<u32>,
    /// Draft tokens accepted in this step.
    #[serde(default)]
    pub spec_accepted: Option<u32>,
}

/// The worker's load after a step; every key optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Requests queued, not yet running.
    pub waiting: Option<u64>,
    /// Requests in the running batch.
    pub running: Option<u64>,
    /// Pages in use by running requests.
    pub kv_pages_used: Option<u64>,
    /// Pages held only by the prefix cache.
    pub kv_pages_cached: Option<u64>,
    /// Size of the page pool.
    pub kv_pages_total: Option<u64>,
    /// Cumulative prompt tokens served from the prefix cache.
    pub prefix_hit_tokens: Option<u64>,
    /// Cumulative prompt tokens admitted.
    pub prompt_tokens: Option<u64>,
    /// Cumulative draft tokens proposed.
    pub spec_drafted: Option<u64>,
    /// Cumulative draft tokens accepted.
    pub spec_accepted: Option<u64>,
}

/// The `code` of a worker error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "&'static str")]
pub enum ErrorCode {
    /// A field of the request is invalid (HTTP 400).
    InvalidRequest,
    /// The worker's waiting queue is at its bound (HTTP 429).
    QueueFull,
    /// The prompt is over `max_req_total_len` (HTTP 400).
    TooLong,
    /// A message could not be decoded (HTTP 500).
    Protocol,
    /// Anything else, including codes this version does not know (HTTP 500).
    Internal,
}

impl From<String> for ErrorCode {
    fn from(s: String) -> Self {
        match s.as_str() {
            "invalid_request" => Self::InvalidRequest,
            "queue_full" => Self::QueueFull,
            "too_long" => Self::TooLong,
            "protocol" => Self::Protocol,
            _ => Self::Internal,
        }
    }
}

impl From<ErrorCode> for &'static str {
    fn from(c: ErrorCode) -> Self {
        c.as_str()
    }
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::QueueFull => "queue_full",
            Self::TooLong => "too_long",
            Self::Protocol => "protocol",
            Self::Internal => "internal",
        }
    }
}

/// Worker → router: a request failed (with `rid`) or the connection did (`rid` nil).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerError {
    /// The request concerned; `None` for a connection-level error.
    #[serde(default)]
    pub rid: Option<String>,
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable reason.
    #[serde(default)]
    pub message: String,
    /// The worker cannot serve this connection any more.
    #[serde(default)]
    pub fatal: bool,
}

/// Any message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Submit(Submit),
    Abort(Abort),
    Ready(Ready),
    Step(Step),
    Error(WorkerError),
}

impl Message {
    /// The envelope's type tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Submit(_) => "submit",
            Self::Abort(_) => "abort",
            Self::Ready(_) => "ready",
            Self::Step(_) => "step",
            Self::Error(_) => "error",
        }
    }
}

fn one_f64() -> f64 {
    1.0
}

fn minus_one() -> i32 {
    -1
}

fn true_bool() -> bool {
    true
}

fn encode_body<T: Serialize>(kind: &'static str, body: &T) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec_named(&(kind, PROTOCOL_VERSION, body)).map_err(|e| WireError::Encode {
        kind,
        reason: e.to_string(),
    })
}

/// Encodes a message into one frame's bytes.
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let kind = msg.kind();
    match msg {
        Message::Hello(b) => encode_body(kind, b),
        Message::Submit(b) => encode_body(kind, b),
        Message::Abort(b) => encode_body(kind, b),
        Message::Ready(b) => encode_body(kind, b),
        Message::Step(b) => encode_body(kind, b),
        Message::Error(b) => encode_body(kind, b),
    }
}

/// Splits an envelope into its type tag and body, checking the version.
fn open_envelope(value: rmpv::Value) -> Result<(String, rmpv::Value), WireError> {
    let rmpv::Value::Array(items) = value else {
        return Err(WireError::Envelope("not an array"));
    };
    let [kind, version, body]: [rmpv::Value; 3] = items
        .try_into()
        .map_err(|_| WireError::Envelope("not three elements"))?;
    let rmpv::Value::String(kind) = kind else {
        return Err(WireError::Envelope("type is not a string"));
    };
    let kind = kind
        .into_str()
        .ok_or(WireError::Envelope("type is not UTF-8"))?;
    let version = version
        .as_u64()
        .ok_or(WireError::Envelope("version is not a non-negative int"))?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(WireError::Version(version));
    }
    if !body.is_map() {
        return Err(WireError::Envelope("body is not a map"));
    }
    Ok((kind, body))
}

fn decode_body<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    body: rmpv::Value,
) -> Result<T, WireError> {
    rmpv::ext::from_value(body).map_err(|e| WireError::Body {
        kind,
        reason: e.to_string(),
    })
}

/// Decodes one frame's bytes into a message.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    let mut cursor = bytes;
    let value =
        rmpv::decode::read_value(&mut cursor).map_err(|e| WireError::Msgpack(e.to_string()))?;
    if !cursor.is_empty() {
        return Err(WireError::Msgpack(format!(
            "{} trailing bytes after the message",
            cursor.len()
        )));
    }
    let (kind, body) = open_envelope(value)?;
    Ok(match kind.as_str() {
        "hello" => Message::Hello(decode_body("hello", body)?),
        "submit" => Message::Submit(decode_body("submit", body)?),
        "abort" => Message::Abort(decode_body("abort", body)?),
        "ready" => Message::Ready(decode_body("ready", body)?),
        "step" => Message::Step(decode_body("step", body)?),
        "error" => Message::Error(decode_body("error", body)?),
        _ => return Err(WireError::UnknownType(kind)),
    })
}

/// Builds a message from its JSON form `[type, version, body]` (the fixtures' `value`).
pub fn from_json(value: serde_json::Value) -> Result<Message, WireError> {
    let serde_json::Value::Array(items) = value else {
        return Err(WireError::Envelope("not an array"));
    };
    let [kind, version, body]: [serde_json::Value; 3] = items
        .try_into()
        .map_err(|_| WireError::Envelope("not three elements"))?;
    let kind = kind
        .as_str()
        .ok_or(WireError::Envelope("type is not a string"))?
        .to_owned();
    let version = version
        .as_u64()
        .ok_or(WireError::Envelope("version is not a non-negative int"))?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(WireError::Version(version));
    }
    fn body_of<T: serde::de::DeserializeOwned>(
        kind: &'static str,
        body: serde_json::Value,
    ) -> Result<T, WireError> {
        serde_json::from_value(body).map_err(|e| WireError::Body {
            kind,
            reason: e.to_string(),
        })
    }
    Ok(match kind.as_str() {
        "hello" => Message::Hello(body_of("hello", body)?),
        "submit" => Message::Submit(body_of("submit", body)?),
        "abort" => Message::Abort(body_of("abort", body)?),
        "ready" => Message::Ready(body_of("ready", body)?),
        "step" => Message::Step(body_of("step", body)?),
        "error" => Message::Error(body_of("error", body)?),
        _ => return Err(WireError::UnknownType(kind)),
    })
}

#[cfg(test)]
mod tests {
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
        let bytes =
            rmp_serde::to_vec(&("abort", 1, std::collections::BTreeMap::<&str, i32>::new()))
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
}
