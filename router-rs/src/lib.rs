//! glm47-router: the HTTP front end of glm47.
//!
//! It owns everything textual (tokenizer, chat template, incremental detokenization, stop strings,
//! reasoning and tool-call parsing) and sends token ids to workers over ZeroMQ (docs/wire.md).
