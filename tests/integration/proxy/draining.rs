//! Draining: a shutdown finishes in-flight requests and refuses new connections.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/sleep?ms=1500", &[]).await });
    assert!(eventually(Duration::from_secs(5), async || v1.hits() == 1).await);
    gw.shutdown().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "v1");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

/// A raw upstream that answers each request with its target as the body;
/// a request for `/hold` is answered only once `release` is notified.
/// `held` counts the `/hold` requests received.
async fn holding_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<tokio::sync::Notify>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    ServerTask,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let held = Arc::new(AtomicU64::new(0));
    let (r, h) = (release.clone(), held.clone());
    let task = serve_connections(listener, move |mut stream| {
        let (release, held) = (r.clone(), h.clone());
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut stream, &mut buf).await {
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                if target == "/hold" {
                    let released = release.notified();
                    held.fetch_add(1, Ordering::SeqCst);
                    released.await;
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{target}",
                    target.len()
                );
                if stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (addr, release, held, task)
}

/// A request the client sent whole on a keep-alive connection before the
/// drain began is answered (with `Connection: close`), not reset: here the
/// second request waits in the gateway's socket while the first is in
/// flight, and the drain begins before the first's answer.
#[tokio::test]
async fn a_request_waiting_in_the_socket_when_the_drain_begins_is_answered() {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let (up, release, held, _task) = holding_upstream().await;
    let gw = Gateway::start(&config("", &[("v1", 1, up)])).await;
    let addr = gw.addr;

    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || held.load(Ordering::SeqCst)
            == 1)
        .await
    );
    // The own server reads nothing from a client while a bodiless request
    // is in flight: this one stays in the socket.
    client
        .write_all(b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();

    // An idle keep-alive connection: its close says the drain has begun.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut idle, &mut buf).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let shutdown = tokio::spawn(gw.shutdown());
    let rest = read_to_close(&mut idle, Duration::from_secs(10)).await;
    assert!(rest.is_some(), "the drain did not close an idle connection");

    release.notify_one();
    let answers = read_to_close(&mut client, Duration::from_secs(10))
        .await
        .expect("the connection did not close");
    let text = String::from_utf8_lossy(&answers);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.ends_with("/second"), "{text}");
    let second = &text[text.rfind("HTTP/1.1").unwrap()..];
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    shutdown.await.unwrap();
}
