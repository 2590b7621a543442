//! Data path: a long response body moved from the upstream's connection to
//! the client's through one buffer per thread. Each step reads up to
//! [`MAX_STEP`] and writes it at once; only what the client's socket does
//! not take is kept, for this body, until it is taken, and while the client
//! is slower than the upstream the steps are [`MIN_STEP`]. A streaming body
//! costs its connection no buffer of its own, and memory does not grow with
//! the body's size.
//!
//! Used by the own HTTP/1.1 server for a body with a length of which more
//! than [`MIN_LEN`] is still to come, and for chunked bodies, passed on as
//! they came while their framing is in plain form ([`chunks`]); plain or TLS
//! on either side.

pub mod chunks;

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::h1::response::SendError;
use crate::proxy::upstream_client::ExchangeError;
use chunks::{ChunkScan, MAX_CARRY, Stop};

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
    let mut relay = Relay::new(Moving::Length(len));
    poll_fn(|cx| relay.poll(cx, from, to)).await
}

/// Passes a chunked body on from `from` to `to` as it came, from where
/// `scan` stopped with [`Stop::More`] on the bytes in `rest` (the start of a
/// line, at most [`MAX_CARRY`] bytes; more is left to the framed path at
/// once, [`Stop::Other`]). Ends at the body's end
/// ([`Stop::End`]) or at a line left to the framed path ([`Stop::Other`]);
/// either way what was read past that point is put back in `rest`. A broken
/// body, or one the upstream closes, fails as [`copy`] does.
pub async fn copy_chunks<R, W>(
    from: &mut R,
    to: &mut W,
    scan: ChunkScan,
    rest: &mut BytesMut,
) -> Result<Stop, SendError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(carry) = Carry::new(rest) else {
        // Not the start of a line in plain form: the framed path's.
        return Ok(Stop::Other);
    };
    rest.clear();
    let mut relay = Relay::new(Moving::Chunks(scan, carry));
    poll_fn(|cx| relay.poll(cx, from, to)).await?;
    rest.extend_from_slice(&relay.past);
    match relay.moving {
        Moving::Stopped(stop) => Ok(stop),
        // `poll` ends only once a chunked body stopped.
        _ => Err(ExchangeError::Chunked.into()),
    }
}

/// What a relay still has to read.
enum Moving {
    /// A body with a length: this many bytes.
    Length(u64),
    /// A chunked body: where its scan is, and the start of a line read
    /// but not yet passed on.
    Chunks(ChunkScan, Carry),
    /// A chunked body stopped (at its end or a line left to the framed
    /// path).
    Stopped(Stop),
}

/// The start of a chunk-size line, kept for the next read.
struct Carry {
    bytes: [u8; MAX_CARRY],
    len: usize,
}

impl Carry {
    /// `None` if `bytes` are longer than a line in plain form can be (the
    /// scan never leaves more; the framed path takes such a line).
    fn new(bytes: &[u8]) -> Option<Carry> {
        let mut carry = Carry {
            bytes: [0; MAX_CARRY],
            len: bytes.len(),
        };
        carry.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(carry)
    }
}

struct Relay {
    moving: Moving,
    /// The most the next read takes.
    step: usize,
    /// Read but not yet taken by the client: `unsent[at..]`.
    unsent: Vec<u8>,
    at: usize,
    /// Read past a chunked body's end or the line where it stopped.
    past: Vec<u8>,
}

impl Relay {
    fn new(moving: Moving) -> Relay {
        Relay {
            moving,
            step: MAX_STEP,
            unsent: Vec::new(),
            at: 0,
            past: Vec::new(),
        }
    }

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
            if matches!(self.moving, Moving::Length(0) | Moving::Stopped(_)) {
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
        let (start, want) = match &self.moving {
            Moving::Length(left) => (
                0,
                usize::try_from(*left).map_or(self.step, |left| left.min(self.step)),
            ),
            Moving::Chunks(_, carry) => {
                buf[..carry.len].copy_from_slice(&carry.bytes[..carry.len]);
                (carry.len, self.step - carry.len)
            }
            Moving::Stopped(_) => return Poll::Ready(Ok(())),
        };
        let mut read = ReadBuf::new(&mut buf[start..start + want]);
        if let Err(e) = ready!(Pin::new(&mut *from).poll_read(cx, &mut read)) {
            return Poll::Ready(Err(SendError::Upstream(ExchangeError::Read(e))));
        }
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Err(ExchangeError::ClosedInBody.into()));
        }
        let filled = &buf[..start + n];
        let read = match &mut self.moving {
            Moving::Length(left) => {
                *left -= n as u64;
                filled
            }
            Moving::Chunks(scan, carry) => {
                let (used, stop) = scan.scan(filled);
                let stop = match stop {
                    Stop::More => match Carry::new(&filled[used..]) {
                        Some(kept) => {
                            *carry = kept;
                            Stop::More
                        }
                        None => Stop::Other,
                    },
                    stop => stop,
                };
                match stop {
                    Stop::More => {}
                    Stop::Broken => return Poll::Ready(Err(ExchangeError::Chunked.into())),
                    Stop::End | Stop::Other => {
                        self.past.extend_from_slice(&filled[used..]);
                        self.moving = Moving::Stopped(stop);
                    }
                }
                &filled[..used]
            }
            Moving::Stopped(_) => filled,
        };
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

    /// A chunked body of `len` bytes in chunks of `size`, plain framing.
    fn chunked(len: usize, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in pattern(len).chunks(size) {
            out.extend_from_slice(format!("{:X}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// Sends `sent` from an upstream socket and passes it on with
    /// [`copy_chunks`] (after `first`, as read with the head) to a client
    /// that takes 1,000 bytes at a time; gives what the client got, how the
    /// relay stopped and what it put back.
    async fn pass_on(first: &[u8], sent: Vec<u8>) -> (Vec<u8>, Stop, BytesMut, TcpStream) {
        let (mut upstream, mut from) = pair().await;
        let (mut to, mut client) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            upstream.write_all(&sent).await.unwrap();
            upstream
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut scan = ChunkScan::default();
        let (used, stop) = scan.scan(first);
        assert_eq!(stop, Stop::More);
        to.write_all(&first[..used]).await.unwrap();
        let mut rest = BytesMut::from(&first[used..]);
        let stop = copy_chunks(&mut from, &mut to, scan, &mut rest)
            .await
            .unwrap();
        drop(to);
        let _upstream = writer.await.unwrap();
        (reader.await.unwrap(), stop, rest, from)
    }

    #[tokio::test]
    async fn passes_a_chunked_body_on_as_it_came() {
        let body = chunked(1_000_000, 8192);
        // The head's read ended inside a size line ("20" of "2000\r\n").
        let cut = 8192 + 8 + 2;
        let mut sent = body[cut..].to_vec();
        sent.extend_from_slice(b"after");
        let (got, stop, mut rest, mut from) = pass_on(&body[..cut], sent).await;
        assert_eq!(stop, Stop::End);
        assert!(got == body, "{} of {} bytes", got.len(), body.len());
        // What followed the body was put back, or is still unread.
        while rest.len() < 5 {
            assert!(from.read_buf(&mut rest).await.unwrap() > 0);
        }
        assert_eq!(&rest[..], b"after");
    }

    #[tokio::test]
    async fn a_chunked_body_stops_at_a_line_it_does_not_pass_on() {
        let mut body = chunked(300_000, 100_000);
        let at = body.len() - 5;
        body.truncate(at);
        body.extend_from_slice(b"0\r\nX-Sum: 1\r\n\r\n");
        let (got, stop, rest, _) = pass_on(b"", body.clone()).await;
        assert_eq!(stop, Stop::Other);
        assert!(got == body[..at], "{} of {at} bytes", got.len());
        assert_eq!(&rest[..], &body[at..]);

        // The upstream breaking the framing, or closing mid-body, fails.
        let broken = chunks_from(b"10\r\n0123456789abcdefXX", false).await;
        assert!(
            matches!(broken, Err(SendError::Upstream(ExchangeError::Chunked))),
            "{broken:?}"
        );
        let closed = chunks_from(b"10\r\n0123", true).await;
        assert!(
            matches!(
                closed,
                Err(SendError::Upstream(ExchangeError::ClosedInBody))
            ),
            "{closed:?}"
        );
    }

    #[tokio::test]
    async fn more_than_a_line_left_over_goes_to_the_framed_path() {
        let (_upstream, mut from) = pair().await;
        let (mut to, _client) = tokio::io::duplex(1000);
        let long = b"00000000000000000005\r\nhello";
        let mut rest = BytesMut::from(&long[..]);
        let stop = copy_chunks(&mut from, &mut to, ChunkScan::default(), &mut rest).await;
        assert!(matches!(stop, Ok(Stop::Other)), "{stop:?}");
        assert_eq!(&rest[..], &long[..]);
    }

    /// [`copy_chunks`] of what an upstream sends (and closes after, if
    /// `close`).
    async fn chunks_from(sent: &[u8], close: bool) -> Result<Stop, SendError> {
        let (mut upstream, mut from) = pair().await;
        let (mut to, _client) = tokio::io::duplex(1 << 20);
        upstream.write_all(sent).await.unwrap();
        if close {
            drop(upstream);
        } else {
            tokio::spawn(async move {
                let _keep_open = upstream;
                std::future::pending::<()>().await
            });
        }
        let mut rest = BytesMut::new();
        copy_chunks(&mut from, &mut to, ChunkScan::default(), &mut rest).await
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
