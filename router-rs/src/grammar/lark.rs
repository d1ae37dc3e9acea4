//! Grammars in Lark's notation (vLLM's `guided_grammar` and OpenAI's grammar tools take them),
//! read into the tokens of the EBNF reader (ebnf.rs), whose parser and checks they then share.
//!
//! Read: rules and terminals `name: ...` (`?name`, `!name` and priorities `NAME.2` taken as
//! plain names), continued on lines that start with `|`; `start` is the output;
//! strings `"..."` (Python escapes; the `i` flag as a case-insensitive match), ranges
//! `"a".."z"`, regular expressions `/.../` (flags `i` and `s`), `[...]` as optional, `(...)`,
//! `|`, `*`, `+`, `?`, `~ n` and `~ n..m`; aliases `-> name` are dropped; `//` comments;
//! `%import common.NAME` (or `common (A, B)`) for the terminals of Lark's `common.lark`.
//! `%ignore` is skipped: the output is written as the grammar spells it, with no ignored text
//! between tokens (as other servers convert Lark too). Templates, `%declare`, `%override` and
//! `%extend` are refused.

use super::ebnf::{escape, Tok};
use super::schema::SchemaError;

/// Most repetitions `~ n..m` may name (as `{m,n}` in ebnf.rs).
const MAX_BOUND: u32 = 1 << 16;

fn err(line: usize, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: "grammar".into(),
        message: format!("line {line}: {}", message.into()),
    }
}

/// Whether `text` reads as Lark rather than GBNF: no line starts a GBNF rule (`name ::=`);
/// a `::=` inside a Lark string, regex or comment does not.
pub fn is_lark(text: &str) -> bool {
    !text.lines().any(|line| {
        let line = line.trim_start();
        let name = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(line.len());
        name > 0 && line[name..].trim_start().starts_with("::=")
    })
}

/// The terminals of Lark's `common.lark`, as regular expressions.
const COMMON: [(&str, &str); 21] = [
    ("DIGIT", "[0-9]"),
    ("HEXDIGIT", "[a-fA-F0-9]"),
    ("INT", "[0-9]+"),
    ("SIGNED_INT", "[+-]?[0-9]+"),
    ("DECIMAL", r"[0-9]+\.[0-9]*|\.[0-9]+"),
    ("_EXP", "[eE][+-]?[0-9]+"),
    (
        "FLOAT",
        r"[0-9]+[eE][+-]?[0-9]+|([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?",
    ),
    (
        "SIGNED_FLOAT",
        r"[+-]?([0-9]+[eE][+-]?[0-9]+|([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?)",
    ),
    (
        "NUMBER",
        r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?",
    ),
    (
        "SIGNED_NUMBER",
        r"[+-]?([0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?)",
    ),
    ("ESCAPED_STRING", r#""([^"\\\n]|\\[^\n])*""#),
    ("LCASE_LETTER", "[a-z]"),
    ("UCASE_LETTER", "[A-Z]"),
    ("LETTER", "[a-zA-Z]"),
    ("WORD", "[a-zA-Z]+"),
    ("CNAME", "[_a-zA-Z][_a-zA-Z0-9]*"),
    ("WS_INLINE", "[ \\t]+"),
    ("WS", "[ \\t\\f\\r\\n]+"),
    ("CR", "\\r"),
    ("LF", "\\n"),
    ("NEWLINE", "(\\r?\\n)+"),
];

/// A character as a regular expression matching it alone.
fn literal(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\x{{{:X}}}", c as u32)
    }
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    line: usize,
    toks: Vec<(Tok, usize)>,
    /// Open `[`s, each closed as an optional group.
    brackets: usize,
    imports: Vec<String>,
}

impl Lexer {
    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn push(&mut self, tok: Tok) {
        self.toks.push((tok, self.line));
    }

    /// A name at `i`, and where it ends.
    fn name_at(&self, i: usize) -> Option<(String, usize)> {
        let first = *self.chars.get(i)?;
        if !(first.is_ascii_alphabetic() || first == '_') {
            return None;
        }
        let mut j = i;
        while self
            .chars
            .get(j)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            j += 1;
        }
        Some((self.chars[i..j].iter().collect(), j))
    }

    /// Skips spaces and tabs (not newlines) from `j`.
    fn blank_from(&self, mut j: usize) -> usize {
        while self.chars.get(j).is_some_and(|c| *c == ' ' || *c == '\t') {
            j += 1;
        }
        j
    }

    /// At a definition `?name.N:` (`?`/`!` and the priority optional): pushes the name and
    /// `Define` and returns true.
    fn definition(&mut self) -> Result<bool, SchemaError> {
        let start = self.i + usize::from(matches!(self.peek_at(0), Some('?' | '!')));
        let Some((name, mut j)) = self.name_at(start) else {
            return Ok(false);
        };
        if self.chars.get(j) == Some(&'{') {
            return Err(err(self.line, "rule templates are not supported"));
        }
        if self.chars.get(j) == Some(&'.') {
            // a priority, signed or not: `NAME.2`, `name.-1`
            let sign = usize::from(matches!(self.chars.get(j + 1), Some('-' | '+')));
            if self
                .chars
                .get(j + 1 + sign)
                .is_some_and(char::is_ascii_digit)
            {
                j += 1 + sign;
                while self.chars.get(j).is_some_and(char::is_ascii_digit) {
                    j += 1;
                }
            }
        }
        j = self.blank_from(j);
        if self.chars.get(j) != Some(&':') {
            return Ok(false);
        }
        self.push(Tok::Name(name));
        self.push(Tok::Define);
        self.i = j + 1;
        Ok(true)
    }

    /// A `%` directive line.
    fn directive(&mut self) -> Result<(), SchemaError> {
        let end = (self.i..self.chars.len())
            .find(|&j| self.chars[j] == '\n')
            .unwrap_or(self.chars.len());
        let text: String = self.chars[self.i + 1..end].iter().collect();
        let text = text.split("//").next().unwrap_or("").trim().to_owned();
        let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
        match word {
            "ignore" => {}
            "import" => self.import(rest.trim())?,
            other => return Err(err(self.line, format!("%{other} is not supported"))),
        }
        self.i = end;
        Ok(())
    }

    /// `%import common.NAME` or `%import common (A, B)`.
    fn import(&mut self, what: &str) -> Result<(), SchemaError> {
        let what: String = what.chars().filter(|c| !c.is_whitespace()).collect();
        let names: Vec<&str> = if let Some(list) = what.strip_prefix("common(") {
            list.trim_end_matches(')').split(',').collect()
        } else if let Some(one) = what.strip_prefix("common.") {
            if one.contains("->") {
                return Err(err(self.line, "renamed imports are not supported"));
            }
            vec![one]
        } else {
            return Err(err(
                self.line,
                format!("only common terminals can be imported, not {what}"),
            ));
        };
        for name in names.into_iter().filter(|n| !n.is_empty()) {
            if !COMMON.iter().any(|(n, _)| *n == name) {
                return Err(err(self.line, format!("common.{name} is not known")));
            }
            self.imports.push(name.to_owned());
        }
        Ok(())
    }

    /// A string at `i` (its quote), with the `i` flag or a `..` range after it.
    fn string(&mut self) -> Result<(), SchemaError> {
        let text = self.quoted()?;
        let after = self.blank_from(self.i);
        if self.chars.get(after) == Some(&'.') && self.chars.get(after + 1) == Some(&'.') {
            self.i = self.blank_from(after + 2);
            if self.peek_at(0) != Some('"') {
                return Err(err(
                    self.line,
                    "a range `\"a\"..\"z\"` needs a second string",
                ));
            }
            let to = self.quoted()?;
            let (mut a, mut z) = (text.chars(), to.chars());
            let (Some(a), None, Some(z), None) = (a.next(), a.next(), z.next(), z.next()) else {
                return Err(err(self.line, "a range's ends are single characters"));
            };
            self.push(Tok::Class(format!("[{}-{}]", literal(a), literal(z))));
            return Ok(());
        }
        if self.peek_at(0) == Some('i') && self.name_at(self.i).is_some_and(|(n, _)| n == "i") {
            self.i += 1;
            let pattern: String = text.chars().map(literal).collect();
            self.push(Tok::Class(format!("(?i:{pattern})")));
            return Ok(());
        }
        self.push(Tok::Text(text.into_bytes()));
        Ok(())
    }

    /// The text of the string whose quote is at `i`; `i` moves past its closing quote.
    fn quoted(&mut self) -> Result<String, SchemaError> {
        let mut text = String::new();
        self.i += 1;
        loop {
            let Some(c) = self.peek_at(0) else {
                return Err(err(self.line, "a string is not closed"));
            };
            self.i += 1;
            match c {
                '"' => return Ok(text),
                '\n' => return Err(err(self.line, "a string is not closed on its line")),
                '\\' => {
                    let (c, used) = escape(&self.chars[self.i..])
                        .ok_or_else(|| err(self.line, "a bad escape in a string"))?;
                    self.i += used;
                    text.push(c);
                }
                c => text.push(c),
            }
        }
    }

    /// A regular expression `/.../flags` at `i`.
    fn regex(&mut self) -> Result<(), SchemaError> {
        let mut pattern = String::new();
        self.i += 1;
        loop {
            match self.peek_at(0) {
                None | Some('\n') => {
                    return Err(err(self.line, "a regular expression is not closed"))
                }
                Some('/') => break,
                Some('\\') if self.peek_at(1) == Some('/') => {
                    pattern.push('/');
                    self.i += 2;
                }
                Some('\\') => {
                    pattern.push('\\');
                    pattern.extend(self.peek_at(1));
                    self.i += 2;
                }
                Some(c) => {
                    pattern.push(c);
                    self.i += 1;
                }
            }
        }
        self.i += 1;
        let mut flags = String::new();
        while let Some(c) = self.peek_at(0).filter(char::is_ascii_lowercase) {
            if !matches!(c, 'i' | 's') {
                return Err(err(
                    self.line,
                    format!("the regular expression flag {c} is not supported"),
                ));
            }
            flags.push(c);
            self.i += 1;
        }
        let pattern = if flags.is_empty() {
            format!("(?:{pattern})")
        } else {
            format!("(?{flags}:{pattern})")
        };
        self.push(Tok::Class(pattern));
        Ok(())
    }

    /// `~ n` or `~ n..m` at `i`.
    fn repeat(&mut self) -> Result<(), SchemaError> {
        let rest: String = self.chars[self.i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit() || c.is_whitespace() && **c != '\n' || **c == '.')
            .collect();
        self.i += 1 + rest.len();
        let rest = rest.trim();
        let num = |s: &str| s.trim().parse::<u32>().ok();
        let (min, max) = match rest.split_once("..") {
            Some((lo, hi)) => (num(lo), num(hi)),
            None => (num(rest), num(rest)),
        };
        match (min, max) {
            (Some(min), Some(max)) if min <= max && max <= MAX_BOUND => {
                self.push(Tok::Bound(min, Some(max)));
                Ok(())
            }
            _ => Err(err(
                self.line,
                format!("a repetition `~ n` or `~ n..m` is malformed (n, m at most {MAX_BOUND})"),
            )),
        }
    }

    fn run(&mut self) -> Result<(), SchemaError> {
        let mut line_start = true;
        while let Some(c) = self.peek_at(0) {
            if line_start && !c.is_whitespace() {
                line_start = false;
                if c == '%' {
                    self.directive()?;
                    continue;
                }
                if self.definition()? {
                    continue;
                }
            }
            match c {
                '\n' => {
                    self.line += 1;
                    line_start = true;
                }
                c if c.is_whitespace() => {}
                '/' if self.peek_at(1) == Some('/') => {
                    while self.peek_at(0).is_some_and(|c| c != '\n') {
                        self.i += 1;
                    }
                    continue;
                }
                '"' => {
                    self.string()?;
                    continue;
                }
                '/' => {
                    self.regex()?;
                    continue;
                }
                '~' => {
                    self.repeat()?;
                    continue;
                }
                '-' if self.peek_at(1) == Some('>') => {
                    // an alias names the tree node: nothing of the text
                    self.i = self.blank_from(self.i + 2);
                    let (_, end) = self
                        .name_at(self.i)
                        .ok_or_else(|| err(self.line, "an alias `->` needs a name"))?;
                    self.i = end;
                    continue;
                }
                '[' => {
                    self.brackets += 1;
                    self.push(Tok::Open);
                }
                ']' => {
                    if self.brackets == 0 {
                        return Err(err(self.line, "a `]` closes nothing"));
                    }
                    self.brackets -= 1;
                    self.push(Tok::Close);
                    self.push(Tok::Question);
                }
                '(' => self.push(Tok::Open),
                ')' => self.push(Tok::Close),
                '|' => self.push(Tok::Bar),
                '*' => self.push(Tok::Star),
                '+' => self.push(Tok::Plus),
                '?' => self.push(Tok::Question),
                c if c.is_ascii_alphabetic() || c == '_' => {
                    let (name, end) = self.name_at(self.i).expect("a name starts here");
                    self.push(Tok::Name(name));
                    self.i = end;
                    continue;
                }
                other => return Err(err(self.line, format!("unexpected {other:?}"))),
            }
            self.i += 1;
        }
        if self.brackets > 0 {
            return Err(err(self.line, "a `[` is not closed"));
        }
        Ok(())
    }
}

/// The EBNF reader's tokens of a Lark grammar, the imported common terminals defined after it.
pub fn lex(text: &str) -> Result<Vec<(Tok, usize)>, SchemaError> {
    let mut lexer = Lexer {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        toks: Vec::new(),
        brackets: 0,
        imports: Vec::new(),
    };
    lexer.run()?;
    let line = lexer.line;
    let mut toks = lexer.toks;
    let mut imports = lexer.imports;
    imports.sort();
    imports.dedup();
    for name in imports {
        let pattern = COMMON.iter().find(|(n, _)| *n == name).map(|(_, p)| *p);
        toks.push((Tok::Name(name), line));
        toks.push((Tok::Define, line));
        toks.push((
            Tok::Class(format!("(?:{})", pattern.unwrap_or_default())),
            line,
        ));
    }
    Ok(toks)
}
