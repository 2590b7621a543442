//! Data path: the bodies that stream through the proxy, never buffered whole.
//!
//! [`RequestBody`] tells the proxy when the client's body has been sent in full
//! (the upstream response timeout starts then, as Envoy's does) and whether it
//! still moves (a stalled upload times out too). [`ProxyBody`]
//! carries the upstream response to the client and, through its
//! [`Completion`], records the request's metrics once, when it ends, and returns
//! the upstream connection to the pool when the body was read to its end.
//! The rollout analysis takes the request's latency up to its answer's head
//! and leaves out requests the client broke before any answer and those the
//! override header forced to their version (`Completion::forced`). A request
//! dropped with no answer at all (its client gone while the upstream still
//! thinks) has no status class: see `Completion::count_unanswered`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use tokio::sync::Notify;

use super::error_response::{ClientError, ProxyError};
use super::server::{ConnState, StreamWatch};
use super::upstream::{Outstanding, Pooled};
use super::upstream_client::body::ResponseBody;
use crate::config::Timeouts;
use crate::snapshot::{ProxySettings, Version};

/// How far a body has been passed on (a request body upstream, an HTTP/2
/// response body to the client), and which side stops it when it stalls.
#[derive(Debug, Default)]
pub struct BodyProgress {
    /// Frames passed on so far.
    frames: AtomicU64,
    /// The body has ended (or was dropped).
    done: AtomicBool,
    /// The last read of the body's source (the client's request body, the
    /// upstream's response body) found nothing: the source is the one not
    /// sending (else the receiving side is not taking it).
    source_idle: AtomicBool,
    /// How the client's body failed: 0 not, 1 bad framing, 2 client gone.
    client_failure: AtomicU8,
    ended: Notify,
}

/// Which side stopped a body that stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its source sent nothing.
    Source,
    /// Its receiver took nothing.
    Sink,
}

/// The shortest tick of [`BodyProgress::ended_or_stopped`]: a limit set
/// below a few hundred milliseconds (tests) does not wake a body's watch
/// more than 20 times a second.
const MIN_TICK: Duration = Duration::from_millis(50);

impl BodyProgress {
    pub(super) fn end(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.ended.notify_one();
        }
    }

    /// Notes one poll of the body's source; `at_end`: the source says it has
    /// nothing more after what it returned.
    pub(super) fn polled<T, E>(&self, polled: &Poll<Option<Result<T, E>>>, at_end: bool) {
        let idle = polled.is_pending();
        self.source_idle.store(idle, Ordering::Relaxed);
        if !idle {
            self.frames.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || (!idle && at_end) {
            self.end();
        }
    }

    /// The body has been passed on in full (or dropped).
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves when the body has been passed on in full (or dropped).
    pub async fn ended(&self) {
        loop {
            let mut ended = std::pin::pin!(self.ended.notified());
            ended.as_mut().enable();
            if self.is_done() {
                return;
            }
            ended.await;
        }
    }

    /// The body has not ended and the last read of its source found
    /// nothing.
    pub fn waiting_on_source(&self) -> bool {
        !self.done.load(Ordering::Acquire) && self.source_idle.load(Ordering::Relaxed)
    }

    /// Why the client's body failed, if it did: then the request failed by
    /// the client's fault, whatever error the upstream side reports.
    pub fn client_failure(&self) -> Option<ClientError> {
        match self.client_failure.load(Ordering::Acquire) {
            0 => None,
            1 => Some(ClientError::BadBody),
            _ => Some(ClientError::Aborted),
        }
    }

    fn client_failed(&self, e: &hyper::Error) {
        let code = if client_gone(e) { 2 } else { 1 };
        self.client_failure.store(code, Ordering::Release);
    }

    /// Resolves with `None` when the body has been passed on in full, or
    /// with the side that stopped it: the source when it sent nothing for
    /// `source_limit`, the receiver when it took nothing for `sink_limit`.
    /// Frames of `other` (the exchange's body the other way) count as
    /// progress too. A stall is counted in `canary_body_stalls_total`.
    /// Quiet time is counted in whole ticks of a quarter of the shorter
    /// limit (at least `MIN_TICK`, 50 ms), so a stall ends within a quarter of
    /// that limit past its own (a tick of the whole limit ended one up to
    /// twice as late: 60 s became up to 90 s with the defaults).
    pub async fn ended_or_stopped(
        &self,
        source_limit: Duration,
        sink_limit: Duration,
        other: Option<&BodyProgress>,
    ) -> Option<Stopped> {
        let tick = (source_limit.min(sink_limit) / 4).max(MIN_TICK);
        let moved = || {
            let other = other.map_or(0, |o| o.frames.load(Ordering::Relaxed));
            self.frames.load(Ordering::Relaxed).wrapping_add(other)
        };
        let mut quiet = Duration::ZERO;
        loop {
            if self.done.load(Ordering::Acquire) {
                return None;
            }
            let before = moved();
            tokio::select! {
                () = self.ended.notified() => return None,
                () = tokio::time::sleep(tick) => {}
            }
            if self.done.load(Ordering::Acquire) {
                return None;
            }
            if moved() != before {
                quiet = Duration::ZERO;
                continue;
            }
            quiet += tick;
            let stopped = if self.source_idle.load(Ordering::Relaxed) {
                (quiet >= source_limit).then_some(Stopped::Source)
            } else {
                (quiet >= sink_limit).then_some(Stopped::Sink)
            };
            if stopped.is_some() {
                metrics::counter!(crate::metrics::BODY_STALLS_TOTAL).increment(1);
                return stopped;
            }
        }
    }

    /// [`BodyProgress::ended_or_stopped`] for a request body: the error
    /// that ends the request when it stopped moving, for `body_stall` while
    /// the client was not sending it (the client's error), or for
    /// `upstream_response` while the upstream was not taking it (an
    /// upstream that stops reading an upload must not hang the request
    /// forever).
    pub async fn ended_or_stalled(&self, timeouts: &Timeouts) -> Option<ProxyError> {
        let stopped = self
            .ended_or_stopped(timeouts.body_stall, timeouts.upstream_response, None)
            .await?;
        Some(match stopped {
            Stopped::Source => ProxyError::Client(ClientError::BodyStall),
            Stopped::Sink => ProxyError::Timeout,
        })
    }
}

/// Whether a client's request body failed because the client went away
/// (`ClientError::Aborted`) rather than by broken framing (`BadBody`): its
/// connection closed mid-body (HTTP/1's incomplete message, an unexpected
/// EOF), or, on HTTP/2, the client reset the stream (RST_STREAM, such as
/// CANCEL) or sent a GOAWAY that ended it. A reset the gateway's HTTP/2
/// layer made itself (a DATA frame past the content-length) is no client
/// gone: that is the body's framing.
fn client_gone(e: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    e.is_incomplete_message()
        || std::iter::successors(std::error::Error::source(e), |e| e.source()).any(|e| {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return io.kind() == ErrorKind::UnexpectedEof;
            }
            // `h2::Error` gives no `source()`: its socket's error is read
            // with `get_io` (a connection closed without TLS's
            // close_notify, or reset).
            e.downcast_ref::<h2::Error>().is_some_and(|h2| {
                (h2.is_remote() && (h2.is_reset() || h2.is_go_away()))
                    || h2.get_io().is_some_and(|io| {
                        matches!(
                            io.kind(),
                            ErrorKind::UnexpectedEof
                                | ErrorKind::ConnectionReset
                                | ErrorKind::ConnectionAborted
                                | ErrorKind::BrokenPipe
                        )
                    })
            })
        })
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: Incoming,
    /// Shared with the proxy's response deadline; `None` for empty bodies.
    progress: Option<Arc<BodyProgress>>,
    /// The HTTP/1 connection the body comes on, told when it ends (see
    /// [`ConnState::request_body_ended`]).
    conn: Option<Arc<ConnState>>,
}

impl RequestBody {
    /// Wraps a body; the progress tells when it has been sent in full.
    /// Bodies that are already at their end need no tracking. `conn`: the
    /// HTTP/1 connection it comes on (`None` on HTTP/2), whose next request
    /// head is not awaited before the body ends.
    pub fn new(
        inner: Incoming,
        conn: Option<&Arc<ConnState>>,
    ) -> (RequestBody, Option<Arc<BodyProgress>>) {
        if inner.is_end_stream() {
            return (
                RequestBody {
                    inner,
                    progress: None,
                    conn: None,
                },
                None,
            );
        }
        if let Some(conn) = conn {
            conn.request_body_open();
        }
        let progress = Arc::new(BodyProgress::default());
        (
            RequestBody {
                inner,
                progress: Some(progress.clone()),
                conn: conn.cloned(),
            },
            Some(progress),
        )
    }

    /// The body has ended: its connection is told, once.
    fn ended(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.request_body_ended();
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(p) = &self.progress {
            p.end();
        }
        self.ended();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(progress) = &this.progress {
            if let Poll::Ready(Some(Err(e))) = &polled {
                progress.client_failed(e);
            }
            progress.polled(&polled, this.inner.is_end_stream());
            if progress.is_done() {
                this.ended();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whatever has to happen when a request ends, whichever way it ends.
pub struct Completion {
    pub start: Instant,
    pub version: Arc<Version>,
    /// The override header chose the version (QA traffic): counted in the
    /// version's metrics, but left out of its rollout analysis (neither a
    /// request, an error nor a latency sample), which judges a canary on
    /// the traffic the split sent it. Forced requests to a path that fails
    /// would abort a healthy canary, and forced requests to a healthy one
    /// would dilute a failing canary's error rate.
    pub forced: bool,
    /// The answer's status, once there is one (see `answered`).
    pub status: StatusCode,
    pub settings: Arc<ProxySettings>,
    pub conn: Arc<ConnState>,
    /// The request counted at the endpoint that served it, and the pooled
    /// connection to give back.
    pub upstream: Option<(Outstanding, Option<Pooled>)>,
    /// The response body was read to its end: the connection can be reused.
    pub finished: bool,
    pub method: http::Method,
    /// An HTTP/2 stream's response body, timed for stalls.
    pub watch: Option<Arc<StreamWatch>>,
    /// The upstream broke the response body (see [`Completion::body_broken`]).
    pub body_broken: bool,
    /// The request body's progress, on hyper's servers: whether the client
    /// failed it.
    pub upload: Option<Arc<BodyProgress>>,
    /// When the answer's head came: the upstream's response head, or the
    /// gateway's own error decided. The canary analysis's latency ends
    /// there, so that a client slow to take the body is not the version's.
    /// `None`: no answer (`status` means nothing then); a request dropped
    /// so was abandoned (see `Completion::count_unanswered`).
    pub answered: Option<Instant>,
    /// The request failed by the client's fault before any answer (a
    /// malformed or stalled request body, the client gone mid-body: the
    /// gateway's 400/408): no version's request, left out of its analysis.
    pub client_failed: bool,
    /// For the access log, kept only when it is on: the request's id (the
    /// client's `x-request-id`, else the one the gateway made) and path.
    pub logged: Option<Box<Logged>>,
}

/// What an access log line names beyond the counters' facts.
#[derive(Debug, Default)]
pub struct Logged {
    /// The request's path, without the query (which may carry secrets).
    pub path: String,
    /// The id the upstream got (or would have); unset when the request
    /// ended before its head was written.
    pub request_id: Option<http::HeaderValue>,
    /// The endpoint the request went to (or was to go to), for a request
    /// that ended without a response from it: a failed one (the endpoint of
    /// its last attempt) or one dropped while the upstream thought. An
    /// answered request's is its [`Completion::upstream`]'s.
    pub upstream: Option<SocketAddr>,
}

impl Logged {
    /// Notes, as its head goes up to `upstream`, where a request went and
    /// its id (`id`, called only when the access log is on and the id is
    /// not known yet: the own server makes none before), so that a request
    /// whose future is dropped while the upstream thinks (its client gone,
    /// the shutdown's grace over) is logged with both.
    pub fn sent(
        slot: &mut Option<Box<Logged>>,
        upstream: SocketAddr,
        id: impl FnOnce() -> Option<http::HeaderValue>,
    ) {
        if let Some(logged) = slot {
            logged.upstream = Some(upstream);
            if logged.request_id.is_none() {
                logged.request_id = id();
            }
        }
    }
}

/// The most of a request id the logs write, in bytes: a client's
/// `x-request-id` goes upstream whole, but a huge one (up to the 64 KiB
/// head) would make every log line of its request as large.
pub const LOGGED_ID_MAX: usize = 128;

/// What a log line's `request_id` says after a cut id's first
/// [`LOGGED_ID_MAX`] bytes.
pub const LOGGED_ID_CUT: &str = "...(cut)";

/// A request id as the logs write it: `-` for none; bytes that are not
/// visible ASCII (obs-text, not UTF-8) replaced by U+FFFD; past
/// [`LOGGED_ID_MAX`] bytes cut at a char boundary and marked
/// [`LOGGED_ID_CUT`]. The usual id is borrowed (a length check); the log
/// formatter escapes what it writes as a field's string (a tab, `"`).
pub fn logged_id(id: Option<&http::HeaderValue>) -> Cow<'_, str> {
    let Some(id) = id else {
        return Cow::Borrowed("-");
    };
    let text = match id.to_str() {
        Ok(text) if text.len() <= LOGGED_ID_MAX => return Cow::Borrowed(text),
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(id.as_bytes()),
    };
    if text.len() <= LOGGED_ID_MAX {
        return text;
    }
    let mut end = LOGGED_ID_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{LOGGED_ID_CUT}", &text[..end]))
}

/// An upstream's address as the logs write it: `-` for none.
pub struct UpstreamField(pub Option<SocketAddr>);

impl std::fmt::Display for UpstreamField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl Completion {
    /// Ends a request whose response body the upstream broke after the
    /// head went out (closed, reset or misframed mid-body): for the
    /// version's metrics and the canary analysis it failed as a 502 would
    /// (`canary_upstream_errors_total{kind="reset"}` and the 5xx class),
    /// whatever status its head carried; the access log keeps that status
    /// (with `complete=false`). A client gone mid-body is no version's
    /// failure: hyper's client reports a request body the client broke as
    /// the response body's error too, so that case is left as it was.
    pub fn body_broken(mut self) {
        let client_failed = self.upload.as_ref().and_then(|p| p.client_failure());
        self.body_broken = client_failed.is_none();
    }

    /// Notes one poll of the response body for the stream's stall watch.
    fn polled<T, E>(
        completion: &Option<Completion>,
        polled: &Poll<Option<Result<T, E>>>,
        at_end: bool,
    ) {
        if let Some(watch) = completion.as_ref().and_then(|c| c.watch.as_ref()) {
            watch.progress.polled(polled, at_end);
        }
    }
}

/// The access log's status of a request dropped before any answer because
/// its client went away (closed the connection, reset the stream): nginx's
/// "client closed request".
pub const CLIENT_CLOSED: u16 = 499;

/// The access log's status of a request dropped before any answer because
/// the shutdown's grace period ran out: nginx's "closed without a
/// response".
pub const CUT_AT_SHUTDOWN: u16 = 444;

impl Drop for Completion {
    fn drop(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        let logged = if self.answered.is_some() {
            self.count_answered(elapsed);
            self.status.as_u16()
        } else {
            self.count_unanswered(elapsed)
        };
        self.conn.request_ended();
        if let Some(watch) = &self.watch {
            watch.progress.end();
        }
        let upstream = self.upstream.take();
        if self.settings.access_log {
            let noted = self.logged.as_deref();
            let id = noted.and_then(|l| l.request_id.as_ref());
            let answered_by = upstream.as_ref().map(|(e, _)| e.endpoint().addr());
            tracing::info!(
                target: "access",
                method = %self.method,
                path = noted.map_or("-", |l| l.path.as_str()),
                request_id = &*logged_id(id),
                version = %self.version.name,
                upstream = %UpstreamField(answered_by.or(noted.and_then(|l| l.upstream))),
                status = logged,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                complete = self.finished,
            );
        }
        if let Some((outstanding, sender)) = upstream
            && self.finished
            && let Some(conn) = sender
        {
            let max_idle = self.settings.upstream.max_idle_per_endpoint;
            outstanding.endpoint().checkin(conn, max_idle, now);
        }
    }
}

impl Completion {
    /// Counts a request that was answered (the upstream's head, or the
    /// gateway's own error) under its status class.
    fn count_answered(&self, elapsed: Duration) {
        // An upstream that stopped sending the body for `body_stall` (the
        // connection's watchdog or the stream's watch ended the request).
        let stalled = !self.finished
            && (self.conn.upstream_stalled()
                || self.watch.as_ref().is_some_and(|w| w.upstream_stalled()));
        let counted = if self.body_broken {
            self.version.metrics.errors[crate::snapshot::RESET_KIND].increment(1);
            http::StatusCode::BAD_GATEWAY
        } else if stalled {
            self.version.metrics.errors[crate::snapshot::TIMEOUT_KIND].increment(1);
            http::StatusCode::GATEWAY_TIMEOUT
        } else {
            self.status
        };
        let class = (counted.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.version.metrics.requests[class].increment(1);
        self.version.metrics.duration.record(elapsed.as_secs_f64());
        if !self.client_failed && !self.forced {
            // Up to the answer's head.
            let latency = self
                .answered
                .map_or(elapsed, |at| at.saturating_duration_since(self.start));
            self.version.analysis.record(counted.as_u16(), latency);
        }
        self.version.metrics.series.record(counted, elapsed);
    }

    /// Counts a request dropped before any answer: its client went away
    /// (closed its connection or reset its stream) while the upstream was
    /// still thinking, or the shutdown's grace ran out. No status was sent,
    /// so it is in no status class of `canary_requests_total`; a client
    /// gone is `canary_client_errors_total{kind="aborted"}`. The canary
    /// analysis keeps the time it waited as a latency sample, neither a
    /// success nor an error, so that a version its clients give up on
    /// shows in the p99 (unless the request was forced: see
    /// `Completion::forced`). Gives the access log's status.
    #[cold]
    fn count_unanswered(&self, elapsed: Duration) -> u16 {
        self.version.metrics.duration.record(elapsed.as_secs_f64());
        if !self.forced {
            self.version.analysis.record_abandoned(elapsed);
        }
        if self.conn.drain().is_cut() {
            CUT_AT_SHUTDOWN
        } else {
            super::error_response::ClientError::Aborted.count();
            CLIENT_CLOSED
        }
    }
}

/// Any error a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body to the client.
pub enum ProxyBody {
    /// Streamed from the upstream by hyper's client.
    Upstream {
        inner: Incoming,
        completion: Option<Completion>,
    },
    /// Read from the upstream socket by the gateway's own client.
    Own {
        inner: ResponseBody,
        completion: Option<Completion>,
    },
    /// Made by the gateway (errors, admin answers).
    Full {
        data: Option<Bytes>,
        completion: Option<Completion>,
    },
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full {
            data: Some(data.into()),
            completion: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full {
            data: None,
            completion: None,
        }
    }

    /// Attaches the request's completion, run when the body ends or is dropped.
    pub fn with_completion(mut self, c: Completion) -> ProxyBody {
        match &mut self {
            ProxyBody::Upstream { completion, .. }
            | ProxyBody::Own { completion, .. }
            | ProxyBody::Full { completion, .. } => *completion = Some(c),
        }
        self
    }

    fn finish(completion: &mut Option<Completion>) {
        if let Some(mut c) = completion.take() {
            c.finished = true;
        }
    }

    /// The own client's body ended: its connection goes back to the pool
    /// with the completion.
    fn finish_own(inner: &mut ResponseBody, completion: &mut Option<Completion>) {
        if let Some(c) = completion.as_mut()
            && let Some((_, slot)) = c.upstream.as_mut()
        {
            *slot = inner.take_reusable().map(Pooled::Own);
        }
        ProxyBody::finish(completion);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream { inner, completion } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                Completion::polled(completion, &polled, inner.is_end_stream());
                match &polled {
                    Poll::Ready(None) => ProxyBody::finish(completion),
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => {
                        ProxyBody::finish(completion)
                    }
                    Poll::Ready(Some(Err(_))) => {
                        completion.take().map_or((), Completion::body_broken)
                    }
                    _ => {}
                }
                polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
            }
            ProxyBody::Own { inner, completion } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                Completion::polled(completion, &polled, inner.is_end_stream());
                match &polled {
                    Poll::Ready(Some(Err(_))) => {
                        completion.take().map_or((), Completion::body_broken)
                    }
                    Poll::Ready(_) if inner.is_end_stream() => {
                        ProxyBody::finish_own(inner, completion)
                    }
                    _ => {}
                }
                polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
            }
            ProxyBody::Full { data, completion } => {
                let frame = data.take().map(|d| Ok(Frame::data(d)));
                ProxyBody::finish(completion);
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Own { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full { data, .. } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Own { inner, .. } => inner.size_hint(),
            ProxyBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod logged_id_tests {
    use super::*;

    #[test]
    fn a_short_id_is_logged_as_it_is_and_a_long_one_cut_and_marked() {
        let short = http::HeaderValue::from_static("abc-123");
        assert!(matches!(logged_id(Some(&short)), Cow::Borrowed("abc-123")));
        assert_eq!(logged_id(None), "-");
        let exact = http::HeaderValue::try_from("a".repeat(LOGGED_ID_MAX)).unwrap();
        assert_eq!(logged_id(Some(&exact)).len(), LOGGED_ID_MAX);
        let huge = http::HeaderValue::try_from("b".repeat(60_000)).unwrap();
        let logged = logged_id(Some(&huge));
        assert_eq!(
            logged,
            format!("{}{LOGGED_ID_CUT}", "b".repeat(LOGGED_ID_MAX))
        );
    }

    /// Bytes that are no visible ASCII (obs-text, not UTF-8) are replaced,
    /// not a `-` (the id exists); a cut lands on a char boundary.
    #[test]
    fn an_id_of_other_bytes_is_replaced_and_cut_at_a_char_boundary() {
        let odd = http::HeaderValue::from_bytes(b"id-\xff\xfe-x").unwrap();
        assert_eq!(logged_id(Some(&odd)), "id-\u{fffd}\u{fffd}-x");
        // 127 ASCII bytes, then U+FFFD (3 bytes) across the limit.
        let mut bytes = vec![b'a'; LOGGED_ID_MAX - 1];
        bytes.extend_from_slice(b"\xff\xff");
        let across = http::HeaderValue::from_bytes(&bytes).unwrap();
        let logged = logged_id(Some(&across));
        let expected = format!("{}{LOGGED_ID_CUT}", "a".repeat(LOGGED_ID_MAX - 1));
        assert_eq!(logged, expected);
        let tab = http::HeaderValue::from_bytes(b"a\tb").unwrap();
        assert_eq!(logged_id(Some(&tab)), "a\tb");
    }
}
