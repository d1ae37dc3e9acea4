//! The router's listener queues a burst of connections before any is accepted.

use std::time::Duration;

/// Connects `n` clients to a listener that accepts nothing yet: each connect completes only if
/// the kernel's accept queue holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_waits_in_the_accept_queue() {
    const CLIENTS: usize = 1500; // more than the 1024 of a default listen backlog
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn < CLIENTS {
        eprintln!("skipped: net.core.somaxconn is {somaxconn}, below {CLIENTS}");
        return;
    }
    let files = glm47_router::app::raise_open_file_limit().unwrap_or(0);
    if files < 2 * CLIENTS as u64 {
        eprintln!("skipped: the open-file limit is {files}");
        return;
    }
    let listener = glm47_router::http::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(stream)) => clients.push(stream),
            Ok(Err(e)) => panic!("connection {i} failed: {e}"),
            Err(_) => panic!("connection {i} did not complete: the accept queue is full"),
        }
    }
    let (_first, _) = listener.accept().await.unwrap();
    assert_eq!(clients.len(), CLIENTS);
}

#[tokio::test]
async fn bind_takes_ipv4_and_names() {
    let listener = glm47_router::http::bind("localhost:0").await.unwrap();
    assert!(listener.local_addr().unwrap().port() > 0);
    assert!(glm47_router::http::bind("no-such-host.invalid:80")
        .await
        .is_err());
}

#[tokio::test]
async fn bind_reports_a_port_in_use() {
    let held = glm47_router::http::bind("127.0.0.1:0").await.unwrap();
    let port = held.local_addr().unwrap().port();
    let err = glm47_router::http::bind(&format!("127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
}

#[tokio::test]
async fn accepted_connections_send_small_writes_at_once() {
    let listener = glm47_router::http::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut accepted, _) = listener.accept().await.unwrap();
    assert!(
        !accepted.nodelay().unwrap(),
        "a fresh socket has Nagle's algorithm on"
    );
    glm47_router::http::tune_accepted(&mut accepted);
    assert!(accepted.nodelay().unwrap());
}
