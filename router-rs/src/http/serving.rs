//! Serving: binding the listener, running the router until shutdown, and the drain of the
//! requests in flight after the signal.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;

use super::{response_store, router, AppState, HttpOptions};
use crate::app::StopSignals;
use crate::config::RouterConfig;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::template::ChatTemplate;
use crate::tokenizer::ModelFiles;

/// Loads the model directory, starts the dispatcher, binds `host:port` and serves until
/// `shutdown` resolves.
pub async fn serve(config: RouterConfig, signals: StopSignals) -> anyhow::Result<()> {
    let listener = bind(&config.listen_addr()).await?;
    let signals = Arc::new(tokio::sync::Mutex::new(signals));
    let next = |signals: Arc<tokio::sync::Mutex<StopSignals>>, what: &'static str| async move {
        let name = signals.lock().await.next().await;
        tracing::info!("{name} received, {what}");
    };
    let first = next(signals.clone(), "shutting down");
    let again = next(signals, "ending the requests in flight");
    serve_on_with(config, listener, first, again).await
}

/// Pending connections the kernel queues before they are accepted: a burst of thousands of
/// clients connecting at once must not overflow it (the kernel caps it at `somaxconn`).
const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` (host:port; the first address it resolves to that can be bound) with a deep
/// accept queue.
pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        match bind_one(resolved) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => anyhow::anyhow!("cannot listen on {addr}: {e}"),
        None => anyhow::anyhow!("{addr} resolves to no address"),
    })
}

fn bind_one(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Socket options of every accepted connection: no Nagle delay, since a token stream is a run of
/// small writes, each of which the client is waiting for (with Nagle on, a write waits for the
/// acknowledgement of the previous one, which the client may hold back for tens of milliseconds).
pub fn tune_accepted(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
    }
}

/// [`serve`] on an already bound listener (tests bind port 0 and read the port first), until
/// `shutdown` resolves (then the drain runs its whole `--shutdown-timeout`).
pub async fn serve_on(
    config: RouterConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on_with(config, listener, shutdown, std::future::pending()).await
}

/// [`serve_on`], the drain cut short when `again` resolves (a second signal).
async fn serve_on_with(
    config: RouterConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    again: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let dir = config
        .model_dir
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--model-dir is required"))?;
    let custom = config.chat_template_source()?;
    let options = HttpOptions::from_config(&config);
    let cors = options.cors.layer().map_err(anyhow::Error::msg)?;
    if custom.is_some() {
        tracing::info!("chat template from --chat-template");
    }
    let model =
        tokio::task::spawn_blocking(move || ModelFiles::load_with_template(dir, custom)).await??;
    let template = ChatTemplate::new(&model.chat_template)?;
    let metrics = Arc::new(Metrics::new());
    let dispatcher = Dispatcher::start_with(
        config.worker_addr.clone(),
        metrics,
        config.dispatch_options(),
    )?;
    let state = Arc::new(AppState {
        dispatcher: dispatcher.clone(),
        model,
        template,
        options,
        responses: response_store::ResponseStore::new(config.max_stored_responses),
    });
    tracing::info!("listening on {}", listener.local_addr()?);
    let app = router(state).layer(cors); // outermost: a preflight needs no key
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        shutdown.await;
        let _ = stop_tx.send(());
    };
    let served = axum::serve(listener.tap_io(tune_accepted), app)
        .with_graceful_shutdown(stop)
        .into_future();
    let drain = Duration::from_secs_f64(config.shutdown_timeout);
    let served = drained(served, stop_rx, drain, again, &dispatcher).await;
    dispatcher.shutdown();
    Ok(served?)
}

/// Runs the server until it has shut down: once `stopped` fires (no new connection is taken),
/// requests in flight have `drain` to finish; then (or at a second SIGINT or SIGTERM) the
/// dispatcher fails those left, which ends their answers, and their connections get a moment
/// to send that before the server is dropped.
async fn drained(
    served: impl Future<Output = std::io::Result<()>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
    drain: Duration,
    again: impl Future<Output = ()>,
    dispatcher: &Dispatcher,
) -> std::io::Result<()> {
    /// How long connections may take to send the errors that end their requests.
    const LAST_WORDS: Duration = Duration::from_secs(2);
    tokio::pin!(served);
    tokio::select! {
        out = &mut served => return out,
        Ok(()) = stopped => {}
    }
    tokio::select! {
        out = &mut served => return out,
        () = tokio::time::sleep(drain) => {
            tracing::warn!("requests still running {:.0} s after the signal: ending them", drain.as_secs_f64());
        }
        () = again => {}
    }
    dispatcher.shutdown();
    tokio::time::timeout(LAST_WORDS, &mut served)
        .await
        .unwrap_or_else(|_| {
            // dropping the server future (on return) closes them
            tracing::warn!(
                "connections still open {} s later: closing them",
                LAST_WORDS.as_secs()
            );
            Ok(())
        })
}
