//! Data path: the life of one client connection after accept: the drain on
//! shutdown and the watchdog (request-head, idle and body-stall timeouts),
//! checked in the connection's own poll.
//!
//! The connection task is woken two or three times per request. A
//! `select!` over the connection, an interval and a shutdown channel polls
//! all three on every wake-up; here the timer and the drain signal are
//! polled once to register the task, and afterwards only looked at (one
//! atomic load each) until they fire.

use std::fmt::Display;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

use super::ConnState;
use crate::config::Timeouts;
use crate::proxy::clock::now_ms;

/// The listener's shutdown: tells connections to finish, counts them out.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    /// Wakes connections when draining begins.
    began: Notify,
    /// The drain's idle window is over: an HTTP/1 connection between
    /// requests closes now (see [`Drain::close_idle`]).
    idle_over: AtomicBool,
    /// Wakes connections when it is.
    idle_closing: Notify,
    /// Connections still open (an upgraded one until its tunnel ends).
    open: AtomicUsize,
    /// Wakes [`Drain::finished`] when the last connection closes.
    closed: Notify,
    /// The grace period is over: what still runs (a tunnel) ends now.
    over: AtomicBool,
    /// Wakes [`Drain::cut_off`] when it is.
    cut: Notify,
    /// Kept equal to `open` (`canary_open_connections`).
    gauge: Option<metrics::Gauge>,
}

/// A connection counted by its [`Drain`] (and its gauge) until dropped.
#[derive(Debug)]
pub struct Tracked(Arc<Drain>);

impl Tracked {
    pub fn drain(&self) -> &Drain {
        &self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(gauge) = &self.0.gauge {
            gauge.decrement(1.0);
        }
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Drain {
    /// A drain whose count of open connections `gauge` shows too.
    pub fn counted_by(gauge: metrics::Gauge) -> Drain {
        Drain {
            gauge: Some(gauge),
            ..Drain::default()
        }
    }

    /// Counts a new connection.
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.open.fetch_add(1, Ordering::AcqRel);
        if let Some(gauge) = &self.gauge {
            gauge.increment(1.0);
        }
        Tracked(self.clone())
    }

    /// The grace period is over: ends what still runs ([`Drain::cut_off`]).
    /// Idle connections close too, if [`Drain::close_idle`] was not called.
    pub fn cut(&self) {
        self.close_idle();
        self.over.store(true, Ordering::Release);
        self.cut.notify_waiters();
    }

    /// The grace period is over ([`Drain::cut`]).
    pub fn is_cut(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Resolves when the grace period is over ([`Drain::cut`]).
    pub async fn cut_off(&self) {
        until_set(&self.over, &self.cut).await;
    }

    /// Tells every connection to finish its request in flight and close.
    /// An HTTP/1 connection between requests stays open until
    /// [`Drain::close_idle`]: a request its client sends meanwhile (one
    /// already on its way, or on a pooled connection picked a moment
    /// later) is served, with `Connection: close`, not met by a close it
    /// could not safely retry (a POST), as HAProxy and Envoy drain.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::Release);
        self.began.notify_waiters();
    }

    /// Draining has begun: what a connection answers now says
    /// `Connection: close`.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The drain's idle window is over: HTTP/1 connections between requests
    /// (and connections that sent nothing yet) close now.
    pub fn close_idle(&self) {
        self.idle_over.store(true, Ordering::Release);
        self.idle_closing.notify_waiters();
    }

    /// Whether [`Drain::close_idle`] was called.
    pub fn is_closing_idle(&self) -> bool {
        self.idle_over.load(Ordering::Acquire)
    }

    /// Resolves when idle connections are to close ([`Drain::close_idle`]).
    pub async fn idle_closed(&self) {
        until_set(&self.idle_over, &self.idle_closing).await;
    }

    /// Resolves when draining has begun.
    pub async fn began(&self) {
        until_set(&self.draining, &self.began).await;
    }

    /// How many tracked connections are open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when every tracked connection has closed.
    pub async fn finished(&self) {
        loop {
            let mut closed = pin!(self.closed.notified());
            closed.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// Resolves once `flag` is set; `signal` is notified (`notify_waiters`)
/// after it is set. Registered before the flag is read, so that a
/// notification between the two is not missed.
async fn until_set(flag: &AtomicBool, signal: &Notify) {
    let mut signal = pin!(signal.notified());
    signal.as_mut().enable();
    if !flag.load(Ordering::Acquire) {
        signal.await;
    }
}

/// Where a connection is in the listener's drain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No drain.
    Serving,
    /// The drain began: requests in flight end with `Connection: close`;
    /// an HTTP/1 connection between requests stays open for a next one.
    Window,
    /// The idle window is over: connections between requests close; the
    /// grace period runs for the rest.
    ClosingIdle,
}

/// Whether a connection is HTTP/1 with no request in flight (between
/// requests, or before its first): the drain keeps it open for its idle
/// window.
fn idle_http1(state: &ConnState) -> bool {
    !state.http2.load(Ordering::Relaxed)
        && super::in_flight(state.requests.load(Ordering::Relaxed)) == 0
}

/// Why the watchdog closed a connection.
enum Closed {
    HeadTimeout,
    Idle,
    /// A request in flight whose bodies moved in neither direction for
    /// `body_stall` (a client not reading, an upstream stopped mid-body).
    Stall,
    /// The shutdown's grace period ran out with a request in flight.
    Cut,
}

/// The request-head, idle and body-stall timeouts of one connection,
/// checked on a tick.
#[derive(Default)]
struct Watchdog {
    /// What showed use at the last check: the socket's activity (HTTP/1),
    /// or the connection's requests word (HTTP/2, see [`Watchdog::check`]).
    last_seen: u64,
    /// A request was in flight at the last check.
    in_flight: bool,
    quiet: Duration,
}

impl Watchdog {
    fn check(
        &mut self,
        state: &ConnState,
        timeouts: &ConnTimeouts,
        every: Duration,
    ) -> Option<Closed> {
        if state.lingering.load(Ordering::Relaxed) {
            // Its close lingers, within bounds of its own (`linger`).
            return None;
        }
        let started = state.head_started_ms.load(Ordering::Relaxed);
        if started != 0
            && now_ms().saturating_sub(started) > timeouts.request_header.as_millis() as u64
        {
            return Some(Closed::HeadTimeout);
        }
        let requests = state.requests.load(Ordering::Relaxed);
        let in_flight = super::in_flight(requests) != 0;
        let http2 = state.http2.load(Ordering::Relaxed);
        // An HTTP/2 socket is never quiet for long: keep-alive PINGs (ours
        // every 30 s, any the client sends) and other control frames move
        // bytes on a connection no request uses, and would keep it open
        // forever. Its idle rule counts requests only: none in flight and
        // none started or ended (the requests word unchanged) for `idle`.
        let seen = if http2 {
            requests
        } else {
            state.activity.load(Ordering::Relaxed)
        };
        // Waiting for a response head has its own timeout; HTTP/2 streams
        // share the connection (and its pings): each is timed on its own
        // (see `stream_watch`). Neither is a stall of the connection.
        let exempt = in_flight && (state.awaiting_upstream.load(Ordering::Relaxed) || http2);
        if seen != self.last_seen || in_flight != self.in_flight || exempt {
            self.last_seen = seen;
            self.in_flight = in_flight;
            self.quiet = Duration::ZERO;
            return None;
        }
        self.quiet += every;
        match in_flight {
            true if self.quiet >= timeouts.body_stall => Some(Closed::Stall),
            false if self.quiet >= timeouts.idle => Some(Closed::Idle),
            _ => None,
        }
    }
}

/// The timeouts a client connection is watched with (of [`Timeouts`], the
/// three its own task needs).
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    pub request_header: Duration,
    pub idle: Duration,
    pub body_stall: Duration,
}

impl From<&Timeouts> for ConnTimeouts {
    fn from(t: &Timeouts) -> ConnTimeouts {
        ConnTimeouts {
            request_header: t.request_header,
            idle: t.idle,
            body_stall: t.body_stall,
        }
    }
}

/// Why [`Watch::drive`] gave no output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    /// The watchdog closed the connection: a request head had begun (at
    /// least one byte of it) and did not end within `request_header`.
    /// Counted in `canary_client_errors_total{kind="head_timeout"}`.
    HeadTimeout,
    /// It failed, idled, stalled or was cut at the end of the grace period.
    Other,
}

/// What a connection is watched with. References only: the connection's
/// task holds one copy of each (its size is what an idle connection costs).
pub struct Watch<'a> {
    pub state: &'a ConnState,
    pub timeouts: &'a ConnTimeouts,
    pub drain: &'a Drain,
    pub peer: &'a SocketAddr,
}

impl Watch<'_> {
    /// Drives `conn` to its end: calls `shut_down` on it when the drain
    /// begins (on an HTTP/1 connection between requests: when the drain's
    /// idle window ends, or its next request comes first), and drops it
    /// (closing the socket) when the watchdog says so or the drain's grace
    /// period runs out ([`Drain::cut`]: what it still serves is dropped,
    /// logged 444).
    /// Its output, unless it failed or the watchdog closed it (then why).
    /// `conn` is pinned by the caller, so that the task stores it once.
    pub async fn drive<C, T, E>(
        &self,
        mut conn: Pin<&mut C>,
        shut_down: fn(Pin<&mut C>),
    ) -> Result<T, Unfinished>
    where
        C: Future<Output = Result<T, E>>,
        E: ConnError,
    {
        let Watch {
            state,
            timeouts,
            drain,
            peer,
        } = self;
        let shortest = timeouts
            .request_header
            .min(timeouts.idle)
            .min(timeouts.body_stall);
        let every = (shortest / 4).max(Duration::from_millis(50));
        let mut tick = pin!(tokio::time::sleep(every));
        // One slot for the drain's signals, in their order: its beginning,
        // the end of its idle window, the end of its grace period.
        let mut drain_signal = pin!(drain.began.notified());
        let (mut ticking, mut listening) = (false, false);
        let mut phase = Phase::Serving;
        // Told nothing yet at the drain's beginning, being idle: `shut_down`
        // would close it at once (hyper's HTTP/1 server), not after the
        // idle window.
        let mut deferred = false;
        let mut watchdog = Watchdog::default();
        // An idle HTTP/2 connection was told to go away.
        let mut going_away = false;
        let outcome = poll_fn(move |cx| {
            if phase == Phase::Serving {
                // Polled once, the signal stays registered; after that the flag
                // says whether it fired.
                let signalled = !listening && drain_signal.as_mut().poll(cx).is_ready();
                listening = true;
                if signalled || drain.is_draining() {
                    phase = Phase::Window;
                    // The same slot now waits for the idle window's end.
                    drain_signal.set(drain.idle_closing.notified());
                    listening = false;
                    if idle_http1(state) {
                        // The own server looks at the drain itself; hyper's
                        // is told at the window's end, or at its next
                        // request (below).
                        deferred = true;
                    } else {
                        // What the socket already holds is read first (as
                        // at the window's end, below).
                        if let Poll::Ready(output) = conn.as_mut().poll(cx) {
                            return Poll::Ready(Ok(output));
                        }
                        shut_down(conn.as_mut());
                    }
                }
            }
            if phase == Phase::Window {
                let signalled = !listening && drain_signal.as_mut().poll(cx).is_ready();
                listening = true;
                if signalled || drain.is_closing_idle() {
                    phase = Phase::ClosingIdle;
                    // The same slot now waits for the grace period's end.
                    drain_signal.set(drain.cut.notified());
                    listening = false;
                    if std::mem::take(&mut deferred) {
                        // What the socket already holds is read first:
                        // hyper's HTTP/1 server closes an idle connection
                        // at once, a request that arrived meanwhile unread
                        // (and the socket closed on it is reset). Read, it
                        // is served, with `Connection: close`. (The own
                        // server, polled below, closes when idle.)
                        if let Poll::Ready(output) = conn.as_mut().poll(cx) {
                            return Poll::Ready(Ok(output));
                        }
                        shut_down(conn.as_mut());
                    }
                }
            }
            if phase == Phase::ClosingIdle {
                let signalled = !listening && drain_signal.as_mut().poll(cx).is_ready();
                listening = true;
                if signalled || drain.is_cut() {
                    return Poll::Ready(Err(Closed::Cut));
                }
            }
            if !ticking || tick.is_elapsed() {
                while tick.as_mut().poll(cx).is_ready() {
                    match watchdog.check(state, timeouts, every) {
                        None => {}
                        // An idle HTTP/2 connection is closed as the drain
                        // closes it: GOAWAY first (hyper's graceful
                        // shutdown), so that its client knows the close for
                        // one and that no request was lost (RFC 9113, 6.8);
                        // it ends once the client has seen it. One still
                        // open after another idle period (a client that
                        // never answers the shutdown's PING) is dropped.
                        Some(Closed::Idle)
                            if !going_away
                                && phase == Phase::Serving
                                && state.http2.load(Ordering::Relaxed) =>
                        {
                            going_away = true;
                            watchdog.quiet = Duration::ZERO;
                            tracing::debug!(%peer, "idle HTTP/2 connection; sending GOAWAY");
                            shut_down(conn.as_mut());
                        }
                        Some(closed) => return Poll::Ready(Err(closed)),
                    }
                    tick.as_mut().reset(tokio::time::Instant::now() + every);
                }
                ticking = true;
            }
            let mut polled = conn.as_mut().poll(cx);
            if deferred && polled.is_pending() && state.http2.load(Ordering::Relaxed) {
                // An HTTP/2 preface in the idle window: told now (GOAWAY).
                // A request on HTTP/1 is answered with `Connection: close`
                // by the service (see `server::service`), and hyper's
                // server is told at the window's end: told now, hyper
                // would add `close` to a `101` too, which a WebSocket
                // client may refuse.
                deferred = false;
                shut_down(conn.as_mut());
                polled = conn.as_mut().poll(cx);
            }
            polled.map(Ok)
        })
        .await;
        match outcome {
            Ok(Ok(output)) => return Ok(output),
            Ok(Err(e)) => {
                // A head hyper's server could not parse (it answered 400 or
                // 431 itself) is the client's error, counted like the own
                // server's.
                if e.bad_head() {
                    crate::proxy::error_response::ClientError::BadHead("unparsable").count();
                }
                tracing::debug!(%peer, error = %e, "client connection ended with an error")
            }
            Err(Closed::HeadTimeout) => {
                // The client's error (slowloris, or a client too slow to
                // send a head): an idle connection that began no head is
                // closed as `Idle`, not here.
                crate::proxy::error_response::ClientError::HeadTimeout.count();
                tracing::debug!(%peer, "request head not received in time; closing the connection");
                return Err(Unfinished::HeadTimeout);
            }
            Err(Closed::Idle) => tracing::debug!(%peer, "idle connection closed"),
            Err(Closed::Cut) => {
                tracing::debug!(%peer, "connection cut at the end of the shutdown grace period")
            }
            Err(Closed::Stall) => {
                metrics::counter!(crate::metrics::BODY_STALLS_TOTAL).increment(1);
                // A client that stopped reading its response is the
                // client's error (as on HTTP/2); an upstream that stopped
                // sending is not.
                if self.state.client_full() {
                    crate::proxy::error_response::ClientError::BodyStall.count();
                    tracing::debug!(%peer, "client took no response body for the body-stall timeout; closing the connection")
                } else {
                    // Before the request's completion drops with the
                    // connection: the version's failure.
                    self.state.mark_upstream_stalled();
                    tracing::debug!(%peer, "request bodies stalled; closing the connection")
                }
            }
        }
        Err(Unfinished::Other)
    }
}

/// How a client connection ended with an error.
pub trait ConnError: Display {
    /// The client sent a request head that could not be parsed.
    fn bad_head(&self) -> bool;
}

/// The own server counts the heads it refuses itself.
impl ConnError for crate::proxy::h1::response::SendError {
    fn bad_head(&self) -> bool {
        false
    }
}

impl ConnError for hyper::Error {
    fn bad_head(&self) -> bool {
        self.is_parse()
    }
}

/// hyper-util's auto-detecting connection (HTTP/1 or HTTP/2).
impl ConnError for Box<dyn std::error::Error + Send + Sync> {
    fn bad_head(&self) -> bool {
        self.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
    }
}

/// Whether a connection's first bytes rule out HTTP/2 prior knowledge (its
/// preface starts with `PRI`): then it is served by hyper's HTTP/1 server
/// directly, without the auto-detecting connection's layer. `None`: the
/// client closed, or sent nothing within `idle`, or by the end of the
/// drain's idle window ([`Drain::close_idle`]).
pub async fn first_bytes_rule_out_h2(
    stream: &tokio::net::TcpStream,
    idle: Duration,
    drain: &Drain,
) -> Option<bool> {
    let prefix = &super::H2_PREFACE[..3];
    let mut first = [0u8; 3];
    let peeked = tokio::select! {
        // First bytes already there are read (served), also once the drain
        // began: closed unread, the socket would be reset.
        biased;
        peeked = tokio::time::timeout(idle, stream.peek(&mut first)) => peeked,
        // A drain keeps it for its idle window: a first request on its
        // way is served, with `Connection: close`.
        () = drain.idle_closed() => return None,
    };
    match peeked {
        Ok(Ok(n)) if n > 0 => Some(first[..n] != prefix[..n]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_state() -> ConnState {
        ConnState::new(
            "127.0.0.1:1".parse().unwrap(),
            false,
            Arc::new(Drain::default()).track(),
        )
    }

    const TIMEOUTS: ConnTimeouts = ConnTimeouts {
        request_header: Duration::from_secs(10),
        idle: Duration::from_secs(4),
        body_stall: Duration::from_secs(60),
    };
    const EVERY: Duration = Duration::from_secs(1);

    /// Checks `state` once a tick, `between` run before each check; the
    /// check that closed the connection (counted from 1), if any within
    /// `ticks`.
    fn closes_at(state: &ConnState, ticks: u32, mut between: impl FnMut(u32)) -> Option<u32> {
        let mut watchdog = Watchdog::default();
        (1..=ticks).find(|&tick| {
            between(tick);
            matches!(watchdog.check(state, &TIMEOUTS, EVERY), Some(Closed::Idle))
        })
    }

    /// HTTP/2: PINGs and other control frames move bytes, requests alone
    /// keep the connection from being idle, also those begun and ended
    /// between two checks.
    #[test]
    fn http2_is_idle_without_requests_whatever_its_socket_does() {
        let state = conn_state();
        state.http2.store(true, Ordering::Relaxed);
        // Bytes at every tick (PINGs), no request.
        assert_eq!(closes_at(&state, 20, |_| state.saw_bytes(true)), Some(4));
        // A request within each idle period, started and ended between checks.
        let requests = |tick| {
            state.saw_bytes(true);
            if tick % 3 == 0 {
                state.request_started(true);
                state.request_ended();
            }
        };
        assert_eq!(closes_at(&state, 20, requests), None);
        // A request in flight for longer than `idle`, then none.
        state.request_started(true);
        let ends_at_10 = |tick| {
            if tick == 10 {
                state.request_ended();
            }
        };
        assert_eq!(closes_at(&state, 20, ends_at_10), Some(14));
    }

    /// HTTP/1: any byte in either direction is activity (unchanged).
    #[test]
    fn http1_is_idle_without_bytes() {
        let state = conn_state();
        assert_eq!(closes_at(&state, 20, |_| state.saw_bytes(false)), None);
        assert_eq!(closes_at(&conn_state(), 20, |_| {}), Some(4));
    }
}
