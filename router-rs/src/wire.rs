//! The router <-> worker wire protocol, version 1 (docs/wire.md).
//!
//! Every message is one ZeroMQ frame holding a msgpack array `[type, version, body]`, where `body` is
//! a map with string keys. Decoding ignores unknown keys and fills missing optional keys with their
//! documented defaults; a missing required key or a wrongly typed value is a [`WireError::Body`].

use serde::Serialize;

mod messages;

pub use messages::*;

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
        Message::FlushCache(b) => encode_body(kind, b),
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
        "flush_cache" => Message::FlushCache(decode_body("flush_cache", body)?),
        "ready" => Message::Ready(decode_body("ready", body)?),
        "step" => Message::Step(decode_step(body)?),
        "error" => Message::Error(decode_body("error", body)?),
        _ => return Err(WireError::UnknownType(kind)),
    })
}

/// A step's body, read output by output: one the router cannot read (a wrongly typed field, an
/// unknown finish) is set apart in `unreadable` rather than losing the step's other outputs,
/// and a stats value of the wrong type is left unknown.
fn decode_step(body: rmpv::Value) -> Result<Step, WireError> {
    let bad = |reason: &str| WireError::Body {
        kind: "step",
        reason: reason.into(),
    };
    let rmpv::Value::Map(entries) = body else {
        return Err(bad("not a map"));
    };
    let mut step = Step::default();
    for (key, value) in entries {
        match key.as_str() {
            Some("outs") => {
                let rmpv::Value::Array(outs) = value else {
                    return Err(bad("outs is not an array"));
                };
                for out in outs {
                    let rid = out.as_map().and_then(|m| {
                        m.iter()
                            .find(|(k, _)| k.as_str() == Some("rid"))
                            .and_then(|(_, v)| v.as_str().map(str::to_owned))
                    });
                    match rmpv::ext::from_value::<Output>(out) {
                        Ok(out) => step.outs.push(out),
                        Err(e) => step.unreadable.push((rid, e.to_string())),
                    }
                }
            }
            Some("stats") => step.stats = decode_stats(value),
            _ => {}
        }
    }
    Ok(step)
}

/// The stats of a step, each field that is not a non-negative integer left unknown.
fn decode_stats(value: rmpv::Value) -> Stats {
    let rmpv::Value::Map(entries) = value else {
        return Stats::default();
    };
    let counts = entries.into_iter().filter(|(_, v)| v.as_u64().is_some());
    rmpv::ext::from_value(rmpv::Value::Map(counts.collect())).unwrap_or_default()
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
        "flush_cache" => Message::FlushCache(body_of("flush_cache", body)?),
        "ready" => Message::Ready(body_of("ready", body)?),
        "step" => Message::Step(body_of("step", body)?),
        "error" => Message::Error(body_of("error", body)?),
        _ => return Err(WireError::UnknownType(kind)),
    })
}

#[cfg(test)]
mod tests;
