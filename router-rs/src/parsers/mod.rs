//! Streaming parsers for model output: GLM-4.7 tool calls and GLM-4.5 reasoning.
//!
//! Both are pure, synchronous state machines fed one detokenized chunk at a time. Their
//! concatenated output never depends on how the text was split; docs/parsers.md states the rules.

mod glm45_reasoning;
pub(crate) mod glm47_name;
mod glm47_tool;
mod scan;
mod schema;
mod tool_events;

#[cfg(test)]
mod partition_tests;

pub use glm45_reasoning::{Glm45ReasoningParser, ReasoningDelta};
pub use glm47_tool::Glm47ToolParser;
pub use schema::{allows_string, resolve_ref, ToolSchemas, ValueKind};
pub use tool_events::{ParsedToolCall, ParsedToolCalls, ToolEvent};
