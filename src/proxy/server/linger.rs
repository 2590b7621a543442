//! Data path: the close of an HTTP/2 connection, lingering.
//!
//! hyper's HTTP/2 server ends a connection (after a GOAWAY: the drain, an
//! idle connection) as soon as its last stream is written to the socket,
//! and the socket may still hold much of it: a slow reader's download, up
//! to the socket's send buffer (megabytes on a fast link). A frame the
//! client sends after that (a keep-alive PING, the WINDOW_UPDATE of a
//! client that reads) meets a closed socket, which answers with a reset,
//! and a reset throws away what the socket had not sent yet: the client
//! loses the tail of its download. So, as nginx closes: hyper's shutdown
//! (the end of the TLS session, then the write side's) happens, and the
//! connection stays open while the client still sends, what it sends read
//! and dropped, until it closes, is silent for [`QUIET`], or [`LONGEST`]
//! has passed (and no longer than the drain's grace: the connection is cut
//! then, as any other). A client that read everything closes at once.
//!
//! Only HTTP/2: an HTTP/1 connection of hyper's auto-detecting server may
//! be upgraded, and a tunnel's shutdown of one direction must not read the
//! other's bytes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::TrackedIo;

/// How long a lingering connection waits for the client's next bytes (as
/// the own HTTP/1.1 server's lingering close waits, and nginx's
/// `lingering_timeout`).
pub const QUIET: Duration = super::h1::LINGER;
/// How long a connection lingers at most (nginx's `lingering_time`).
pub const LONGEST: Duration = Duration::from_secs(30);
/// Reads per poll while the client keeps sending, before the task lets
/// others run.
const READS_PER_POLL: usize = 16;

/// A client connection of hyper's servers, whose HTTP/2 close lingers.
pub struct Lingering<T> {
    inner: T,
    state: Closing,
}

/// A client connection that knows whether it serves HTTP/2, and is told
/// when its close lingers.
pub trait Protocol {
    fn is_http2(&self) -> bool;
    fn lingers(&self);
}

impl Protocol for TrackedIo {
    fn is_http2(&self) -> bool {
        self.state.http2.load(Ordering::Relaxed)
    }

    /// The watchdog leaves it alone from now on: its idle rule counts from
    /// the last stream's end, when the stream was written to the socket,
    /// not read (it cut a slow reader's tail).
    fn lingers(&self) {
        self.state.lingering.store(true, Ordering::Relaxed);
    }
}

enum Closing {
    Open,
    /// Shut; reading what the client still sends.
    Lingering(Linger),
    Closed,
}

struct Linger {
    since: Instant,
    /// When the client last sent something.
    heard: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<T: AsyncRead + Unpin> Lingering<T> {
    pub fn new(inner: T) -> Lingering<T> {
        Lingering {
            inner,
            state: Closing::Open,
        }
    }

    /// Reads and drops what the client sends; ready when it closed, or
    /// went quiet, or the linger's time is up.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Closing::Lingering(linger) = &mut self.state else {
            return Poll::Ready(());
        };
        let mut sink = [0u8; 8192];
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                // The client closed (or reset): nothing more can come.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => linger.heard = Instant::now(),
                Poll::Pending => return linger.poll_end(cx),
            }
        }
        // A client that keeps sending: the task lets others run first.
        cx.waker().wake_by_ref();
        linger.poll_end(cx)
    }
}

impl Linger {
    /// Ready when the client has been quiet for [`QUIET`], or the linger
    /// has lasted [`LONGEST`].
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let end = (self.heard + QUIET).min(self.since + LONGEST);
        if self.timer.deadline() != end {
            self.timer.as_mut().reset(end);
        }
        self.timer.as_mut().poll(cx)
    }
}

reads_through!(Lingering);

impl<T: AsyncRead + AsyncWrite + Protocol + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Closing::Open = this.state {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            if !this.inner.is_http2() {
                this.state = Closing::Closed;
                return Poll::Ready(Ok(()));
            }
            this.inner.lingers();
            let now = Instant::now();
            this.state = Closing::Lingering(Linger {
                since: now,
                heard: now,
                timer: Box::pin(tokio::time::sleep_until(now + QUIET)),
            });
        }
        ready!(this.poll_linger(cx));
        this.state = Closing::Closed;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// One end of an in-memory connection, serving HTTP/2 or not.
    struct Conn(DuplexStream, bool);

    impl Protocol for Conn {
        fn is_http2(&self) -> bool {
            self.1
        }

        fn lingers(&self) {}
    }

    impl AsyncRead for Conn {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Conn {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, data)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// A connection shut by the server, and its client's end.
    fn pair(http2: bool) -> (Lingering<Conn>, DuplexStream) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        (Lingering::new(Conn(server, http2)), client)
    }

    /// How long the server's shutdown takes while `client` runs.
    async fn shutdown_while(
        conn: &mut Lingering<Conn>,
        client: impl std::future::Future<Output = ()>,
    ) -> Duration {
        let start = Instant::now();
        let shut = async {
            conn.shutdown().await.unwrap();
            start.elapsed()
        };
        let (took, ()) = tokio::join!(shut, client);
        took
    }

    /// The write side is shut first (the client reads the end of the
    /// stream), then the client's bytes are read and dropped until it
    /// closes.
    #[tokio::test(start_paused = true)]
    async fn an_http2_close_reads_until_the_client_closes() {
        let (mut conn, mut client) = pair(true);
        let took = shutdown_while(&mut conn, async move {
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            // More than the connection holds unread.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let write = client.write_all(&[0; 30_000]);
                tokio::time::timeout(LONGEST, write)
                    .await
                    .expect("read by the linger")
                    .unwrap();
            }
            drop(client);
        })
        .await;
        assert_eq!(took, Duration::from_secs(6));
    }

    /// A client that sends nothing is let go after [`QUIET`]; one that
    /// keeps sending, after [`LONGEST`].
    #[tokio::test(start_paused = true)]
    async fn a_linger_ends_when_the_client_is_quiet_or_at_the_longest() {
        let (mut conn, mut client) = pair(true);
        let took = shutdown_while(&mut conn, async {
            tokio::time::sleep(QUIET / 2).await;
            client.write_all(b"ping").await.unwrap();
        })
        .await;
        assert_eq!(took, QUIET / 2 + QUIET);

        let (mut conn, mut client) = pair(true);
        let chatty = async {
            loop {
                tokio::time::sleep(QUIET / 2).await;
                if client.write_all(b"ping").await.is_err() {
                    return;
                }
            }
        };
        let start = Instant::now();
        tokio::select! {
            shut = conn.shutdown() => shut.unwrap(),
            () = chatty => unreachable!("the client keeps sending"),
        }
        let took = start.elapsed();
        assert_eq!(took, LONGEST);
    }

    /// HTTP/1 (hyper's auto-detecting server; a connection it may have
    /// upgraded) is shut without reading what the client sends.
    #[tokio::test(start_paused = true)]
    async fn an_http1_close_does_not_linger() {
        let (mut conn, mut client) = pair(false);
        client.write_all(b"more").await.unwrap();
        let took = shutdown_while(&mut conn, async {}).await;
        assert_eq!(took, Duration::ZERO);
        let mut unread = [0u8; 4];
        conn.inner.0.read_exact(&mut unread).await.unwrap();
        assert_eq!(&unread, b"more");
    }
}
