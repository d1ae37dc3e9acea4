//! Compiled grammars kept across requests: agents send the same tools, schema or structural tag
//! with every request, and a grammar keeps the masks it walked (`Grammar::walked_masks`), so a
//! request whose grammar was compiled before skips both the compile and its first masks' walks.

use std::sync::{Arc, Mutex};

use super::matcher::Grammar;
use super::schema::SchemaError;

/// Grammars kept, the most recently used first (each holds at most about 15 MB of masks).
pub const CAPACITY: usize = 16;

/// What a grammar is compiled from: its kind and its text (a schema's, a spec's as JSON).
type Key = (&'static str, String);

static KEPT: Mutex<Vec<(Key, Arc<Grammar>)>> = Mutex::new(Vec::new());

/// The grammar compiled before from (`kind`, `text`), else `build()`'s, which is kept (the
/// least recently used one leaves when [`CAPACITY`] are kept). Errors are not kept.
pub fn grammar(
    kind: &'static str,
    text: &str,
    build: impl FnOnce() -> Result<Arc<Grammar>, SchemaError>,
) -> Result<Arc<Grammar>, SchemaError> {
    let lock = || KEPT.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut kept = lock();
        if let Some(i) = kept.iter().position(|((k, t), _)| *k == kind && t == text) {
            let entry = kept.remove(i);
            let grammar = entry.1.clone();
            kept.insert(0, entry);
            return Ok(grammar);
        }
    }
    let grammar = build()?; // outside the lock: another request's compile need not wait
    let mut kept = lock();
    if !kept.iter().any(|((k, t), _)| *k == kind && t == text) {
        kept.insert(0, ((kind, text.to_owned()), grammar.clone()));
        kept.truncate(CAPACITY);
    }
    Ok(grammar)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{grammar, CAPACITY};
    use crate::grammar::ebnf;

    #[test]
    fn a_text_compiled_before_gives_the_same_grammar_until_it_is_the_oldest_of_too_many() {
        let build = |text: &str| grammar("ebnf-test", text, || ebnf(text)).unwrap();
        let first = build("root ::= \"cache-a\"");
        assert!(Arc::ptr_eq(&first, &build("root ::= \"cache-a\"")));
        assert!(!Arc::ptr_eq(&first, &build("root ::= \"cache-b\"")));
        assert!(grammar("ebnf-test", "root ::= x", || ebnf("root ::= x")).is_err());
        for i in 0..CAPACITY {
            build(&format!("root ::= \"cache-{i}\""));
        }
        assert!(!Arc::ptr_eq(&first, &build("root ::= \"cache-a\"")));
    }
}
