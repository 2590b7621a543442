//! Data path: the listener. Accepts connections, serves HTTP/1.1 (the own
//! server of [`super::h1`], then hyper's from the first request it leaves to
//! it) and h2c (hyper's) on each, enforces the request-header and idle
//! timeouts, and drains gracefully on shutdown. With `[listener.tls]` each
//! connection is a TLS handshake first ([`crate::tls::ListenerTls::accept`]):
//! ALPN h2 goes to hyper's HTTP/2 server, anything else to the same HTTP/1.1
//! servers as a plain connection.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::HeaderValue;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::Proxy;
use super::clock::now_ms;
use super::h1;
use super::log_limit::LogLimit;
pub use drive::Drain;
pub use stream_watch::{StreamExec, StreamWatch};

mod coalesce;
mod drive;
mod linger;
mod stream_watch;

/// Largest request head accepted (larger gets 431).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The first bytes of an HTTP/2 prior-knowledge connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Per-connection state shared by the socket wrapper, the service and the
/// connection's watchdog.
#[derive(Debug)]
pub struct ConnState {
    /// Bumped on every read or write that moved bytes.
    activity: AtomicU64,
    /// Requests of this connection: the low 32 bits count those not yet
    /// finished, the high 32 bits (wrapping) those started. One word, so
    /// that a request costs no more atomic operations than a count in
    /// flight did, and the watchdog still sees a request that began and
    /// ended between two of its checks (HTTP/2's idle rule, in
    /// `drive::Watchdog`).
    requests: AtomicU64,
    /// When the first byte of the current request head arrived (0: none).
    head_started_ms: AtomicU64,
    /// Waiting for a new request head (HTTP/1 between requests).
    awaiting_head: AtomicBool,
    /// HTTP/1 request bodies still being read (by hyper's server; a
    /// count, as a finished request's body may be let go after the next
    /// request's began): the client's bytes are such a body, also after its
    /// response ended (an early answer), not a next request's head.
    open_bodies: AtomicU32,
    /// The connection speaks HTTP/2 (no per-request head timing).
    http2: AtomicBool,
    /// Its close lingers (see [`linger`]): the linger's own bounds end it,
    /// not the watchdog's idle rule.
    lingering: AtomicBool,
    /// A request was forwarded and its response head has not arrived (its
    /// own timeout runs): no body can stall meanwhile.
    awaiting_upstream: AtomicBool,
    /// The last write to the client found its socket full (it reads no
    /// more, or not yet): a stall then is the client's.
    client_full: AtomicBool,
    /// The watchdog ended the connection because its upstream stopped
    /// sending a response body (see [`ConnState::upstream_stalled`]).
    upstream_stalled: AtomicBool,
    /// The client's address for X-Forwarded-For, formatted once.
    pub peer_ip: HeaderValue,
    /// The scheme the client used, for X-Forwarded-Proto: `https` when the
    /// connection was accepted over TLS (HTTP/1.1 or HTTP/2), else `http`.
    pub proto: &'static str,
    /// A duplicate of the client's socket's descriptor, once hyper's HTTP/1
    /// server serves the connection: see [`ConnState::client_fd`].
    client_fd: OnceLock<OwnedFd>,
    /// Counts the connection as open (for the drain and
    /// `canary_open_connections`) as long as anything holds its state: its
    /// task, and after an upgrade the tunnel, which outlives the task.
    tracked: drive::Tracked,
}

impl ConnState {
    /// A connection from `peer`, accepted over TLS when `tls`, counted
    /// open by `tracked`.
    fn new(peer: SocketAddr, tls: bool, tracked: drive::Tracked) -> ConnState {
        ConnState {
            activity: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            awaiting_head: AtomicBool::new(true),
            open_bodies: AtomicU32::new(0),
            http2: AtomicBool::new(false),
            lingering: AtomicBool::new(false),
            awaiting_upstream: AtomicBool::new(false),
            client_full: AtomicBool::new(false),
            upstream_stalled: AtomicBool::new(false),
            peer_ip: super::headers::peer_ip(peer),
            proto: if tls { "https" } else { "http" },
            client_fd: OnceLock::new(),
            tracked,
        }
    }

    /// The client's TCP socket, on hyper's HTTP/1 server only: there a
    /// request with a body (or an upgrade) has hyper's server read nothing
    /// of the client's while its upstream connection is made, and so not
    /// see the client go away (it does see it for a bodiless request, and
    /// HTTP/2 resets the stream). A duplicate, made when the connection is
    /// handed to hyper (rare: HTTP/1.0, trailers, upgrades): the service
    /// cannot borrow the socket hyper owns.
    pub fn client_fd(&self) -> Option<BorrowedFd<'_>> {
        self.client_fd.get().map(AsFd::as_fd)
    }

    /// Shuts the client's socket both ways (through [`ConnState::client_fd`],
    /// so hyper's HTTP/1 server only): what hyper would write next fails,
    /// and the client reads the end of the stream with no answer. For a
    /// client gone (or half-closed) while its request's upstream connection
    /// was being made: a client that only shut its sending side could
    /// still read, and would get an answer the gateway logs as none (499).
    pub fn shut_client(&self) {
        if let Some(fd) = self.client_fd().and_then(|fd| fd.try_clone_to_owned().ok()) {
            let _ = std::net::TcpStream::from(fd).shutdown(std::net::Shutdown::Both);
        }
    }

    /// The shutdown of the listener the connection came on.
    pub fn drain(&self) -> &Drain {
        self.tracked.drain()
    }

    /// A request head was parsed and handed to the service.
    pub fn request_started(&self, http2: bool) {
        self.requests
            .fetch_add(REQUEST_STARTED + 1, Ordering::Relaxed);
        self.awaiting_head.store(false, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.awaiting_upstream.store(true, Ordering::Relaxed);
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
    }

    /// The connection closes after what it serves now: what the client
    /// still sends (the rest of a request body that a lingering close
    /// reads and drops) is no request head, and `request_header` does not
    /// time it.
    pub fn closing(&self) {
        self.awaiting_head.store(false, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
    }

    /// Bytes of the next request head are at hand but not the whole head
    /// (they came with the request before, pipelined): `request_header`
    /// times it from now, as from a first byte read, unless already.
    pub fn head_pending(&self) {
        if self.head_started_ms.load(Ordering::Relaxed) == 0 {
            self.head_started_ms
                .store(now_ms().max(1), Ordering::Relaxed);
        }
    }

    /// The upstream answered the request in flight (or it failed): from now
    /// on its bodies are watched for stalls.
    pub fn upstream_answered(&self) {
        self.awaiting_upstream.store(false, Ordering::Relaxed);
    }

    /// A request's response ended: on HTTP/1 the next request head is
    /// awaited, unless the request's body is still coming.
    pub fn request_ended(&self) {
        // SeqCst with `request_body_ended`: of a response and a body ending
        // at once, at least one sees the other done.
        if in_flight(self.requests.fetch_sub(1, Ordering::SeqCst)) == 1
            && !self.http2.load(Ordering::Relaxed)
            && self.open_bodies.load(Ordering::SeqCst) == 0
        {
            self.awaiting_head.store(true, Ordering::Relaxed);
        }
    }

    /// An HTTP/1 request's body is to be read by hyper's server.
    pub fn request_body_open(&self) {
        self.open_bodies.fetch_add(1, Ordering::SeqCst);
    }

    /// That body ended (or was dropped): if its response has ended too,
    /// the next request head is awaited.
    pub fn request_body_ended(&self) {
        if self.open_bodies.fetch_sub(1, Ordering::SeqCst) == 1
            && in_flight(self.requests.load(Ordering::SeqCst)) == 0
            && !self.http2.load(Ordering::Relaxed)
        {
            self.awaiting_head.store(true, Ordering::Relaxed);
        }
    }

    /// What a write to the client came to.
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => self.client_took(true),
            Poll::Pending => self.client_took(false),
            Poll::Ready(_) => {}
        }
    }

    /// A write to the client moved bytes (`took`), or found its socket full.
    fn client_took(&self, took: bool) {
        if took {
            self.saw_bytes(false);
        }
        self.client_full.store(!took, Ordering::Relaxed);
    }

    /// Whether the last write to the client found its socket full.
    pub fn client_full(&self) -> bool {
        self.client_full.load(Ordering::Relaxed)
    }

    /// Whether the connection was ended because its upstream stopped
    /// sending a response body for `body_stall`: the request in flight
    /// failed by its version.
    pub fn upstream_stalled(&self) -> bool {
        self.upstream_stalled.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_upstream_stalled(&self) {
        self.upstream_stalled.store(true, Ordering::Relaxed);
    }

    fn saw_bytes(&self, read: bool) {
        self.activity.fetch_add(1, Ordering::Relaxed);
        if read
            && self.awaiting_head.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
        {
            self.head_started_ms
                .store(now_ms().max(1), Ordering::Relaxed);
        }
    }
}

/// What [`ConnState::request_started`] adds to the high half of its
/// `requests` word (the low half counts the request in flight).
const REQUEST_STARTED: u64 = 1 << 32;

/// The requests in flight of a [`ConnState`]'s `requests` word.
fn in_flight(requests: u64) -> u32 {
    requests as u32
}

/// A socket that reports its activity to the connection's [`ConnState`].
struct TrackedIo {
    inner: crate::tls::Stream,
    state: Arc<ConnState>,
    /// Bytes read before hyper's server took the connection over (see
    /// [`h1::Ended::HandOff`]): its reads get them first.
    prefix: Bytes,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            // An h2c connection starts with the HTTP/2 preface: it has no
            // request heads to time, even before its first request arrives.
            if self.state.activity.load(Ordering::Relaxed) == 0 {
                let new = &buf.filled()[before..];
                let n = new.len().min(H2_PREFACE.len());
                if n >= 3 && new[..n] == H2_PREFACE[..n] {
                    self.state.http2.store(true, Ordering::Relaxed);
                }
            }
            self.state.saw_bytes(true);
        }
        polled
    }
}

impl h1::ClientIo for TrackedIo {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.inner.tcp())
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.state.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to `grace` and closes idle connections
/// after [`DRAIN_IDLE_WINDOW`] (or `grace`, when shorter).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: impl Fn() -> Duration,
) {
    let drain = Arc::new(Drain::counted_by(proxy.telemetry.open_connections.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(stream, peer, &proxy, &drain),
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly,
                    // keep serving; a warn line a second at most.
                    static WARNED: LogLimit = LogLimit::new();
                    match WARNED.allow(now_ms(), 1000) {
                        Some(held_back) => tracing::warn!(error = %e, held_back, "accept failed"),
                        None => tracing::debug!(error = %e, "accept failed"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    let grace = grace();
    tracing::info!(grace_ms = grace.as_millis() as u64, "draining connections");
    drain.begin();
    // After the drain began: a client refused a connection knows that a
    // request on one it holds gets `Connection: close`.
    drop(listener);
    // Connections between requests stay open for a short window (a request
    // on its way is served), then close; requests in flight get the rest
    // of the grace period.
    let window = grace.min(DRAIN_IDLE_WINDOW);
    let drained = match tokio::time::timeout(window, drain.finished()).await {
        Ok(()) => Ok(()),
        Err(_) => {
            tracing::debug!("closing idle connections");
            drain.close_idle();
            tokio::time::timeout(grace - window, drain.finished()).await
        }
    };
    match drained {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => {
            tracing::warn!(
                open = drain.open(),
                "shutdown grace period over with connections still open (requests in flight, upgraded connections, HTTP/2 clients that never answered the drain's GOAWAY PING, or HTTP/2 closes lingering while their clients keep sending); cutting them"
            );
            // What still runs (requests in flight, upgraded connections'
            // tunnels) ends now; their requests are logged (444) as they
            // are dropped, before the process exits.
            drain.cut();
            if tokio::time::timeout(CUT_CLOSE, drain.finished())
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the shutdown grace period");
            }
        }
    }
}

/// How long a drain keeps an HTTP/1 connection between requests open (at
/// most; `shutdown_grace` when shorter): a request already on its way, or
/// sent on a pooled connection a moment later, is served with
/// `Connection: close` rather than met by a close (an EOF or a reset on a
/// reused connection, which a client cannot safely retry for a POST), as
/// HAProxy and Envoy drain. Short: a connection nothing uses holds up the
/// process's exit for this long at most.
pub const DRAIN_IDLE_WINDOW: Duration = Duration::from_secs(1);

/// How long connections cut at the end of the grace period take to close:
/// each is dropped on its task's next poll.
const CUT_CLOSE: Duration = Duration::from_secs(1);

fn serve_connection(stream: TcpStream, peer: SocketAddr, proxy: &Arc<Proxy>, drain: &Arc<Drain>) {
    let _ = stream.set_nodelay(true);
    // A listener with `[listener.tls]` serves only connections that
    // completed a TLS handshake.
    let state = Arc::new(ConnState::new(peer, proxy.tls.is_some(), drain.track()));
    // Only what the connection itself needs: its task holds them for its
    // whole life, and that task is most of what an idle connection costs.
    let timeouts = drive::ConnTimeouts::from(&proxy.current_timeouts());
    let proxy = proxy.clone();
    tokio::spawn(async move {
        let drain = state.drain();
        // HTTP/1 (nearly every connection) is served by the own HTTP/1.1
        // server, then by hyper's HTTP/1 server directly from the first
        // request the own one leaves to it; an h2c preface, or too few bytes
        // to tell, goes to the auto-detecting connection; none when the
        // client closed, sent nothing within the idle timeout, or the drain
        // began first.
        // TLS: HTTP/2 when ALPN chose h2, else HTTP/1 (the own server).
        let (mut io, http1) = match match &proxy.tls {
            None => drive::first_bytes_rule_out_h2(&stream, timeouts.idle, drain)
                .await
                .map(|http1| (stream.into(), http1)),
            // Boxed here and below: the connection's task then holds only
            // what an idle HTTP/1 connection of the own server needs (see
            // `h1::serve`), not the largest state of every protocol.
            // A handshake not done when the drain's idle window ends is
            // dropped, as a plain connection that sent nothing is: a load
            // balancer's TCP check or a stalled client must not hold the
            // exit for `request_header`.
            Some(tls) => {
                Box::pin(async {
                    tokio::select! {
                        biased;
                        accepted = tls.accept(stream, timeouts.request_header) => accepted,
                        () = drain.idle_closed() => None,
                    }
                })
                .await
            }
        } {
            Some((stream, http1)) => (
                TrackedIo {
                    inner: stream,
                    state: state.clone(),
                    prefix: Bytes::new(),
                },
                http1,
            ),
            None => return,
        };
        let watch = drive::Watch {
            state: &state,
            timeouts: &timeouts,
            drain,
            peer: &peer,
        };
        if http1 {
            // The drain needs no call: between requests the own server
            // looks at the drain flag whenever it is polled.
            let ended = {
                let served = pin!(h1::serve(&mut io, &state, &proxy, drain));
                watch.drive(served, |_| {}).await
            };
            if ended
                .as_ref()
                .is_err_and(|e| *e == drive::Unfinished::HeadTimeout)
            {
                // The own server was waiting for the rest of a head, with
                // nothing of a response written: it answers 408 (boxed: the
                // task keeps only what an idle connection needs).
                Box::pin(h1::answer_head_timeout(&mut io, drain)).await;
                return;
            }
            if let Ok(h1::Ended::HandOff(read)) = ended {
                io.prefix = read;
                // Out of descriptors: the client is not watched then.
                if let Ok(fd) = io.inner.tcp().as_fd().try_clone_to_owned() {
                    let _ = state.client_fd.set(fd);
                }
                let service = service(proxy.clone(), state.clone());
                let io = TokioIo::new(io);
                let mut conn = Box::pin(
                    http1::Builder::new()
                        // No hyper timer on HTTP/1: hyper would arm (and tear down) a
                        // timer entry for every request head it waits for. The
                        // connection's watchdog enforces both the request-head
                        // timeout (slowloris) and the keep-alive idle timeout.
                        .header_read_timeout(None)
                        .max_buf_size(MAX_HEAD_BYTES.max(8192))
                        // The buffer limit alone lets a head through when one read
                        // brings it whole: limit the head itself too.
                        .max_header_size(MAX_HEAD_BYTES)
                        // hyper's default header-line limit (100; more gets 431).
                        // Setting any limit, even the same, makes hyper allocate two
                        // header arrays on the heap for every request.
                        .keep_alive(true)
                        .serve_connection(io, service)
                        .with_upgrades(),
                );
                let _ = watch.drive(conn.as_mut(), |c| c.graceful_shutdown()).await;
            }
        } else {
            // Boxed: an HTTP/2 connection's state (hyper's builders for both
            // protocols among it) is the largest, and the task of every
            // idle HTTP/1 connection would otherwise be as large.
            Box::pin(serve_auto(io, &state, &proxy, &watch, timeouts.body_stall)).await;
        }
    });
}

/// Serves a connection with hyper's auto-detecting server: HTTP/2 (ALPN
/// chose h2, or an h2c preface), or HTTP/1 when its first bytes could not
/// tell.
async fn serve_auto(
    io: TrackedIo,
    state: &Arc<ConnState>,
    proxy: &Arc<Proxy>,
    watch: &drive::Watch<'_>,
    body_stall: Duration,
) {
    // Each HTTP/2 stream's task runs under its own body-stall watch.
    let exec = StreamExec { body_stall };
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // A larger header block is answered 431 (or reset) by the
        // h2 crate itself, before hyper sees a request: neither
        // gives a hook, so it is not in `canary_client_errors_total`
        // (docs/metrics.md), unlike HTTP/1.1's 431.
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        // Finds dead peers (hyper closes the connection when a PING
        // goes unanswered). These PINGs are no use of the connection:
        // the watchdog's idle rule for HTTP/2 counts requests only.
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let service = service(proxy.clone(), state.clone());
    let io = TokioIo::new(coalesce::Coalesced::new(linger::Lingering::new(io)));
    if proxy.tls.is_some() {
        // ALPN chose h2: the connection is HTTP/2 from its first
        // byte (RFC 9113, 3.2), as nginx and Envoy have it. HTTP/1.1
        // text on it is a broken preface that closes it, not a
        // request (the auto-detection, with its upgrades, is h2c's).
        // hyper writes its SETTINGS before it reads the client's
        // preface, so `TrackedIo` would not tell HTTP/2 by its first
        // read: said here (the watchdog's idle rule for HTTP/2).
        state.http2.store(true, Ordering::Relaxed);
        let builder = builder.http2_only();
        let mut conn = Box::pin(builder.serve_connection(io, service));
        let _ = watch.drive(conn.as_mut(), |c| c.graceful_shutdown()).await;
    } else {
        let mut conn = Box::pin(builder.serve_connection_with_upgrades(io, service));
        let _ = watch.drive(conn.as_mut(), |c| c.graceful_shutdown()).await;
    }
}

/// The connection's requests as hyper's servers call them.
fn service(
    proxy: Arc<Proxy>,
    state: Arc<ConnState>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<super::body::ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<super::body::ProxyBody>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let proxy = proxy.clone();
        let state = state.clone();
        let http1 = req.version() < http::Version::HTTP_2;
        async move {
            let mut resp = proxy.handle(req, state.clone()).await;
            // hyper's HTTP/1 server is told of the drain (keep-alive off)
            // only once a request came in its idle window, maybe after
            // answering it at once: this answer closes the connection.
            if http1
                && state.drain().is_draining()
                && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the connection now waits for a request head.
    fn awaiting(state: &ConnState) -> bool {
        state.awaiting_head.load(Ordering::Relaxed)
    }

    /// A request that reaches an idle connection of hyper's HTTP/1 server
    /// just as the drain's idle window ends is read and answered: hyper's
    /// graceful shutdown closes an idle connection at once, so the
    /// connection is polled (and reads what has arrived) before it is told.
    #[tokio::test(flavor = "current_thread")]
    async fn hyper_serves_a_request_that_arrived_as_the_drain_began() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let drain = Arc::new(Drain::default());
        let tracked = drain.track();
        let task = tokio::spawn(async move {
            let state = ConnState::new(
                "127.0.0.1:1".parse().unwrap(),
                false,
                Arc::new(Drain::default()).track(),
            );
            let timeouts = drive::ConnTimeouts {
                request_header: Duration::from_secs(10),
                idle: Duration::from_secs(10),
                body_stall: Duration::from_secs(10),
            };
            let peer = "127.0.0.1:1".parse().unwrap();
            let watch = drive::Watch {
                state: &state,
                timeouts: &timeouts,
                drain: tracked.drain(),
                peer: &peer,
            };
            let service = service_fn(|_req| async {
                Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            let mut conn =
                Box::pin(http1::Builder::new().serve_connection(TokioIo::new(server), service));
            let _ = watch.drive(conn.as_mut(), |c| c.graceful_shutdown()).await;
        });
        let request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        client.write_all(request).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"ok") {
            let mut chunk = [0u8; 1024];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the first answer");
            got.extend_from_slice(&chunk[..n]);
        }
        // The connection is idle, waiting to read. The next request arrives
        // and the drain begins, and its idle window ends, before its task
        // runs again.
        client.write_all(request).await.unwrap();
        drain.begin();
        drain.close_idle();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.starts_with("HTTP/1.1 200 OK") && rest.ends_with("ok"),
            "no answer: {rest:?}"
        );
        task.await.unwrap();
    }

    #[test]
    fn a_head_is_awaited_once_the_response_and_every_body_have_ended() {
        let state = ConnState::new(
            "127.0.0.1:1".parse().unwrap(),
            false,
            Arc::new(Drain::default()).track(),
        );
        // The body ends before the response: awaited at the response's end.
        state.request_started(false);
        state.request_body_open();
        state.request_body_ended();
        assert!(!awaiting(&state));
        state.request_ended();
        assert!(awaiting(&state));
        // An early answer: the body goes on after the response.
        state.request_started(false);
        state.request_body_open();
        state.request_ended();
        assert!(!awaiting(&state), "body bytes would start a head's clock");
        state.request_body_ended();
        assert!(awaiting(&state));
        // A finished request's body let go after the next request began.
        state.request_started(false);
        state.request_body_open();
        state.request_ended();
        state.request_started(false);
        state.request_body_open();
        state.request_body_ended();
        state.request_ended();
        assert!(!awaiting(&state), "the second body is still coming");
        state.request_body_ended();
        assert!(awaiting(&state));
    }
}
