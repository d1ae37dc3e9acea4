//! Structural tags (`response_format` `structural_tag`, as vLLM and SGLang take them, in
//! XGrammar's notation): free text with structures in it, each opened by a trigger.
//!
//! Two forms. The first lists `structures` (`begin`, a JSON `schema`, `end`) and `triggers`:
//! the output is any text until a trigger appears, which must then go on as the `begin` of a
//! structure it starts, then a JSON value of that structure's schema, then its `end`, then any
//! text again (the same as `triggered_tags` below with those tags). The second gives a `format`
//! object of one of these types (elements are formats again):
//! - `const_string` (`value`): exactly that text;
//! - `json_schema` (`json_schema`): a JSON value of the schema (schema.rs's subset), no
//!   whitespace around it;
//! - `regex` (`pattern`): text that the regular expression matches whole;
//! - `grammar` (`grammar`): a sentence of the EBNF grammar (ebnf.rs);
//! - `sequence` / `or` (`elements`): each in turn / any one of them;
//! - `tag` (`begin`, `content`, `end`): the three in turn; an `any_text` content then runs up to
//!   the first `end`;
//! - `any_text` (`excluded_str`): any text holding none of those strings;
//! - `triggered_tags` (`triggers`, `tags`, `at_least_one`, `stop_after_first`): any text (none
//!   of the triggers in it) until a trigger, which goes on as the `begin` of a tag it is a prefix
//!   of (each tag's `begin` starts with exactly one trigger), that tag, then text again; with
//!   `at_least_one` the output starts with a tag; with `stop_after_first` the format ends after
//!   its first tag (or with text holding no trigger);
//! - `tags_with_separator` (`tags`, `separator`, `at_least_one`, `stop_after_first`): tags with
//!   the separator between them and nothing else, none unless `at_least_one`, at most one with
//!   `stop_after_first`.
//!
//! Other types (`qwen_xml_parameter`) are refused.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::compile::{choices_node, err, Builder};
use super::regex::{CharsToMatch, Regex};
use super::schema::{Node, NodeId, Pattern, Schema, SchemaError};
use super::structural_read::{elements, excluded, flags, object, string, triggers};
use super::words::Words;

/// The schema of a structural tag: the `response_format` object (its `type` aside).
pub fn compile(tag: &Value) -> Result<Schema, SchemaError> {
    let mut t = Tags {
        b: Builder::new(&Value::Null),
        word_bytes: 0,
    };
    let root = match (tag.get("format"), tag.get("structures")) {
        (Some(format), None) => t.format(format, "#/format")?,
        (None, Some(structures)) => t.structures(tag, structures)?,
        _ => {
            return Err(err(
                "#",
                "a structural tag needs either `format` or `structures` with `triggers`",
            ))
        }
    };
    let schema = Schema {
        nodes: t.b.nodes,
        root,
        raw: true,
        no_close_tags: false,
    };
    schema.check_alternatives()?;
    Ok(schema)
}

struct Tags<'a> {
    b: Builder<'a>,
    /// Bytes of the words of every free text so far (each byte a 1 KB table row).
    word_bytes: usize,
}

/// Most bytes the triggers, ends and excluded strings of one structural tag hold together.
const MAX_WORD_BYTES: usize = 16 << 10;

/// One tag: the text that opens it, its content's node, and the text that closes it.
struct Tag<'a> {
    begin: &'a str,
    content: NodeId,
    end: &'a str,
}

impl<'a> Tags<'a> {
    /// The first form: `structures` and `triggers`.
    fn structures(&mut self, tag: &'a Value, structures: &'a Value) -> Result<NodeId, SchemaError> {
        let list = structures
            .as_array()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err("#/structures", "structures must be a non-empty list"))?;
        let mut tags = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let path = format!("#/structures/{i}");
            let s = object(s, &path)?;
            let schema = s
                .get("schema")
                .ok_or_else(|| err(&path, "a structure needs a schema"))?;
            tags.push(Tag {
                begin: string(s, "begin", &path)?,
                content: self.json(schema, &format!("{path}/schema"))?,
                end: string(s, "end", &path)?,
            });
        }
        let triggers = triggers(tag.get("triggers"), "#/triggers")?;
        self.triggered(&triggers, tags, false, false, "#")
    }

    fn format(&mut self, f: &'a Value, path: &str) -> Result<NodeId, SchemaError> {
        let obj = object(f, path)?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| err(path, "a format needs a type"))?;
        match kind {
            "const_string" => Ok(self.literal(string(obj, "value", path)?)),
            "json_schema" => {
                let schema = obj
                    .get("json_schema")
                    .ok_or_else(|| err(path, "a json_schema format needs json_schema"))?;
                self.json(schema, &format!("{path}/json_schema"))
            }
            "regex" => {
                let regex = Regex::new(string(obj, "pattern", path)?)
                    .and_then(Regex::matching_some)
                    .map_err(|e| err(&format!("{path}/pattern"), e.message))?;
                Ok(self.b.push(Node::RawRegex(Arc::new(Pattern {
                    regex,
                    chars_to_match: CharsToMatch::default(),
                    no_lt: false,
                }))))
            }
            "grammar" => {
                let schema = super::ebnf::compile(string(obj, "grammar", path)?)
                    .map_err(|e| err(&format!("{path}/grammar"), e.message))?;
                Ok(self.splice(schema))
            }
            "sequence" | "or" => {
                let mut items = Vec::new();
                for (i, e) in elements(obj, "elements", path)?.iter().enumerate() {
                    items.push(self.format(e, &format!("{path}/elements/{i}"))?);
                }
                Ok(self.b.push(if kind == "or" {
                    Node::AnyOf(items)
                } else {
                    Node::Seq(items)
                }))
            }
            "tag" => {
                let tag = self.tag(f, path)?;
                Ok(self.whole(&tag))
            }
            "any_text" => {
                let excluded = excluded(obj, path)?;
                self.free(excluded, None, true, path)
            }
            "triggered_tags" => {
                let triggers = triggers(obj.get("triggers"), &format!("{path}/triggers"))?;
                let tags = self.tag_list(obj, path)?;
                let (once, first) = flags(obj, path)?;
                self.triggered(&triggers, tags, once, first, path)
            }
            "tags_with_separator" => {
                let tags: Vec<NodeId> = self
                    .tag_list(obj, path)?
                    .iter()
                    .map(|t| self.whole(t))
                    .collect();
                let tag = self.b.push(Node::AnyOf(tags));
                let separator = match obj.get("separator") {
                    None => "",
                    Some(_) => string(obj, "separator", path)?,
                };
                let (at_least_one, stop_after_first) = flags(obj, path)?;
                let some = if stop_after_first {
                    tag
                } else {
                    let sep = self.literal(separator);
                    let next = self.b.push(Node::Seq(vec![sep, tag]));
                    if nullable(&self.b.nodes, next) {
                        return Err(err(path, "tags that may be empty need a separator"));
                    }
                    let rest = self.b.push(Node::Repeat {
                        item: next,
                        min: 0,
                        max: None,
                    });
                    self.b.push(Node::Seq(vec![tag, rest]))
                };
                Ok(if at_least_one {
                    some
                } else {
                    let none = self.literal("");
                    self.b.push(Node::AnyOf(vec![none, some]))
                })
            }
            other => Err(err(
                path,
                format!("structural tag format type {other:?} is not supported"),
            )),
        }
    }

    /// A `tag` object (its `type` may be left out in a list of tags).
    fn tag(&mut self, f: &'a Value, path: &str) -> Result<Tag<'a>, SchemaError> {
        let obj = object(f, path)?;
        if obj.get("type").is_some_and(|t| t.as_str() != Some("tag")) {
            return Err(err(path, "a tag's type must be \"tag\""));
        }
        let begin = string(obj, "begin", path)?;
        let end = string(obj, "end", path)?;
        let content = obj
            .get("content")
            .ok_or_else(|| err(path, "a tag needs a content"))?;
        let cpath = format!("{path}/content");
        let any_text = content.get("type").and_then(Value::as_str) == Some("any_text");
        if any_text && !end.is_empty() {
            // any text up to the first `end`, which it reads too
            let excluded = excluded(object(content, &cpath)?, &cpath)?;
            let stop = self.literal("");
            let content = self.free(excluded, Some((end, stop)), false, &cpath)?;
            return Ok(Tag {
                begin,
                content,
                end: "",
            });
        }
        Ok(Tag {
            begin,
            content: self.format(content, &cpath)?,
            end,
        })
    }

    fn tag_list(
        &mut self,
        obj: &'a Map<String, Value>,
        path: &str,
    ) -> Result<Vec<Tag<'a>>, SchemaError> {
        elements(obj, "tags", path)?
            .iter()
            .enumerate()
            .map(|(i, t)| self.tag(t, &format!("{path}/tags/{i}")))
            .collect()
    }

    /// A tag's text from its `begin`.
    fn whole(&mut self, tag: &Tag<'_>) -> NodeId {
        self.after(tag, "")
    }

    /// A tag's text after the first `skip` of its `begin` (its trigger, read already).
    fn after(&mut self, tag: &Tag<'_>, skip: &str) -> NodeId {
        let begin = self.literal(&tag.begin[skip.len()..]);
        let end = self.literal(tag.end);
        self.b.push(Node::Seq(vec![begin, tag.content, end]))
    }

    fn triggered(
        &mut self,
        triggers: &[&str],
        tags: Vec<Tag<'_>>,
        at_least_one: bool,
        stop_after_first: bool,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        if tags.is_empty() {
            return Err(err(path, "triggered tags need at least one tag"));
        }
        // after trigger k: the rest of any tag whose begin it starts
        let mut rests: Vec<Vec<NodeId>> = vec![Vec::new(); triggers.len()];
        let mut wholes = Vec::new();
        for (i, tag) in tags.iter().enumerate() {
            let starts: Vec<usize> = (0..triggers.len())
                .filter(|&k| tag.begin.starts_with(triggers[k]))
                .collect();
            let [k] = starts[..] else {
                return Err(err(
                    &format!("{path}/tags/{i}"),
                    format!(
                        "the begin {:?} must start with exactly one trigger ({} do)",
                        tag.begin,
                        starts.len()
                    ),
                ));
            };
            let rest = self.after(tag, triggers[k]);
            rests[k].push(rest);
            wholes.push(self.whole(tag));
        }
        let then: Vec<Option<NodeId>> = rests
            .into_iter()
            .map(|r| (!r.is_empty()).then(|| self.b.push(Node::AnyOf(r))))
            .collect();
        let words: Vec<Vec<u8>> = triggers.iter().map(|t| t.as_bytes().to_vec()).collect();
        let words = self.words(&words, path)?;
        // text up to a trigger and its tag; text without a trigger to the end
        let to_tag = self.b.push(Node::Free {
            words: words.clone(),
            then,
            open: false,
        });
        let plain = self.b.push(Node::Free {
            then: vec![None; words.len()],
            words,
            open: true,
        });
        let first = self.b.push(Node::AnyOf(wholes));
        Ok(match (at_least_one, stop_after_first) {
            (true, true) => first,
            (false, true) => self.b.push(Node::AnyOf(vec![plain, to_tag])),
            (_, false) => {
                let more = self.b.push(Node::Repeat {
                    item: to_tag,
                    min: 0,
                    max: None,
                });
                let mut items = if at_least_one {
                    vec![first]
                } else {
                    Vec::new()
                };
                items.extend([more, plain]);
                self.b.push(Node::Seq(items))
            }
        })
    }

    /// Free text without `excluded`; with `stop` (a word and the node after it), read up to
    /// the word's first occurrence; with `open`, it may end anywhere.
    fn free(
        &mut self,
        excluded: Vec<&str>,
        stop: Option<(&str, NodeId)>,
        open: bool,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        let mut words: Vec<Vec<u8>> = Vec::new();
        let mut then = Vec::new();
        if let Some((word, next)) = stop {
            if let Some(e) = excluded.iter().find(|e| word.contains(**e)) {
                return Err(err(
                    path,
                    format!("the excluded {e:?} is in the end {word:?}"),
                ));
            }
            words.push(word.as_bytes().to_vec());
            then.push(Some(next));
        }
        for e in excluded {
            words.push(e.as_bytes().to_vec());
            then.push(None);
        }
        let words = self.words(&words, path)?;
        Ok(self.b.push(Node::Free { words, then, open }))
    }

    /// The automaton of `words`, counted against [`MAX_WORD_BYTES`].
    fn words(&mut self, words: &[Vec<u8>], path: &str) -> Result<Arc<Words>, SchemaError> {
        self.word_bytes += words.iter().map(Vec::len).sum::<usize>();
        if self.word_bytes > MAX_WORD_BYTES {
            return Err(err(
                path,
                format!("the tag's triggers, ends and excluded strings hold more than {MAX_WORD_BYTES} bytes"),
            ));
        }
        Ok(Arc::new(Words::new(words).map_err(|m| err(path, m))?))
    }

    fn json(&mut self, schema: &'a Value, path: &str) -> Result<NodeId, SchemaError> {
        self.b.set_document(schema);
        let value = self.b.compile(schema, "#").map_err(|e| {
            let inner = e.path.trim_start_matches('#');
            err(&format!("{path}{inner}"), e.message)
        })?;
        // in a sequence: a root pattern or choice would be read as raw text, not as JSON
        Ok(self.b.push(Node::Seq(vec![value])))
    }

    fn literal(&mut self, text: &str) -> NodeId {
        if text.is_empty() {
            return self.b.push(Node::Seq(Vec::new()));
        }
        self.b.push(choices_node([text.as_bytes()]))
    }

    /// The nodes of another schema (an EBNF grammar's) added to these; its root's new id.
    fn splice(&mut self, schema: Schema) -> NodeId {
        let by = self.b.nodes.len();
        self.b
            .nodes
            .extend(schema.nodes.into_iter().map(|n| shifted(n, by)));
        schema.root + by
    }
}

/// `node` with every node id in it moved up by `by`.
fn shifted(node: Node, by: usize) -> Node {
    let ids = |v: Vec<NodeId>| v.into_iter().map(|i| i + by).collect();
    match node {
        Node::Object {
            mut props,
            additional,
            min,
            max,
        } => {
            props.iter_mut().for_each(|p| p.node += by);
            Node::Object {
                props,
                additional: additional.map(|a| a + by),
                min,
                max,
            }
        }
        Node::Args {
            mut props,
            additional,
        } => {
            props.iter_mut().for_each(|p| p.node += by);
            Node::Args {
                props,
                additional: additional.map(|a| a + by),
            }
        }
        Node::Array {
            prefix,
            items,
            min,
            max,
            unique,
        } => Node::Array {
            prefix: ids(prefix),
            items: items + by,
            min,
            max,
            unique,
        },
        Node::AnyOf(alts) => Node::AnyOf(ids(alts)),
        Node::Seq(items) => Node::Seq(ids(items)),
        Node::Repeat { item, min, max } => Node::Repeat {
            item: item + by,
            min,
            max,
        },
        Node::Free { words, then, open } => Node::Free {
            words,
            then: then.into_iter().map(|t| t.map(|n| n + by)).collect(),
            open,
        },
        other => other,
    }
}

/// Whether raw-text node `id` may read nothing (rules that refer back count as not).
fn nullable(nodes: &[Node], id: NodeId) -> bool {
    fn go(nodes: &[Node], id: NodeId, seen: &mut Vec<NodeId>) -> bool {
        if seen.contains(&id) {
            return false;
        }
        seen.push(id);
        let empty = match &nodes[id] {
            Node::Seq(items) => items.iter().all(|&i| go(nodes, i, seen)),
            Node::AnyOf(alts) => alts.iter().any(|&a| go(nodes, a, seen)),
            Node::Choices(texts) => texts.iter().any(Vec::is_empty),
            Node::Repeat { item, min, .. } => *min == 0 || go(nodes, *item, seen),
            Node::Free { open, .. } => *open,
            Node::RawRegex(p) => p.regex.can_end(p.regex.start()),
            _ => false,
        };
        seen.pop();
        empty
    }
    go(nodes, id, &mut Vec::new())
}
