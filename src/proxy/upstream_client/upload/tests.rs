//! An upload between an in-memory client and a real upstream socket.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{Upload, UploadError};
use crate::config::Timeouts;
use crate::proxy::upstream_client::Conn;
use crate::tls::Stream;

/// The client's side, counting the reads that returned.
struct Counted {
    inner: DuplexStream,
    reads: usize,
}

impl crate::proxy::h1::ClientIo for Counted {}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            self.reads += 1;
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A chunked body of many one-byte chunks, sent at once with the client's
/// next request after it, goes up a read's worth at a time (not a read
/// per chunk), framed again, and the bytes read past its end are given
/// back.
#[tokio::test]
async fn tiny_chunks_are_read_in_bulk_and_the_next_request_given_back() {
    const CHUNKS: usize = 3000;
    let next = b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut body = b"1\r\nX\r\n".repeat(CHUNKS);
    body.extend_from_slice(b"0\r\n\r\n");
    let (mut sender, inner) = tokio::io::duplex(1 << 20);
    sender.write_all(&body).await.unwrap();
    sender.write_all(next).await.unwrap();
    let mut client = Counted { inner, reads: 0 };

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let head = b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
    let expected = [&head[..], &body].concat();
    let upstream = tokio::spawn({
        let len = expected.len();
        async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = vec![0; len];
            socket.read_exact(&mut got).await.unwrap();
            got
        }
    });
    let mut conn = Conn::new(Stream::Plain(TcpStream::connect(addr).await.unwrap()));
    conn.out = head.to_vec();

    let mut upload = Upload::chunked(b"", &mut client, false);
    conn.send_upload(&mut upload, &Timeouts::default())
        .await
        .unwrap();
    let mut read_past = Vec::new();
    assert!(!upload.end(&mut read_past), "the body went up whole");
    assert_eq!(read_past, next, "the next request is given back");
    assert!(
        client.reads <= 4,
        "{} reads for {} bytes",
        client.reads,
        body.len() + next.len()
    );
    assert_eq!(upstream.await.unwrap(), expected);
}

/// An upstream connection that closes once the head went up, while the
/// client waits for `100 Continue` to send its body: nothing of the body
/// was taken from the client, so the request can still go out again (on
/// another connection), for both framings.
#[tokio::test]
async fn an_upstream_gone_before_the_body_came_leaves_the_request_replayable() {
    for chunked in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let head = b"POST /up HTTP/1.1\r\nhost: a\r\n\r\n";
        let upstream = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = vec![0; head.len()];
            socket.read_exact(&mut got).await.unwrap();
            // Closed without an answer (an idle timeout that raced).
        });
        let mut conn = Conn::new(Stream::Plain(TcpStream::connect(addr).await.unwrap()));
        conn.out = head.to_vec();
        let (mut sender, inner) = tokio::io::duplex(1024);
        let mut client = Counted { inner, reads: 0 };
        let mut upload = match chunked {
            true => Upload::chunked(b"", &mut client, true),
            false => Upload::new(b"", &mut client, 5, true),
        };
        let sent = conn.send_upload(&mut upload, &Timeouts::default()).await;
        assert!(
            matches!(sent, Err(UploadError::Upstream(_))),
            "chunked {chunked}: {sent:?}"
        );
        assert!(upload.replayable(), "chunked {chunked}");
        drop(upload);
        upstream.await.unwrap();
        let mut continued = [0; super::CONTINUE.len()];
        sender.read_exact(&mut continued).await.unwrap();
        assert_eq!(continued, super::CONTINUE);
    }
}
