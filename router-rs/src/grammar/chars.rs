//! The bytes of a JSON string (escapes, whole UTF-8 characters, no control characters) and of
//! raw text (whole UTF-8 characters).

/// Where a string's bytes are: between characters, inside an escape, inside a UTF-8 sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Chars {
    /// 0: between characters; 1: after a backslash; 2..=5: hex digits of `\u` left, plus one.
    esc: u8,
    /// Continuation bytes of the current UTF-8 character still to come, and the range the next
    /// one must fall in.
    utf8_left: u8,
    lo: u8,
    hi: u8,
    /// The last character read is `<`.
    lt: bool,
    /// Inside a `\u` escape: the value of its hex digits so far.
    code: u16,
    /// The last character read is a `\u` escape of a high surrogate (`\ud800` to `\udbff`).
    high: bool,
}

pub(crate) enum CharStep {
    Open,
    /// Still open, the byte having ended the second escape of a surrogate pair (`\ud83d\ude00`):
    /// the pair is one character, which its first escape began.
    Paired,
    Close,
    Dead,
}

impl Chars {
    /// Between characters: the next byte starts a character or closes the string.
    pub(crate) fn at_boundary(&self) -> bool {
        self.esc == 0 && self.utf8_left == 0
    }

    /// Whether `b` keeps a member name in its one JSON spelling (serde_json's, that of the listed
    /// names): `\u` only for a control character without a short escape (`\u0000` to `\u001f`
    /// but for `\b`, `\t`, `\n`, `\f`, `\r`), in lower-case hex, never `\/`. Another spelling
    /// of a listed name (`"\u0061"` for `"a"`) would read as another member and give that name
    /// twice.
    pub(crate) fn keeps_name_canonical(&self, b: u8) -> bool {
        // `esc` 5 to 2: the first to the last hex digit of a `\u` escape comes next
        match self.esc {
            5 | 4 => b == b'0',
            3 => matches!(b, b'0' | b'1'),
            2 => {
                let Some(digit) = (b as char).to_digit(16).filter(|_| !b.is_ascii_uppercase())
                else {
                    return false;
                };
                !matches!(
                    (self.code << 4) | digit as u16,
                    0x08 | 0x09 | 0x0a | 0x0c | 0x0d
                )
            }
            1 => b != b'/', // right after the backslash: no `\/`
            _ => true,
        }
    }

    /// Whether the last character read is `<` (and nothing of the next one yet).
    pub(crate) fn after_lt(&self) -> bool {
        self.lt
    }

    /// Takes one byte inside a string (the opening quote already read).
    pub(crate) fn step(&mut self, b: u8) -> CharStep {
        self.lt = b == b'<' && self.at_boundary();
        self.step_char(b)
    }

    fn step_char(&mut self, b: u8) -> CharStep {
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
                if b != b'\\' {
                    self.high = false; // a character other than an escape comes between
                }
                let (left, lo, hi) = match b {
                    b'"' => return CharStep::Close,
                    b'\\' => {
                        self.esc = 1;
                        return CharStep::Open;
                    }
                    0x00..=0x1F => return CharStep::Dead,
                    _ => match utf8_lead(b) {
                        None => return CharStep::Dead,
                        Some((0, _, _)) => return CharStep::Open,
                        Some(lead) => lead,
                    },
                };
                (self.utf8_left, self.lo, self.hi) = (left, lo, hi);
                CharStep::Open
            }
            1 => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    self.esc = 0;
                    self.high = false;
                    CharStep::Open
                }
                b'u' => {
                    self.esc = 5;
                    self.code = 0;
                    CharStep::Open
                }
                _ => CharStep::Dead,
            },
            n => {
                let Some(digit) = (b as char).to_digit(16) else {
                    return CharStep::Dead;
                };
                self.code = (self.code << 4) | digit as u16;
                self.esc = if n == 2 { 0 } else { n - 1 };
                if n == 2 {
                    let paired = self.high && (0xDC00..=0xDFFF).contains(&self.code);
                    self.high = !paired && (0xD800..=0xDBFF).contains(&self.code);
                    if paired {
                        return CharStep::Paired;
                    }
                }
                CharStep::Open
            }
        }
    }
}

/// What a UTF-8 sequence's first byte `b` asks of the rest: (continuation bytes to come, the range
/// the next must fall in); None where `b` cannot start a character.
fn utf8_lead(b: u8) -> Option<(u8, u8, u8)> {
    Some(match b {
        0x00..=0x7F => (0, 0, 0),
        0x80..=0xC1 | 0xF5..=0xFF => return None,
        0xC2..=0xDF => (1, 0x80, 0xBF),
        0xE0 => (2, 0xA0, 0xBF),
        0xED => (2, 0x80, 0x9F),
        0xE1..=0xEF => (2, 0x80, 0xBF),
        0xF0 => (3, 0x90, 0xBF),
        0xF4 => (3, 0x80, 0x8F),
        0xF1..=0xF3 => (3, 0x80, 0xBF),
    })
}

/// Where raw text's bytes are: between characters or inside one (any character, no escapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Utf8 {
    left: u8,
    lo: u8,
    hi: u8,
}

impl Utf8 {
    /// Whether no character is begun.
    pub(crate) fn at_boundary(&self) -> bool {
        self.left == 0
    }

    /// Takes one byte; false where it cannot continue valid UTF-8.
    pub(crate) fn step(&mut self, b: u8) -> bool {
        if self.left > 0 {
            if b < self.lo || b > self.hi {
                return false;
            }
            self.left -= 1;
            (self.lo, self.hi) = (0x80, 0xBF);
            return true;
        }
        match utf8_lead(b) {
            Some((left, lo, hi)) => {
                (self.left, self.lo, self.hi) = (left, lo, hi);
                true
            }
            None => false,
        }
    }
}
