//! Data path: the gateway's own HTTP/1.1 client for requests without a body
//! (GET, HEAD, DELETE, ...: most of the traffic) and for the own server's
//! uploads with a Content-Length ([`upload`]), driven in the request's task.
//!
//! hyper's client runs every upstream connection in a task of its own: each
//! request crosses a channel to that task, its response comes back on a
//! oneshot and each body chunk on another channel. Here the task that serves
//! the client's connection writes the request head on a pooled socket, reads
//! the response head from it, and the response body is read from the socket
//! when the client's side asks for the next frame. No task, no channel, no
//! copy of the body; one read buffer per connection, sized to the exchange,
//! instead of hyper's 8 KiB read and 8 KiB write buffers.
//!
//! Other requests with a body or an upgrade keep going through hyper's
//! client (chunked uploads, request trailers, uploads handed to hyper's
//! server, HTTP/2 uploads, tunnels).

pub mod body;
pub mod head;
pub mod names;
pub mod upload;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::tls::Stream;

/// Largest response head (or trailer section) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines accepted in a response head.
const MAX_HEADERS: usize = 128;
/// Read size while waiting for a response head: a typical head and a small
/// body fit in one read.
const HEAD_READ: usize = 4096;

/// What went wrong in an exchange.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    #[error("reading the response failed: {0}")]
    Read(io::Error),
    #[error("reading the response failed after part of its head: {0}")]
    ReadInHead(io::Error),
    #[error("the upstream closed the connection before responding")]
    ClosedBeforeResponse,
    #[error("the upstream closed the connection in the middle of the response head")]
    ClosedInHead,
    #[error("the upstream closed the connection in the middle of the response body")]
    ClosedInBody,
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("invalid chunked response body")]
    Chunked,
}

impl ExchangeError {
    /// Nothing of a response arrived: the request may be retried on another
    /// connection if that is safe for its method (see [`retry_safe`]). A
    /// write that failed is always safe to retry: the upstream cannot act on
    /// a request head it did not receive whole.
    pub fn nothing_received(&self) -> bool {
        match self {
            ExchangeError::Write(_) | ExchangeError::ClosedBeforeResponse => true,
            ExchangeError::Read(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }

    /// Whether the request was certainly not processed (its head never left
    /// whole), so even a non-idempotent method can be retried.
    pub fn unsent(&self) -> bool {
        matches!(self, ExchangeError::Write(_))
    }
}

/// Methods a client may retry automatically (RFC 9110, 9.2.2): the keep-alive
/// race (an upstream closing an idle connection as a request is written) must
/// not fail such requests.
pub fn retry_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Read until the upstream closes (HTTP/1.0 style).
    UntilClose,
}

/// A response head and what the body needs to know, its header fields in
/// a map.
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// Where one header field lies in a [`RawHead`]: name start and end, value
/// start and end.
pub type Span = (u32, u32, u32, u32);

/// A response head as received: its bytes, where its fields are (in the
/// connection's span list) and what was noted while parsing it.
pub struct RawHead {
    pub status: StatusCode,
    /// The head, status line to blank line.
    bytes: Bytes,
    pub framing: Framing,
    /// The connection may carry another request once the body is read.
    pub keep_alive: bool,
    pub facts: Facts,
}

/// What the framing and the rewriting of a response depend on, noted while
/// its header fields are parsed (no look-ups afterwards).
#[derive(Debug, Default, Clone, Copy)]
pub struct Facts {
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// Transfer-Encoding is `chunked` alone, in one field
    /// ([`crate::proxy::headers::chunked_only`]).
    chunked: bool,
    close: bool,
    /// Content-Length must not reach the client as received: Transfer-Encoding
    /// overrides it and the body is re-framed, or its equal values were
    /// repeated (`5, 5` or two fields) and go out as one (`single_length`).
    pub drop_content_length: bool,
    /// Content-Length came as a list or in several fields.
    repeated_length: bool,
    /// The length to send the client as one field, for a repeated one.
    pub single_length: Option<u64>,
    /// The Connection header names headers to remove.
    pub connection_names_headers: bool,
    /// A Date header is present.
    pub date: bool,
}

impl Facts {
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), ExchangeError> {
        if crate::proxy::headers::name_is(name, b"content-length") {
            self.repeated_length |= self.content_length.is_some() || value.contains(&b',');
            self.content_length = Some(content_length(value, self.content_length)?);
        } else if crate::proxy::headers::name_is(name, b"transfer-encoding") {
            self.chunked = !self.transfer_encoding && crate::proxy::headers::chunked_only(value);
            self.transfer_encoding = true;
        } else if crate::proxy::headers::name_is(name, b"connection") {
            self.close |= crate::proxy::headers::has_token(value, b"close");
            self.connection_names_headers |= crate::proxy::headers::names_headers(value);
        } else if crate::proxy::headers::name_is(name, b"date") {
            self.date = true;
        }
        Ok(())
    }
}

impl RawHead {
    /// The header fields as name and value bytes (`spans`: the list the
    /// connection recorded for this head, [`Conn::spans`]).
    pub fn fields<'a>(&'a self, spans: &'a [Span]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        spans.iter().map(|&(ns, ne, vs, ve)| {
            (
                &self.bytes[ns as usize..ne as usize],
                &self.bytes[vs as usize..ve as usize],
            )
        })
    }

    /// The reason phrase as received: empty when the status line has none
    /// (`HTTP/1.1 299` or `HTTP/1.1 299 `). httparse took the line: empty
    /// lines, `HTTP/1.x`, a space, three digits, then a space and the
    /// reason, or the line's end.
    pub fn reason(&self) -> &[u8] {
        let head = &self.bytes[..];
        let start = head
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(0);
        let Some(rest) = head.get(start + 12..).and_then(|r| r.strip_prefix(b" ")) else {
            return b"";
        };
        let line = &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())];
        line.strip_suffix(b"\r").unwrap_or(line)
    }

    /// What hyper's HTTP/1 server writes in place of the status code's
    /// canonical text (it writes `<none>` for a code without one): the
    /// upstream's reason phrase when it differs from that text, an empty one
    /// for a code without a text whose upstream sent none. `None` for the
    /// usual response (the canonical text): nothing to allocate.
    fn reason_phrase(&self) -> Option<hyper::ext::ReasonPhrase> {
        let canonical = self.status.canonical_reason();
        let reason = self.reason();
        if !reason.is_empty()
            && Some(reason) != canonical.map(str::as_bytes)
            && let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(self.bytes.slice_ref(reason))
        {
            return Some(phrase);
        }
        canonical
            .is_none()
            .then(|| hyper::ext::ReasonPhrase::from_static(b""))
    }

    /// The head with its fields in `map` (an empty map whose allocation is
    /// reused); the values point into the head's bytes, no copies. The
    /// upstream's reason phrase goes in the response's extensions, for
    /// hyper's HTTP/1 server (`reason_phrase`).
    pub fn into_head(self, spans: &[Span], mut map: HeaderMap) -> Result<Head, ExchangeError> {
        debug_assert!(map.is_empty());
        map.reserve(spans.len());
        for &(ns, ne, vs, ve) in spans {
            let name = names::header_name(&self.bytes[ns as usize..ne as usize])
                .map_err(|_| ExchangeError::Invalid("header name"))?;
            if self.facts.drop_content_length && name == header::CONTENT_LENGTH {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(self.bytes.slice(vs as usize..ve as usize))
                .map_err(|_| ExchangeError::Invalid("header value"))?;
            map.append(name, value);
        }
        if let Some(n) = self.facts.single_length {
            map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let mut response = Response::new(());
        *response.status_mut() = self.status;
        if let Some(phrase) = self.reason_phrase() {
            response.extensions_mut().insert(phrase);
        }
        *response.headers_mut() = map;
        Ok(Head {
            response,
            framing: self.framing,
            keep_alive: self.keep_alive,
        })
    }
}

/// Where a response head (and what of the body came with it) is read. The
/// head and a small body are frozen from that buffer and live as long as
/// the client's side holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRead {
    /// Into the connection's buffer, whose allocation is reused once the
    /// last response's bytes are gone: no allocation per response when the
    /// response is written out before the connection serves another request
    /// (the own HTTP/1.1 server). Read on the stack and copied in, so that
    /// the buffer keeps the size its responses need (1.4 KB for a service's
    /// head and 1 KB body) rather than a read's 4 KiB.
    InPlace,
    /// Into a buffer on the stack, then copied into an allocation the size
    /// of what came (two allocations per response): for responses that wait
    /// in a send queue after the connection went back to the pool (hyper's
    /// servers: HTTP/2 streams). In place, each connection in flight would
    /// hold a new 4 KiB buffer while its last response is still queued;
    /// sized, it holds what its response took.
    Sized,
}

/// One upstream HTTP/1.1 connection of the pool.
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    out: Vec<u8>,
    /// The response timer, kept between requests (see [`Conn::timer`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Where the last response head's fields are (see [`RawHead::fields`]).
    spans: Vec<Span>,
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            timer: None,
            spans: Vec::new(),
        }
    }

    /// The connection's response timer, set to `deadline`; give it back with
    /// [`Conn::keep_timer`]. One timer entry per connection, moved later for
    /// each request: tokio extends a registered entry with one atomic update,
    /// where a new timer per request costs two locked wheel operations.
    pub fn timer(&mut self, deadline: tokio::time::Instant) -> Pin<Box<tokio::time::Sleep>> {
        match self.timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    pub fn keep_timer(&mut self, timer: Pin<Box<tokio::time::Sleep>>) {
        self.timer = Some(timer);
    }

    /// Whether a pooled connection still looks open. Costs no system call
    /// unless the socket became readable while idle, which for an idle
    /// HTTP/1.1 connection means the upstream closed it (or sent garbage).
    pub fn is_usable(&self) -> bool {
        self.buf.is_empty() && self.io.idle_and_open()
    }

    /// Gives the read buffer and the request head's buffer back to the
    /// allocator (an idle connection: the next exchange takes new ones).
    /// Bytes still unread stay.
    pub fn release_buffers(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.out = Vec::new();
    }

    /// Bytes of buffer the connection holds (what it costs while idle,
    /// beyond its socket and this struct).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity() + self.out.capacity()
    }

    /// The buffer to encode the request head into before [`Conn::exchange`].
    pub fn request_head(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// The request head last encoded (the upstream got it, or was to get it).
    pub fn request_head_sent(&self) -> &[u8] {
        &self.out
    }

    /// Where the fields of the head [`Conn::exchange`] returned are.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Sends the request head (a request without a body) and reads the
    /// response head. Informational (1xx) responses are skipped.
    pub async fn exchange(
        &mut self,
        method: &Method,
        how: HeadRead,
    ) -> Result<RawHead, ExchangeError> {
        self.io
            .write_all(&self.out)
            .await
            .map_err(ExchangeError::Write)?;
        self.response_head(method, how).await
    }

    /// Reads the response head to a request sent whole. Informational (1xx)
    /// responses are skipped.
    pub async fn response_head(
        &mut self,
        method: &Method,
        how: HeadRead,
    ) -> Result<RawHead, ExchangeError> {
        let head_request = *method == Method::HEAD;
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                if let Some(head) =
                    parse_response_head(&mut self.buf, head_request, &mut self.spans)?
                {
                    return Ok(head);
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Err(ExchangeError::HeadTooLarge);
                }
            }
            let n = poll_fn(|cx| self.poll_read_head(cx, how))
                .await
                .map_err(|e| {
                    if received {
                        ExchangeError::ReadInHead(e)
                    } else {
                        ExchangeError::Read(e)
                    }
                })?;
            if n == 0 {
                return Err(if received {
                    ExchangeError::ClosedInHead
                } else {
                    ExchangeError::ClosedBeforeResponse
                });
            }
        }
    }

    /// Reads part of a response head (see [`HeadRead`]). Ready(0) means the
    /// upstream closed the connection, with or without a TLS `close_notify`
    /// (see [`closed_without_close_notify`]).
    fn poll_read_head(&mut self, cx: &mut Context<'_>, how: HeadRead) -> Poll<io::Result<usize>> {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); HEAD_READ];
        let mut read = ReadBuf::uninit(&mut scratch);
        match ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)) {
            Ok(()) => {}
            Err(e) if closed_without_close_notify(&e) => return Poll::Ready(Ok(0)),
            Err(e) => return Poll::Ready(Err(e)),
        }
        let got = read.filled();
        if self.buf.is_empty() && how == HeadRead::Sized {
            self.buf = BytesMut::from(got);
        } else {
            // In place: the last response's allocation, once its bytes are
            // gone, takes this one if it fits (responses of one size: always).
            self.buf.extend_from_slice(got);
        }
        Poll::Ready(Ok(got.len()))
    }

    /// Reads more bytes into the buffer (at least `want` bytes of room).
    /// Ready(0) means the upstream closed the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want.max(1));
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Whether a read error is a TLS upstream's TCP close that no `close_notify`
/// came before: rustls reports it as `UnexpectedEof` (a possible
/// truncation) where a plain socket reads 0 bytes, and many servers close
/// idle connections that way (Python's ssl module, gunicorn). rustls
/// returns it only once every byte decrypted before the close was read:
/// nothing is lost with it.
///
/// While a response head is awaited it means what a plain close means:
/// with no byte of the response before it, the upstream closed a pooled
/// connection (the request is retried when that is safe, as over plain
/// TCP); after part of the head, the head is cut short, an error either
/// way. In a response body the error stays (see `body.rs`: a body
/// delimited by the close is refused).
fn closed_without_close_notify(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

/// Parses a response head at the start of `buf` and consumes it, its field
/// positions into `spans`. `None`: not complete yet. 1xx responses (but 101)
/// are consumed and skipped.
fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
    spans: &mut Vec<Span>,
) -> Result<Option<RawHead>, ExchangeError> {
    loop {
        spans.clear();
        let mut facts = Facts::default();
        let (len, code, version) = {
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let config = httparse::ParserConfig::default();
            let len =
                match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut headers)? {
                    httparse::Status::Partial => return Ok(None),
                    httparse::Status::Complete(len) => len,
                };
            // Positions, so that the head can be frozen into one shared
            // allocation the header values then point into (no copies).
            let base = buf.as_ptr() as usize;
            for h in parsed.headers.iter() {
                facts.note(h.name.as_bytes(), h.value)?;
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                spans.push((
                    name as u32,
                    (name + h.name.len()) as u32,
                    value as u32,
                    (value + h.value.len()) as u32,
                ));
            }
            (len, parsed.code.unwrap_or(0), parsed.version.unwrap_or(1))
        };
        let bytes = buf.split_to(len).freeze();
        match code {
            101 => {
                return Err(ExchangeError::Invalid(
                    "101 to a request that asked no upgrade",
                ));
            }
            100..=199 => continue,
            _ => {}
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| ExchangeError::Invalid("status code"))?;
        let (framing, keep_alive) = framing(status, version, &mut facts, head_request)?;
        return Ok(Some(RawHead {
            status,
            bytes,
            framing,
            keep_alive,
            facts,
        }));
    }
}

/// Decides the body's framing (RFC 9112, 6.3) and whether the connection
/// can be reused. A body under a transfer coding other than `chunked` is an
/// error: the gateway re-frames every body, so the coding would be lost
/// with the hop-by-hop field and the client would read coded bytes as the
/// content (nginx answers 502 too).
fn framing(
    status: StatusCode,
    version: u8,
    facts: &mut Facts,
    head_request: bool,
) -> Result<(Framing, bool), ExchangeError> {
    let framing =
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            // RFC 9110, 8.6: a 204 carries no Content-Length; one the
            // upstream sent does not go on.
            facts.drop_content_length |= status == StatusCode::NO_CONTENT;
            Framing::Empty
        } else if facts.transfer_encoding {
            // Transfer-Encoding overrides Content-Length, which must not reach
            // the client alongside a re-framed body; the message is suspect
            // (RFC 9112, 6.3): its connection is not reused.
            facts.drop_content_length = facts.content_length.is_some();
            facts.close |= facts.content_length.is_some();
            if !facts.chunked {
                return Err(ExchangeError::Invalid(OTHER_CODING));
            }
            Framing::Chunked
        } else {
            match facts.content_length {
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
    if facts.repeated_length && !facts.drop_content_length {
        facts.drop_content_length = true;
        facts.single_length = facts.content_length;
    }
    let keep_alive = version == 1 && framing != Framing::UntilClose && !facts.close;
    Ok((framing, keep_alive))
}

/// Why a response under another transfer coding than `chunked` fails.
pub const OTHER_CODING: &str = "a transfer coding other than chunked";

/// A Content-Length value (maybe a list of equal values), checked against
/// the one seen before; garbage or a disagreement is an error.
fn content_length(value: &[u8], before: Option<u64>) -> Result<u64, ExchangeError> {
    let mut length = before;
    for part in value.split(|&b| b == b',') {
        let n = crate::proxy::headers::content_length_number(part)
            .ok_or(ExchangeError::Invalid("content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(ExchangeError::Invalid("conflicting content-length"));
        }
        length = Some(n);
    }
    length.ok_or(ExchangeError::Invalid("content-length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head_request: bool) -> Result<Option<Head>, ExchangeError> {
        let mut buf = BytesMut::from(raw);
        let mut spans = Vec::new();
        match parse_response_head(&mut buf, head_request, &mut spans)? {
            Some(raw) => raw.into_head(&spans, HeaderMap::new()).map(Some),
            None => Ok(None),
        }
    }

    /// The reason phrase as received, and what hyper's server is given
    /// for it: nothing for the canonical text.
    #[test]
    fn the_reason_phrase_is_kept_as_received() {
        // Status line, the reason as received, what hyper's server is given.
        type Case = (&'static [u8], &'static [u8], Option<&'static [u8]>);
        let cases: [Case; 9] = [
            (b"HTTP/1.1 200 OK\r\n", b"OK", None),
            (b"HTTP/1.1 200 Fine\r\n", b"Fine", Some(b"Fine")),
            (b"HTTP/1.1 200\r\n", b"", None),
            (b"HTTP/1.1 200 \r\n", b"", None),
            (
                b"\r\nHTTP/1.0 299 Custom Reason Here\n",
                b"Custom Reason Here",
                Some(b"Custom Reason Here"),
            ),
            (
                b"HTTP/1.1 419 Page  Expired \r\n",
                b"Page  Expired ",
                Some(b"Page  Expired "),
            ),
            (b"HTTP/1.1 299\r\n", b"", Some(b"")),
            (b"HTTP/1.1 599 \r\n", b"", Some(b"")),
            (
                b"HTTP/1.1 404 Nicht gefunden \xe2\x80\x94 \t\r\n",
                b"Nicht gefunden \xe2\x80\x94 \t",
                Some(b"Nicht gefunden \xe2\x80\x94 \t"),
            ),
        ];
        for (line, reason, phrase) in cases {
            let head = [line, &b"content-length: 0\r\n\r\n"[..]].concat();
            let mut buf = BytesMut::from(&head[..]);
            let raw = parse_response_head(&mut buf, false, &mut Vec::new())
                .unwrap()
                .unwrap();
            let shown = String::from_utf8_lossy(line);
            assert_eq!(raw.reason(), reason, "{shown}");
            let given = raw.reason_phrase();
            assert_eq!(given.as_ref().map(|p| p.as_bytes()), phrase, "{shown}");
            let head = raw.into_head(&[], HeaderMap::new()).unwrap();
            let kept = head.response.extensions().get::<hyper::ext::ReasonPhrase>();
            assert_eq!(kept.map(|p| p.as_bytes()), phrase, "{shown}");
        }
    }

    #[test]
    fn framing_follows_the_rules() {
        let h = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        let h = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding:  Chunked \r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.response.headers().contains_key("content-length"));
        assert!(!h.keep_alive, "length and chunked at once: never reused");
        for repeated in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\n",
        ] {
            let h = parse(repeated, false).unwrap().unwrap();
            assert_eq!(h.framing, Framing::Length(5));
            let lengths: Vec<_> = h
                .response
                .headers()
                .get_all("content-length")
                .iter()
                .collect();
            assert_eq!(lengths, ["5"]);
        }
        // Codings the gateway would lose with the hop-by-hop field.
        for coded in [
            &b"transfer-encoding: gzip, chunked\r\n"[..],
            b"transfer-encoding: gzip\r\n",
            b"transfer-encoding: chunked, chunked\r\n",
            b"transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n",
            b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
            b"transfer-encoding: \r\n",
        ] {
            let head = [&b"HTTP/1.1 200 OK\r\n"[..], coded, b"\r\n"].concat();
            let shown = String::from_utf8_lossy(coded);
            assert!(
                matches!(
                    parse(&head, false),
                    Err(ExchangeError::Invalid(OTHER_CODING))
                ),
                "{shown}"
            );
            // No body to decode: nothing lost.
            let h = parse(&head, true).unwrap().unwrap();
            assert_eq!(h.framing, Framing::Empty, "{shown}");
        }
        let h = parse(b"HTTP/1.0 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
        let h = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = parse(
            b"HTTP/1.1 304 Not Modified\r\nconnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(!h.keep_alive);
    }

    #[test]
    fn informational_responses_are_skipped_and_partial_heads_wait() {
        let h = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nx-a: b\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.response.status(), 201);
        assert_eq!(h.response.headers()["x-a"], "b");
        assert!(!h.response.headers().contains_key("link"));
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-le", false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn only_failures_before_any_response_byte_allow_a_retry() {
        let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(ExchangeError::Read(reset()).nothing_received());
        assert!(ExchangeError::Write(reset()).nothing_received());
        assert!(ExchangeError::Write(reset()).unsent());
        assert!(ExchangeError::ClosedBeforeResponse.nothing_received());
        assert!(!ExchangeError::ClosedBeforeResponse.unsent());
        assert!(!ExchangeError::ReadInHead(reset()).nothing_received());
        assert!(!ExchangeError::ClosedInHead.nothing_received());
    }

    #[test]
    fn bad_heads_are_errors() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            assert!(
                parse(raw, false).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    /// Where response heads are read: in place, the connection's buffer is
    /// the response's size (not a read's 4 KiB), reused once the last head
    /// is dropped (no allocation per response), and a new one is taken while
    /// it is still held; sized, the head gets an allocation of its own
    /// length every time.
    #[tokio::test]
    async fn head_reads_reuse_the_buffer_or_take_what_came() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut upstream, _) = listener.accept().await.unwrap();
        let mut conn = Conn::new(Stream::Plain(socket));
        conn.request_head()
            .extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: 0123456789\r\n\r\n";
        let mut exchange = async |how| {
            upstream.write_all(response).await.unwrap();
            let head = conn.exchange(&Method::GET, how).await.unwrap();
            assert_eq!(&head.bytes[..], &response[..]);
            (head.bytes, conn.buf.capacity())
        };

        let (first, spare) = exchange(HeadRead::InPlace).await;
        assert_eq!(spare, 0, "in place: the buffer is the response's size");
        let at = first.as_ptr();
        drop(first);
        let (second, _) = exchange(HeadRead::InPlace).await;
        assert_eq!(
            second.as_ptr(),
            at,
            "the dropped head's buffer is read into again"
        );
        let (third, spare) = exchange(HeadRead::InPlace).await;
        assert_ne!(
            third.as_ptr(),
            second.as_ptr(),
            "a held head is not overwritten"
        );
        assert_eq!(spare, 0, "a new buffer of the response's size");

        let (fourth, spare) = exchange(HeadRead::Sized).await;
        assert_eq!(spare, 0, "sized: no room beyond the response");
        drop((second, third));
        let (fifth, spare) = exchange(HeadRead::Sized).await;
        assert_eq!(spare, 0);
        assert_ne!(fifth.as_ptr(), fourth.as_ptr());
    }

    /// A TLS connection of the gateway's own upstream client (its
    /// `UpstreamTls`) and the upstream's side of it (served with the
    /// listener's TLS), the certificate for `localhost` written to `dir`.
    async fn tls_pair(dir: &std::path::Path) -> (Conn, Stream) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
        let server = crate::tls::ListenerTls::load(&crate::config::ListenerTlsConfig {
            cert: cert_path.clone(),
            key: key_path,
            session_resumption: false,
        })
        .unwrap();
        let client = crate::tls::UpstreamTls::new(crate::tls::upstream::UpstreamTlsConfig {
            ca_file: Some(cert_path),
            server_name: Some("localhost".to_string()),
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = std::time::Duration::from_secs(10);
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            server.accept(tcp, limit).await.unwrap().0
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            client
                .connect(tcp, addr, tokio::time::Instant::now() + limit)
                .await
                .unwrap()
        };
        let (upstream, stream) = tokio::join!(accept, connect);
        (Conn::new(stream), upstream)
    }

    /// The upstream sends `bytes` and closes: with a `close_notify` first,
    /// or the TCP connection alone (a FIN after the records, no alert).
    async fn send_and_hang_up(mut upstream: Stream, bytes: &[u8], close_notify: bool) {
        use tokio::io::AsyncWriteExt as _;
        upstream.write_all(bytes).await.unwrap();
        upstream.flush().await.unwrap();
        match upstream {
            Stream::Server(tls) if !close_notify => {
                let (mut tcp, _) = (*tls).into_inner();
                tcp.shutdown().await.unwrap();
            }
            mut upstream => upstream.shutdown().await.unwrap(),
        }
    }

    /// The body of `head` read from `conn` to its end, or its error.
    async fn read_body(conn: Conn, head: RawHead) -> Result<Vec<u8>, ExchangeError> {
        use http_body::Body as _;
        let mut body = body::ResponseBody::new(conn, head.framing, head.keep_alive);
        let mut got = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(data) = frame?.into_data() {
                got.extend_from_slice(&data);
            }
        }
        Ok(got)
    }

    /// rustls reports a TCP close with no `close_notify` before it as
    /// `UnexpectedEof`, not as the end of the stream. Before any byte of a
    /// response it is a close as any other (a pooled connection the
    /// upstream dropped: retried when safe); once part of the response
    /// came, it stays an error: a head cut short, a body short of its
    /// length, and a body delimited by the close, which only a
    /// `close_notify` ends (RFC 9112, 9.8).
    #[tokio::test]
    async fn a_tls_close_without_close_notify_is_a_close_only_before_the_response() {
        let dir = tempfile::tempdir().unwrap();
        for close_notify in [false, true] {
            let case = |what: &str| format!("{what}, close_notify {close_notify}");

            let (mut conn, upstream) = tls_pair(dir.path()).await;
            send_and_hang_up(upstream, b"", close_notify).await;
            let e = conn.response_head(&Method::GET, HeadRead::InPlace).await;
            let what = case("nothing sent");
            assert!(
                matches!(e, Err(ExchangeError::ClosedBeforeResponse)),
                "{what}: {:?}",
                e.map(|h| h.status)
            );

            let (mut conn, upstream) = tls_pair(dir.path()).await;
            send_and_hang_up(upstream, b"HTTP/1.1 200 OK\r\ncontent-le", close_notify).await;
            let e = conn.response_head(&Method::GET, HeadRead::Sized).await;
            let what = case("half a head");
            match e {
                Err(e) => assert!(!e.nothing_received(), "{what}: {e:?}"),
                Ok(head) => panic!("{what}: {}", head.status),
            }

            let (mut conn, upstream) = tls_pair(dir.path()).await;
            let short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
            send_and_hang_up(upstream, short, close_notify).await;
            let head = conn.response_head(&Method::GET, HeadRead::InPlace).await;
            let body = read_body(conn, head.unwrap()).await;
            let what = case("a body short of its length");
            assert!(
                matches!(
                    body,
                    Err(ExchangeError::ClosedInBody | ExchangeError::Read(_))
                ),
                "{what}: {body:?}"
            );

            let (mut conn, upstream) = tls_pair(dir.path()).await;
            let until_close = b"HTTP/1.0 200 OK\r\n\r\nhello";
            send_and_hang_up(upstream, until_close, close_notify).await;
            let head = conn.response_head(&Method::GET, HeadRead::InPlace).await;
            let head = head.unwrap();
            assert_eq!(head.framing, Framing::UntilClose);
            let body = read_body(conn, head).await;
            let what = case("a body delimited by the close");
            match close_notify {
                true => assert_eq!(body.unwrap(), b"hello", "{what}"),
                false => assert!(
                    matches!(&body, Err(ExchangeError::Read(e)) if e.kind() == io::ErrorKind::UnexpectedEof),
                    "{what}: {body:?}"
                ),
            }
        }
    }
}
