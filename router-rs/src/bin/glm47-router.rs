//! The `glm47-router` binary: the HTTP front end of glm47 (see `glm47-router --help`).

use std::process::ExitCode;

use glm47_router::app::{run_blocking, UsageError};

fn main() -> ExitCode {
    match run_blocking(std::env::args().collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<UsageError>() => ExitCode::from(2),
        Err(e) => {
            eprintln!("glm47-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}
