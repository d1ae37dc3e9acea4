//! Tag scanning and JSON string escaping shared by the streaming parsers.
//!
//! Every decision here depends only on the bytes present, and a possible tag cut off at the end
//! of the buffer is reported as such, so callers can hold it back until more text arrives.

/// Where the first of a set of tags occurs in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagScan {
    /// Tag number `tag` (index into the list) starts at byte `at`.
    Found { at: usize, tag: usize },
    /// The buffer ends at `at` with a proper prefix of one of the tags; more text decides.
    Partial { at: usize },
    /// No tag and no possible partial tag in the buffer.
    Absent,
}

/// Finds the earliest complete tag in `buf`, or the start of a trailing possible partial tag.
///
/// All tags must start with `<`. A `<` that cannot begin any tag is ordinary text.
pub(crate) fn find_tag(buf: &str, tags: &[&str]) -> TagScan {
    let bytes = buf.as_bytes();
    let mut from = 0;
    while let Some(off) = bytes[from..].iter().position(|&b| b == b'<') {
        let at = from + off;
        let rest = &buf[at..];
        for (tag, pattern) in tags.iter().enumerate() {
            if rest.starts_with(pattern) {
                return TagScan::Found { at, tag };
            }
        }
        if tags.iter().any(|pattern| pattern.starts_with(rest)) {
            return TagScan::Partial { at };
        }
        from = at + 1;
    }
    TagScan::Absent
}

/// Appends `text` to `out` as the inside of a JSON string literal (without the quotes).
///
/// Each character is escaped on its own, so escaping fragments and concatenating them gives the
/// same result as escaping the whole text at once.
pub(crate) fn escape_json_into(out: &mut String, text: &str) {
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&text[start..i]);
        match escaped {
            Some(s) => out.push_str(s),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

/// Returns `text` as a complete JSON string literal.
pub(crate) fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    escape_json_into(&mut out, text);
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_earliest_tag_among_several() {
        let tags = ["</a>", "</bb>"];
        assert_eq!(
            find_tag("x</bb>y</a>", &tags),
            TagScan::Found { at: 1, tag: 1 }
        );
    }

    #[test]
    fn a_lone_angle_bracket_is_text_but_a_trailing_tag_prefix_is_partial() {
        let tags = ["<tool_call>"];
        assert_eq!(find_tag("x < y", &tags), TagScan::Absent);
        assert_eq!(find_tag("x < y <to", &tags), TagScan::Partial { at: 6 });
        assert_eq!(find_tag("x <", &tags), TagScan::Partial { at: 2 });
        assert_eq!(find_tag("<tool_cal!", &tags), TagScan::Absent);
    }

    #[test]
    fn escaping_matches_serde_json_for_controls_quotes_and_unicode() {
        let text = "a\"b\\c\nd\re\tf\u{8}\u{c}\u{1}\u{1f}é😀/<";
        let ours = json_string(text);
        assert_eq!(
            ours,
            serde_json::to_string(text).expect("string serializes")
        );
        let parsed: String = serde_json::from_str(&ours).expect("valid JSON string");
        assert_eq!(parsed, text);
    }

    #[test]
    fn escaping_fragments_concatenates_to_escaping_the_whole() {
        let text = "q\"\\\n😀x";
        let mut pieces = String::new();
        for (i, ch) in text.char_indices() {
            escape_json_into(&mut pieces, &text[i..i + ch.len_utf8()]);
        }
        let mut whole = String::new();
        escape_json_into(&mut whole, text);
        assert_eq!(pieces, whole);
    }
}
