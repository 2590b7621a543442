//! Data path: a response body read straight from the upstream socket, frame
//! by frame, as the client's side polls for it (Content-Length, chunked with
//! trailers, or until close).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::{Conn, ExchangeError, Framing, MAX_HEAD_BYTES};
use crate::tls::Stream;

/// Largest read while streaming a body.
const BODY_READ: usize = 64 * 1024;
/// A pooled connection keeps a read buffer up to this size; a larger one
/// (left by a big body) is given back to the allocator.
const KEEP_BUFFER: usize = 16 * 1024;
/// Most trailer fields accepted.
const MAX_TRAILERS: usize = 64;

enum State {
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk, this many bytes left.
    ChunkData(u64),
    /// Expecting the CRLF that ends a chunk.
    ChunkEnd,
    /// After the last chunk: trailer fields or the final CRLF.
    Trailers,
    UntilClose,
    Done,
}

/// The body of a response read by [`Conn::exchange`]. Once it has been read
/// to its end, [`ResponseBody::take_reusable`] gives the connection back.
pub struct ResponseBody {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
}

impl ResponseBody {
    pub fn new(conn: Conn, framing: Framing, keep_alive: bool) -> ResponseBody {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        ResponseBody {
            conn: Some(conn),
            state,
            keep_alive,
        }
    }

    /// The connection, when the body was read to its end and the connection
    /// can carry another request.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if !matches!(self.state, State::Done) || !self.keep_alive {
            return None;
        }
        let mut conn = self.conn.take()?;
        // Bytes after the response: the upstream is out of step, close it.
        if !conn.buf.is_empty() {
            return None;
        }
        if conn.buf.capacity() > KEEP_BUFFER {
            conn.buf = bytes::BytesMut::new();
        }
        Some(conn)
    }

    /// For a body with a length of which at least `min` bytes are still
    /// unread: takes the bytes already read (to send first) and gives them
    /// with the upstream's connection and the length still to come, for
    /// [`crate::proxy::relay`]. Call [`ResponseBody::moved`] once that
    /// length has been moved.
    pub fn take_long(&mut self, min: u64) -> Option<(Bytes, &mut Stream, u64)> {
        let State::Length(left) = &mut self.state else {
            return None;
        };
        let conn = self.conn.as_mut()?;
        let read = (conn.buf.len() as u64).min(*left);
        if *left - read < min {
            return None;
        }
        *left -= read;
        Some((
            conn.buf.split_to(read as usize).freeze(),
            &mut conn.io,
            *left,
        ))
    }

    /// For a chunked body of which nothing has been taken yet: the bytes
    /// read after the head and the upstream's connection, for
    /// [`crate::proxy::relay::copy_chunks`]. What is left in the bytes when
    /// that stops is read from there on: call [`ResponseBody::moved`] if
    /// the body ended, nothing if the framed path is to go on from a line.
    pub fn take_chunks(&mut self) -> Option<(&mut BytesMut, &mut Stream)> {
        if !matches!(self.state, State::ChunkSize) {
            return None;
        }
        let conn = self.conn.as_mut()?;
        Some((&mut conn.buf, &mut conn.io))
    }

    /// The rest of the body went from connection to connection (see
    /// [`ResponseBody::take_long`] and [`ResponseBody::take_chunks`]): the
    /// body is done.
    pub fn moved(&mut self) {
        self.state = State::Done;
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // A chunk's framing and the next chunks follow its data: a read
            // takes them too.
            let chunk = matches!(self.state, State::ChunkData(_));
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) | State::ChunkData(left) => {
                    if conn.buf.is_empty() {
                        let want = if chunk {
                            BODY_READ
                        } else {
                            (*left).min(BODY_READ as u64) as usize
                        };
                        if ready!(conn.poll_read(cx, want)).map_err(ExchangeError::Read)? == 0 {
                            return Poll::Ready(Some(Err(ExchangeError::ClosedInBody)));
                        }
                    }
                    let take = (*left).min(conn.buf.len() as u64);
                    *left -= take;
                    let data = conn.buf.split_to(take as usize).freeze();
                    if *left == 0 {
                        self.state = match self.state {
                            State::ChunkData(_) => State::ChunkEnd,
                            _ => State::Done,
                        };
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkSize => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        conn.buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() < 1024 => {
                        ready!(read_more(conn, cx))?;
                    }
                    _ => return Poll::Ready(Some(Err(ExchangeError::Chunked))),
                },
                State::ChunkEnd => {
                    if conn.buf.len() < 2 {
                        ready!(read_more(conn, cx))?;
                    } else if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        self.state = State::ChunkSize;
                    } else {
                        return Poll::Ready(Some(Err(ExchangeError::Chunked)));
                    }
                }
                State::Trailers => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    match parse_trailers(&conn.buf)? {
                        Some((used, trailers)) => {
                            conn.buf.advance(used);
                            self.state = State::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        None if conn.buf.len() < MAX_HEAD_BYTES => {
                            ready!(read_more(conn, cx))?;
                        }
                        None => return Poll::Ready(Some(Err(ExchangeError::HeadTooLarge))),
                    }
                }
                State::UntilClose => {
                    // Over TLS only a `close_notify` ends such a body: a bare
                    // TCP close (rustls' `UnexpectedEof`) fails it, as one
                    // cut short cannot be told from one complete (RFC 9112,
                    // 9.8; docs/configuration.md, upstream TLS).
                    if conn.buf.is_empty()
                        && ready!(conn.poll_read(cx, BODY_READ)).map_err(ExchangeError::Read)? == 0
                    {
                        self.state = State::Done;
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }
}

/// Reads more of a chunked body's framing; the upstream closing is an error.
fn read_more(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
    match ready!(conn.poll_read(cx, 1024)) {
        Ok(0) => Poll::Ready(Err(ExchangeError::ClosedInBody)),
        Ok(_) => Poll::Ready(Ok(())),
        Err(e) => Poll::Ready(Err(ExchangeError::Read(e))),
    }
}

/// Parses the trailer section (fields and the final CRLF). `None`: incomplete.
fn parse_trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, ExchangeError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (used, fields) = match httparse::parse_headers(buf, &mut fields)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(parsed) => parsed,
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ExchangeError::Invalid("trailer name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| ExchangeError::Invalid("trailer value"))?;
        trailers.append(name, value);
    }
    Ok(Some((used, trailers)))
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = self.get_mut();
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // The connection is out of step: never reuse it.
            this.conn = None;
            this.state = State::Done;
            this.keep_alive = false;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_parse_and_incomplete_sections_wait() {
        let (used, t) = parse_trailers(b"x-checksum: abc\r\nx-n: 1\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(used, 27);
        assert_eq!(t["x-checksum"], "abc");
        assert_eq!(t["x-n"], "1");
        assert!(parse_trailers(b"x-checksum: a").unwrap().is_none());
    }
}
