//! Command-line configuration of the router process.
//!
//! Flags use dashes; the underscore spellings of LightLLM (`--worker_addr`, `--model_dir`,
//! `--tool_call_parser`, `--reasoning_parser`, `--max_req_total_len`, ...) are accepted as aliases so
//! that existing launch scripts keep working.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::dispatch::{BalanceOptions, BalancePolicy};

/// Default request body limit: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Tool-call formats the router can parse out of generated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ToolCallParser {
    /// GLM-4.5 / 4.7 `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>`.
    Glm47,
}

/// Reasoning formats the router can split from the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReasoningParser {
    /// GLM-4.5 style `<think>...</think>`.
    Glm45,
}

/// Everything the router process is configured with.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "glm47-router",
    version,
    about = "OpenAI-compatible HTTP front end of glm47: talks to glm47 workers over ZeroMQ"
)]
pub struct RouterConfig {
    /// ZeroMQ address of a worker (`tcp://host:port`, `ipc://path`); repeat for data-parallel
    /// replicas.
    #[arg(
        long = "worker-addr",
        alias = "worker_addr",
        required = true,
        num_args = 1
    )]
    pub worker_addr: Vec<String>,

    /// Model directory holding tokenizer.json, tokenizer_config.json and the chat template.
    #[arg(long = "model-dir", visible_aliases = ["model_dir", "model", "model-path"])]
    pub model_dir: Option<PathBuf>,

    /// Address the HTTP server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,

    /// Port the HTTP server listens on.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Parse tool calls out of chat completions in this format.
    #[arg(long = "tool-call-parser", alias = "tool_call_parser", value_enum)]
    pub tool_call_parser: Option<ToolCallParser>,

    /// Return reasoning separately (`reasoning_content`) using this format.
    #[arg(long = "reasoning-parser", alias = "reasoning_parser", value_enum)]
    pub reasoning_parser: Option<ReasoningParser>,

    /// Longest prompt + output accepted; default (and upper bound): the worker's own limit.
    #[arg(long = "max-req-total-len",
          visible_aliases = ["max_req_total_len", "max-model-len", "context-length"])]
    pub max_req_total_len: Option<u32>,

    /// Model name reported by `/v1/models` and in responses; default: the worker's model name.
    #[arg(long = "served-model-name", alias = "served_model_name")]
    pub served_model_name: Option<String>,

    /// Largest accepted request body, in bytes (larger bodies get HTTP 413).
    #[arg(long = "max-body-bytes", alias = "max_body_bytes", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`, `off`; Python's names
    /// too) or comma-separated levels and `target=level` directives such as
    /// `info,glm47_router=debug`; `RUST_LOG` (any tracing filter) overrides it when set.
    #[arg(long = "log-level", alias = "log_level", default_value = "info",
          value_parser = parse_log_level)]
    pub log_level: String,

    /// Seconds a ready worker may stay silent (not answering probes) before it is considered lost
    /// and its requests fail.
    #[arg(long = "worker-timeout", alias = "worker_timeout", default_value_t = 60.0,
          value_parser = parse_positive_seconds)]
    pub worker_timeout: f64,

    /// Seconds `/health_generate` waits for its probe's token (or for client tokens, when the
    /// workers are busy) before answering 503.
    #[arg(long = "health-generate-timeout", alias = "health_generate_timeout", default_value_t = 20.0,
          value_parser = parse_positive_seconds)]
    pub health_generate_timeout: f64,

    /// Seconds requests in flight may take to finish after SIGINT or SIGTERM (no new
    /// connection is taken meanwhile); those still running then end with an error (a stream
    /// with its error event and `[DONE]`). A second signal ends them at once.
    #[arg(long = "shutdown-timeout", alias = "shutdown_timeout", default_value_t = 5.0,
          value_parser = parse_seconds)]
    pub shutdown_timeout: f64,

    /// How requests are spread over several `--worker-addr`: `prefix` sends a prompt to the
    /// worker that was sent its longest prefix (its KV cache likely holds it) while the load is
    /// balanced, else to the least loaded; `least-loaded` always to the least loaded.
    #[arg(long = "balance-policy", alias = "balance_policy", value_enum, default_value_t = BalancePolicy::Prefix)]
    pub balance_policy: BalancePolicy,

    /// Clients must give this key (`Authorization: Bearer KEY`, or Anthropic's `x-api-key: KEY`)
    /// on every route but health, version, metrics and tokenizing; repeat for several keys.
    /// Also read from `GLM47_API_KEY` (one key), which keeps it out of the process list.
    #[arg(
        long = "api-key",
        alias = "api_key",
        env = "GLM47_API_KEY",
        num_args = 1
    )]
    pub api_key: Vec<String>,

    /// `/v1/responses` kept in memory for `previous_response_id` and `GET /v1/responses/{id}`
    /// (the oldest dropped past this many, or 256 MiB); 0 stores none.
    #[arg(
        long = "max-stored-responses",
        alias = "max_stored_responses",
        default_value_t = 1000
    )]
    pub max_stored_responses: usize,

    /// A chat template to use instead of the model directory's: a Jinja file, or the template
    /// text itself (vLLM's `--chat-template`).
    #[arg(long = "chat-template", alias = "chat_template")]
    pub chat_template: Option<String>,

    /// vLLM's switch for `tool_choice: "auto"`; here automatic tool calls follow from
    /// `--tool-call-parser`, which this flag requires.
    #[arg(long = "enable-auto-tool-choice", requires = "tool_call_parser")]
    pub enable_auto_tool_choice: bool,

    /// Origins a browser page may call from (CORS): a JSON list or comma-separated; `*` any.
    #[arg(long = "allowed-origins", default_value = "*", value_parser = cors_list)]
    pub allowed_origins: CorsList,

    /// Methods cross-origin requests may use; `*` any.
    #[arg(long = "allowed-methods", default_value = "*", value_parser = cors_list)]
    pub allowed_methods: CorsList,

    /// Headers cross-origin requests may send; `*` any.
    #[arg(long = "allowed-headers", default_value = "*", value_parser = cors_list)]
    pub allowed_headers: CorsList,

    /// Log every request as it is sent to a worker (its id, prompt length and sampling) and as it
    /// ends (its finish, tokens and seconds). `--disable-log-requests`, vLLM's older switch
    /// for the default, is accepted too.
    #[arg(long = "enable-log-requests")]
    pub enable_log_requests: bool,

    #[arg(
        long = "disable-log-requests",
        hide = true,
        conflicts_with = "enable_log_requests"
    )]
    pub disable_log_requests: bool,

    /// Cross-origin requests may carry credentials (cookies, authorization).
    #[arg(long = "allow-credentials")]
    pub allow_credentials: bool,
}

/// A `--allowed-*` list.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsList(pub Vec<String>);

fn cors_list(text: &str) -> Result<CorsList, String> {
    crate::http::cors::parse_list(text).map(CorsList)
}

impl RouterConfig {
    /// `--chat-template`'s text: the file's content when it names a file, else the value itself.
    pub fn chat_template_source(&self) -> anyhow::Result<Option<String>> {
        let Some(value) = &self.chat_template else {
            return Ok(None);
        };
        let path = std::path::Path::new(value);
        if path.is_file() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--chat-template {value}: {e}"))?;
            return Ok(Some(text));
        }
        if !value.contains("{{") && !value.contains("{%") {
            anyhow::bail!("--chat-template {value}: no such file, and not a Jinja template");
        }
        Ok(Some(value.clone()))
    }

    /// `host:port` for binding the HTTP listener.
    pub fn listen_addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Dispatcher probe timing derived from the flags.
    pub fn dispatch_options(&self) -> crate::dispatch::DispatchOptions {
        crate::dispatch::DispatchOptions {
            silence_timeout: Duration::from_secs_f64(self.worker_timeout),
            balance: BalanceOptions {
                policy: self.balance_policy,
                ..BalanceOptions::default()
            },
            log_requests: self.enable_log_requests,
            ..crate::dispatch::DispatchOptions::default()
        }
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..1e9).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} is not a number of seconds (0 or more)"))
    }
}

/// A level name (Python's too: `glm47 serve` passes one value to both processes) or tracing
/// directives of `target=level` (a bare word would be a target at every level: `verbose` would
/// log nothing of ours).
fn parse_log_level(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    let python = ["warning", "critical", "fatal"];
    let ok = !s.is_empty()
        && (python.contains(&s.to_ascii_lowercase().as_str())
            || s.split(',').all(|d| match d.split_once('=') {
                Some((target, l)) => !target.is_empty() && level(l),
                None => level(d),
            }));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is neither a level ({}) nor directives such as glm47_router=debug",
            LEVELS.join(", ")
        ))
    }
}

fn parse_positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(v)
    } else {
        Err(format!("{v} is not a positive number of seconds"))
    }
}

#[cfg(test)]
mod tests;
