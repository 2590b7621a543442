//! Data path: the gateway's own HTTP/1.1 server, for the requests most
//! traffic is made of: without a body, no upgrade, HTTP/1.1, origin form
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
//! At the first request that is not simple, the connection is handed to
//! hyper's server for the rest of its life, with the bytes read so far
//! ([`Ended::HandOff`]): uploads, upgrades, `Expect`, HTTP/1.0 and malformed
//! heads (400, 431) keep hyper's handling. A missing or repeated Host, which
//! hyper's server lets pass, gets a 400 here.

pub mod request;
pub mod response;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Proxy;
use super::error_response::{ClientError, ProxyError};
use super::server::{ConnState, Drain};
use request::Parsed;
use response::SendError;

/// Largest request head the own server waits for; a longer one goes to
/// hyper's server, which answers 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read size while waiting for a request head.
const HEAD_READ: usize = 4096;

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
pub async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    state: &Arc<ConnState>,
    proxy: &Proxy,
    drain: &Drain,
) -> Result<Ended, SendError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    // Where the next request starts in `buf` (pipelined requests are served
    // from the buffer without moving the bytes after each one).
    let mut start = 0;
    loop {
        // How far the buffer has been searched for the blank line: a head
        // that arrives a few bytes at a time is not searched over and over.
        let mut searched = 0;
        while !has_whole_head(&buf[start..], &mut searched) {
            if start > 0 {
                buf.drain(..start);
                start = 0;
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Ok(Ended::HandOff(buf.into()));
            }
            if buf.capacity() - buf.len() < HEAD_READ / 4 {
                buf.reserve(HEAD_READ);
            }
            // Between requests, the drain closes the connection; a request
            // head on its way is still served.
            let n = poll_fn(|cx| {
                if buf.is_empty() && drain.is_draining() {
                    return Poll::Ready(Ok(0));
                }
                tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut buf)
            })
            .await?;
            if n == 0 {
                return Ok(Ended::Closed);
            }
        }
        let mut slots = request::slots();
        let (len, close) = match request::parse(&buf[start..], &mut slots) {
            Parsed::Simple(req) => {
                let close = req.close || drain.is_draining();
                proxy.serve_simple(&req, state, io, &mut out, close).await?;
                (req.len, close)
            }
            Parsed::Partial | Parsed::Other => {
                buf.drain(..start);
                return Ok(Ended::HandOff(buf.into()));
            }
            Parsed::Invalid(reason) => {
                // A 400 and the connection closes: counted as the client's
                // error, never a version's.
                let e = ClientError::BadHead(reason);
                e.count();
                let body = response::error_head(&mut out, &ProxyError::Client(e), None, true);
                response::send_full(io, &out, body).await?;
                return Ok(Ended::Closed);
            }
        };
        if close {
            return Ok(Ended::Closed);
        }
        start += len;
        if start == buf.len() {
            buf.clear();
            start = 0;
            if buf.capacity() > 2 * MAX_HEAD_BYTES {
                buf = Vec::new();
            }
        }
    }
}

/// Whether `buf` holds a blank line (CRLF CRLF, or bare LFs as httparse
/// accepts them): the end of a head, or enough for httparse to reject it.
/// The search starts at `*searched` and leaves it where the next one starts.
fn has_whole_head(buf: &[u8], searched: &mut usize) -> bool {
    let found = buf.iter().enumerate().skip(*searched).any(|(i, &b)| {
        b == b'\n'
            && match buf.get(i + 1) {
                Some(b'\n') => true,
                Some(b'\r') => buf.get(i + 2) == Some(&b'\n'),
                _ => false,
            }
    });
    // A blank line may start in the last two bytes and end in the next read.
    *searched = buf.len().saturating_sub(2);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
