//! Data path: the body-stall timeout of each HTTP/2 stream.
//!
//! An HTTP/1 connection carries one exchange at a time, so its watchdog
//! ([`super::drive`]) watches the socket. An HTTP/2 connection carries many
//! streams and its pings move bytes while a stream stands still, so each
//! stream is watched on its own, with the same [`BodyProgress`] that times
//! request bodies: hyper's HTTP/2 server runs every stream in a task of its
//! executor, and [`StreamExec`] runs each such task under a
//! [`StreamWatch`] that the proxy arms once the response body streams.
//! Because it sits on hyper's HTTP/2 protocol (not on a socket), it holds
//! for HTTP/2 over any transport.
//!
//! A stream whose bodies move in neither direction for `body_stall` once
//! its response body streams is ended: the stream task is dropped, h2
//! resets the stream, and the request's completion drops the upstream
//! connection (half a body read: never reused). A client that stopped
//! taking the response (its flow-control window exhausted) or sending the
//! rest of its upload is at fault (`canary_client_errors_total`); an
//! upstream that stopped sending is not.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use crate::proxy::body::{BodyProgress, Stopped};
use crate::proxy::error_response::ClientError;

tokio::task_local! {
    /// The watch of the HTTP/2 stream whose task is running.
    static STREAM: Arc<StreamWatch>;
}

/// The progress of one HTTP/2 stream's response body.
#[derive(Debug, Default)]
pub struct StreamWatch {
    pub progress: BodyProgress,
    /// The request body's progress, when it still streams: its frames
    /// count as the exchange's progress too (a client streaming an upload
    /// to an upstream that answers at its end is no stall).
    upload: OnceLock<Arc<BodyProgress>>,
    /// A response body streams: from now on it is timed.
    armed: AtomicBool,
    /// The stream was ended because the upstream stopped sending its
    /// response body: the request failed by its version.
    upstream_stalled: AtomicBool,
}

impl StreamWatch {
    /// The watch of the HTTP/2 stream being served, armed: the response
    /// body of the request this task serves is timed from now on, and
    /// `upload`'s progress counts as its own. `None` outside a stream task
    /// of [`StreamExec`].
    pub fn arm_current(upload: Option<Arc<BodyProgress>>) -> Option<Arc<StreamWatch>> {
        let watch = STREAM.try_with(Arc::clone).ok()?;
        if let Some(upload) = upload {
            let _ = watch.upload.set(upload);
        }
        watch.armed.store(true, Ordering::Release);
        Some(watch)
    }

    /// Whether the stream was ended because its upstream stopped sending.
    pub fn upstream_stalled(&self) -> bool {
        self.upstream_stalled.load(Ordering::Relaxed)
    }
}

/// hyper's executor for HTTP/2 server connections: spawns each stream's
/// task on tokio under a [`StreamWatch`] with the connection's `body_stall`.
/// Any connection served by [`crate::proxy::Proxy::handle`] that may speak
/// HTTP/2 (h2c, TLS with ALPN h2) needs it, or its streams never stall.
#[derive(Debug, Clone, Copy)]
pub struct StreamExec {
    pub body_stall: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        let watch = Arc::new(StreamWatch::default());
        let body_stall = self.body_stall;
        // Boxed: the stream's task (the request's whole future, 2.3 KB) is
        // pinned where it is allocated; moved into `watched`, it took two
        // slots of its state (the argument and the pinned local): the
        // spawned task was 5.2 KB per stream, now 640 bytes and the box.
        let task = Box::pin(task);
        tokio::spawn(STREAM.scope(watch.clone(), watched(task, watch, body_stall)));
    }
}

/// Runs a stream's task to its end, or until its armed response body
/// stalls for `body_stall` (then drops it, resetting the stream).
async fn watched<F: Future>(mut task: Pin<Box<F>>, watch: Arc<StreamWatch>, body_stall: Duration) {
    // Until the proxy answered with a body to stream, the task alone: the
    // request's own timeouts run meanwhile.
    let armed = poll_fn(|cx| match task.as_mut().poll(cx) {
        Poll::Ready(_) => Poll::Ready(false),
        Poll::Pending if watch.armed.load(Ordering::Acquire) => Poll::Ready(true),
        Poll::Pending => Poll::Pending,
    })
    .await;
    if !armed {
        return;
    }
    let upload = watch.upload.get().map(|u| &**u);
    tokio::select! {
        _ = task.as_mut() => return,
        stopped = watch.progress.ended_or_stopped(body_stall, body_stall, upload) => match stopped {
            None => {}
            // The upstream waits for the rest of an upload the client does
            // not send, or the client does not take the response.
            Some(Stopped::Source) if upload.is_some_and(BodyProgress::waiting_on_source) => {
                ClientError::BodyStall.count();
                tracing::debug!("HTTP/2 client sent no more of its request body for the body-stall timeout; resetting the stream");
                return;
            }
            Some(Stopped::Sink) => {
                ClientError::BodyStall.count();
                tracing::debug!("HTTP/2 client took no response body for the body-stall timeout; resetting the stream");
                return;
            }
            Some(Stopped::Source) => {
                // Before the task (and the request's completion) drops.
                watch.upstream_stalled.store(true, Ordering::Relaxed);
                tracing::debug!("upstream sent no response body for the body-stall timeout; resetting the HTTP/2 stream");
                return;
            }
        },
    }
    task.await;
}
