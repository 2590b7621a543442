//! Data path: responses as the own HTTP/1.1 server writes them: the head
//! straight from the upstream's head bytes (hop-by-hop fields out, the
//! version header in, a Date when the upstream sent none), then the body as
//! it is read, re-framed as chunked when the upstream's was not a length.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::ClientIo;
use crate::proxy::error_response::ProxyError;
use crate::proxy::headers;
use crate::proxy::relay;
use crate::proxy::relay::chunks::{ChunkScan, Stop};
use crate::proxy::upstream_client::body::ResponseBody;
use crate::proxy::upstream_client::head::line as field;
use crate::proxy::upstream_client::{ExchangeError, Framing, RawHead, Span};

/// Why a response could not be sent whole.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("writing to the client failed: {0}")]
    Client(#[from] std::io::Error),
    #[error("reading the response body failed: {0}")]
    Upstream(#[from] ExchangeError),
}

/// How the client gets the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// As the upstream framed it: a Content-Length, or no body.
    AsIs,
    /// Chunked (the upstream's body was chunked or ran until close).
    Chunked,
}

impl ClientFraming {
    pub fn of(framing: Framing) -> ClientFraming {
        match framing {
            Framing::Chunked | Framing::UntilClose => ClientFraming::Chunked,
            Framing::Empty | Framing::Length(_) => ClientFraming::AsIs,
        }
    }
}

/// Writes the head of an upstream response into `out`: rewritten as
/// [`headers::prepare_response`] would rewrite it, for a head whose
/// Connection header names no other fields (`facts.connection_names_headers`).
pub fn upstream_head(
    out: &mut Vec<u8>,
    raw: &RawHead,
    spans: &[Span],
    version_header: Option<(&HeaderName, &HeaderValue)>,
    framing: ClientFraming,
    close: bool,
) {
    status_line(out, raw.status, raw.reason());
    let own = version_header.map(|(n, _)| n.as_str().as_bytes());
    for (name, value) in raw.fields(spans) {
        if headers::is_hop_by_hop_bytes(name)
            || own.is_some_and(|own| name.eq_ignore_ascii_case(own))
            || (raw.facts.drop_content_length && headers::name_is(name, b"content-length"))
        {
            continue;
        }
        field(out, name, value);
    }
    if let Some(n) = raw.facts.single_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = version_header {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    finish(out, !raw.facts.date, framing, close);
}

/// Writes a response head from a header map (responses the gateway makes,
/// and upstream heads that needed the general rewrite); `reason`: the
/// upstream's reason phrase ([`reason_of`]), empty for the gateway's own.
pub fn map_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    reason: &[u8],
    map: &HeaderMap,
    framing: ClientFraming,
    close: bool,
) {
    status_line(out, status, reason);
    for (name, value) in map {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    finish(out, !map.contains_key(http::header::DATE), framing, close);
}

/// The upstream's reason phrase of a response that went through a header
/// map: hyper's client, and [`crate::proxy::upstream_client::RawHead::into_head`],
/// keep it in the extensions when it is not the canonical text; empty when
/// there is none.
pub fn reason_of<B>(resp: &http::Response<B>) -> &[u8] {
    resp.extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map_or(&[], |phrase| phrase.as_bytes())
}

/// Writes the status line: the upstream's reason phrase as received
/// (`reason`), as nginx and HAProxy pass it on (`299 Custom Reason`,
/// Laravel's `419 Page Expired`: clients show it); the code's canonical
/// text when there is none (the gateway's own answers) or it holds a byte
/// RFC 9112, 4 does not allow; else an empty one (`HTTP/1.1 299 `, valid).
fn status_line(out: &mut Vec<u8>, status: StatusCode, reason: &[u8]) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    if !reason.is_empty() && reason.iter().all(|&b| is_reason_byte(b)) {
        out.extend_from_slice(reason);
    } else {
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A byte a reason phrase may hold (RFC 9112, 4): HTAB, SP, VCHAR,
/// obs-text.
fn is_reason_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn finish(out: &mut Vec<u8>, date: bool, framing: ClientFraming, close: bool) {
    if date {
        out.extend_from_slice(b"date: ");
        now_http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if framing == ClientFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The current second and its IMF-fixdate, formatted once a second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Appends the current time as an HTTP date.
fn now_http_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second || text.is_empty() {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Sends the head in `out` and then `body` to the client: a long body with
/// a length, and a chunked one while its framing is plain, through the
/// relay ([`relay::copy`], [`relay::copy_chunks`]); anything else each data frame
/// as it is read (the first in the same write as the head). Trailers are
/// not sent: the own server serves no request that asked for them.
pub async fn send<W: ClientIo>(
    client: &mut W,
    out: &mut Vec<u8>,
    body: &mut ResponseBody,
    framing: ClientFraming,
) -> Result<(), SendError> {
    let chunked = framing == ClientFraming::Chunked;
    // A long body with a length: the head and what has been read, then the
    // rest through the thread's buffer.
    if !chunked && let Some((read, from, left)) = body.take_long(relay::MIN_LEN) {
        client
            .write_all_buf(&mut out.as_slice().chain(read))
            .await?;
        out.clear();
        relay::copy(from, client, left).await?;
        body.moved();
        return Ok(());
    }
    if chunked && pass_chunks(client, out, body).await? {
        return Ok(());
    }
    // `out` holds the head until it is sent, then nothing.
    while !body.is_end_stream() {
        let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await else {
            break;
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let last = body.is_end_stream();
        let tail: &[u8] = if chunked {
            chunk_size(out, data.len() as u64);
            if last { b"\r\n0\r\n\r\n" } else { b"\r\n" }
        } else {
            b""
        };
        client
            .write_all_buf(&mut out.as_slice().chain(data).chain(tail))
            .await?;
        out.clear();
        if last {
            return Ok(());
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        client.write_all(out).await?;
    }
    Ok(())
}

/// Sends the head in `out` and a chunked body as it came (see
/// [`relay::chunks`]): what was read with the head in the same write, the
/// rest through the thread's buffer. Gives back whether the body ended;
/// if not, the framed path goes on from the line where the scan stopped
/// (`out` is empty then).
async fn pass_chunks<W: ClientIo>(
    client: &mut W,
    out: &mut Vec<u8>,
    body: &mut ResponseBody,
) -> Result<bool, SendError> {
    let Some((read, from)) = body.take_chunks() else {
        return Ok(false);
    };
    let mut scan = ChunkScan::default();
    let (used, stop) = scan.scan(read);
    if used == 0 && stop == Stop::Other {
        // The head goes with the framed path's first chunk.
        return Ok(false);
    }
    client
        .write_all_buf(&mut out.as_slice().chain(&read[..used]))
        .await?;
    out.clear();
    read.advance(used);
    let stop = match stop {
        Stop::More => relay::copy_chunks(from, client, scan, read).await?,
        Stop::Broken => return Err(ExchangeError::Chunked.into()),
        stop => stop,
    };
    if stop == Stop::End {
        body.moved();
        return Ok(true);
    }
    Ok(false)
}

/// Appends a chunk-size line.
pub(crate) fn chunk_size(out: &mut Vec<u8>, len: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (u64::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[((len >> (i * 4)) & 0xf) as usize]);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head of the gateway's error response for `e` into `out`
/// (with the request's id, if known, and `[split] response_header` naming
/// the version the request was sent to, if one was chosen); returns the
/// body to send after it.
pub fn error_head(
    out: &mut Vec<u8>,
    e: &ProxyError,
    request_id: Option<&HeaderValue>,
    version_header: Option<(&HeaderName, &HeaderValue)>,
    close: bool,
) -> Bytes {
    let (status, mut map, text) = e.parts(request_id, version_header);
    map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    map_head(out, status, b"", &map, ClientFraming::AsIs, close);
    text
}

/// Sends a whole response the gateway made: its head in `out` (see
/// [`map_head`]), then `body`.
pub async fn send_full<W: AsyncWrite + Unpin>(
    client: &mut W,
    out: &[u8],
    body: Bytes,
) -> std::io::Result<()> {
    client.write_all_buf(&mut out.chain(body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex() {
        for len in [0u64, 1, 15, 16, 255, 4096, 65535, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            chunk_size(&mut out, len);
            assert_eq!(out, format!("{len:x}\r\n").into_bytes());
        }
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let mut out = Vec::new();
        now_http_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
        assert!(text.ends_with(" GMT") && text.len() == 29, "{text}");
    }

    /// The upstream's reason phrase goes out as received; the canonical
    /// text stands in for none or a broken one, and an empty one for a code
    /// without a text (never hyper's `<none>`).
    #[test]
    fn status_lines_carry_the_upstreams_reason() {
        let line = |code: u16, reason: &[u8]| {
            let mut out = Vec::new();
            status_line(&mut out, StatusCode::from_u16(code).unwrap(), reason);
            out
        };
        assert_eq!(line(200, b"OK"), b"HTTP/1.1 200 OK\r\n");
        assert_eq!(line(200, b"Fine"), b"HTTP/1.1 200 Fine\r\n");
        assert_eq!(line(200, b""), b"HTTP/1.1 200 OK\r\n");
        assert_eq!(line(502, b""), b"HTTP/1.1 502 Bad Gateway\r\n");
        assert_eq!(
            line(299, b"Custom Reason Here"),
            b"HTTP/1.1 299 Custom Reason Here\r\n"
        );
        assert_eq!(line(419, b"Page Expired"), b"HTTP/1.1 419 Page Expired\r\n");
        assert_eq!(line(499, b""), b"HTTP/1.1 499 \r\n");
        assert_eq!(line(404, b"a\tb \xe9"), b"HTTP/1.1 404 a\tb \xe9\r\n");
        for broken in [&b"a\rb"[..], b"a\nb", b"a\0", b"\x7f"] {
            assert_eq!(line(404, broken), b"HTTP/1.1 404 Not Found\r\n");
            assert_eq!(line(599, broken), b"HTTP/1.1 599 \r\n");
        }
        for b in 0..=u8::MAX {
            let allowed = hyper::ext::ReasonPhrase::try_from(&[b][..]).is_ok();
            assert_eq!(is_reason_byte(b), allowed, "byte {b:#04x}");
        }
    }

    #[test]
    fn gateway_heads_carry_framing_date_and_close() {
        let mut map = HeaderMap::new();
        map.insert("content-length", HeaderValue::from_static("3"));
        let mut out = Vec::new();
        map_head(
            &mut out,
            StatusCode::BAD_GATEWAY,
            b"",
            &map,
            ClientFraming::AsIs,
            true,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with("\r\nconnection: close\r\n\r\n"), "{text}");
    }
}
