//! `glm47._native.JsonVocab` and `JsonConstraint`: the worker's side of constrained decoding
//! (src/grammar).

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyModule};

use crate::grammar::{self, Constraint, Vocab};
use crate::tokenizer::ModelFiles;

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A model's vocabulary as byte strings, for the masks: built once per worker, and once more
/// with the tool-call tags for forced tool calls (`grammar::tools`).
#[pyclass(name = "JsonVocab", module = "glm47._native", frozen)]
struct PyJsonVocab {
    vocab: Arc<Vocab>,
    tools: Arc<Vocab>,
}

#[pymethods]
impl PyJsonVocab {
    /// The vocabulary of `model_dir`'s tokenizer, masks `size` ids wide (the logits' width;
    /// ids the tokenizer does not know are never allowed). Raises ValueError when the tokenizer
    /// cannot be loaded.
    #[new]
    fn new(py: Python<'_>, model_dir: &str, size: usize) -> PyResult<Self> {
        let files = ModelFiles::load(model_dir).map_err(value_error)?;
        let tokenizer = &files.tokenizer;
        let (vocab, tools) = py.allow_threads(|| {
            std::thread::scope(|scope| {
                let tools = scope.spawn(|| {
                    let bytes = tokenizer.grammar_bytes_with(&grammar::TOOL_TAGS);
                    Vocab::for_tool_calls(bytes, size)
                });
                let vocab = Vocab::new(tokenizer.grammar_bytes(), size);
                (vocab, tools.join().expect("the tool vocabulary's thread"))
            })
        });
        Ok(Self {
            vocab: Arc::new(vocab),
            tools: Arc::new(tools),
        })
    }

    /// Ids the masks cover.
    #[getter]
    fn size(&self) -> usize {
        self.vocab.size()
    }
}

/// One request's JSON constraint.
#[pyclass(name = "JsonConstraint", module = "glm47._native")]
struct PyJsonConstraint {
    inner: Constraint,
}

#[pymethods]
impl PyJsonConstraint {
    /// `schema`: a JSON Schema as JSON text, or None for any JSON object; `choices` instead: the
    /// output is exactly one of these strings; `regex` instead: the output matches it whole;
    /// `tool_calls` instead: the rest of a forced tool call (a `grammar::ToolCallSpec` as JSON
    /// text); `ends`: the ids that end generation; `start_after`: the id from which the grammar
    /// applies (None: at once); `compact`: JSON without whitespace between tokens. Raises
    /// ValueError for a grammar that cannot be enforced.
    #[new]
    #[pyo3(signature = (
        vocab, schema, ends, start_after = None, choices = None, regex = None, tool_calls = None,
        compact = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        vocab: &Bound<'_, PyJsonVocab>,
        schema: Option<&str>,
        ends: Vec<u32>,
        start_after: Option<u32>,
        choices: Option<Vec<String>>,
        regex: Option<&str>,
        tool_calls: Option<&str>,
        compact: bool,
    ) -> PyResult<Self> {
        if let Some(spec_text) = tool_calls {
            let spec: grammar::ToolCallSpec = serde_json::from_str(spec_text)
                .map_err(|e| value_error(format!("the tool-call grammar is not valid: {e}")))?;
            let grammar = cached("tool_calls", spec_text, || grammar::tool_calls(&spec))?;
            let vocab = vocab.get().tools.clone();
            let mut inner = Constraint::new(grammar, vocab, ends, start_after);
            if let Some(open) = spec.open_id {
                inner = inner.also_after(open);
            }
            return Ok(Self { inner });
        }
        let grammar = match (regex, choices) {
            (Some(pattern), _) => cached("regex", pattern, || grammar::regex(pattern))?,
            (None, Some(choices)) if choices.is_empty() || choices.iter().any(String::is_empty) => {
                return Err(value_error("a choice needs non-empty strings"))
            }
            (None, Some(choices)) => {
                let key = serde_json::to_string(&choices).map_err(value_error)?;
                cached("choices", &key, || Ok(grammar::one_of(&choices)))?
            }
            (None, None) => {
                let parsed = schema
                    .map(serde_json::from_str::<serde_json::Value>)
                    .transpose()
                    .map_err(|e| value_error(format!("the schema is not JSON: {e}")))?;
                let kind = if compact { "schema-compact" } else { "schema" };
                cached(kind, schema.unwrap_or(""), || match compact {
                    true => grammar::compile_compact(parsed.as_ref()),
                    false => grammar::compile(parsed.as_ref()),
                })?
            }
        };
        let vocab = vocab.get().vocab.clone();
        Ok(Self {
            inner: Constraint::new(grammar, vocab, ends, start_after),
        })
    }

    /// A constraint to the sentences of the EBNF grammar `text` (grammar/ebnf.rs); `ends` and
    /// `start_after` as for the constructor. Raises ValueError for a grammar that cannot be
    /// enforced.
    #[staticmethod]
    #[pyo3(signature = (vocab, text, ends, start_after = None))]
    fn from_ebnf(
        vocab: &Bound<'_, PyJsonVocab>,
        text: &str,
        ends: Vec<u32>,
        start_after: Option<u32>,
    ) -> PyResult<Self> {
        let grammar = cached("ebnf", text, || grammar::ebnf(text))?;
        let vocab = vocab.get().vocab.clone();
        Ok(Self {
            inner: Constraint::new(grammar, vocab, ends, start_after),
        })
    }

    /// A constraint to the output of the structural tag `tag` (JSON text,
    /// grammar/structural.rs), over the vocabulary with the tool-call tags as their text;
    /// `ends` and `start_after` as for the constructor. Raises ValueError for a tag that cannot
    /// be enforced.
    #[staticmethod]
    #[pyo3(signature = (vocab, tag, ends, start_after = None))]
    fn from_structural_tag(
        vocab: &Bound<'_, PyJsonVocab>,
        tag: &str,
        ends: Vec<u32>,
        start_after: Option<u32>,
    ) -> PyResult<Self> {
        let parsed: serde_json::Value = serde_json::from_str(tag)
            .map_err(|e| value_error(format!("the structural tag is not JSON: {e}")))?;
        let grammar = cached("structural_tag", tag, || grammar::structural_tag(&parsed))?;
        let vocab = vocab.get().tools.clone();
        Ok(Self {
            inner: Constraint::new(grammar, vocab, ends, start_after),
        })
    }

    /// Whether the grammar applies to the next token.
    #[getter]
    fn active(&self) -> bool {
        self.inner.active()
    }

    /// Takes a sampled token; False when the grammar does not allow it.
    fn accept(&mut self, token: u32) -> bool {
        self.inner.accept(token)
    }

    /// A copy that reads on independently (the rows after a request's drafts).
    fn fork(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }

    /// Whether the document is whole and nothing can extend it.
    fn is_done(&self) -> bool {
        self.inner.is_done()
    }

    /// The allowed next tokens as little-endian 32-bit words (bit `id % 32` of word `id / 32`).
    fn mask<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let words = py.allow_threads(|| {
            let mut words = vec![0u32; self.inner.vocab().mask_words()];
            self.inner.fill_mask(&mut words);
            words
        });
        PyBytes::new(py, &packed(&words))
    }
}

/// The grammar compiled before from (`kind`, `text`) in this process, else `build()`'s
/// (grammar/cache.rs).
fn cached(
    kind: &'static str,
    text: &str,
    build: impl FnOnce() -> Result<Arc<grammar::Grammar>, grammar::SchemaError>,
) -> PyResult<Arc<grammar::Grammar>> {
    grammar::cache::grammar(kind, text, build).map_err(value_error)
}

fn packed(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The masks of several constraints (`JsonConstraint.mask` of each, in order), computed on up
/// to `threads` threads at once.
#[pyfunction]
#[pyo3(signature = (constraints, threads = 8))]
fn json_masks<'py>(
    py: Python<'py>,
    constraints: Vec<PyRef<'py, PyJsonConstraint>>,
    threads: usize,
) -> Vec<Bound<'py, PyBytes>> {
    let inner: Vec<&Constraint> = constraints.iter().map(|c| &c.inner).collect();
    let masks: Vec<Vec<u8>> = py.allow_threads(|| {
        let mask = |c: &Constraint| {
            let mut words = vec![0u32; c.vocab().mask_words()];
            c.fill_mask(&mut words);
            packed(&words)
        };
        let chunk = inner.len().div_ceil(threads.max(1)).max(1);
        if inner.len() <= 1 || chunk == inner.len() {
            return inner.iter().map(|c| mask(c)).collect();
        }
        std::thread::scope(|scope| {
            let parts: Vec<_> = inner
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().map(|c| mask(c)).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().expect("a mask thread panicked"))
                .collect()
        })
    });
    masks.iter().map(|m| PyBytes::new(py, m)).collect()
}

/// Adds the constraint classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyJsonVocab>()?;
    m.add_class::<PyJsonConstraint>()?;
    m.add_function(wrap_pyfunction!(json_masks, m)?)
}
