//! glm47-router: the HTTP front end of glm47.
//!
//! It owns everything textual (tokenizer, chat template, incremental detokenization, stop strings,
//! reasoning and tool-call parsing) and sends token ids to workers over ZeroMQ (docs/wire.md).

pub mod app;
pub mod config;
pub mod detokenize;
pub mod dispatch;
pub mod grammar;
pub mod http;
pub mod metrics;
pub mod parsers;
pub mod protocol;
pub mod state;
pub mod stop;
pub mod template;
pub mod tokenizer;
pub mod wire;

#[cfg(feature = "python")]
mod python;
