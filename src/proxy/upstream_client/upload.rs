//! Data path: a request body with a Content-Length, streamed by the own
//! client from the client's socket to the upstream's: the part that came
//! with the request head, then the rest a chunk at a time, each chunk
//! written before the next is read. Never more than the body is read from
//! the client (a pipelined request after it stays in the socket), and the
//! body is never held whole.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{Conn, ExchangeError};
use crate::proxy::error_response::ClientError;

/// Most bytes read from the client per chunk.
const CHUNK: usize = 16 * 1024;

/// The client's side of a request body.
pub struct Upload<'a> {
    /// The part that arrived with the head (at most the whole body).
    pub buffered: &'a [u8],
    /// The client connection, read for the rest.
    pub client: &'a mut (dyn AsyncRead + Unpin + Send),
    /// Bytes of the body still in the client's socket.
    pub remaining: u64,
    /// Some of the body was read from the socket: it cannot be sent again.
    read_any: bool,
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
}

impl<'a> Upload<'a> {
    pub fn new(
        buffered: &'a [u8],
        client: &'a mut (dyn AsyncRead + Unpin + Send),
        remaining: u64,
    ) -> Upload<'a> {
        Upload {
            buffered,
            client,
            remaining,
            read_any: false,
        }
    }

    /// Whether the whole request can go out again (on another connection):
    /// nothing of the body has been taken from the client's socket.
    pub fn replayable(&self) -> bool {
        !self.read_any
    }
}

/// How long each side of an upload may move nothing.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// The client not sending (`body_stall`).
    pub client: Duration,
    /// The upstream not taking (`upstream_response`).
    pub upstream: Duration,
}

impl Conn {
    /// Sends the request head encoded in [`Conn::request_head`] and the body
    /// of `upload`; the response is read next with [`Conn::response_head`].
    /// A side that moves nothing for its limit ends the upload (counted in
    /// `canary_body_stalls_total`).
    pub async fn send_upload(
        &mut self,
        upload: &mut Upload<'_>,
        limits: UploadLimits,
    ) -> Result<(), UploadError> {
        let mut timer = self.timer(Instant::now() + limits.upstream);
        let sent = async {
            let write = write_two(&mut self.io, &self.out, upload.buffered);
            tokio::select! {
                biased;
                written = write => written.map_err(|e| UploadError::Upstream(ExchangeError::Write(e)))?,
                () = &mut timer => return Err(stalled(UploadError::UpstreamStalled)),
            }
            let mut chunk = Vec::new();
            while upload.remaining > 0 {
                if chunk.is_empty() {
                    let size = usize::try_from(upload.remaining).map_or(CHUNK, |r| r.min(CHUNK));
                    chunk = vec![0; size];
                }
                let want = usize::try_from(upload.remaining).map_or(chunk.len(), |r| r.min(chunk.len()));
                timer.as_mut().reset(Instant::now() + limits.client);
                upload.read_any = true;
                let n = tokio::select! {
                    biased;
                    read = upload.client.read(&mut chunk[..want]) => match read {
                        Ok(0) | Err(_) => return Err(UploadError::Client(ClientError::Aborted)),
                        Ok(n) => n,
                    },
                    () = &mut timer => return Err(stalled(UploadError::Client(ClientError::BodyStall))),
                };
                upload.remaining -= n as u64;
                timer.as_mut().reset(Instant::now() + limits.upstream);
                tokio::select! {
                    biased;
                    written = self.io.write_all(&chunk[..n]) => written.map_err(|e| UploadError::Upstream(ExchangeError::Write(e)))?,
                    () = &mut timer => return Err(stalled(UploadError::UpstreamStalled)),
                }
            }
            Ok(())
        }
        .await;
        self.keep_timer(timer);
        sent
    }
}

/// Counts a stalled upload.
fn stalled(e: UploadError) -> UploadError {
    metrics::counter!(crate::metrics::BODY_STALLS_TOTAL).increment(1);
    e
}

/// Writes `a` then `b`, in one system call when both fit.
async fn write_two<W: tokio::io::AsyncWrite + Unpin>(
    io: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() {
        let n = io
            .write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let in_a = n.min(a.len());
        a = &a[in_a..];
        b = &b[n - in_a..];
    }
    io.write_all(b).await
}
