//! Slow and idle clients: slowloris, keep-alive idle timeout.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// A request head that began and did not arrive whole within
/// `request_header` (slowloris) is answered `408` with `Connection: close`
/// and its connection closed, on a first request and on a kept-alive
/// connection, and counted in `canary_client_errors_total{kind="head_timeout"}`.
/// Not counted: a connection that sends nothing, an idle keep-alive
/// connection (both closed at `idle`), and the rest of an answered upload
/// that the own server's lingering close reads and drops.
///
/// The metrics are the process's: this is the one test whose heads time
/// out, so the count moves here only.
#[tokio::test]
async fn slowloris_heads_are_answered_408_and_counted() {
    let v1 = Upstream::start("v1").await;
    let (early, _early_task) = answers_413_and_drains().await;
    let extra = "override_header = \"x-to\"\n[timeouts]\nrequest_header = \"300ms\"\nidle = \"1s\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr), ("early", 0, early)])).await;
    let head_timeouts = async || {
        let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
        metric_value(
            &text,
            "canary_client_errors_total",
            &[("kind", "head_timeout")],
        )
    };
    let counted = async |expected: f64| {
        eventually(Duration::from_secs(10), async || {
            head_timeouts().await == expected
        })
        .await
    };
    let before = head_timeouts().await;

    let assert_408 = |out: &[u8], what: &str| {
        let text = String::from_utf8_lossy(out).to_ascii_lowercase();
        assert_eq!(raw_status(out), Some(408), "{what}: {text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{what}: {text}");
        assert!(
            text.contains("\r\nx-canary-error: client-head-timeout\r\n"),
            "{what}: {text}"
        );
    };
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut slow, Duration::from_secs(10))
        .await
        .expect("the slow connection was not closed");
    assert_408(&out, "first request");
    assert!(counted(before + 1.0).await, "{}", head_timeouts().await);
    assert_eq!(v1.hits(), 0);

    // A slow head on a kept-alive connection, after a first request: also
    // answered and closed.
    let (mut stream, mut buf) = answered_keep_alive(gw.addr).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("the slow second request was not closed");
    buf.extend_from_slice(&out);
    let out = buf.strip_prefix(b"v1").expect("the first body");
    assert_408(out, "second request");
    assert!(counted(before + 2.0).await, "{}", head_timeouts().await);

    // Idle, with or without a request before: closed at `idle`, silently,
    // not counted (the count would come before the close).
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let out = read_to_close(&mut silent, Duration::from_secs(10)).await;
    assert_eq!(out.as_deref(), Some(&b""[..]), "the silent connection");
    let (mut idle, mut buf) = answered_keep_alive(gw.addr).await;
    let out = read_to_close(&mut idle, Duration::from_secs(10))
        .await
        .expect("the idle connection was not closed");
    buf.extend_from_slice(&out);
    assert_eq!(buf, b"v1", "nothing but the first body before the close");
    assert_eq!(head_timeouts().await, before + 2.0);

    // An upload answered early (413): the own server closes the connection
    // lingering, reading and dropping the rest of the body. Those bytes,
    // sent for longer than `request_header`, are no request head.
    let mut upload = TcpStream::connect(gw.addr).await.unwrap();
    upload
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nx-to: early\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut upload, &mut buf)
        .await
        .expect("an early answer");
    assert_eq!(raw_status(head.as_bytes()), Some(413), "{head}");
    let until = tokio::time::Instant::now() + Duration::from_millis(800);
    while tokio::time::Instant::now() < until {
        // Paced: a slow client, not a synchronisation.
        upload
            .write_all(&[b'u'; 1024])
            .await
            .expect("the lingering close was cut short");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    upload.shutdown().await.unwrap();
    read_to_close(&mut upload, Duration::from_secs(10))
        .await
        .expect("the lingering close did not end");
    assert_eq!(head_timeouts().await, before + 2.0);

    // A partial head that came in the same write as the request before it
    // (pipelined) is timed from when that request is done: no read of it
    // is left to start the clock, and it used to wait for `idle`, silently.
    let mut piped = TcpStream::connect(gw.addr).await.unwrap();
    piped
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut piped, Duration::from_secs(10))
        .await
        .expect("the pipelined partial head was not closed");
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the first answer's head");
    let second = out[at + 4..]
        .strip_prefix(b"v1")
        .expect("the first answer's body");
    assert_408(second, "pipelined partial head");
    assert!(counted(before + 3.0).await, "{}", head_timeouts().await);

    // Complete requests are answered.
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    gw.shutdown().await;
}

/// An upstream that answers a request `413` at its head, then reads and
/// drops the rest of what comes.
async fn answers_413_and_drains() -> (std::net::SocketAddr, ServerTask) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = serve_connections(listener, |mut stream| async move {
        let mut buf = Vec::new();
        if read_head(&mut stream, &mut buf).await.is_some() {
            let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
            let _ = stream.write_all(answer).await;
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    });
    (addr, task)
}

#[tokio::test]
async fn idle_keep_alive_connections_live_until_the_idle_timeout() {
    let v1 = Upstream::start("v1").await;
    // The short request_header timeout must not cut idle keep-alive connections.
    let extra = "[timeouts]\nrequest_header = \"200ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    assert_eq!(client.get("/", &[]).await.unwrap().text(), "v1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.get("/", &[]).await.unwrap().text(), "v1");
    gw.shutdown().await;

    let extra = "[timeouts]\nidle = \"1s\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let (mut stream, mut buf) = answered_keep_alive(gw.addr).await;
    let out = read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("the idle connection was not closed");
    buf.extend_from_slice(&out);
    assert_eq!(buf, b"v1", "nothing but the first body before the close");
    gw.shutdown().await;
}

/// A raw keep-alive connection whose first request was answered 200; the bytes
/// read past the response head (the start of its body) come with it.
async fn answered_keep_alive(addr: std::net::SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200));
    (stream, buf)
}
