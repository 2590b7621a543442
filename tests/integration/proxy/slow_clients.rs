//! Slow and idle clients: slowloris, keep-alive idle timeout.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn slowloris_connections_are_closed() {
    let v1 = Upstream::start("v1").await;
    let extra = "[timeouts]\nrequest_header = \"300ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;

    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut slow, Duration::from_secs(10))
        .await
        .expect("the slow connection was not closed");
    assert!(
        raw_status(&out).is_none_or(|s| (400..500).contains(&s)),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(v1.hits(), 0);

    // A slow head on a kept-alive connection, after a first request: also closed.
    let (mut stream, _) = answered_keep_alive(gw.addr).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("the slow second request was not closed");

    // Complete requests are answered.
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    gw.shutdown().await;
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
