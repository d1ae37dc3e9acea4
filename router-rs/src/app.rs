//! Process entry: command line, logging, runtime, and graceful shutdown on SIGINT or SIGTERM.
//!
//! Both the `glm47-router` binary and `glm47._native.router_main` (the `glm47-router` Python
//! command) call [`run_blocking`].

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::config::RouterConfig;

/// The command line was invalid (the message, with usage, was already printed); exit with 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid command line")]
pub struct UsageError;

/// Parses `args` (program name first), sets up logging and runs the router until SIGINT or
/// SIGTERM. `--help` and `--version` print and return `Ok`. Blocks the calling thread.
pub fn run_blocking(args: Vec<String>) -> anyhow::Result<()> {
    let config = match RouterConfig::try_parse_from(args) {
        Ok(config) => config,
        Err(e) => {
            let usage = e.use_stderr();
            // Printing fails only when stdout is gone (`--help | head`); nothing to report then.
            let _ = e.print();
            return if usage {
                Err(UsageError.into())
            } else {
                Ok(())
            };
        }
    };
    init_logging(&config.log_level);
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("glm47-router")
        .build()?;
    runtime.block_on(async { crate::http::serve(config, StopSignals::new()).await })
}

/// Lifts the soft limit on open files towards the hard one (at most 65536: one socket per HTTP
/// stream, thousands in a burst); warns when it stays low, since every connection past it waits in
/// the accept queue or fails. Returns the soft limit now in force (None where it cannot be read).
#[cfg(unix)]
pub fn raise_open_file_limit() -> Option<u64> {
    const WANTED: libc::rlim_t = 65536;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let wanted = lim.rlim_max.min(WANTED);
    if lim.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = wanted;
        }
    }
    if lim.rlim_cur < 4096 {
        tracing::warn!(
            "open-file limit is {} (hard {}): connections beyond it will wait or fail; raise it with `ulimit -n`",
            lim.rlim_cur,
            lim.rlim_max
        );
    } else {
        tracing::debug!("open-file limit {}", lim.rlim_cur);
    }
    Some(lim.rlim_cur)
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<u64> {
    None
}

/// Logs to stderr; `RUST_LOG` wins over `--log-level`. A second call (the Python module run twice
/// in one process) keeps the first subscriber.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(log_directive(level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Accepts Python's level names too (`glm47 serve` passes one `--log-level` to both processes):
/// `WARNING` means `warn`, `CRITICAL` and `FATAL` mean `error`; case does not matter.
fn log_directive(level: &str) -> String {
    match level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_owned(),
        "critical" | "fatal" => "error".to_owned(),
        other => other.to_owned(),
    }
}

/// Set by `glm47 serve` in its children's environment: a terminal's Ctrl-C reaches the whole
/// process group, and serve stops the router itself (SIGTERM), so SIGINT is left to it.
pub const SUPERVISED_ENV: &str = "GLM47_SUPERVISED";

/// The signals that stop the router: SIGTERM, and SIGINT unless `glm47 serve` supervises it
/// ([`SUPERVISED_ENV`]). Listened to from start-up on, so that a second signal is not lost
/// while the first is being handled.
pub struct StopSignals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts listening (inside the runtime).
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|e| tracing::error!("cannot listen for {name}: {e}"))
                    .ok()
            };
            let supervised = std::env::var(SUPERVISED_ENV).is_ok_and(|v| v == "1");
            if supervised {
                // SAFETY: setting a signal's disposition to "ignore" touches no memory of ours.
                unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
            }
            Self {
                int: (!supervised)
                    .then(|| listen(SignalKind::interrupt(), "SIGINT"))
                    .flatten(),
                term: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next signal, naming it.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let int = async {
                match self.int.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let term = async {
                match self.term.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = int => "SIGINT",
                _ = term => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

impl Default for StopSignals {
    fn default() -> Self {
        Self::new()
    }
}

/// Hands memory the allocator holds but no longer uses back to the system (glibc keeps freed
/// heap for reuse: one 5 MB prompt's tokenization left the router about 300 MB larger).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_level_names_become_tracing_levels() {
        assert_eq!(log_directive("WARNING"), "warn");
        assert_eq!(log_directive("CRITICAL"), "error");
        assert_eq!(log_directive("Info"), "info");
        assert_eq!(log_directive("glm47_router=debug"), "glm47_router=debug");
        for level in ["DEBUG", "warning", "critical", "error", "trace"] {
            assert!(EnvFilter::try_new(log_directive(level)).is_ok(), "{level}");
        }
    }

    #[test]
    fn help_returns_ok_and_a_bad_flag_is_a_usage_error() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(run_blocking(args(&["glm47-router", "--version"])).is_ok());
        let err = run_blocking(args(&["glm47-router", "--no-such-flag"])).expect_err("rejected");
        assert!(err.is::<UsageError>());
    }
}
