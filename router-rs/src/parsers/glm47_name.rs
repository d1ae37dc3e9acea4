//! GLM-4.7 tool-call tags and the rule for where a function name ends.

use super::scan::{find_tag, TagScan};

pub(crate) const CALL_OPEN: &str = "<tool_call>";
pub(crate) const CALL_CLOSE: &str = "</tool_call>";
pub(crate) const KEY_OPEN: &str = "<arg_key>";
pub(crate) const KEY_CLOSE: &str = "</arg_key>";
pub(crate) const VALUE_OPEN: &str = "<arg_value>";
pub(crate) const VALUE_CLOSE: &str = "</arg_value>";
/// A function name must end within this many bytes after `<tool_call>`, else it is plain content.
pub(crate) const MAX_NAME_BYTES: usize = 256;

/// How a complete function name was terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameEnd {
    /// GLM-4.5 style: a newline after the name.
    Newline,
    ArgKey,
    Close,
}

impl NameEnd {
    /// Bytes of the terminator, consumed with the name.
    pub(crate) fn len(self) -> usize {
        match self {
            NameEnd::Newline => 1,
            NameEnd::ArgKey => KEY_OPEN.len(),
            NameEnd::Close => CALL_CLOSE.len(),
        }
    }
}

/// Outcome of looking for the end of a function name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameScan {
    /// The name is `region[..len]` (untrimmed), followed by `end`.
    Complete {
        len: usize,
        end: NameEnd,
    },
    NeedMore,
    Malformed,
}

/// Finds the end of the function name in `region` (the text after `<tool_call>`): a newline after
/// a non-blank name, `<arg_key>` or `</tool_call>`. Any other `<`, or no end starting within
/// `MAX_NAME_BYTES`, makes the opening malformed. Blank lines before the name are skipped.
pub(crate) fn scan_name(region: &str) -> NameScan {
    let bytes = region.as_bytes();
    let mut from = 0;
    loop {
        let Some(off) = bytes[from..].iter().position(|&b| b == b'<' || b == b'\n') else {
            return if region.len() > MAX_NAME_BYTES {
                NameScan::Malformed
            } else {
                NameScan::NeedMore
            };
        };
        let at = from + off;
        if at > MAX_NAME_BYTES {
            return NameScan::Malformed;
        }
        if bytes[at] == b'\n' {
            if region[..at].trim().is_empty() {
                from = at + 1;
                continue;
            }
            return NameScan::Complete {
                len: at,
                end: NameEnd::Newline,
            };
        }
        return match find_tag(&region[at..], &[KEY_OPEN, CALL_CLOSE]) {
            TagScan::Found { at: 0, tag: 0 } => NameScan::Complete {
                len: at,
                end: NameEnd::ArgKey,
            },
            TagScan::Found { at: 0, .. } => NameScan::Complete {
                len: at,
                end: NameEnd::Close,
            },
            TagScan::Partial { at: 0 } => NameScan::NeedMore,
            _ => NameScan::Malformed,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_ends_at_arg_key_close_or_newline() {
        let complete = |len, end| NameScan::Complete { len, end };
        assert_eq!(scan_name("get<arg_key>"), complete(3, NameEnd::ArgKey));
        assert_eq!(scan_name("get</tool_call>"), complete(3, NameEnd::Close));
        assert_eq!(scan_name("get\n<arg_key>"), complete(3, NameEnd::Newline));
        assert_eq!(scan_name("\n get \n"), complete(6, NameEnd::Newline));
    }

    #[test]
    fn an_unfinished_name_waits_and_a_stray_angle_bracket_is_malformed() {
        assert_eq!(scan_name("get"), NameScan::NeedMore);
        assert_eq!(scan_name("get<arg_k"), NameScan::NeedMore);
        assert_eq!(scan_name("\n"), NameScan::NeedMore);
        assert_eq!(scan_name("a < b"), NameScan::Malformed);
        assert_eq!(scan_name("get<arg_value>"), NameScan::Malformed);
    }

    #[test]
    fn a_name_longer_than_the_limit_is_malformed_whatever_follows() {
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(scan_name(&long), NameScan::Malformed);
        assert_eq!(scan_name(&format!("{long}<arg_key>")), NameScan::Malformed);
        let fits = "n".repeat(MAX_NAME_BYTES);
        assert_eq!(scan_name(&fits), NameScan::NeedMore);
        assert_eq!(
            scan_name(&format!("{fits}<arg_key>")),
            NameScan::Complete {
                len: MAX_NAME_BYTES,
                end: NameEnd::ArgKey
            }
        );
    }
}
