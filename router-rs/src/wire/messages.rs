//! The messages of the protocol, one type per body (docs/wire.md has the tables).

use serde::{Deserialize, Serialize};

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
    /// Prompt logprobs: -1 none; 0: the logprob of each prompt token after the first; k > 0:
    /// also the top k at each of those positions.
    #[serde(default = "minus_one")]
    pub prompt_logprobs: i32,
    /// `(token id, bias)` pairs added to the logits before sampling (OpenAI's `logit_bias`).
    #[serde(default)]
    pub logit_bias: Vec<(u32, f64)>,
    /// Constrained decoding: the output must be JSON under this grammar.
    #[serde(default)]
    pub grammar: Option<Grammar>,
    /// The reasoning the prompt opened is closed after this many of its tokens.
    #[serde(default)]
    pub reasoning_budget: Option<ReasoningBudget>,
    /// Every sampled token is one of these (vLLM's `allowed_token_ids`); empty: any.
    #[serde(default)]
    pub allowed_token_ids: Vec<u32>,
    /// Token sequences the output never completes (vLLM's `bad_words`, tokenized).
    #[serde(default)]
    pub bad_words: Vec<Vec<u32>>,
    /// Under the worker's priority policy, lower values are served first (vLLM's `priority`).
    #[serde(default)]
    pub priority: i32,
    /// Prefix-cache pages are shared only among requests of the same salt (vLLM's
    /// `cache_salt`); nil: the unsalted cache. Never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_salt: Option<String>,
}

/// A bound on the reasoning a prompt opened: once `tokens` tokens have been generated inside it,
/// the next token is `end_id` (`</think>`), which closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasoningBudget {
    pub tokens: u32,
    pub end_id: u32,
}

/// A request's output grammar (`response_format` `json_object` or `json_schema`, a choice, a
/// regular expression, an EBNF grammar, or a forced tool call).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grammar {
    /// The JSON Schema as JSON text; nil for any JSON object (unless `choices`).
    #[serde(default)]
    pub schema: Option<String>,
    /// The output is exactly one of these strings (raw text, not JSON); `schema` is then nil.
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// The whole output matches this regular expression (raw text); `schema` is then nil.
    #[serde(default)]
    pub regex: Option<String>,
    /// The whole output is a sentence of this EBNF grammar (raw text; grammar/ebnf.rs); the
    /// others are then nil.
    #[serde(default)]
    pub ebnf: Option<String>,
    /// The output follows this structural tag, as JSON text (raw text; grammar/structural.rs);
    /// the others are then nil.
    #[serde(default)]
    pub structural_tag: Option<String>,
    /// The output is the rest of a forced tool call (and the calls after it): a
    /// `grammar::ToolCallSpec` as JSON text; the others are then nil.
    #[serde(default)]
    pub tool_calls: Option<String>,
    /// The grammar applies from the token after this one (the end of a reasoning block the
    /// prompt opened); nil: from the first token.
    #[serde(default)]
    pub start_after: Option<u32>,
    /// JSON without whitespace between tokens (a `schema` grammar's; vLLM's
    /// `disable_any_whitespace`).
    #[serde(default)]
    pub compact: bool,
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
            prompt_logprobs: -1,
            logit_bias: Vec::new(),
            grammar: None,
            reasoning_budget: None,
            allowed_token_ids: Vec::new(),
            bad_words: Vec::new(),
            priority: 0,
            cache_salt: None,
        }
    }
}

/// Router → worker: stop these requests now; unknown ids are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    /// Requests to stop.
    pub rids: Vec<String>,
}

/// Router → worker: drop every prefix-cache page no request holds (`/flush_cache`). No answer;
/// the worker handles it in order with the router's other messages.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FlushCache {}

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
    /// Capacity of the waiting queue (0: not stated).
    #[serde(default)]
    pub max_waiting_requests: u32,
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
    /// Outputs this side could not read (decoding a step keeps the others): each with its
    /// request id where that much was readable, and why.
    #[serde(skip)]
    pub unreadable: Vec<(Option<String>, String)>,
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
    /// Logprob of prompt tokens 1..P-1, on the first output of a request that asked for them.
    #[serde(default)]
    pub prompt_logprobs: Option<Vec<f64>>,
    /// Per prompt token 1..P-1: the top k `(token id, logprob)` pairs at its position.
    #[serde(default)]
    pub prompt_top_logprobs: Option<Vec<Vec<(u32, f64)>>>,
    /// Per prompt token 1..P-1: its rank at its position (1 + the ids with a larger logprob), 0
    /// where it was not scored; nil from a worker that does not compute ranks.
    #[serde(default)]
    pub prompt_ranks: Option<Vec<u32>>,
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
    /// Cumulative requests preempted (KV pages freed, recomputed later).
    pub preemptions: Option<u64>,
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
    FlushCache(FlushCache),
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
            Self::FlushCache(_) => "flush_cache",
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
