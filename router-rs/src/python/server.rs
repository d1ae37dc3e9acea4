//! `glm47._native.router_main`: runs the router process from Python.

use pyo3::exceptions::{PyRuntimeError, PySystemExit};
use pyo3::prelude::*;

use crate::app::{run_blocking, UsageError};

/// Runs the router with `argv` (program name first) until SIGINT or SIGTERM, without holding the
/// GIL. An invalid command line raises `SystemExit(2)`; any other failure `RuntimeError`.
#[pyfunction]
fn router_main(py: Python<'_>, argv: Vec<String>) -> PyResult<()> {
    match py.allow_threads(move || run_blocking(argv)) {
        Ok(()) => Ok(()),
        Err(e) if e.is::<UsageError>() => Err(PySystemExit::new_err(2)),
        Err(e) => Err(PyRuntimeError::new_err(format!("{e:#}"))),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(router_main, m)?)?;
    Ok(())
}
