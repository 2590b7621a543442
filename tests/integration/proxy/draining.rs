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

    // An idle keep-alive connection: its close (at the end of the drain's
    // idle window) says the drain has begun.
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

/// Sends `request` on `stream` and reads its answer: the head, and a body
/// framed by its Content-Length. `None`: the connection closed first.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Option<(String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.ok()?;
    let mut buf = Vec::new();
    let head = read_head(stream, &mut buf).await?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < len {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, buf))
}

/// Waits for the listener at `addr` to refuse connections: it closes once
/// the drain has begun.
async fn refused_once_draining(addr: std::net::SocketAddr) {
    assert!(
        eventually(Duration::from_secs(10), async || TcpStream::connect(addr)
            .await
            .is_err())
        .await,
        "still accepting"
    );
}

/// Whether a response head says `Connection: close`.
fn says_close(head: &str) -> bool {
    head.to_ascii_lowercase()
        .contains("\r\nconnection: close\r\n")
}

/// Keep-alive connections between requests when the drain begins: one of
/// the own server, one handed to hyper's server (its first request asks
/// for trailers: `TE`), one accepted that has sent nothing yet (each
/// answered once, but the last). The last is accepted first: its task
/// exists once the others were answered.
async fn idle_connections(addr: std::net::SocketAddr) -> Vec<TcpStream> {
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut conns = Vec::new();
    for first in [
        &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: TE\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let (head, body) = exchange(&mut conn, first).await.expect("no answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!says_close(&head), "{head}");
        assert_eq!(body, b"v1");
        conns.push(conn);
    }
    conns.push(silent);
    conns
}

/// A keep-alive connection idle when the drain begins stays open for the
/// drain's idle window: a request its client sends then (one already on
/// its way, or on a pooled connection picked a moment later: here a POST,
/// which a client cannot safely retry) is answered, with `Connection:
/// close`, and the connection closes after it; not met by an EOF or a
/// reset. Also on hyper's server, and on a connection that had sent
/// nothing yet.
#[tokio::test]
async fn a_request_on_an_idle_connection_after_the_drain_began_is_answered_with_close() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let addr = gw.addr;
    let conns = idle_connections(addr).await;

    let shutdown = tokio::spawn(gw.shutdown());
    refused_once_draining(addr).await;
    let names = ["own server", "hyper's server", "sent nothing before"];
    let mut answers = Vec::new();
    for mut conn in conns {
        let request = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        answers.push((exchange(&mut conn, request).await, conn));
    }
    let unanswered: Vec<&str> = (answers.iter().zip(names))
        .filter_map(|((answer, _), name)| answer.is_none().then_some(name))
        .collect();
    assert!(unanswered.is_empty(), "closed, no answer: {unanswered:?}");
    for ((answer, mut conn), name) in answers.into_iter().zip(names) {
        let (head, body) = answer.unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{name}: {head}");
        assert!(says_close(&head), "{name}: {head}");
        assert!(body.starts_with(b"5 "), "{name}: {body:?}");
        let rest = read_to_close(&mut conn, Duration::from_secs(10)).await;
        assert_eq!(rest.as_deref(), Some(&b""[..]), "{name}: not closed after");
    }
    shutdown.await.unwrap();
}

/// Connections still idle at the end of the drain's idle window are
/// closed then, and the drain ends: it does not wait for them for its
/// grace period (30 s here).
#[tokio::test]
async fn idle_connections_close_at_the_end_of_the_idle_window() {
    let v1 = Upstream::start("v1").await;
    let text = config("", &[("v1", 1, v1.addr)]) + "\n[timeouts]\nshutdown_grace = \"30s\"\n";
    let gw = Gateway::start(&text).await;
    let conns = idle_connections(gw.addr).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
            .await
            .is_ok(),
        "the drain waited for idle connections"
    );
    for mut conn in conns {
        let rest = read_to_close(&mut conn, Duration::from_secs(1)).await;
        assert_eq!(rest.as_deref(), Some(&b""[..]), "not closed");
    }
}

/// A WebSocket upgrade on a connection idle when the drain began, asked in
/// the drain's idle window: its `101` says `Connection: upgrade`, not
/// `close` as well (which a strict WebSocket client refuses), and the tunnel
/// carries bytes until the client ends it. Before, hyper's server was told
/// of the drain as the request started, and added `close` to the `101`.
#[tokio::test]
async fn an_upgrade_in_the_drain_idle_window_gets_a_101_without_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let addr = gw.addr;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let (head, _) = exchange(&mut conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("no answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let shutdown = tokio::spawn(gw.shutdown());
    refused_once_draining(addr).await;
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut conn, &mut buf).await.expect("no answer");
    assert_eq!(raw_status(head.as_bytes()), Some(101), "{head}");
    let connection = head
        .to_ascii_lowercase()
        .lines()
        .filter(|l| l.starts_with("connection:"))
        .collect::<Vec<_>>()
        .join(",");
    assert!(connection.contains("upgrade"), "{head}");
    assert!(!connection.contains("close"), "{head}");
    conn.write_all(b"hello").await.unwrap();
    while buf.len() < 5 {
        let mut chunk = [0u8; 64];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the tunnel closed");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&buf[..5], b"hello");
    drop(conn);
    shutdown.await.unwrap();
}

/// A slow HTTP/2 reader whose download the gateway has written to the
/// socket when the drain ends its connection gets all of it, although it
/// sends frames after that end (see [`slow_reader_across_the_drain`]),
/// also when that takes longer than `idle`: the idle rule counts from the
/// stream's end, when it was written to the socket, not read (it cut the
/// lingering connection).
#[tokio::test]
async fn h2c_a_slow_reader_gets_its_whole_download_when_the_drain_ends_the_connection() {
    let v1 = Upstream::start("v1").await;
    let extra = "[timeouts]\nidle = \"1s\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    slow_reader_across_the_drain(tcp, "http", gw).await;
}
