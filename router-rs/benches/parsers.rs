//! Throughput of the streaming parsers on a realistic ~64 KB response (prose with code and `<`,
//! several tool calls with long string, numeric and object arguments), fed in token-sized chunks
//! (~4 bytes) and in one chunk.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glm47_router::parsers::{Glm45ReasoningParser, Glm47ToolParser};
use serde_json::{json, Value};

const TARGET_BYTES: usize = 64 * 1024;

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "write_file", "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "content": {"type": "string"},
                "mode": {"type": "integer"},
                "options": {"type": "object"}
            }
        }}}),
    ]
}

/// Prose and tool calls repeated to about 64 KB.
fn response() -> String {
    let prose = "The loop runs while i < n && j > 0; each step compares a[i] <= b[j] and \
                 writes the smaller one. 中文说明也在这里，还有表情 🙂. ";
    let call = "<tool_call>write_file<arg_key>path</arg_key><arg_value>src/merge.rs</arg_value>\
                <arg_key>content</arg_key><arg_value>fn merge(a: &[i32], b: &[i32]) -> Vec<i32> {\n    \
                let mut out = Vec::with_capacity(a.len() + b.len());\n    \
                // \"quoted\" and \\escaped\\ text\n    out\n}\n</arg_value>\
                <arg_key>mode</arg_key><arg_value>420</arg_value><arg_key>options</arg_key>\
                <arg_value>{\"overwrite\": true, \"backup\": [1, 2, 3]}</arg_value></tool_call>";
    let mut text = String::with_capacity(TARGET_BYTES + 1024);
    while text.len() < TARGET_BYTES {
        for _ in 0..8 {
            text.push_str(prose);
        }
        text.push_str(call);
    }
    text
}

/// Splits `text` into chunks of about `size` bytes on character boundaries.
fn chunks(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / size + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + size).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

fn bench_tool_parser(c: &mut Criterion) {
    let text = response();
    let tools = tools();
    let small = chunks(&text, 4);
    let mut group = c.benchmark_group("glm47_tool_parser");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("4_byte_chunks", |b| {
        b.iter(|| {
            let mut parser = Glm47ToolParser::with_options(&tools, "", Some(1));
            let mut events = 0;
            for chunk in &small {
                events += parser.feed(black_box(chunk)).len();
            }
            events + parser.finish().len()
        })
    });
    group.bench_function("one_chunk", |b| {
        b.iter(|| Glm47ToolParser::parse(black_box(&text), &tools))
    });
    group.finish();
}

fn bench_reasoning_parser(c: &mut Criterion) {
    let text = format!("{}</think>{}", response(), response());
    let small = chunks(&text, 4);
    let mut group = c.benchmark_group("glm45_reasoning_parser");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("4_byte_chunks", |b| {
        b.iter(|| {
            let mut parser = Glm45ReasoningParser::new(true);
            let mut bytes = 0;
            for chunk in &small {
                let delta = parser.feed(black_box(chunk));
                bytes += delta.reasoning.len() + delta.content.len();
            }
            bytes
        })
    });
    group.bench_function("one_chunk", |b| {
        b.iter(|| {
            let mut parser = Glm45ReasoningParser::new(true);
            let delta = parser.feed(black_box(&text));
            delta.reasoning.len() + delta.content.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_tool_parser, bench_reasoning_parser);
criterion_main!(benches);
