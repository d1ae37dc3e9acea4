//! ZeroMQ socket set-up for the dispatcher: the wakeup pair, worker DEALERs and their monitors.

use std::sync::atomic::{AtomicU64, Ordering};

use super::DispatchError;

static ENDPOINT_ID: AtomicU64 = AtomicU64::new(0);

/// A fresh in-process endpoint name.
fn inproc(kind: &str) -> String {
    let n = ENDPOINT_ID.fetch_add(1, Ordering::Relaxed);
    format!("inproc://glm47-dispatch-{kind}-{}-{n}", std::process::id())
}

fn zmq_err(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> DispatchError {
    let context = context.into();
    move |source| DispatchError::Zmq { context, source }
}

/// An in-process PAIR: (sending end for callers, receiving end for the I/O thread).
pub(super) fn wake_pair(ctx: &zmq::Context) -> Result<(zmq::Socket, zmq::Socket), DispatchError> {
    let endpoint = inproc("wake");
    let rx = ctx.socket(zmq::PAIR).map_err(zmq_err("wake socket"))?;
    rx.bind(&endpoint).map_err(zmq_err("wake socket bind"))?;
    let tx = ctx.socket(zmq::PAIR).map_err(zmq_err("wake socket"))?;
    tx.connect(&endpoint)
        .map_err(zmq_err("wake socket connect"))?;
    Ok((tx, rx))
}

/// A worker connection: the DEALER and the PAIR that receives its connection events.
pub(super) struct WorkerSockets {
    pub dealer: zmq::Socket,
    pub monitor: zmq::Socket,
}

/// A DEALER connected to a worker: it queues only on live connections (so nothing stale reaches
/// a worker that comes up later), never lingers on close, and never drops what the worker sends.
pub(super) fn connect_worker(
    ctx: &zmq::Context,
    addr: &str,
) -> Result<WorkerSockets, DispatchError> {
    let dealer = ctx.socket(zmq::DEALER).map_err(zmq_err("dealer socket"))?;
    let monitor = ctx.socket(zmq::PAIR).map_err(zmq_err("monitor socket"))?;
    let endpoint = inproc("monitor");
    let events =
        zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() | zmq::SocketEvent::DISCONNECTED.to_raw();
    let setup = || -> Result<(), zmq::Error> {
        dealer.set_linger(0)?;
        dealer.set_immediate(true)?;
        dealer.set_rcvhwm(0)?;
        dealer.set_sndhwm(100_000)?;
        dealer.set_reconnect_ivl(100)?;
        dealer.set_reconnect_ivl_max(1000)?;
        dealer.monitor(&endpoint, i32::from(events))?;
        monitor.connect(&endpoint)?;
        dealer.connect(addr)
    };
    setup().map_err(zmq_err(format!("worker address {addr:?}")))?;
    Ok(WorkerSockets { dealer, monitor })
}

/// What a connection monitor reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkEvent {
    /// A connection to the worker is up and can carry messages.
    Connected,
    /// The connection dropped (the worker exited or the network failed); ZeroMQ reconnects.
    Disconnected,
}

/// Reads every pending monitor event (each is two frames: event id + value, then the endpoint).
pub(super) fn read_link_events(monitor: &zmq::Socket) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) {
        let Some(head) = frames.first().filter(|f| f.len() >= 2) else {
            continue;
        };
        let id = u16::from_ne_bytes([head[0], head[1]]);
        if id == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() {
            events.push(LinkEvent::Connected);
        } else if id == zmq::SocketEvent::DISCONNECTED.to_raw() {
            events.push(LinkEvent::Disconnected);
        }
    }
    events
}
