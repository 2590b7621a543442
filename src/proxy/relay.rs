//! Data path: a long response body moved from the upstream's connection to
//! the client's through one buffer per thread. Each step reads up to
//! [`MAX_STEP`] and writes it at once; only what the client's socket does
//! not take is kept, for this body, until it is taken, and while the client
//! is slower than the upstream the steps are [`MIN_STEP`]. A streaming body
//! costs its connection no buffer of its own, and memory does not grow with
//! the body's size.
//!
//! Used by the own HTTP/1.1 server for a body with a length of which more
//! than [`MIN_LEN`] is still to come, plain or TLS on either side.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::h1::response::SendError;
use crate::proxy::upstream_client::ExchangeError;

/// Bodies with less than this still to read go the framed way: one read and
/// one write move them.
pub const MIN_LEN: u64 = 32 * 1024;
/// The size of the thread's buffer: the most one step moves (a whole
/// 256 KiB body in one read and one write when the sockets allow).
pub const MAX_STEP: usize = 256 * 1024;
/// The step after one that the client did not take whole: what a slow
/// client's response holds at most from then on.
pub const MIN_STEP: usize = 64 * 1024;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Moves `len` bytes from `from` to `to`; nothing past them is read. Fails
/// as the framed path does: the upstream's read or early close
/// ([`SendError::Upstream`]), or the client's write ([`SendError::Client`]).
pub async fn copy<R, W>(from: &mut R, to: &mut W, len: u64) -> Result<(), SendError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut relay = Relay {
        left: len,
        step: MAX_STEP,
        unsent: Vec::new(),
        at: 0,
    };
    poll_fn(|cx| relay.poll(cx, from, to)).await
}

struct Relay {
    /// Bytes still to read from the upstream.
    left: u64,
    /// The most the next read takes.
    step: usize,
    /// Read but not yet taken by the client: `unsent[at..]`.
    unsent: Vec<u8>,
    at: usize,
}

impl Relay {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
    ) -> Poll<Result<(), SendError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while self.at < self.unsent.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.unsent[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(write_zero()));
                }
                self.at += n;
            }
            if self.unsent.capacity() > MIN_STEP {
                self.unsent = Vec::new();
            }
            self.unsent.clear();
            self.at = 0;
            if self.left == 0 {
                return Poll::Ready(Ok(()));
            }
            // The thread's buffer is held only within this call, never
            // across a wait.
            let stepped = BUF
                .try_with(|buf| match buf.try_borrow_mut() {
                    Ok(mut buf) => self.step(cx, from, to, &mut buf),
                    Err(_) => self.step(cx, from, to, &mut Vec::new()),
                })
                .unwrap_or_else(|_| self.step(cx, from, to, &mut Vec::new()));
            ready!(stepped)?;
        }
    }

    /// One read into `buf`, and as much of it written as the client takes;
    /// the rest goes to `unsent` (Pending: the client's socket is full).
    fn step<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        buf: &mut Vec<u8>,
    ) -> Poll<Result<(), SendError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if buf.len() < MAX_STEP {
            buf.resize(MAX_STEP, 0);
        }
        let want = usize::try_from(self.left).map_or(self.step, |left| left.min(self.step));
        let mut read = ReadBuf::new(&mut buf[..want]);
        if let Err(e) = ready!(Pin::new(&mut *from).poll_read(cx, &mut read)) {
            return Poll::Ready(Err(SendError::Upstream(ExchangeError::Read(e))));
        }
        let read = read.filled();
        if read.is_empty() {
            return Poll::Ready(Err(ExchangeError::ClosedInBody.into()));
        }
        self.left -= read.len() as u64;
        let mut sent = 0;
        while sent < read.len() {
            match Pin::new(&mut *to).poll_write(cx, &read[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(write_zero())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {
                    self.unsent.extend_from_slice(&read[sent..]);
                    self.step = MIN_STEP;
                    return Poll::Pending;
                }
            }
        }
        self.step = MAX_STEP;
        Poll::Ready(Ok(()))
    }
}

fn write_zero() -> SendError {
    SendError::Client(io::ErrorKind::WriteZero.into())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn moves_exactly_the_length_to_a_client_that_takes_little_at_a_time() {
        let (mut upstream, mut from) = pair().await;
        // The client's side holds 1,000 bytes: every step leaves most of
        // what it read to wait in the body's own buffer.
        let (mut to, mut client) = tokio::io::duplex(1000);
        let body = pattern(1_000_000);
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            upstream.write_all(&sent).await.unwrap();
            upstream.write_all(b"after").await.unwrap();
            upstream
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        copy(&mut from, &mut to, 1_000_000).await.unwrap();
        drop(to);
        assert!(reader.await.unwrap() == body);
        // What followed the length is still in the upstream's socket.
        let _upstream = writer.await.unwrap();
        let mut rest = [0u8; 5];
        from.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
    }

    #[tokio::test]
    async fn an_upstream_closing_early_and_a_client_gone_are_told_apart() {
        let (mut upstream, mut from) = pair().await;
        let (mut to, _client) = pair().await;
        upstream.write_all(&[7u8; 1000]).await.unwrap();
        drop(upstream);
        let closed = copy(&mut from, &mut to, 5000).await;
        assert!(
            matches!(
                closed,
                Err(SendError::Upstream(ExchangeError::ClosedInBody))
            ),
            "{closed:?}"
        );

        let (mut upstream, mut from) = pair().await;
        let (mut to, client) = pair().await;
        drop(client);
        let writer = tokio::spawn(async move {
            let _ = upstream.write_all(&vec![1u8; 4 << 20]).await;
        });
        let gone = copy(&mut from, &mut to, 4 << 20).await;
        assert!(matches!(gone, Err(SendError::Client(_))), "{gone:?}");
        drop(from);
        writer.await.unwrap();
    }
}
