//! Events of the streaming tool-call parser and the one-shot result they accumulate to.

/// One piece of parsed output, in text order. Within one `feed`, adjacent content is merged and
/// the pieces of one call are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text outside tool calls.
    Content(String),
    /// Part of tool call number `index` (0-based, in call order). `id` and `name` come exactly
    /// once, in the first event of the call; `arguments` are JSON fragments whose concatenation
    /// over the call is a JSON object.
    Call {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: Option<String>,
    },
}

/// One complete tool call of a one-shot parse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedToolCall {
    pub name: String,
    /// A JSON object, e.g. `{"city": "Paris", "days": 3}`.
    pub arguments: String,
}

/// The result of parsing a whole output at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedToolCalls {
    /// All text outside tool calls, concatenated.
    pub content: String,
    /// Calls in order; position equals the streamed `index`.
    pub tool_calls: Vec<ParsedToolCall>,
}

impl ParsedToolCalls {
    /// Folds streamed events into the accumulated result.
    pub fn absorb(&mut self, events: Vec<ToolEvent>) {
        for event in events {
            match event {
                ToolEvent::Content(text) => self.content.push_str(&text),
                ToolEvent::Call {
                    index,
                    name,
                    arguments,
                    ..
                } => {
                    if let Some(name) = name {
                        self.tool_calls.push(ParsedToolCall {
                            name,
                            arguments: String::new(),
                        });
                    }
                    if let (Some(call), Some(args)) = (self.tool_calls.get_mut(index), arguments) {
                        call.arguments.push_str(&args);
                    }
                }
            }
        }
    }
}

/// Collects events, merging adjacent content and adjacent argument fragments of one call.
#[derive(Debug, Default)]
pub(crate) struct EventSink {
    events: Vec<ToolEvent>,
}

impl EventSink {
    pub(crate) fn content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.events.last_mut() {
            Some(ToolEvent::Content(prev)) => prev.push_str(text),
            _ => self.events.push(ToolEvent::Content(text.to_string())),
        }
    }

    pub(crate) fn header(&mut self, index: usize, id: String, name: String) {
        self.events.push(ToolEvent::Call {
            index,
            id: Some(id),
            name: Some(name),
            arguments: None,
        });
    }

    /// Appends argument text of call `index`.
    pub(crate) fn arguments(&mut self, index: usize, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(ToolEvent::Call {
            index: last,
            arguments,
            ..
        }) = self.events.last_mut()
        {
            if *last == index {
                arguments.get_or_insert_with(String::new).push_str(text);
                return;
            }
        }
        self.events.push(ToolEvent::Call {
            index,
            id: None,
            name: None,
            arguments: Some(text.to_string()),
        });
    }

    pub(crate) fn take(&mut self) -> Vec<ToolEvent> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_merges_adjacent_content_and_fragments_of_one_call() {
        let mut sink = EventSink::default();
        sink.content("a");
        sink.content("b");
        sink.header(0, "call_x".into(), "f".into());
        sink.arguments(0, "{");
        sink.arguments(0, "}");
        sink.header(1, "call_y".into(), "f".into());
        sink.content("c");
        let events = sink.take();
        assert_eq!(
            events,
            vec![
                ToolEvent::Content("ab".into()),
                ToolEvent::Call {
                    index: 0,
                    id: Some("call_x".into()),
                    name: Some("f".into()),
                    arguments: Some("{}".into())
                },
                ToolEvent::Call {
                    index: 1,
                    id: Some("call_y".into()),
                    name: Some("f".into()),
                    arguments: None
                },
                ToolEvent::Content("c".into()),
            ]
        );
        let mut parsed = ParsedToolCalls::default();
        parsed.absorb(events);
        assert_eq!(parsed.content, "abc");
        assert_eq!(parsed.tool_calls.len(), 2);
        assert_eq!(parsed.tool_calls[0].arguments, "{}");
        assert_eq!(parsed.tool_calls[1].arguments, "");
    }
}
