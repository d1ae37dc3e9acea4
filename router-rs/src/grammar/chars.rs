//! The bytes of a JSON string: escapes, whole UTF-8 characters, no control characters.

/// Where a string's bytes are: between characters, inside an escape, inside a UTF-8 sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Chars {
    /// 0: between characters; 1: after a backslash; 2..=5: hex digits of `\u` left, plus one.
    esc: u8,
    /// Continuation bytes of the current UTF-8 character still to come, and the range the next
    /// one must fall in.
    utf8_left: u8,
    lo: u8,
    hi: u8,
}

pub(crate) enum CharStep {
    Open,
    Close,
    Dead,
}

impl Chars {
    /// Between characters: the next byte starts a character or closes the string.
    pub(crate) fn at_boundary(&self) -> bool {
        self.esc == 0 && self.utf8_left == 0
    }

    /// Takes one byte inside a string (the opening quote already read).
    pub(crate) fn step(&mut self, b: u8) -> CharStep {
        if self.utf8_left > 0 {
            if b < self.lo || b > self.hi {
                return CharStep::Dead;
            }
            self.utf8_left -= 1;
            (self.lo, self.hi) = (0x80, 0xBF);
            return CharStep::Open;
        }
        match self.esc {
            0 => {
                let (left, lo, hi) = match b {
                    b'"' => return CharStep::Close,
                    b'\\' => {
                        self.esc = 1;
                        return CharStep::Open;
                    }
                    0x00..=0x1F | 0x80..=0xC1 | 0xF5..=0xFF => return CharStep::Dead,
                    0x20..=0x7F => return CharStep::Open,
                    0xC2..=0xDF => (1, 0x80, 0xBF),
                    0xE0 => (2, 0xA0, 0xBF),
                    0xED => (2, 0x80, 0x9F),
                    0xE1..=0xEF => (2, 0x80, 0xBF),
                    0xF0 => (3, 0x90, 0xBF),
                    0xF4 => (3, 0x80, 0x8F),
                    0xF1..=0xF3 => (3, 0x80, 0xBF),
                };
                (self.utf8_left, self.lo, self.hi) = (left, lo, hi);
                CharStep::Open
            }
            1 => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    self.esc = 0;
                    CharStep::Open
                }
                b'u' => {
                    self.esc = 5;
                    CharStep::Open
                }
                _ => CharStep::Dead,
            },
            n => {
                if !b.is_ascii_hexdigit() {
                    return CharStep::Dead;
                }
                self.esc = if n == 2 { 0 } else { n - 1 };
                CharStep::Open
            }
        }
    }
}
