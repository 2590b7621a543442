//! Data path: the gateway's own HTTP/1.1 server, for the requests most
//! traffic is made of: without a body or with a Content-Length one (also
//! after `Expect: 100-continue`), no upgrade, HTTP/1.1, origin form
//! ([`request::parse`] has the exact rule).
//!
//! hyper's server parses every request head into an `http::Request` (a
//! header map: every name hashed, every value copied into a shared
//! buffer), allocates a fresh 8 KiB read buffer per request, and encodes
//! the response from another header map. Here the request head is parsed in
//! place in the connection's buffer, the upstream's head is written straight
//! from the request's bytes ([`crate::proxy::upstream_client::head`]) and the
//! client's straight from the upstream's ([`response`]), the way nginx
//! copies header lines between buffers.
//!
//! A chunked upload whose whole body is in the buffer with the head (what
//! has arrived is read without waiting, up to 64 KiB in all: a small JSON
//! body sent chunked comes with its head) in plain framing
//! ([`crate::proxy::relay::chunks`]) goes up as it came, in the head's
//! write; any other is decoded and framed again as it goes up
//! ([`crate::proxy::upstream_client::upload::chunked`]), read ahead 16 KiB at
//! a time: what is read past its end goes back into the buffer
//! ([`BodyAtHand`]).
//!
//! While the upstream thinks, the client's socket is watched
//! ([`client_gone`]): a client that closes or resets its connection then
//! ends the request unanswered, as on hyper's servers.
//!
//! At the first request that is not simple, the connection is handed to
//! hyper's server for the rest of its life, with the bytes read so far
//! ([`Ended::HandOff`]): chunked uploads that declare trailers or whose
//! first bytes are broken, upgrades, `TE`, expectations other than
//! `100-continue`, HTTP/1.0 and malformed heads (400, 431) keep hyper's
//! handling (a CONNECT too: the service answers it 501). A missing or
//! repeated Host, or a Host value that is no `uri-host [ ":" port ]`, which
//! hyper's server lets pass, gets a 400 here.

pub mod client_gone;
pub mod request;
pub mod response;

use std::future::{Future, poll_fn};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Proxy;
use super::error_response::{ClientError, ProxyError};
use super::relay::chunks::{ChunkScan, Stop};
use super::server::{ConnState, Drain};
use request::Parsed;
use response::SendError;

/// Largest request head the own server waits for; a longer one goes to
/// hyper's server, which answers 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read size while waiting for a request head.
const HEAD_READ: usize = 4096;

/// A client connection the own server serves (plain TCP or TLS).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket underneath, watched for the client going away while
    /// the upstream thinks ([`client_gone`]); `None`: not watched.
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }

    /// Whether bytes the server has not read yet have arrived (the start of
    /// the client's next request, sent before it saw this answer), without
    /// waiting or reading them: TLS data the socket holds counts too.
    fn unread_arrived(&self) -> bool {
        self.tcp().is_some_and(|tcp| {
            let mut cx = Context::from_waker(Waker::noop());
            let mut probe = [0u8; 1];
            let mut buf = tokio::io::ReadBuf::new(&mut probe);
            matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Ready(Ok(n)) if n > 0)
        })
    }
}

impl ClientIo for tokio::net::TcpStream {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}

impl ClientIo for crate::tls::Stream {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(crate::tls::Stream::tcp(self))
    }

    /// Also data rustls read from the socket and holds, decrypted.
    fn unread_arrived(&self) -> bool {
        !self.idle_and_open()
    }
}

/// How a connection served by the own server ended.
#[derive(Debug)]
pub enum Ended {
    /// Closed: by the client, after `Connection: close`, or by the drain.
    Closed,
    /// A request the own server leaves to hyper's: the connection goes on
    /// there, starting with these bytes.
    HandOff(Bytes),
}

/// Serves requests on a client connection until it closes or a request
/// needs hyper's server. An error ends the connection.
///
/// What a request in flight needs (its header slots, the upstream exchange,
/// the response head: about 4 KiB, `serve_one`) lives in one allocation
/// of its own, not in the connection's task, and so do the buffers: an idle
/// keep-alive connection costs its task, socket and [`ConnState`] (about
/// 1.7 KB in all), not the kilobytes of a request in flight. A busy
/// connection keeps that allocation and its buffers from one request to the
/// next (`in_place`), and lets them go when it idles.
pub async fn serve<IO: ClientIo>(
    io: &mut IO,
    state: &Arc<ConnState>,
    proxy: &Proxy,
    drain: &Drain,
) -> Result<Ended, SendError> {
    let mut io = io;
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    // Where the next request starts in `buf` (pipelined requests are served
    // from the buffer without moving the bytes after each one).
    let mut start = 0;
    let mut kept = None;
    let mut served = 0u64;
    loop {
        // How far the buffer has been searched for the blank line: a head
        // that arrives a few bytes at a time is not searched over and over.
        let mut searched = 0;
        // Reads that found nothing while waiting for this head.
        let mut pending = 0;
        while !has_whole_head(&buf[start..], &mut searched) {
            if start > 0 {
                buf.drain(..start);
                start = 0;
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Ok(Ended::HandOff(buf.into()));
            }
            if !buf.is_empty() {
                // Part of a head: from a read (the clock runs already) or
                // left after a pipelined request (no read starts it).
                state.head_pending();
            }
            // Between requests, the drain closes the connection once its
            // idle window is over ([`Drain::close_idle`]): a request that
            // comes within it is served, and so is one the socket already
            // holds then (read without waiting: a socket closed with unread
            // bytes is reset, and the client would get no answer to a
            // request it sent whole), and so is a head on its way. Each gets
            // `Connection: close` (the drain has begun).
            let n = poll_fn(|cx| {
                let idle_at_drain = buf.is_empty() && drain.is_closing_idle();
                let read = poll_read_sized(Pin::new(&mut *io), cx, &mut buf);
                if idle_at_drain {
                    return match read {
                        Poll::Pending => Poll::Ready(Ok(0)),
                        read => read,
                    };
                }
                if read.is_pending() && buf.is_empty() {
                    pending += 1;
                    // Polled again with still nothing to read: woken by the
                    // watchdog's tick, not by the socket. The connection
                    // idles; it lets go of what only requests need.
                    if pending > 1 && (kept.is_some() || buf.capacity() > 0) {
                        kept = None;
                        (buf, out) = (Vec::new(), Vec::new());
                    }
                }
                read
            })
            .await?;
            if n == 0 {
                return Ok(Ended::Closed);
            }
            if broken_start(&buf[start..]) {
                // hyper's server answers it (400) at once, rather than the
                // connection waiting for a blank line until
                // `request_header` runs out.
                return Ok(Ended::HandOff(buf.into()));
            }
        }
        let request = serve_one(io, buf, start, out, state, proxy, drain);
        let (outcome, back) = in_place(&mut kept, request).await?;
        (io, buf, out) = back;
        let (len, close, linger) = match outcome {
            Served::Done { len, close, linger } => (len, close, linger),
            Served::HandOff => {
                buf.drain(..start);
                return Ok(Ended::HandOff(buf.into()));
            }
            // A 400 went out: closed as any response that closes.
            Served::Closed => (0, true, false),
        };
        if close {
            if linger {
                // The rest of the body it reads is not a next request's head.
                state.closing();
                Box::pin(lingering_close(&mut *io, drain)).await;
            } else {
                Box::pin(shut_down(&mut *io)).await;
            }
            return Ok(Ended::Closed);
        }
        served += 1;
        start += len;
        if start == buf.len() {
            buf.clear();
            start = 0;
            if served == 1 {
                // One request so far: nothing says another comes soon (a
                // health check, a pooled connection put aside), so nothing
                // is kept for it.
                kept = None;
                (buf, out) = (Vec::new(), Vec::new());
            }
        }
    }
}

/// Longest a connection closing with a request body maybe unread waits
/// for the client to stop sending (see [`lingering_close`]), and longest a
/// request body still going up after its answer is passed on (see
/// [`super::upstream::Sender`]'s `Drop`).
pub(crate) const LINGER: Duration = Duration::from_secs(5);

/// Closes a connection whose client may still be sending a request body
/// the server did not read (an early answer, a refusal): a socket closed
/// with unread bytes is reset, and a reset throws away what the socket had
/// not sent yet (the response's tail) and may reach the client before the
/// response. So, as nginx's lingering close: the write side is shut (the
/// client gets the whole response, then the end of the stream), and what
/// the client still sends is read and dropped until it closes, for at most
/// [`LINGER`], or until the gateway drains.
async fn lingering_close<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO, drain: &Drain) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if io.shutdown().await.is_err() {
        return;
    }
    let mut sink = vec![0u8; 16 * 1024];
    let read_to_end = async { while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {} };
    let lingered = async {
        tokio::select! {
            () = read_to_end => {}
            () = drain.began() => {}
        }
    };
    let _ = tokio::time::timeout(LINGER, lingered).await;
}

/// Answers a connection whose request head began but did not arrive whole
/// within `request_header` (the watchdog stopped serving it and counted it
/// as the client's `head_timeout`): `408 Request Timeout` with
/// `Connection: close`, as HAProxy answers (nginx closes without a word),
/// then the write side shut; for at most `LINGER`, or until the
/// shutdown's grace period runs out. Only the own server's connections get
/// it: it was waiting for a head, with nothing of a response written.
pub async fn answer_head_timeout<IO: ClientIo>(io: &mut IO, drain: &Drain) {
    let mut out = Vec::new();
    let e = ProxyError::Client(ClientError::HeadTimeout);
    let body = response::error_head(&mut out, &e, None, None, true);
    let answer = async {
        if response::send_full(&mut *io, &out, body).await.is_ok() {
            shut_down(&mut *io).await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER, answer) => {}
        () = drain.cut_off() => {}
    }
}

/// Shuts the write side of a connection that closes after its response,
/// for at most [`LINGER`]: over TLS, what rustls still holds of the
/// response (a write the socket did not take whole is buffered there and
/// reported done) goes out first, then `close_notify`; dropped unflushed,
/// the response's tail would be lost. As hyper's server does at a close.
async fn shut_down<IO: AsyncWrite + Unpin>(io: &mut IO) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(LINGER, io.shutdown()).await;
}

/// `future` in the allocation `kept` holds (the last request's, done by
/// now), or in a new one.
fn in_place<F: Future>(kept: &mut Option<Pin<Box<F>>>, future: F) -> Pin<&mut F> {
    match kept {
        Some(kept) => {
            kept.set(future);
            kept.as_mut()
        }
        None => kept.insert(Box::pin(future)).as_mut(),
    }
}

/// What serving the request at the start of a buffer came to.
enum Served {
    /// Answered: the head was `len` bytes; `close`: the connection closes;
    /// `linger`: part of the request's body was to come from the socket
    /// (the client may still be sending it).
    Done {
        len: usize,
        close: bool,
        linger: bool,
    },
    /// A request the own server leaves to hyper's.
    HandOff,
    /// Answered 400; the connection closes.
    Closed,
}

/// The part of a request's body the own server read with its head, and
/// where bytes read past the body's end go (a chunked upload reads ahead:
/// the start of the client's next request, put back in the connection's
/// buffer).
pub struct BodyAtHand<'a> {
    pub buffered: &'a [u8],
    pub read_past: &'a mut Vec<u8>,
    /// Bytes of the client's next request came with this one (pipelined).
    pub next_at_hand: bool,
}

/// What a request borrows from its connection and gives back: the client
/// socket, the read buffer, the buffer for response heads.
type GivenBack<'c, IO> = (&'c mut IO, Vec<u8>, Vec<u8>);

/// Room for a response head written to the client: a service's 8-12
/// header lines fit, and an allocation this small is served from the
/// allocator's per-thread cache.
const OUT_CAPACITY: usize = 1024;

/// Serves the request whose whole head starts at `buf[start..]`; `out` is
/// for the response head. Gives the socket and both buffers back.
async fn serve_one<'c, IO: ClientIo>(
    io: &'c mut IO,
    mut buf: Vec<u8>,
    start: usize,
    mut out: Vec<u8>,
    state: &Arc<ConnState>,
    proxy: &Proxy,
    drain: &Drain,
) -> Result<(Served, GivenBack<'c, IO>), SendError> {
    out.clear();
    out.reserve(OUT_CAPACITY);
    // A chunked body not whole in the buffer: what has arrived of it is
    // read once, then the head is parsed again.
    let mut read_more = true;
    let mut read_past = Vec::new();
    let served = loop {
        let mut slots = request::slots();
        break match request::parse(&buf[start..], &mut slots) {
            Parsed::Simple(mut req) => {
                if req.chunked {
                    let after = &buf[start + req.len..];
                    match whole_chunked_body(after) {
                        Some(len) => req.body = len as u64,
                        None if std::mem::take(&mut read_more) => {
                            read_arrived(&mut *io, &mut buf);
                            continue;
                        }
                        // Not plain, or not all here: decoded as it goes up,
                        // unless it declares trailers (hyper's client sends
                        // those).
                        None => match streamed_chunked_body(after) {
                            Some(len) if req.header(&http::header::TRAILER).is_none() => {
                                req.body = len as u64;
                                req.streamed = true;
                            }
                            _ => break Served::HandOff,
                        },
                    }
                }
                // The part of the body that came with the head.
                let after = &buf[start + req.len..];
                let in_buf = usize::try_from(req.body).map_or(after.len(), |b| b.min(after.len()));
                let body = BodyAtHand {
                    buffered: &after[..in_buf],
                    read_past: &mut read_past,
                    next_at_hand: after.len() > in_buf,
                };
                let close = proxy
                    .serve_simple(&req, body, state, &mut *io, &mut out, drain)
                    .await?;
                Served::Done {
                    len: req.len + in_buf,
                    close,
                    linger: close && (req.streamed || req.body > in_buf as u64),
                }
            }
            Parsed::Partial | Parsed::Other => Served::HandOff,
            Parsed::Invalid(reason) => {
                // A 400 and the connection closes: counted as the client's
                // error, never a version's.
                let e = ClientError::BadHead(reason);
                e.count();
                // Answered: no head to time any more.
                state.closing();
                let body = response::error_head(&mut out, &ProxyError::Client(e), None, None, true);
                response::send_full(&mut *io, &out, body).await?;
                Served::Closed
            }
        };
    };
    // After the request's bytes (the body's end was the buffer's end).
    buf.extend_from_slice(&read_past);
    Ok((served, (io, buf, out)))
}

/// The length of the chunked body at the start of `bytes` if it is all
/// there and its framing plain (see [`ChunkScan`]): it goes up as it came.
fn whole_chunked_body(bytes: &[u8]) -> Option<usize> {
    match ChunkScan::default().scan(bytes) {
        (len, Stop::End) => Some(len),
        _ => None,
    }
}

/// How much of `bytes` is the start of a chunked body that goes up decoded
/// ([`crate::proxy::upstream_client::upload::chunked`]): up to its end if
/// that is there, else all of it. `None`: its framing is broken (hyper's
/// server answers it).
fn streamed_chunked_body(bytes: &[u8]) -> Option<usize> {
    use crate::proxy::upstream_client::upload::chunked::{Decoder, Discard};
    let mut decoder = Decoder::default();
    let used = decoder.decode(bytes, &mut Discard).ok()?;
    Some(if decoder.done() { used } else { bytes.len() })
}

/// Appends to `buf` what has arrived on `io`, without waiting, up to
/// [`MAX_HEAD_BYTES`] in all. An error or the end of the stream is left
/// for the next read that waits.
fn read_arrived<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut Vec<u8>) {
    let mut cx = Context::from_waker(Waker::noop());
    while buf.len() < MAX_HEAD_BYTES {
        match poll_read_sized(Pin::new(&mut *io), &mut cx, buf) {
            Poll::Ready(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
}

/// Reads part of a request head into the stack and appends it to `buf`,
/// which so grows to what heads need, not to a read's size: a busy
/// connection keeps its buffer between requests (no allocation per request)
/// at about its requests' size (744 bytes for an ALB's GET, where reading in
/// place kept 4 KiB), and a new one allocates only what arrived.
fn poll_read_sized<IO: AsyncRead>(
    io: Pin<&mut IO>,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
) -> Poll<std::io::Result<usize>> {
    let mut first = [MaybeUninit::<u8>::uninit(); HEAD_READ];
    let mut read = ReadBuf::uninit(&mut first);
    ready!(io.poll_read(cx, &mut read))?;
    buf.extend_from_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}

/// Whether `buf` holds a blank line (CRLF CRLF, or bare LFs as httparse
/// accepts them): the end of a head, or enough for httparse to reject it.
/// The search starts at `*searched` and leaves it where the next one starts.
/// A head that came alone ends the buffer: that is looked at first; else
/// the line ends are found with `memchr` (a byte-by-byte scan of an ALB's
/// 744-byte head cost about 4,000 instructions, a sixth of a request's).
fn has_whole_head(buf: &[u8], searched: &mut usize) -> bool {
    let from = (*searched).min(buf.len());
    // A blank line may start in the last two bytes and end in the next read.
    *searched = buf.len().saturating_sub(2);
    if buf.ends_with(b"\n\r\n") || buf.ends_with(b"\n\n") {
        return true;
    }
    memchr::memchr_iter(b'\n', &buf[from..]).any(|i| match buf.get(from + i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => buf.get(from + i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// Whether the bytes of a head still arriving cannot start a request: its
/// method (after any empty lines, RFC 9112 2.2) holds a byte that no token
/// has, as a TLS ClientHello sent to the plain port or binary noise does.
/// Looks at the method only, so a head arriving in pieces costs little.
fn broken_start(buf: &[u8]) -> bool {
    let Some(from) = buf.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return false;
    };
    buf[from..]
        .iter()
        .take_while(|&&b| b != b' ')
        .any(|&b| !super::headers::is_token_byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy connection's buffer stays at its requests' size: the next
    /// head is read into what the last one left, not grown by a read's size;
    /// a new buffer is what arrived; a longer head grows it.
    #[tokio::test]
    async fn heads_are_read_into_a_buffer_of_their_size() {
        async fn read(mut src: &[u8], buf: &mut Vec<u8>) -> usize {
            std::future::poll_fn(|cx| poll_read_sized(Pin::new(&mut src), cx, buf))
                .await
                .unwrap()
        }
        let head = [b'a'; 744];
        let mut buf = Vec::new();
        assert_eq!(read(&head, &mut buf).await, 744);
        assert_eq!(buf.capacity(), 744);
        buf.clear();
        assert_eq!(read(&head, &mut buf).await, 744);
        assert_eq!(
            (buf.len(), buf.capacity()),
            (744, 744),
            "grew for a head that fit"
        );
        // The rest of a longer head is appended.
        assert_eq!(read(b"more", &mut buf).await, 4);
        assert_eq!(&buf[744..], b"more");
    }

    #[test]
    fn a_request_line_that_cannot_be_one_is_seen_before_the_head_ends() {
        for bad in [
            &b"G@T / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"\r\n(GET",
        ] {
            assert!(broken_start(bad), "{bad:?}");
        }
        for fine in [
            &b""[..],
            b"\r\n",
            b"GE",
            b"GET",
            b"GET /x",
            b"\r\nPOST / HTTP/1.1\r\nHo",
        ] {
            assert!(!broken_start(fine), "{fine:?}");
        }
    }

    #[test]
    fn a_head_ends_at_a_blank_line() {
        let whole = |buf: &[u8]| has_whole_head(buf, &mut 0);
        assert!(whole(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(whole(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(!whole(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!whole(b""));
        // Byte by byte, the blank line is still found where it ends.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut searched = 0;
        for end in 1..head.len() {
            assert!(!has_whole_head(&head[..end], &mut searched), "{end}");
        }
        assert!(has_whole_head(head, &mut searched));
        // Followed by a body or the next request (not at the end), found
        // where it is, once.
        let mut searched = 0;
        assert!(!has_whole_head(
            b"POST / HTTP/1.1\r\nA: b\r\n\r",
            &mut searched
        ));
        assert_eq!(searched, 22);
        assert!(has_whole_head(
            b"POST / HTTP/1.1\r\nA: b\r\n\r\nbody",
            &mut searched
        ));
        assert!(has_whole_head(b"GET / HTTP/1.1\nA: b\n\nGET", &mut 0));
        assert!(!has_whole_head(b"GET / HTTP/1.1\nA: b\n\nGET", &mut 24));
        assert!(!has_whole_head(b"\r\n\r", &mut 0));
        assert!(!has_whole_head(b"x\n\r", &mut 0));
        assert!(has_whole_head(b"x\n\r\n", &mut 9));
    }
}
