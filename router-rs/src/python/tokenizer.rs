//! `glm47._native.Tokenizer`: the router's tokenizer and chat template, usable from Python.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use crate::template::ChatTemplate;
use crate::tokenizer::{ModelFiles, Tokenizer};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Converts a Python object (lists, dicts, strings, numbers) to JSON through Python's `json`
/// module, so key order and exact integers survive; anything JSON cannot hold (sets, NaN) is a
/// ValueError.
fn to_json(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("ensure_ascii", false)?;
    let text: String = py
        .import("json")?
        .call_method("dumps", (obj,), Some(&kwargs))
        .and_then(|text| text.extract())
        .map_err(|e| value_error(format!("not JSON data: {e}")))?;
    serde_json::from_str(&text).map_err(|e| value_error(format!("not JSON data: {e}")))
}

/// The tokenizer and chat template of a model directory.
#[pyclass(name = "Tokenizer", module = "glm47._native", frozen)]
struct PyTokenizer {
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
}

#[pymethods]
impl PyTokenizer {
    /// Loads tokenizer.json, the chat template and the configs from `model_dir`; raises
    /// ValueError if a required file is missing or malformed.
    #[new]
    fn new(model_dir: &str) -> PyResult<Self> {
        let files = ModelFiles::load(model_dir).map_err(value_error)?;
        let template = ChatTemplate::new(&files.chat_template).map_err(value_error)?;
        Ok(Self {
            tokenizer: files.tokenizer,
            template: Arc::new(template),
        })
    }

    /// Token ids of `text`, with no BOS added; special tokens in the text map to their ids.
    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        py.allow_threads(|| self.tokenizer.encode(text))
            .map_err(value_error)
    }

    /// The text of `ids`; special tokens are dropped when `skip_special_tokens`.
    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        py.allow_threads(|| self.tokenizer.decode(&ids, skip_special_tokens))
            .map_err(value_error)
    }

    /// Renders `messages` (and `tools`) with the chat template, like transformers'
    /// `apply_chat_template(..., tokenize=False)`; extra keyword arguments become template
    /// variables (`enable_thinking=False`). Raises ValueError when rendering fails.
    #[pyo3(signature = (messages, tools = None, add_generation_prompt = true, **template_kwargs))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        tools: Option<&Bound<'_, PyAny>>,
        add_generation_prompt: bool,
        template_kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let messages = to_json(py, messages)?;
        let tools = tools.map(|t| to_json(py, t)).transpose()?;
        let kwargs = match template_kwargs {
            Some(kw) => match to_json(py, kw.as_any())? {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            None => serde_json::Map::new(),
        };
        py.allow_threads(|| {
            self.template
                .render(&messages, tools.as_ref(), add_generation_prompt, &kwargs)
        })
        .map_err(value_error)
    }

    /// Ids that end generation.
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.tokenizer.eos_token_ids().to_vec()
    }

    /// Number of ids the tokenizer knows, added tokens included.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    /// Sorted ids of the special tokens.
    #[getter]
    fn special_token_ids(&self) -> Vec<u32> {
        self.tokenizer.special_token_ids().iter().copied().collect()
    }
}

/// Adds the `Tokenizer` class to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()
}
