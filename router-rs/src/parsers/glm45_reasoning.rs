//! Streaming parser for GLM-4.5-style reasoning: text inside `<think>…</think>` is reasoning, the
//! rest is content.
//!
//! The generation prompt usually ends in `<think>`, so a response starts inside reasoning unless
//! the prompt ended in `</think>`. A response has at most one reasoning block:
//! - inside reasoning, `</think>` ends it and a repeated `<think>` is dropped;
//! - a response that starts in content opens reasoning with `<think>` only before any other text
//!   (whitespace aside), and a stray leading `</think>` is dropped;
//! - once reasoning has ended, or the answer has begun, the rest is content verbatim: the tags
//!   are then ordinary text (an answer or a tool argument may talk about `<think>` tags).
//!
//! Other text, `<tool_call>` included, never changes the section. A possible partial tag at the
//! end of a chunk is held back until the next chunk or `finish`.

use super::scan::{find_tag, TagScan};

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Text of one chunk, split into reasoning and content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasoningDelta {
    pub reasoning: String,
    pub content: String,
}

/// Which section the parser is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Content before any text: `<think>` may still open reasoning.
    Start,
    Reasoning,
    /// The answer: everything is content, tags included.
    Answer,
}

/// Incremental reasoning/content splitter for one response.
#[derive(Debug)]
pub struct Glm45ReasoningParser {
    section: Section,
    /// A held-back possible partial tag.
    held: String,
}

impl Glm45ReasoningParser {
    /// `in_reasoning`: the prompt's last think tag was `<think>` (the response starts in reasoning).
    pub fn new(in_reasoning: bool) -> Self {
        let section = if in_reasoning {
            Section::Reasoning
        } else {
            Section::Start
        };
        Self {
            section,
            held: String::new(),
        }
    }

    /// Whether text fed next would be reasoning (ignoring a held-back partial tag).
    pub fn in_reasoning(&self) -> bool {
        self.section == Section::Reasoning
    }

    /// Consumes the next chunk and returns the text that became certain.
    pub fn feed(&mut self, text: &str) -> ReasoningDelta {
        let mut delta = ReasoningDelta::default();
        let joined: String;
        let mut rest = if self.held.is_empty() {
            text
        } else {
            joined = std::mem::take(&mut self.held) + text;
            joined.as_str()
        };
        loop {
            if self.section == Section::Answer {
                delta.content.push_str(rest);
                return delta;
            }
            let scan = find_tag(rest, &[THINK_OPEN, THINK_CLOSE]);
            let before = match scan {
                TagScan::Found { at, .. } | TagScan::Partial { at } => &rest[..at],
                TagScan::Absent => rest,
            };
            if self.section == Section::Start && !before.trim().is_empty() {
                // The answer began before any tag: what follows is all content.
                self.section = Section::Answer;
                continue;
            }
            self.emit(&mut delta, before);
            match scan {
                TagScan::Found { at, tag } => {
                    let (section, len) = if tag == 0 {
                        (Section::Reasoning, THINK_OPEN.len())
                    } else {
                        (Section::Answer, THINK_CLOSE.len())
                    };
                    self.section = section;
                    rest = &rest[at + len..];
                }
                TagScan::Partial { at } => {
                    self.held = rest[at..].to_string();
                    return delta;
                }
                TagScan::Absent => return delta,
            }
        }
    }

    /// Ends the response: a held-back partial tag was text after all.
    pub fn finish(&mut self) -> ReasoningDelta {
        let mut delta = ReasoningDelta::default();
        let held = std::mem::take(&mut self.held);
        self.emit(&mut delta, &held);
        delta
    }

    fn emit(&self, delta: &mut ReasoningDelta, text: &str) {
        match self.section {
            Section::Reasoning => delta.reasoning.push_str(text),
            Section::Start | Section::Answer => delta.content.push_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(in_reasoning: bool, chunks: &[&str]) -> (String, String) {
        let mut parser = Glm45ReasoningParser::new(in_reasoning);
        let mut out = ReasoningDelta::default();
        let mut deltas: Vec<ReasoningDelta> = chunks.iter().map(|c| parser.feed(c)).collect();
        deltas.push(parser.finish());
        for delta in deltas {
            out.reasoning.push_str(&delta.reasoning);
            out.content.push_str(&delta.content);
        }
        (out.reasoning, out.content)
    }

    #[test]
    fn starts_in_reasoning_when_the_prompt_opened_think() {
        assert_eq!(
            run(true, &["plan", "</think>", "answer"]),
            ("plan".into(), "answer".into())
        );
    }

    #[test]
    fn starts_in_content_when_the_prompt_closed_think() {
        assert_eq!(
            run(false, &["just answer"]),
            (String::new(), "just answer".into())
        );
    }

    #[test]
    fn a_think_tag_emitted_by_the_model_starts_reasoning() {
        let got = run(false, &["<think>", "hmm</think>ok"]);
        assert_eq!(got, ("hmm".into(), "ok".into()));
        assert_eq!(run(true, &["<think>a</think>b"]), ("a".into(), "b".into()));
    }

    #[test]
    fn tags_split_across_chunks_are_held_back_and_not_leaked() {
        let mut parser = Glm45ReasoningParser::new(true);
        let first = parser.feed("idea</th");
        assert_eq!(
            first,
            ReasoningDelta {
                reasoning: "idea".into(),
                content: String::new()
            }
        );
        let second = parser.feed("ink>done");
        assert_eq!(
            second,
            ReasoningDelta {
                reasoning: String::new(),
                content: "done".into()
            }
        );
        assert!(!parser.in_reasoning());
    }

    #[test]
    fn a_partial_tag_at_the_end_is_text() {
        assert_eq!(run(true, &["a </thi"]), ("a </thi".into(), String::new()));
        assert_eq!(run(false, &["x < y <"]), (String::new(), "x < y <".into()));
    }

    #[test]
    fn think_tags_after_reasoning_ended_are_answer_text() {
        let text = "x</think><tool_call>w<arg_key>c</arg_key><arg_value>use <think> tags</think> \
                    ok</arg_value></tool_call>done";
        let want = ("x".to_string(), text["x</think>".len()..].to_string());
        assert_eq!(run(true, &[text]), want);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(true, &chunks), want);
    }

    #[test]
    fn think_tags_inside_an_answer_without_reasoning_are_text() {
        let text = "Use the <think> tag, then </think>.";
        assert_eq!(run(false, &[text]), (String::new(), text.into()));
        assert_eq!(
            run(false, &["Use the <th", "ink> tag"]),
            (String::new(), "Use the <think> tag".into())
        );
        // Leading whitespace does not start the answer; a stray leading close tag is dropped.
        assert_eq!(
            run(false, &["\n <think>a</think>b"]),
            ("a".into(), "\n b".into())
        );
        assert_eq!(
            run(false, &["</think>b <think>"]),
            (String::new(), "b <think>".into())
        );
    }

    #[test]
    fn a_tool_call_inside_reasoning_does_not_end_reasoning() {
        let got = run(
            true,
            &["try <tool_call>f</tool_call>", " more</think><tool_call>g"],
        );
        assert_eq!(
            got,
            (
                "try <tool_call>f</tool_call> more".into(),
                "<tool_call>g".into()
            )
        );
    }
}
