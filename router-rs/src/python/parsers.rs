//! Python bindings of the streaming parsers: `glm47._native.Glm47ToolParser` and
//! `glm47._native.Glm45ReasoningParser`. Events are plain dicts, so Python callers need no classes
//! beyond the parsers themselves.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::Value;

use crate::parsers::{Glm45ReasoningParser, Glm47ToolParser, ReasoningDelta, ToolEvent};

/// Streaming GLM-4.7 tool-call parser. `tools` is the request's OpenAI `tools` list (or None);
/// `prefix` is text the prompt already ends with (e.g. `<tool_call>NAME`); `id_seed` makes call ids
/// reproducible.
#[pyclass(name = "Glm47ToolParser", module = "glm47._native")]
struct PyGlm47ToolParser {
    tools: Vec<Value>,
    prefix: String,
    inner: Glm47ToolParser,
}

#[pymethods]
impl PyGlm47ToolParser {
    #[new]
    #[pyo3(signature = (tools, prefix = "", id_seed = None))]
    fn new(tools: &Bound<'_, PyAny>, prefix: &str, id_seed: Option<u64>) -> PyResult<Self> {
        let tools = tools_from_py(tools)?;
        let inner = Glm47ToolParser::with_options(&tools, prefix, id_seed);
        Ok(Self {
            tools,
            prefix: prefix.to_string(),
            inner,
        })
    }

    /// Feeds the next chunk; returns `[{"content": str} | {"tool_call": {...}}]`.
    fn feed<'py>(&mut self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyList>> {
        events_to_py(py, self.inner.feed(text))
    }

    /// Ends the output; returns the remaining events.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        events_to_py(py, self.inner.finish())
    }

    /// One-shot parse of a whole output with the same tools and prefix (fresh state):
    /// `{"content": str, "tool_calls": [{"name": str, "arguments": str}]}`.
    fn parse<'py>(&self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyDict>> {
        let parsed = Glm47ToolParser::with_options(&self.tools, &self.prefix, None).collect(text);
        let calls = PyList::empty(py);
        for call in parsed.tool_calls {
            let dict = PyDict::new(py);
            dict.set_item("name", call.name)?;
            dict.set_item("arguments", call.arguments)?;
            calls.append(dict)?;
        }
        let out = PyDict::new(py);
        out.set_item("content", parsed.content)?;
        out.set_item("tool_calls", calls)?;
        Ok(out)
    }
}

/// Streaming GLM-4.5 reasoning parser; `in_reasoning` is true when the prompt ended in `<think>`.
#[pyclass(name = "Glm45ReasoningParser", module = "glm47._native")]
struct PyGlm45ReasoningParser {
    inner: Glm45ReasoningParser,
}

#[pymethods]
impl PyGlm45ReasoningParser {
    #[new]
    fn new(in_reasoning: bool) -> Self {
        Self {
            inner: Glm45ReasoningParser::new(in_reasoning),
        }
    }

    /// Feeds the next chunk; returns `{"reasoning_content": str, "content": str}`.
    fn feed<'py>(&mut self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyDict>> {
        delta_to_py(py, self.inner.feed(text))
    }

    /// Ends the output; returns held-back text.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        delta_to_py(py, self.inner.finish())
    }
}

/// Converts a Python list of tool dicts (or None) through `json.dumps`.
fn tools_from_py(tools: &Bound<'_, PyAny>) -> PyResult<Vec<Value>> {
    if tools.is_none() {
        return Ok(Vec::new());
    }
    let text: String = tools
        .py()
        .import("json")?
        .call_method1("dumps", (tools,))?
        .extract()?;
    match serde_json::from_str(&text) {
        Ok(Value::Array(tools)) => Ok(tools),
        Ok(_) => Err(PyValueError::new_err(
            "tools must be a list of tool objects",
        )),
        Err(err) => Err(PyValueError::new_err(format!(
            "tools are not valid JSON: {err}"
        ))),
    }
}

fn events_to_py(py: Python<'_>, events: Vec<ToolEvent>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for event in events {
        let dict = PyDict::new(py);
        match event {
            ToolEvent::Content(text) => dict.set_item("content", text)?,
            ToolEvent::Call {
                index,
                id,
                name,
                arguments,
            } => {
                let call = PyDict::new(py);
                call.set_item("index", index)?;
                call.set_item("id", id)?;
                call.set_item("name", name)?;
                call.set_item("arguments", arguments)?;
                dict.set_item("tool_call", call)?;
            }
        }
        list.append(dict)?;
    }
    Ok(list)
}

fn delta_to_py(py: Python<'_>, delta: ReasoningDelta) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("reasoning_content", delta.reasoning)?;
    dict.set_item("content", delta.content)?;
    Ok(dict)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGlm47ToolParser>()?;
    m.add_class::<PyGlm45ReasoningParser>()?;
    Ok(())
}
