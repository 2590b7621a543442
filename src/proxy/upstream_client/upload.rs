//! Data path: a request body with a Content-Length, streamed by the own
//! client from the client's socket to the upstream's: the part that came
//! with the request head, then the rest a chunk at a time, each chunk
//! written before the next is read. Never more than the body is read from
//! the client (a pipelined request after it stays in the socket), and the
//! body is never held whole.

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{Conn, ExchangeError};
use crate::config::Timeouts;
use crate::proxy::error_response::ClientError;

/// Most bytes read from the client per chunk.
const CHUNK: usize = 16 * 1024;

/// The client's side of a request body.
pub struct Upload<'a> {
    /// The part that arrived with the head (at most the whole body).
    buffered: &'a [u8],
    /// The client connection, read for the rest.
    client: &'a mut (dyn AsyncRead + Unpin + Send),
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
        let mut timer = self.timer(Instant::now() + timeouts.upstream_response);
        let sent = async {
            // One writev when the socket takes both.
            let mut head_and_buffered = Buf::chain(self.out.as_slice(), upload.buffered);
            let write = self.io.write_all_buf(&mut head_and_buffered);
            tokio::select! {
                biased;
                written = write => written.map_err(|e| UploadError::Upstream(ExchangeError::Write(e)))?,
                () = &mut timer => return Err(stalled(UploadError::UpstreamStalled)),
            }
            let mut chunk = Vec::new();
            while upload.remaining > 0 {
                // The first read wants the most: the buffer is sized by it.
                let want = upload.remaining.min(CHUNK as u64) as usize;
                if chunk.is_empty() {
                    chunk = vec![0; want];
                }
                timer.as_mut().reset(Instant::now() + timeouts.body_stall);
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
                timer.as_mut().reset(Instant::now() + timeouts.upstream_response);
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
