//! Bodies: large streamed uploads and downloads, chunked bodies, trailers both ways, `Expect: 100-continue`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const BIG: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_upload_arrives_whole() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    // Four distinct 1 MiB blocks in a varying order, streamed through a
    // small channel: memory stays bounded, reordering would show.
    let blocks: Vec<Bytes> = (0..4u8)
        .map(|b| {
            Bytes::from(
                (0..1024 * 1024u32)
                    .map(|i| (i as u8) ^ b.wrapping_mul(97))
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(4);
    let producer = tokio::spawn(async move {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for i in 0..(BIG / (1024 * 1024)) as usize {
            let block = blocks[(i * 7 + i / 5) % 4].clone();
            hasher.update(&block);
            if tx.send(Ok(http_body::Frame::data(block))).await.is_err() {
                break;
            }
        }
        hasher.digest()
    });
    let req = Request::post("/upload")
        .header("host", "h.test")
        .body(boxed(ChannelBody(rx)))
        .unwrap();
    let reply = Client::connect(gw.addr).await.send(req).await.unwrap();
    let digest = producer.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("{BIG} {digest:016x}"));
    gw.shutdown().await;
}

/// Chunked, and framed by a length (which the own server relays from the
/// upstream's socket to the client's): every byte arrives, none more, and
/// the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_download_arrives_whole() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for query in ["", "&length=1"] {
        let req = Request::get(format!("/download?bytes={BIG}{query}"))
            .header("host", "h.test")
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let length = resp.headers().get("content-length").cloned();
        assert_eq!(length.is_some(), !query.is_empty(), "{query}");
        let mut body = resp.into_body();
        let (mut total, mut wrong) = (0u64, 0u64);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len() as u64;
                wrong += data.iter().filter(|&&b| b != b'x').count() as u64;
            }
        }
        assert_eq!(total, BIG, "{query}");
        assert_eq!(wrong, 0, "{query}");
        // The connection is still good for another request.
        let req = Request::get("/")
            .header("host", "h.test")
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn chunked_request_bodies_and_trailers_pass_through() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;

    // A chunked upload written by hand (no content-length).
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(CHUNKED_HELLO_WORLD).await.unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    let expected = format!("11 {:016x}", xxhash_rust::xxh3::xxh3_64(b"hello world"));
    while !String::from_utf8_lossy(&buf).contains(&expected) {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before the body: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }

    // A streamed upload from the client (ChannelBody: chunked).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for part in ["abc", "def", "ghi"] {
            tx.send(Ok(http_body::Frame::data(Bytes::from(part))))
                .await
                .unwrap();
        }
    });
    let req = Request::put("/upload")
        .header("host", "h")
        .body(boxed(ChannelBody(rx)))
        .unwrap();
    let reply = Client::connect(gw.addr).await.send(req).await.unwrap();
    assert_eq!(
        reply.text(),
        format!("9 {:016x}", xxhash_rust::xxh3::xxh3_64(b"abcdefghi"))
    );

    // Trailers reach a client that asked for them, from a raw upstream that
    // writes them by hand...
    let chunked = FixedUpstream::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
          4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .await;
    let gw2 = Gateway::start(&config("", &[("v1", 1, chunked.addr)])).await;
    let mut client = Client::connect(gw2.addr).await;
    for _ in 0..2 {
        let reply = client
            .get("/trailers", &[("te", "trailers")])
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "one,two,three");
        let trailers = reply.trailers.expect("trailers");
        assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
    }
    // Without `TE: trailers` the body still arrives whole.
    let reply = client.get("/trailers", &[]).await.unwrap();
    assert_eq!(reply.text(), "one,two,three");
    assert!(reply.trailers.is_none());
    gw2.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream, &mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(100), "{head}");
    stream.write_all(b"hello").await.unwrap();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    let expected = format!("5 {:016x}", xxhash_rust::xxh3::xxh3_64(b"hello"));
    while buf.len() < expected.len() {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&buf), expected);
    gw.shutdown().await;
}

#[tokio::test]
async fn request_trailers_reach_the_upstream() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"POST /request-trailers HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: x-sig\r\n\r\n\
              5\r\nhello\r\n0\r\nx-sig: 42\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    while !String::from_utf8_lossy(&buf).contains("x-sig: 42") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "no trailer echoed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn trailers_from_a_hyper_upstream_reach_the_client() {
    // ...and from a hyper upstream (which declares them in a Trailer header).
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let reply = get(gw.addr, "/trailers", &[("te", "trailers")]).await;
    assert_eq!(reply.text(), "one,two,three");
    let trailers = reply.trailers.expect("trailers");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
    gw.shutdown().await;
}
