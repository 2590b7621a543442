//! Data path: the socket under hyper's client, where a write the upstream
//! refused counts as done, so that an answer it sent first is still read.
//!
//! An upstream may answer an upload before reading all of it (a 413, a
//! 401) and close: its kernel resets the connection for the bytes it did
//! not read, and the gateway's next write fails (`EPIPE`, `ECONNRESET`).
//! hyper's client would fail the request with that write error, a 502
//! charged to the version, although the answer is in the socket and
//! readable (Linux keeps what arrived before a reset readable). Here such a
//! write is taken as done and the rest of the request goes nowhere; hyper
//! reads the answer and the client gets it. The connection is marked
//! [`refused`](RefusedWrites::flag) and never goes back to the pool. An
//! upstream that reset without answering still fails the request, at the
//! read that finds the reset or the end of the stream.
//!
//! An upgraded connection's tunnel takes the socket out of the wrapper
//! ([`super::unwrap_upgraded`]): there a write the upstream refused ends
//! the tunnel, or what the client still sends would go nowhere.
//!
//! The gateway's own client does the same for the uploads it carries
//! ([`crate::proxy::upstream_client::upload`]).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// `inner`, with the writes its peer refused taken as done.
#[derive(Debug)]
pub struct RefusedWrites<T> {
    inner: T,
    refused: Arc<AtomicBool>,
}

impl<T> RefusedWrites<T> {
    pub fn new(inner: T) -> RefusedWrites<T> {
        RefusedWrites {
            inner,
            refused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The socket underneath.
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Set once the peer refused a write: the connection is done for.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.refused.clone()
    }

    /// Whether a write already found the peer gone.
    fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// `result`, with an error saying the peer is gone turned into `done`.
    fn taken<R>(&self, result: Poll<io::Result<R>>, done: R) -> Poll<io::Result<R>> {
        match result {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                tracing::debug!(error = %e, "upstream refused a write; reading its answer");
                self.refused.store(true, Ordering::Relaxed);
                Poll::Ready(Ok(done))
            }
            other => other,
        }
    }
}

/// The errors of a write to a peer that closed or reset the connection.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

reads_through!(RefusedWrites);

impl<T: AsyncWrite + Unpin> AsyncWrite for RefusedWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_refused() {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.taken(result, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.is_refused() {
            return Poll::Ready(Ok(len));
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.taken(result, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_refused() {
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.taken(result, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_refused() {
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.taken(result, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that answers and resets: the writes after the reset are
    /// taken as done and flagged, and the answer is still read.
    #[tokio::test]
    async fn a_reset_peer_is_flagged_and_its_answer_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut io = RefusedWrites::new(stream);
        let flag = io.flag();
        io.write_all(b"hello, and more").await.unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 5];
        peer.read_exact(&mut head).await.unwrap();
        peer.write_all(b"answer").await.unwrap();
        // Closed with unread bytes: the kernel resets the connection.
        drop(peer);
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..1000 {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            io.write_all(&chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert!(flag.load(Ordering::Relaxed), "no write found the reset");
        io.write_all(b"after").await.unwrap();
        io.flush().await.unwrap();
        let mut answer = [0u8; 6];
        io.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
        // Then the reset, as an error or the end of the stream.
        assert!(!matches!(io.read(&mut answer).await, Ok(n) if n > 0));
    }
}
