//! Output of an EBNF grammar (vLLM's `guided_grammar`, SGLang's `ebnf`) in the notation that
//! llama.cpp's GBNF and XGrammar read: rules `name ::= expression`, the output being `root`'s.
//! A grammar without `::=` is read as Lark's notation instead (lark.rs).
//! An expression is alternatives (`|`) of sequences of items; an item is a string (`"..."`, with
//! `\n`, `\t`, `\r`, `\\`, `\"`, `\xHH`, `\uHHHH` escapes), a character class (`[a-z]`,
//! `[^"\\]`), `.` (any character), a rule's name or a group in parentheses, each optionally
//! repeated by `*`, `+`, `?` or `{m}`, `{m,}`, `{m,n}`. `#` begins a comment to the end of the
//! line; a rule runs on over lines until the next `name ::=`.
//!
//! The rules become the raw-text nodes of tool calls (sequences, alternatives, repetition,
//! literal text, a regular expression per class), which the matcher walks as a pushdown
//! automaton. Refused, since the walk would never end: left recursion (a rule that can reach
//! itself before reading anything), unbounded repetition of what can be empty, and a rule with
//! no finite text (every way through it recurses).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::compile::{choices_node, Builder};
use super::regex::Regex;
use super::schema::{Node, NodeId, Pattern, Schema, SchemaError};

/// Longest grammar text taken (bytes).
const MAX_TEXT: usize = 64 << 10;
/// Most repetitions a `{m,n}` bound may name.
const MAX_BOUND: u32 = 1 << 16;

fn err(message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: "ebnf".into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Name(String),
    Define,
    Text(Vec<u8>),
    Class(String),
    Any,
    Bar,
    Open,
    Close,
    Star,
    Plus,
    Question,
    Bound(u32, Option<u32>),
}

/// The tokens of `text`, each with its line.
fn lex(text: &str) -> Result<Vec<(Tok, usize)>, SchemaError> {
    let chars: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        let at = |message: &str| err(format!("line {line}: {message}"));
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            ':' if chars[i..].starts_with(&[':', ':', '=']) => {
                toks.push((Tok::Define, line));
                i += 3;
                continue;
            }
            '"' | '\'' => {
                let mut bytes = Vec::new();
                i += 1;
                loop {
                    let Some(&ch) = chars.get(i) else {
                        return Err(at("a string is not closed"));
                    };
                    i += 1;
                    match ch {
                        ch if ch == c => break,
                        '\n' => return Err(at("a string is not closed on its line")),
                        '\\' => {
                            let (ch, used) =
                                escape(&chars[i..]).ok_or_else(|| at("a bad escape"))?;
                            i += used;
                            bytes.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        ch => bytes.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                toks.push((Tok::Text(bytes), line));
                continue;
            }
            '[' => {
                let start = i;
                i += 1;
                loop {
                    match chars.get(i) {
                        None | Some('\n') => return Err(at("a character class is not closed")),
                        Some('\\') => i += 2,
                        Some(']') if i > start + 1 && !(i == start + 2 && chars[i - 1] == '^') => {
                            break
                        }
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                toks.push((Tok::Class(class_regex(&chars[start..i])), line));
                continue;
            }
            '{' => {
                let end = chars[i..]
                    .iter()
                    .position(|&ch| ch == '}')
                    .ok_or_else(|| at("a `{` is not closed"))?;
                let inner: String = chars[i + 1..i + end].iter().collect();
                toks.push((bound(&inner).ok_or_else(|| at("a bad `{m,n}`"))?, line));
                i += end + 1;
                continue;
            }
            '.' => toks.push((Tok::Any, line)),
            '|' => toks.push((Tok::Bar, line)),
            '(' => toks.push((Tok::Open, line)),
            ')' => toks.push((Tok::Close, line)),
            '*' => toks.push((Tok::Star, line)),
            '+' => toks.push((Tok::Plus, line)),
            '?' => toks.push((Tok::Question, line)),
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|&ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
                {
                    i += 1;
                }
                toks.push((Tok::Name(chars[start..i].iter().collect()), line));
                continue;
            }
            other => return Err(at(&format!("unexpected {other:?}"))),
        }
        i += 1;
    }
    Ok(toks)
}

/// The character of the escape after a backslash and the characters it took.
pub(super) fn escape(rest: &[char]) -> Option<(char, usize)> {
    let hex = |n: usize| {
        let digits: String = rest.get(1..1 + n)?.iter().collect();
        char::from_u32(u32::from_str_radix(&digits, 16).ok()?).map(|c| (c, 1 + n))
    };
    match rest.first()? {
        'n' => Some(('\n', 1)),
        't' => Some(('\t', 1)),
        'r' => Some(('\r', 1)),
        'x' => hex(2),
        'u' => hex(4),
        'U' => hex(8),
        c @ ('\\' | '"' | '\'' | '[' | ']' | '-' | '^') => Some((*c, 1)),
        _ => None,
    }
}

/// A GBNF class as a regex crate class: its characters taken literally (escaped), ranges and
/// negation kept.
fn class_regex(class: &[char]) -> String {
    let inner = &class[1..class.len() - 1];
    let (negated, inner) = match inner.first() {
        Some('^') => (true, &inner[1..]),
        _ => (false, inner),
    };
    let mut out = String::from(if negated { "[^" } else { "[" });
    let mut i = 0;
    while i < inner.len() {
        let (c, used) = match inner[i] {
            '\\' => escape(&inner[i + 1..]).map_or(('\\', 1), |(c, n)| (c, n + 1)),
            c => (c, 1),
        };
        let literal = inner[i] != '\\';
        i += used;
        if c == '-' && literal && i > used && i < inner.len() {
            out.push('-'); // a range
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    out.push(']');
    out
}

fn bound(inner: &str) -> Option<Tok> {
    let num = |s: &str| s.trim().parse::<u32>().ok().filter(|&n| n <= MAX_BOUND);
    let (min, max) = match inner.split_once(',') {
        None => (num(inner)?, Some(num(inner)?)),
        Some((lo, hi)) if hi.trim().is_empty() => (num(lo)?, None),
        Some((lo, hi)) => (num(lo)?, Some(num(hi)?)),
    };
    max.is_none_or(|max| min <= max)
        .then_some(Tok::Bound(min, max))
}

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    at: usize,
    b: Builder<'a>,
    rules: HashMap<String, NodeId>,
    defined: HashMap<NodeId, String>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(t, _)| t)
    }

    fn line(&self) -> usize {
        self.toks
            .get(self.at.min(self.toks.len().saturating_sub(1)))
            .map_or(0, |t| t.1)
    }

    /// Whether a new rule starts here (`name ::=`).
    fn at_rule(&self) -> bool {
        matches!(self.peek(), Some(Tok::Name(_)))
            && matches!(self.toks.get(self.at + 1), Some((Tok::Define, _)))
    }

    /// The node of rule `name`, a placeholder until the rule is read.
    fn rule(&mut self, name: &str) -> NodeId {
        if let Some(&id) = self.rules.get(name) {
            return id;
        }
        let id = self.b.push(Node::AnyOf(Vec::new()));
        self.rules.insert(name.to_string(), id);
        id
    }

    fn rules(&mut self) -> Result<(), SchemaError> {
        while self.at < self.toks.len() {
            if !self.at_rule() {
                return Err(err(format!(
                    "line {}: a rule `name ::= ...` expected",
                    self.line()
                )));
            }
            let Some((Tok::Name(name), line)) = self.toks.get(self.at).cloned() else {
                unreachable!("at_rule saw a name")
            };
            self.at += 2;
            let id = self.rule(&name);
            if self.defined.insert(id, name.clone()).is_some() {
                return Err(err(format!("line {line}: rule {name} is defined twice")));
            }
            let body = self.alternatives()?;
            self.b.nodes[id] = Node::AnyOf(vec![body]);
        }
        Ok(())
    }

    fn alternatives(&mut self) -> Result<NodeId, SchemaError> {
        let mut alts = vec![self.sequence()?];
        while self.peek() == Some(&Tok::Bar) {
            self.at += 1;
            alts.push(self.sequence()?);
        }
        Ok(self.joined(alts, Node::AnyOf))
    }

    /// The one node of `ids`, else `node` of them all.
    fn joined(&mut self, ids: Vec<NodeId>, node: fn(Vec<NodeId>) -> Node) -> NodeId {
        match ids.as_slice() {
            [one] => *one,
            _ => self.b.push(node(ids)),
        }
    }

    fn sequence(&mut self) -> Result<NodeId, SchemaError> {
        let mut items = Vec::new();
        while !matches!(self.peek(), None | Some(Tok::Bar | Tok::Close)) && !self.at_rule() {
            items.push(self.item()?);
        }
        Ok(self.joined(items, Node::Seq))
    }

    fn item(&mut self) -> Result<NodeId, SchemaError> {
        let line = self.line();
        let (tok, _) = self.toks[self.at].clone();
        self.at += 1;
        let mut id = match tok {
            Tok::Text(bytes) if bytes.is_empty() => self.b.push(Node::Seq(Vec::new())),
            Tok::Text(bytes) => self.b.push(choices_node([bytes.as_slice()])),
            Tok::Class(class) => self.regex(&class, line)?,
            Tok::Any => self.regex("(?s:.)", line)?,
            Tok::Name(name) => self.rule(&name),
            Tok::Open => {
                let inner = self.alternatives()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(err(format!("line {line}: a `(` is not closed")));
                }
                self.at += 1;
                inner
            }
            other => return Err(err(format!("line {line}: unexpected {other:?}"))),
        };
        loop {
            let (min, max) = match self.peek() {
                Some(Tok::Star) => (0, None),
                Some(Tok::Plus) => (1, None),
                Some(Tok::Question) => (0, Some(1)),
                Some(&Tok::Bound(min, max)) => (min, max),
                _ => return Ok(id),
            };
            self.at += 1;
            id = self.b.push(Node::Repeat { item: id, min, max });
        }
    }

    fn regex(&mut self, pattern: &str, line: usize) -> Result<NodeId, SchemaError> {
        let regex = Regex::new(pattern)
            .map_err(|e| err(format!("line {line}: a character class: {}", e.message)))?;
        Ok(self.b.push(Node::RawRegex(Arc::new(Pattern {
            regex,
            chars_to_match: Default::default(),
            no_lt: false,
        }))))
    }
}

/// The raw-text schema of an EBNF grammar (see the module docs).
pub fn compile(text: &str) -> Result<Schema, SchemaError> {
    if text.len() > MAX_TEXT {
        return Err(err(format!("the grammar is longer than {MAX_TEXT} bytes")));
    }
    let lark = super::lark::is_lark(text);
    let (toks, root_name) = match lark {
        true => (super::lark::lex(text)?, "start"),
        false => (lex(text)?, "root"),
    };
    let mut p = Parser {
        toks: super::left_recursion::removed(toks),
        at: 0,
        b: Builder::new(&Value::Null),
        rules: HashMap::new(),
        defined: HashMap::new(),
    };
    p.rules()?;
    if let Some(name) = p
        .rules
        .iter()
        .find(|(_, id)| !p.defined.contains_key(id))
        .map(|r| r.0)
    {
        return Err(err(format!("rule {name} is used but not defined")));
    }
    let missing = || err(format!("no rule named {root_name}"));
    let root = *p.rules.get(root_name).ok_or_else(missing)?;
    let nodes = p.b.nodes;
    check_walks_end(&nodes, &p.defined)?;
    Ok(Schema {
        nodes,
        root,
        raw: true,
        no_close_tags: false,
    })
}

/// Refuses what the matcher's walk would never finish: a rule reached again before any byte is
/// read (left recursion), and unbounded repetition of what may read nothing.
fn check_walks_end(nodes: &[Node], names: &HashMap<NodeId, String>) -> Result<(), SchemaError> {
    // which nodes may read nothing, and which may end at all (to fixed points: rules refer to
    // each other)
    let empty = fixed_point(
        nodes,
        |node, _| matches!(node, Node::Choices(t) if t.iter().any(Vec::is_empty)),
    );
    let ends = fixed_point(nodes, |node, _| {
        matches!(node, Node::Choices(_) | Node::RawRegex(_))
    });
    if let Some(name) = names.iter().find(|(&id, _)| !ends[id]).map(|r| r.1) {
        return Err(err(format!(
            "rule {name} never ends: every way through it recurses"
        )));
    }
    // what each node may start with before reading anything
    let first: Vec<Vec<NodeId>> = nodes
        .iter()
        .map(|node| match node {
            Node::AnyOf(alts) => alts.clone(),
            Node::Seq(items) => {
                let lead = items.iter().take_while(|&&i| empty[i]).count();
                items[..(lead + 1).min(items.len())].to_vec()
            }
            Node::Repeat { item, .. } => vec![*item],
            _ => Vec::new(),
        })
        .collect();
    for (id, node) in nodes.iter().enumerate() {
        if let Node::Repeat {
            item, max: None, ..
        } = node
        {
            if empty[*item] {
                return Err(err(format!(
                    "{}: a repetition (`*`, `+` or `{{m,}}`) of something that can be empty",
                    where_in(id, nodes, names)
                )));
            }
        }
    }
    // a cycle of `first` edges is left recursion (depth-first, three colours)
    let mut colour = vec![0u8; nodes.len()];
    for start in 0..nodes.len() {
        if colour[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        colour[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = first[node].get(*next) {
                *next += 1;
                match colour[to] {
                    0 => {
                        colour[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|&(n, _)| n == to).unwrap_or(0);
                        let rule = stack[from..]
                            .iter()
                            .find_map(|(n, _)| names.get(n))
                            .map_or("a rule".to_string(), |n| format!("rule {n}"));
                        return Err(err(format!(
                            "{rule} is left-recursive: it can reach itself before reading anything"
                        )));
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    Ok(())
}

/// Per node, whether it has a property that `leaf` gives the leaves (the nodes other than
/// sequences, alternatives and repetitions): a sequence where all its items have it, an
/// alternative where one does, a repetition where its least count is 0 or its item has it.
fn fixed_point(nodes: &[Node], leaf: impl Fn(&Node, NodeId) -> bool) -> Vec<bool> {
    let mut has = vec![false; nodes.len()];
    loop {
        let mut changed = false;
        for (id, node) in nodes.iter().enumerate() {
            let now = match node {
                Node::Seq(items) => items.iter().all(|&i| has[i]),
                Node::AnyOf(alts) => alts.iter().any(|&a| has[a]),
                Node::Repeat { item, min, .. } => *min == 0 || has[*item],
                other => leaf(other, id),
            };
            if now && !has[id] {
                has[id] = true;
                changed = true;
            }
        }
        if !changed {
            return has;
        }
    }
}

/// The rule holding node `id`, for a message.
fn where_in(id: NodeId, nodes: &[Node], names: &HashMap<NodeId, String>) -> String {
    // the rule whose body reaches `id` through its own nodes (not through other rules)
    for (&rule, name) in names {
        let mut todo = vec![rule];
        let mut seen = vec![false; nodes.len()];
        while let Some(n) = todo.pop() {
            if n == id {
                return format!("rule {name}");
            }
            if std::mem::replace(&mut seen[n], true) || (n != rule && names.contains_key(&n)) {
                continue;
            }
            match &nodes[n] {
                Node::AnyOf(v) | Node::Seq(v) => todo.extend(v),
                Node::Repeat { item, .. } => todo.push(*item),
                _ => {}
            }
        }
    }
    "the grammar".to_string()
}
