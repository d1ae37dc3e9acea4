//! Streaming parsers for model output: GLM-4.7 tool calls and GLM-4.5 reasoning.
