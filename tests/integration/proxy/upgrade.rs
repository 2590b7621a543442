//! Upgrades: a tunnel carries bytes both ways.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn upgrade_tunnels_bytes_both_ways() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(101), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    for message in [&b"hello"[..], b"second message", &[0u8, 255, 13, 10]] {
        stream.write_all(message).await.unwrap();
        read_at_least(&mut stream, &mut buf, message.len()).await;
        assert_eq!(buf.drain(..message.len()).as_slice(), message);
    }
    // Closed first: an open tunnel would hold the drain for its grace period.
    drop(stream);
    gw.shutdown().await;
}

/// The bytes an upstream sends with its 101 reach the client first; when
/// the upstream then closes the tunnel, the client's side ends too: what it
/// still sends is refused, not taken into the void.
#[tokio::test]
async fn a_tunnel_starts_with_the_upstreams_first_bytes_and_ends_with_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _upstream = serve_connections(listener, |mut stream| async move {
        let mut buf = Vec::new();
        if read_head(&mut stream, &mut buf).await.is_none() {
            return;
        }
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                       upgrade: websocket\r\n\r\nwelcome";
        let _ = stream.write_all(answer).await;
        let mut bye = [0u8; 3];
        let _ = stream.read_exact(&mut bye).await;
        // Closed: the tunnel's upstream side is gone.
    });
    let gw = Gateway::start(&config("", &[("tunnel-ends", 1, addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(101), "{head}");
    read_at_least(&mut stream, &mut buf, b"welcome".len()).await;
    assert_eq!(buf, b"welcome");
    stream.write_all(b"bye").await.unwrap();
    let mut rest = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(0) | Err(_))), "{end:?}");
    // The client goes on sending: refused within a few writes.
    let chunk = vec![b'x'; 64 * 1024];
    let mut refused = false;
    for _ in 0..256 {
        match tokio::time::timeout(Duration::from_secs(5), stream.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                refused = true;
                break;
            }
            Err(_) => panic!("the gateway stopped reading without closing"),
        }
    }
    assert!(
        refused,
        "16 MiB sent into a tunnel whose upstream had closed"
    );
    gw.shutdown().await;
}

/// Reads from the tunnel until `buf` holds `len` bytes (within 5 s each).
async fn read_at_least(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) {
    while buf.len() < len {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap();
        assert!(n > 0, "tunnel closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}
