//! Data path: a request body with a Content-Length, streamed by the own
//! client from the client's socket to the upstream's: the part that came
//! with the request head and what else of it had arrived (in one write),
//! then the rest a chunk at a time, each chunk written before the next is
//! read. Never more than the body is read from
//! the client (a pipelined request after it stays in the socket), and the
//! body is never held whole.
//!
//! A chunked body ([`chunked`]) goes the same way, decoded and framed again
//! as it goes, read a chunk's worth at a time whatever its framing (tiny
//! chunks or long extension lines cost one read per 16 KiB, not one per
//! line): bytes read past its end, the start of a pipelined request, are
//! given back to the connection ([`Upload::end`]).
//!
//! A client that sent `Expect: 100-continue` and none of the body yet gets
//! `100 Continue` once the head has gone up, before the first read that
//! waits for the body: as hyper's server does when the body is first asked
//! for, and with the upstream connection known to take the request.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub mod chunked;

use super::{Conn, ExchangeError, HeadRead, MAX_HEAD_BYTES, parse_response_head};
use crate::config::Timeouts;
use crate::proxy::error_response::ClientError;
use crate::proxy::h1::ClientIo;

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Most bytes read from the client per chunk.
const CHUNK: usize = 16 * 1024;
/// Room for the framing written around a read's worth of a chunked body
/// (a size line, CRLFs, the last chunk).
const FRAMING: usize = 64;

/// The client's side of a request body.
pub struct Upload<'a> {
    /// The part that arrived with the head (at most the whole body).
    buffered: &'a [u8],
    /// The client connection, read for the rest (and written to for a
    /// `100 Continue`).
    client: &'a mut dyn ClientIo,
    /// Bytes of the body still in the client's socket.
    remaining: u64,
    /// The copy buffer, read into without zeroing it first: its bytes
    /// (`len`), when the head has not gone up yet, were read from the
    /// client's socket to go in the same write.
    chunk: Vec<u8>,
    /// Body bytes were sent and let go: the body cannot be sent again.
    spent: bool,
    /// The client asked for `100 Continue` and has not been sent it.
    expect_continue: bool,
    /// A chunked body (`remaining` unused).
    chunked: Option<Box<Chunked>>,
}

/// A chunked body on its way up.
#[derive(Default)]
struct Chunked {
    decoder: chunked::Decoder,
    /// Bytes read and not decoded yet: a line not whole; once the body
    /// has ended, what was read past its end.
    held: Vec<u8>,
    /// The body framed again, to go up next.
    framed: Vec<u8>,
    /// What came with the head (and had arrived) is decoded.
    started: bool,
    /// Bytes were read from the client's socket for the first write.
    read: bool,
    /// The first write went up.
    written: bool,
}

/// Why an upload ended before the body was sent whole.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Writing to the upstream failed.
    #[error(transparent)]
    Upstream(ExchangeError),
    /// The client's side failed: gone, or silent for the body-stall timeout.
    #[error("{0}")]
    Client(ClientError),
    /// The upstream took nothing for the response timeout.
    #[error("the upstream took no part of the request body in time")]
    UpstreamStalled,
    /// The upstream sent its final response head before the whole body
    /// went up (a 413, a 401): that answer is the request's, read next
    /// with [`Conn::response_head`]; the rest of the body is not sent.
    #[error("the upstream answered before the whole request body went up")]
    Answered,
}

impl<'a> Upload<'a> {
    /// `expect_continue`: the request asked for `100 Continue`.
    pub fn new(
        buffered: &'a [u8],
        client: &'a mut dyn ClientIo,
        remaining: u64,
        expect_continue: bool,
    ) -> Upload<'a> {
        Upload {
            buffered,
            client,
            remaining,
            chunk: Vec::new(),
            spent: false,
            expect_continue,
            chunked: None,
        }
    }

    /// A chunked body: `buffered` is its start (what came with the head),
    /// the rest is read from `client` until the body ends.
    pub fn chunked(
        buffered: &'a [u8],
        client: &'a mut dyn ClientIo,
        expect_continue: bool,
    ) -> Upload<'a> {
        Upload {
            chunked: Some(Box::default()),
            ..Upload::new(buffered, client, 0, expect_continue)
        }
    }

    /// Ends the upload: whether part of the body is still in the client's
    /// socket (it did not go up whole: the connection cannot serve another
    /// request). If not, bytes read past the body's end (the start of the
    /// client's next request) are appended to `next`.
    pub fn end(self, next: &mut Vec<u8>) -> bool {
        match &self.chunked {
            Some(c) if c.decoder.done() => next.extend_from_slice(&c.held),
            Some(_) => return true,
            None => return self.remaining > 0,
        }
        false
    }

    /// The client's TCP socket, watched once the body went up whole (see
    /// [`crate::proxy::h1::client_gone`]).
    pub fn client_socket(&self) -> Option<&tokio::net::TcpStream> {
        self.client.tcp()
    }

    /// Whether the whole request can go out again (on another connection):
    /// no body byte taken from the client's socket has been let go (only a
    /// write of the head that failed keeps them).
    pub fn replayable(&self) -> bool {
        !self.spent
    }

    /// Reads what the client has already sent of the rest of the body,
    /// without waiting, so that it goes up in the head's write (one system
    /// call fewer for a body that arrived whole). An error or the client
    /// gone is left for the read that waits.
    fn take_arrived(&mut self) {
        if self.remaining == 0 || !self.chunk.is_empty() || self.spent {
            return;
        }
        let mut dst = chunk_for_read(&mut self.chunk, self.remaining);
        self.remaining -= arrived_into(&mut *self.client, &mut dst) as u64;
    }
}

/// Reads into `dst` what the client has already sent, without waiting.
/// 0: nothing yet; an error or the end of the stream is left for the read
/// that waits.
fn arrived_into(client: &mut dyn ClientIo, dst: &mut impl BufMut) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    match tokio_util::io::poll_read_buf(Pin::new(client), &mut cx, dst) {
        Poll::Ready(Ok(n)) => n,
        _ => 0,
    }
}

/// The copy buffer emptied, with room for the next read and limited to it:
/// at most [`CHUNK`], never past the body (`remaining`). The first read
/// wants the most: the buffer is sized by it.
fn chunk_for_read(chunk: &mut Vec<u8>, remaining: u64) -> bytes::buf::Limit<&mut Vec<u8>> {
    let want = remaining.min(CHUNK as u64) as usize;
    chunk.clear();
    chunk.reserve(want);
    chunk.limit(want)
}

impl Conn {
    /// Sends the request head encoded in [`Conn::request_head`] and the body
    /// of `upload`; the response is read next with [`Conn::response_head`].
    /// A side that moves nothing for its limit ends the upload (counted in
    /// `canary_body_stalls_total`): the client for `body_stall`, the
    /// upstream for `upstream_response`.
    pub async fn send_upload(
        &mut self,
        upload: &mut Upload<'_>,
        timeouts: &Timeouts,
    ) -> Result<(), UploadError> {
        if upload.chunked.is_some() {
            return self.send_chunked(upload, timeouts).await;
        }
        let mut timer = self.timer(Instant::now() + timeouts.upstream_response);
        let sent = async {
            upload.take_arrived();
            // One writev when the socket takes all three.
            let body = Buf::chain(upload.buffered, upload.chunk.as_slice());
            self.write_head_and(body, timer.as_mut()).await?;
            // A client that sent part of the body does not wait for a 100
            // (RFC 9110, 10.1.1: it may be left out then).
            let nothing_came = upload.buffered.is_empty() && upload.chunk.is_empty();
            if std::mem::take(&mut upload.expect_continue) && nothing_came && upload.remaining > 0 {
                timer.as_mut().reset(Instant::now() + timeouts.body_stall);
                send_continue(&mut *upload.client, timer.as_mut()).await?;
            }
            // What was read from the socket is not kept for a resend: the
            // buffer goes before the response is awaited (memory per
            // request in flight).
            upload.spent |= !upload.chunk.is_empty();
            while upload.remaining > 0 {
                timer.as_mut().reset(Instant::now() + timeouts.body_stall);
                let mut dst = chunk_for_read(&mut upload.chunk, upload.remaining);
                let n = self
                    .read_body_step(&mut *upload.client, &mut dst, timer.as_mut())
                    .await?;
                // Taken from the socket: from here on, the body cannot be
                // sent again (an upstream that closed while the client's
                // body had not come yet can still be left for another).
                upload.spent = true;
                upload.remaining -= n as u64;
                timer
                    .as_mut()
                    .reset(Instant::now() + timeouts.upstream_response);
                self.write_body_step(&upload.chunk[..n], timer.as_mut())
                    .await?;
            }
            upload.chunk = Vec::new();
            Ok(())
        }
        .await;
        self.keep_timer(timer);
        sent
    }
}

impl Conn {
    /// [`Conn::send_upload`] for a chunked body: what came with the head
    /// and what else has arrived goes up with the head; then each read (of
    /// up to [`CHUNK`] bytes, which may go past the body's end: see
    /// [`Upload::end`]) is decoded and goes up framed again.
    async fn send_chunked(
        &mut self,
        upload: &mut Upload<'_>,
        timeouts: &Timeouts,
    ) -> Result<(), UploadError> {
        let Upload {
            buffered,
            client,
            spent,
            expect_continue,
            chunked: Some(c),
            ..
        } = upload
        else {
            return Ok(());
        };
        let bad = |e: chunked::BadChunk| {
            tracing::debug!(error = %e, "chunked request body");
            UploadError::Client(ClientError::BadBody)
        };
        let mut timer = self.timer(Instant::now() + timeouts.upstream_response);
        let sent = async {
            // Sent again on a new connection (see `replayable`): the body
            // was all in `buffered`, decoded again from its start.
            if c.written {
                **c = Chunked::default();
            }
            if !c.started {
                c.started = true;
                // Room for what is at hand and a read's worth, framed.
                c.framed.reserve(buffered.len() + CHUNK + FRAMING);
                let used = c.decoder.decode(buffered, &mut c.framed).map_err(bad)?;
                c.held.extend_from_slice(&buffered[used..]);
                // What else has arrived, without waiting.
                if !c.decoder.done() {
                    c.held.reserve(CHUNK);
                    if arrived_into(&mut **client, &mut (&mut c.held).limit(CHUNK)) > 0 {
                        c.read = true;
                        let used = c.decoder.decode(&c.held, &mut c.framed).map_err(bad)?;
                        c.held.drain(..used);
                    }
                }
            }
            self.write_head_and(c.framed.as_slice(), timer.as_mut())
                .await?;
            c.written = true;
            *spent |= c.read;
            // From here on, a read's worth at a time: what the head's
            // write needed (up to 64 KiB came with the head) is let go.
            c.framed.clear();
            c.framed.shrink_to(CHUNK + FRAMING);
            let nothing_came = buffered.is_empty() && !c.read;
            if std::mem::take(expect_continue) && nothing_came && !c.decoder.done() {
                timer.as_mut().reset(Instant::now() + timeouts.body_stall);
                send_continue(&mut **client, timer.as_mut()).await?;
            }
            while !c.decoder.done() {
                timer.as_mut().reset(Instant::now() + timeouts.body_stall);
                c.held.reserve(CHUNK);
                let mut dst = (&mut c.held).limit(CHUNK);
                self.read_body_step(&mut **client, &mut dst, timer.as_mut())
                    .await?;
                *spent = true;
                let used = c.decoder.decode(&c.held, &mut c.framed).map_err(bad)?;
                c.held.drain(..used);
                timer
                    .as_mut()
                    .reset(Instant::now() + timeouts.upstream_response);
                self.write_body_step(&c.framed, timer.as_mut()).await?;
                c.framed.clear();
            }
            Ok(())
        }
        .await;
        self.keep_timer(timer);
        sent
    }

    /// Writes the request head and `body` (the body bytes at hand) in one
    /// `writev` when the socket takes them all; `timer`: the upstream's
    /// limit to take them.
    async fn write_head_and(
        &mut self,
        body: impl Buf,
        timer: Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), UploadError> {
        let out = std::mem::take(&mut self.out);
        let mut first = Buf::chain(out.as_slice(), body);
        let write = poll_fn(|cx| self.poll_write_unless_answered(cx, &mut first));
        let written = tokio::select! {
            biased;
            written = write => written,
            () = timer => Err(stalled(UploadError::UpstreamStalled)),
        };
        self.out = out;
        written
    }

    /// One read of body bytes from the client into `dst`, which the client
    /// has until `timer` to send; a slow client's upstream may answer
    /// meanwhile ([`UploadError::Answered`]).
    async fn read_body_step(
        &mut self,
        client: &mut dyn ClientIo,
        dst: &mut impl BufMut,
        timer: Pin<&mut tokio::time::Sleep>,
    ) -> Result<usize, UploadError> {
        tokio::select! {
            biased;
            read = client.read_buf(dst) => match read {
                Ok(0) | Err(_) => Err(UploadError::Client(ClientError::Aborted)),
                Ok(n) => Ok(n),
            },
            answered = poll_fn(|cx| self.poll_answered(cx)) => Err(answered),
            () = timer => Err(stalled(UploadError::Client(ClientError::BodyStall))),
        }
    }

    /// Writes body bytes up, which the upstream has until `timer` to take.
    async fn write_body_step(
        &mut self,
        mut bytes: &[u8],
        timer: Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), UploadError> {
        tokio::select! {
            biased;
            written = poll_fn(|cx| self.poll_write_unless_answered(cx, &mut bytes)) => written,
            () = timer => Err(stalled(UploadError::UpstreamStalled)),
        }
    }

    /// Writes all of `buf` to the upstream; while the upstream takes no
    /// more, looks whether it has answered (see [`Conn::poll_answered`]).
    fn poll_write_unless_answered<B: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<Result<(), UploadError>> {
        while buf.has_remaining() {
            match tokio_util::io::poll_write_buf(Pin::new(&mut self.io), cx, buf) {
                Poll::Ready(Ok(0)) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(UploadError::Upstream(ExchangeError::Write(e))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(UploadError::Upstream(ExchangeError::Write(e))));
                }
                Poll::Pending => return self.poll_answered(cx).map(Err),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ready when the upstream, in the middle of an upload, sent a final
    /// response head ([`UploadError::Answered`]; interim 1xx heads do not
    /// count), or closed or failed its side (an upstream error). What came
    /// stays in the connection's buffer for [`Conn::response_head`].
    fn poll_answered(&mut self, cx: &mut Context<'_>) -> Poll<UploadError> {
        loop {
            match ready!(self.poll_read_head(cx, HeadRead::InPlace)) {
                Ok(0) => {
                    return Poll::Ready(UploadError::Upstream(if self.buf.is_empty() {
                        ExchangeError::ClosedBeforeResponse
                    } else {
                        ExchangeError::ClosedInHead
                    }));
                }
                Ok(_) => {
                    // Rare (an upstream that answers before the body is
                    // whole): parsed on a copy, the response is read from
                    // the buffer as usual afterwards.
                    let mut copy = BytesMut::from(&self.buf[..]);
                    let whole = !matches!(
                        parse_response_head(&mut copy, false, &mut Vec::new()),
                        Ok(None)
                    );
                    if whole || self.buf.len() >= MAX_HEAD_BYTES {
                        return Poll::Ready(UploadError::Answered);
                    }
                }
                Err(e) => return Poll::Ready(UploadError::Upstream(ExchangeError::Read(e))),
            }
        }
    }
}

/// Sends `100 Continue` to the client, which has until `timer` to take it.
async fn send_continue(
    client: &mut dyn ClientIo,
    timer: Pin<&mut tokio::time::Sleep>,
) -> Result<(), UploadError> {
    tokio::select! {
        biased;
        // Flushed: over TLS, a record the socket did not take at once
        // would wait in the session for the next write.
        written = async { client.write_all(CONTINUE).await?; client.flush().await } => {
            written.map_err(|_| UploadError::Client(ClientError::Aborted))
        }
        () = timer => Err(stalled(UploadError::Client(ClientError::BodyStall))),
    }
}

/// Counts a stalled upload.
fn stalled(e: UploadError) -> UploadError {
    metrics::counter!(crate::metrics::BODY_STALLS_TOTAL).increment(1);
    e
}

#[cfg(test)]
mod tests;
