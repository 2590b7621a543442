//! Malformed requests get a 4xx and the gateway keeps serving.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn raw_exchange(addr: std::net::SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    let writing = async {
        // The gateway may answer and close before reading it all.
        let _ = write.write_all(&request).await;
    };
    let reading = async {
        let mut out = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
        out
    };
    let ((), out) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(writing, reading)
    })
    .await
    .expect("the gateway answered and closed");
    out
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_gateway_keeps_serving() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;

    let out = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            .to_vec(),
    )
    .await;
    assert_eq!(
        raw_status(&out),
        Some(400),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let out = raw_exchange(gw.addr, b"GARBAGE\r\n\r\n".to_vec()).await;
    assert_eq!(
        raw_status(&out),
        Some(400),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let out = raw_exchange(gw.addr, big).await;
    let status = raw_status(&out);
    assert_eq!(
        status,
        Some(431),
        "oversized head: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );

    let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..500 {
        many.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let out = raw_exchange(gw.addr, many).await;
    assert_eq!(
        raw_status(&out),
        Some(431),
        "{}",
        String::from_utf8_lossy(&out)
    );

    assert_eq!(v1.hits(), 0, "a malformed request reached the upstream");
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "v1");
    gw.shutdown().await;
}
