//! Response pieces shared by the OpenAI endpoints: usage, finish reasons, logprobs, ids.

use serde::{Serialize, Serializer};

/// Why a choice ended, as OpenAI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An eos id, a stop id or a stop string.
    Stop,
    /// The token budget ran out.
    Length,
    /// The model called at least one tool.
    ToolCalls,
    /// The request was aborted before it finished.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Abort => "abort",
        }
    }
}

/// vLLM writes an infinitely unlikely token's logprob as this (JSON has no infinity): a token
/// the grammar or a ban masked.
pub const NEG_INF_LOGPROB: f32 = -9999.0;

/// `logprob` with -inf written as [`NEG_INF_LOGPROB`].
pub fn finite_logprob(logprob: f32) -> f32 {
    if logprob == f32::NEG_INFINITY {
        NEG_INF_LOGPROB
    } else {
        logprob
    }
}

/// vLLM's `stop_reason` of a choice: the stop token id or the stop string that ended it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

/// Token counts of a request (over all its choices).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
    /// Present when speculative decoding produced some of the completion tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

/// OpenAI's breakdown of completion tokens; `accepted_prediction_tokens` counts the tokens that
/// came from accepted speculative (MTP) drafts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompletionTokensDetails {
    pub accepted_prediction_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
            completion_tokens_details: None,
        }
    }

    /// The same counts with `accepted` more accepted draft tokens (none recorded while zero).
    pub fn with_accepted_drafts(mut self, accepted: u32) -> Self {
        let before = self
            .completion_tokens_details
            .as_ref()
            .map_or(0, |d| d.accepted_prediction_tokens);
        if before + accepted > 0 {
            self.completion_tokens_details = Some(CompletionTokensDetails {
                accepted_prediction_tokens: before + accepted,
            });
        }
        self
    }
}

/// One alternative token in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One sampled token in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// `choices[i].logprobs` of a chat answer or chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// `choices[i].logprobs` of a completions answer or chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    pub text_offset: Vec<usize>,
}

/// One token of a prompt position in vLLM's `prompt_logprobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptTokenLogprob {
    /// Null where the worker computed none (JSON has no NaN).
    pub logprob: Option<f32>,
    /// 1-based rank at this position over the whole vocabulary (1: the most likely token); null
    /// where the worker gave none.
    pub rank: Option<u32>,
    /// The token's text on its own.
    pub decoded_token: String,
}

/// One prompt position of vLLM's `prompt_logprobs`: token id → entry, written as a JSON object
/// keyed by the id in decimal, in this order (the prompt's token first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptPosition(pub Vec<(u32, PromptTokenLogprob)>);

impl Serialize for PromptPosition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(id, entry)| (id.to_string(), entry)))
    }
}

/// vLLM's `prompt_logprobs`: one entry per prompt token, null for the first (no logits come
/// before it).
pub type PromptLogprobList = Vec<Option<PromptPosition>>;

/// A tool call in a non-streaming chat answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A piece of a tool call in a streamed chat chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[cfg(test)]
impl ToolCallDelta {
    /// A fragment of call `index`: its first (with its `name` and an id) or a later one.
    pub fn fragment(index: usize, name: Option<&str>, arguments: &str) -> Self {
        ToolCallDelta {
            index,
            id: name.map(|_| format!("call_{index}")),
            kind: name.map(|_| "function"),
            function: FunctionDelta {
                name: name.map(str::to_owned),
                arguments: Some(arguments.to_owned()),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// An id with an OpenAI prefix (`chatcmpl-`, `cmpl-`, `call_`) and a random hex tail.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
