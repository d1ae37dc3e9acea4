//! PyO3 bindings: the `glm47._native` extension module.

use pyo3::prelude::*;

mod grammar;
mod parsers;
mod server;
mod tokenizer;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    tokenizer::register(m)?;
    grammar::register(m)?;
    parsers::register(m)?;
    server::register(m)?;
    Ok(())
}
