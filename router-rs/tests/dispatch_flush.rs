//! `flush_cache` through the dispatcher: every worker is told, and the router's prefix record
//! (prefix-aware balancing) forgets what it had sent them.

mod dispatch_support;

use std::sync::Arc;
use std::time::Duration;

use dispatch_support::*;
use glm47_router::dispatch::{Dispatcher, RequestHandle};
use glm47_router::metrics::Metrics;
use glm47_router::wire::{self, Message};

/// A prompt of `len` tokens of its own.
fn prompt(conversation: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| conversation * 10_000 + i).collect()
}

/// Two ready fake workers behind a dispatcher balancing by prefix (the default).
fn two_workers() -> (FakeWorker, FakeWorker, Arc<Dispatcher>, Arc<Metrics>) {
    let (w0, w1) = (FakeWorker::bind(), FakeWorker::bind());
    let addrs = vec![w0.addr.clone(), w1.addr.clone()];
    let (d, metrics) = start(addrs, Duration::from_secs(30));
    w0.handshake("tiny");
    w1.handshake("tiny");
    wait_until("both ready", || d.ready_workers().len() == 2);
    (w0, w1, d, metrics)
}

fn submit(d: &Dispatcher, ids: Vec<u32>) -> RequestHandle {
    d.submit(wire::Request::new("c", ids, 4))
        .expect("submitted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_unpins_prefixes_so_the_next_turn_goes_by_load() {
    let (w0, w1, d, metrics) = two_workers();
    // Handles are held, so every request stays in flight and the loads stay as counted.
    let first = submit(&d, prompt(1, 100));
    assert_eq!(first.worker_addr(), w0.addr, "equal loads: the lower index");
    let mut turn = prompt(1, 100);
    turn.extend(500..540);
    let pinned = submit(&d, turn.clone());
    assert_eq!(pinned.worker_addr(), w0.addr, "its prefix went to w0");
    assert_eq!(d.in_flight(), vec![2, 0]);
    assert!(metrics.render().contains("glm47_prefix_routed_total 1"));

    assert_eq!(d.flush_caches(), 2);
    // Right after the call, with no wait for the I/O thread: the same turn, its prefix no longer
    // recorded anywhere, goes to the least loaded worker.
    let after = submit(&d, turn);
    assert_eq!(after.worker_addr(), w1.addr);
    assert_eq!(d.in_flight(), vec![2, 1]);
    assert!(metrics.render().contains("glm47_prefix_routed_total 1"));

    // w0 got its two requests, then the flush; w1 the flush, then the request sent after it.
    let mut sent = 0;
    while sent < 2 {
        sent += w0.recv_submit().1.len();
    }
    assert!(matches!(w0.recv_work().1, Message::FlushCache(_)));
    assert!(matches!(w1.recv_work().1, Message::FlushCache(_)));
    let (_, reqs) = w1.recv_submit();
    assert_eq!(reqs[0].rid, after.rid());

    // What is sent after the flush is recorded again: the next turn is routed by its match.
    let mut next = prompt(1, 100);
    next.extend(500..540);
    next.extend(700..740);
    let again = submit(&d, next);
    assert_eq!(again.worker_addr(), w1.addr);
    assert!(metrics.render().contains("glm47_prefix_routed_total 2"));
    drop((first, pinned, after, again));
}
