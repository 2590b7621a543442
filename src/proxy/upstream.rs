//! Data path: one upstream endpoint, its keep-alive connection pool and its
//! passive health (ejection after gateway failures in a row: see
//! [`Failure`]).
//!
//! An [`Endpoint`] outlives snapshots: the control path hands the same `Arc`
//! to every snapshot while the address stays, so pooled connections,
//! outstanding counts and ejections survive weight changes and reloads.

pub mod refused_writes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::clock::now_ms;
use super::random::fast_random;
use super::upstream_client::Conn;
use crate::config::UpstreamConfig;

/// A pooled HTTP/1.1 connection's request handle (hyper's client).
pub struct Sender {
    send: http1::SendRequest<super::body::RequestBody>,
    /// The upstream refused a write ([`refused_writes`]): never reused.
    refused: Arc<AtomicBool>,
    /// The body of the request last sent, if it had one.
    request_body: Option<Arc<super::body::BodyProgress>>,
    /// Tells the connection's task, when this is dropped, of a request body
    /// still going up (see [`Sender::drop`]).
    unfinished: Option<oneshot::Sender<Arc<super::body::BodyProgress>>>,
}

/// A request answered (or given up) while its body was still going up: the
/// upstream connection's task passes the body on for at most 5 s more (the
/// own server's linger, `h1::LINGER`), then closes the connection. The body
/// is dropped with it, which ends the client's side too (hyper's HTTP/1
/// server closes a connection whose request body was not read to its end;
/// an HTTP/2 stream is reset), as the own server's lingering close ends an
/// answered upload: an upload the upstream no longer wants is not taken for
/// as long as the client goes on sending it.
impl Drop for Sender {
    fn drop(&mut self) {
        if let Some(body) = self.request_body.take().filter(|b| !b.is_done())
            && let Some(unfinished) = self.unfinished.take()
        {
            let _ = unfinished.send(body);
        }
    }
}

impl Sender {
    /// Notes the body of the request about to be sent.
    pub fn sending(&mut self, body: Option<Arc<super::body::BodyProgress>>) {
        self.request_body = body;
    }

    /// The upstream answered before the request's body went up in full (an
    /// early answer; the client may still be sending it): the connection
    /// stays busy with that body, and a request given it would wait for the
    /// whole upload, or for `body_stall` if the upstream stopped reading.
    fn body_still_going(&self) -> bool {
        self.request_body.as_ref().is_some_and(|b| !b.is_done())
    }
}

impl std::ops::Deref for Sender {
    type Target = http1::SendRequest<super::body::RequestBody>;
    fn deref(&self) -> &Self::Target {
        &self.send
    }
}

impl std::ops::DerefMut for Sender {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.send
    }
}

/// A connection that can go back to the pool once its response has ended.
pub enum Pooled {
    /// Driven by hyper's client in a task of its own (requests with a body).
    Hyper(Sender),
    /// Driven by the request's own task ([`super::upstream_client`]).
    Own(Conn),
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("HTTP handshake with {0} failed: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

impl ConnectError {
    /// The endpoint no connection could be made to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            ConnectError::Timeout(addr)
            | ConnectError::Io(addr, _)
            | ConnectError::Tls(addr, _)
            | ConnectError::Handshake(addr, _) => *addr,
        }
    }
}

/// A gateway failure: the endpoint, not the client, failed a request
/// before any response head came (nginx's `max_fails` counts these as
/// `error` and `timeout`, Envoy's outlier detection as consecutive gateway
/// failures). [`Endpoint::failed`] counts them toward ejection: an endpoint
/// whose socket still accepts while its application is gone (a JVM in a GC
/// spiral, a deadlocked process, a sidecar accepting for a crashed app)
/// leaves the rotation as one that refuses connections does. A client's
/// failure (gone, a broken body) is never one, nor a pooled connection
/// that the upstream closed while idle (the keep-alive race), nor an
/// invalid or cut-short response head (something came).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A connect (or the TLS handshake) failed or timed out.
    Connect,
    /// A new connection was closed or reset before any byte of a response.
    Reset,
    /// No response head within `upstream_response`.
    Timeout,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
        }
    }
}

struct IdleConn<T> {
    conn: T,
    since: Instant,
}

/// A connection kind the pool holds.
trait Poolable {
    /// Whether the connection still looks open.
    fn is_open(&self) -> bool;
}

impl Poolable for Sender {
    fn is_open(&self) -> bool {
        !self.send.is_closed() && !self.refused.load(Ordering::Relaxed)
    }
}

impl Poolable for Conn {
    fn is_open(&self) -> bool {
        self.is_usable()
    }
}

impl<T: Poolable> IdleConn<T> {
    /// Idle for less than `idle_timeout` at `now`, and still open.
    fn is_fresh(&self, idle_timeout: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < idle_timeout && self.conn.is_open()
    }
}

/// The most recently used fresh connection of `stack`; stale ones on the way
/// are dropped.
fn pop_fresh<T: Poolable>(
    stack: &mut Vec<IdleConn<T>>,
    idle_timeout: Duration,
    now: Instant,
) -> Option<T> {
    while let Some(c) = stack.pop() {
        if c.is_fresh(idle_timeout, now) {
            return Some(c.conn);
        }
    }
    None
}

/// The idle connections of an endpoint, most recently used last.
#[derive(Default)]
struct Idle {
    hyper: Vec<IdleConn<Sender>>,
    own: Vec<IdleConn<Conn>>,
}

/// An own-client connection idle this long gives its buffers back at the
/// next [`Endpoint::sweep`] (see there).
pub const RELEASE_BUFFER_AFTER: Duration = Duration::from_secs(1);

/// One upstream address with its pool and health.
pub struct Endpoint {
    addr: SocketAddr,
    /// Requests sent and not finished (for power-of-two-choices).
    outstanding: AtomicU32,
    /// Gateway failures ([`Failure`]) in a row since the last response
    /// head.
    failures: AtomicU32,
    /// Ejections in a row, for the back-off.
    ejections: AtomicU32,
    /// Ejected until this many milliseconds after [`epoch`]; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    idle: Mutex<Idle>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            outstanding: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            idle: Mutex::new(Idle::default()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is in an ejection period.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Milliseconds of ejection left, if ejected.
    pub fn ejected_for_ms(&self) -> Option<u64> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        let now = now_ms();
        (until != 0 && now < until).then(|| until - now)
    }

    /// A response head came from the endpoint (any status): it is healthy
    /// again, its failures in a row and its ejection end. Called for every
    /// response: two loads when there is nothing to clear.
    #[inline]
    pub fn answered(&self) {
        // An ejection resets `failures` to 0: check the ejection too, or an
        // endpoint that works again would stay ejected (and its back-off grow).
        if self.failures.load(Ordering::Relaxed) != 0
            || self.ejected_until_ms.load(Ordering::Relaxed) != 0
        {
            self.failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// A gateway failure of the endpoint; after `eject_after_failures` in a
    /// row (no response head between them) it is ejected for
    /// `eject_base * 2^(ejections in a row)`, at most `eject_max`.
    ///
    /// A failure while the endpoint is ejected is not counted: it belongs
    /// to a request that was sent before the ejection (a hung endpoint's
    /// requests time out together) or to one its version had no other
    /// endpoint for; counting those would stretch the ejection to
    /// `eject_max` at once. The back-off grows when the endpoint fails
    /// again after its ejection ended.
    pub fn failed(&self, cfg: &UpstreamConfig, failure: Failure) {
        if self.is_ejected() {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= cfg.eject_after_failures {
            self.failures.store(0, Ordering::Relaxed);
            let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
            let period = cfg.eject_base.saturating_mul(1 << n).min(cfg.eject_max);
            let period_ms = period.as_millis() as u64;
            self.ejected_until_ms
                .store(now_ms() + period_ms, Ordering::Relaxed);
            // Once per ejection: at most one line per ejection period.
            tracing::warn!(
                endpoint = %self.addr,
                period_ms,
                failures,
                last = failure.as_str(),
                "endpoint ejected after gateway failures in a row (connect, reset or timeout before a response head)"
            );
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled hyper connection, if one is idle and still open.
    pub fn checkout(&self, idle_timeout: Duration) -> Option<Sender> {
        pop_fresh(&mut self.idle().hyper, idle_timeout, Instant::now())
    }

    /// A pooled connection of the gateway's own client, if one is idle and
    /// still open (`now`: the request's start, to save a clock read).
    pub fn checkout_own(&self, idle_timeout: Duration, now: Instant) -> Option<Conn> {
        pop_fresh(&mut self.idle().own, idle_timeout, now)
    }

    /// Returns a connection to the pool after its response ended (`now`);
    /// at most `max_idle` connections stay idle.
    pub fn checkin(&self, conn: Pooled, max_idle: usize, now: Instant) {
        if let Pooled::Hyper(sender) = &conn
            && (!Poolable::is_open(sender) || sender.body_still_going())
        {
            return;
        }
        let mut idle = self.idle();
        if idle.hyper.len() + idle.own.len() >= max_idle {
            return;
        }
        let since = now;
        match conn {
            Pooled::Hyper(conn) => idle.hyper.push(IdleConn { conn, since }),
            Pooled::Own(conn) => idle.own.push(IdleConn { conn, since }),
        }
    }

    /// Closes the idle connections that the upstream closed or that were
    /// idle for `idle_timeout`: checkouts skip them anyway, but until then
    /// they would hold a socket (in CLOSE_WAIT once the upstream closed),
    /// on an endpoint that gets no more traffic possibly for good.
    /// The own client's connections idle for [`RELEASE_BUFFER_AFTER`] give
    /// their buffers back: after a burst, the connections beyond the steady
    /// load's would otherwise each hold 5 KiB or so until `idle_timeout`
    /// (the pool keeps up to `max_idle_per_endpoint`, 4096 by default). The
    /// most recently used, at the top of the stack, keep theirs.
    pub fn sweep(&self, idle_timeout: Duration, now: Instant) {
        let mut idle = self.idle();
        idle.own.retain_mut(|c| {
            if !c.is_fresh(idle_timeout, now) {
                return false;
            }
            if now.saturating_duration_since(c.since) >= RELEASE_BUFFER_AFTER {
                c.conn.release_buffers();
            }
            true
        });
        idle.hyper.retain(|c| c.is_fresh(idle_timeout, now));
    }

    /// Drops every pooled connection (the endpoint left the snapshot).
    pub fn clear_pool(&self) {
        *self.idle() = Idle::default();
    }

    /// Opens a new TCP connection (TCP_NODELAY on) by `deadline`. The
    /// caller records the outcome for ejection ([`Endpoint::connected`]) once
    /// the connection is usable (after its TLS handshake, if any).
    pub async fn open(&self, deadline: tokio::time::Instant) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout_at(deadline, TcpStream::connect(self.addr)).await {
            Err(_) => Err(ConnectError::Timeout(self.addr)),
            Ok(Err(e)) => Err(ConnectError::Io(self.addr, e)),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
        }
    }

    /// Records a connect's outcome (TCP, and TLS when the version has it):
    /// a failure counts toward the endpoint's ejection ([`Endpoint::failed`]).
    /// A success does not end a run of failures: an endpoint that accepts
    /// connections and never answers on them must still be ejected; its
    /// first response head does ([`Endpoint::answered`]).
    pub fn connected<T>(&self, result: &Result<T, ConnectError>, cfg: &UpstreamConfig) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "upstream connect failed");
            self.failed(cfg, Failure::Connect);
        }
    }

    /// Makes a connection from [`Endpoint::open`] an HTTP/1.1 connection
    /// driven by hyper's client, in a task of its own.
    pub async fn handshake(&self, stream: crate::tls::Stream) -> Result<Sender, ConnectError> {
        let io = refused_writes::RefusedWrites::new(stream);
        let refused = io.flag();
        let (send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ConnectError::Handshake(self.addr, e))?;
        let addr = self.addr;
        let (unfinished, left_unfinished) = oneshot::channel::<Arc<super::body::BodyProgress>>();
        tokio::spawn(async move {
            let lingered = async {
                match left_unfinished.await {
                    Ok(body) => linger(&body).await,
                    // Dropped with no body going up: the connection ends on
                    // its own.
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                ended = conn.with_upgrades() => if let Err(e) = ended {
                    tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
                },
                () = lingered => tracing::debug!(
                    upstream = %addr,
                    "request body still going up {:?} after its answer; closing the connection",
                    super::h1::LINGER
                ),
            }
        });
        Ok(Sender {
            send,
            refused,
            request_body: None,
            unfinished: Some(unfinished),
        })
    }
}

/// Resolves when `body` has gone on for [`super::h1::LINGER`] without
/// ending; never if it ends within that.
async fn linger(body: &super::body::BodyProgress) {
    if tokio::time::timeout(super::h1::LINGER, body.ended())
        .await
        .is_ok()
    {
        std::future::pending::<()>().await;
    }
}

/// The socket under an upgraded connection of hyper's client, out of its
/// [`refused_writes`] wrapper, with the bytes hyper read past the 101
/// response; `Err` gives back a connection not made by
/// [`Endpoint::handshake`].
pub fn unwrap_upgraded(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(crate::tls::Stream, bytes::Bytes), hyper::upgrade::Upgraded> {
    let parts =
        upgraded.downcast::<TokioIo<refused_writes::RefusedWrites<crate::tls::Stream>>>()?;
    Ok((parts.io.into_inner().into_inner(), parts.read_buf))
}

/// A request counted in its endpoint's outstanding requests until dropped,
/// whichever way the request ends (an error, its end, or its future dropped
/// when the client went away).
pub struct Outstanding(Arc<Endpoint>);

impl Outstanding {
    pub fn new(endpoint: Arc<Endpoint>) -> Outstanding {
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(endpoint)
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoint for a request: power of two choices over outstanding
/// requests among the endpoints not ejected. When every endpoint is ejected
/// (panic mode, like Envoy's panic threshold: better to try than to fail
/// every request) one of them at random, so that one that came back is
/// found whichever it is; a failed attempt there gets no second one
/// ([`pick_other`] takes no ejected endpoint): with endpoints that drop
/// SYNs (ECS tasks gone with their network interface) each request waits
/// one `upstream_connect`, not two.
pub fn pick(endpoints: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
    let n = endpoints.len();
    if n < 2 {
        // The only candidate, ejected or not (no random number needed).
        return endpoints.first();
    }
    let r = fast_random();
    pick_usable(endpoints, None, r).or_else(|| endpoints.get((r as usize) % n))
}

/// An endpoint for a second attempt after `tried` failed to connect: power
/// of two choices among the others that are not ejected; `None` when there
/// is none (an ejected endpoint gets no second attempt, see [`pick`]).
pub fn pick_other<'a>(
    endpoints: &'a [Arc<Endpoint>],
    tried: &Endpoint,
) -> Option<&'a Arc<Endpoint>> {
    pick_usable(endpoints, Some(tried), fast_random())
}

/// Power of two choices (from the random `r`) over the endpoints that are
/// neither ejected nor `exclude`; the first such from a random place when
/// both choices are not.
fn pick_usable<'a>(
    endpoints: &'a [Arc<Endpoint>],
    exclude: Option<&Endpoint>,
    r: u64,
) -> Option<&'a Arc<Endpoint>> {
    let usable = |e: &Endpoint| !e.is_ejected() && !exclude.is_some_and(|x| std::ptr::eq(x, e));
    match endpoints.len() {
        0 => None,
        1 => endpoints.first().filter(|only| usable(only)),
        n => {
            let a = (r as usize) % n;
            let b = (a + 1 + ((r >> 32) as usize) % (n - 1)) % n;
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            match (usable(ea), usable(eb)) {
                (true, true) => Some(if eb.outstanding() < ea.outstanding() {
                    eb
                } else {
                    ea
                }),
                (true, false) => Some(ea),
                (false, true) => Some(eb),
                (false, false) => endpoints.iter().cycle().skip(a).take(n).find(|e| usable(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 1000 + i)))))
            .collect()
    }

    #[test]
    fn pick_spreads_and_prefers_fewer_outstanding() {
        let e = eps(3);
        let busy: Vec<Outstanding> = (0..5).map(|_| Outstanding::new(e[0].clone())).collect();
        let mut counts = [0; 3];
        for _ in 0..3000 {
            let p = pick(&e).unwrap();
            counts[e.iter().position(|x| Arc::ptr_eq(x, p)).unwrap()] += 1;
        }
        assert!(counts[1] > 900 && counts[2] > 900, "{counts:?}");
        assert!(counts[0] < counts[1] && counts[0] < counts[2], "{counts:?}");
        drop(busy);
        assert_eq!(e[0].outstanding(), 0);
    }

    /// An endpoint ejected after one failure (`eject_after_failures = 1`).
    fn eject(e: &Endpoint) {
        let cfg = UpstreamConfig {
            eject_after_failures: 1,
            ..UpstreamConfig::default()
        };
        e.failed(&cfg, Failure::Connect);
        assert!(e.is_ejected());
    }

    #[test]
    fn pick_skips_ejected_and_excluded() {
        let e = eps(3);
        eject(&e[1]);
        for _ in 0..200 {
            assert!(!Arc::ptr_eq(pick(&e).unwrap(), &e[1]));
            let p = pick_other(&e, &e[0]).unwrap();
            assert!(Arc::ptr_eq(p, &e[2]));
        }
        let single = eps(1);
        assert!(pick_other(&single, &single[0]).is_none());
        assert!(pick(&[]).is_none());
        // The only endpoint is tried, ejected or not.
        eject(&single[0]);
        assert!(Arc::ptr_eq(pick(&single).unwrap(), &single[0]));
    }

    /// Every endpoint ejected (panic mode): each is tried in turn, not the
    /// first one always (one that came back is found), and a failed
    /// attempt gets no second one.
    #[test]
    fn with_every_endpoint_ejected_one_attempt_spread_over_them() {
        let e = eps(3);
        for endpoint in &e {
            eject(endpoint);
        }
        let mut counts = [0; 3];
        for _ in 0..3000 {
            let p = pick(&e).unwrap();
            counts[e.iter().position(|x| Arc::ptr_eq(x, p)).unwrap()] += 1;
            assert!(pick_other(&e, p).is_none());
        }
        assert!(counts.iter().all(|&c| c > 600), "{counts:?}");
        // One whose ejection ended is the one picked, and the second
        // attempt of a request that failed on an ejected one.
        e[2].ejected_until_ms.store(now_ms(), Ordering::Relaxed);
        for _ in 0..200 {
            assert!(Arc::ptr_eq(pick(&e).unwrap(), &e[2]));
            assert!(Arc::ptr_eq(pick_other(&e, &e[0]).unwrap(), &e[2]));
        }
    }

    #[test]
    fn ejection_backs_off_and_an_answer_clears_it() {
        let e = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        let cfg = UpstreamConfig::default();
        let ok: Result<(), ConnectError> = Ok(());
        // Connects that succeed do not end a run of failures: an endpoint
        // that accepts and resets (or hangs) is ejected too.
        e.failed(&cfg, Failure::Connect);
        e.connected(&ok, &cfg);
        e.failed(&cfg, Failure::Reset);
        e.connected(&ok, &cfg);
        assert!(!e.is_ejected());
        e.failed(&cfg, Failure::Timeout);
        let first = e.ejected_for_ms().unwrap();
        assert!(first > 4_000 && first <= 5_000, "{first}");
        // Failures while ejected (requests sent before) are not counted.
        for _ in 0..10 {
            e.failed(&cfg, Failure::Timeout);
        }
        assert!(e.ejected_for_ms().unwrap() <= 5_000);
        // Failing again once the ejection ended: twice as long.
        e.ejected_until_ms.store(now_ms(), Ordering::Relaxed);
        assert!(!e.is_ejected());
        for _ in 0..3 {
            e.failed(&cfg, Failure::Reset);
        }
        assert!(e.ejected_for_ms().unwrap() > 9_000);
        // A response head ends the ejection and the back-off.
        e.answered();
        assert!(!e.is_ejected());
        for _ in 0..3 {
            e.failed(&cfg, Failure::Reset);
        }
        assert!(e.ejected_for_ms().unwrap() <= 5_000);
        // And it ends a run of failures.
        e.answered();
        for _ in 0..2 {
            e.failed(&cfg, Failure::Reset);
        }
        e.answered();
        e.failed(&cfg, Failure::Reset);
        assert!(!e.is_ejected());
    }

    /// Idle connections of the own client give their buffers back after
    /// [`RELEASE_BUFFER_AFTER`]; a recently used one keeps them.
    #[tokio::test]
    async fn idle_connections_give_their_buffers_back() {
        use crate::proxy::upstream_client::HeadRead;
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::new(listener.local_addr().unwrap());
        let socket = TcpStream::connect(endpoint.addr()).await.unwrap();
        let (mut upstream, _) = listener.accept().await.unwrap();
        let mut conn = Conn::new(socket.into());
        let mut exchange = async |conn: &mut Conn| {
            conn.request_head()
                .extend_from_slice(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
            upstream
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            let head = conn.exchange(&http::Method::GET, HeadRead::InPlace).await;
            head.unwrap().status
        };
        exchange(&mut conn).await;
        let used = conn.buffered_capacity();
        assert!(used > 0, "{used}");

        let idle = Duration::from_secs(30);
        let t0 = Instant::now();
        endpoint.checkin(Pooled::Own(conn), 16, t0);
        endpoint.sweep(idle, t0 + RELEASE_BUFFER_AFTER / 2);
        let conn = endpoint.checkout_own(idle, t0).unwrap();
        assert_eq!(conn.buffered_capacity(), used, "recently used: kept");
        endpoint.checkin(Pooled::Own(conn), 16, t0);
        endpoint.sweep(idle, t0 + RELEASE_BUFFER_AFTER);
        let mut conn = endpoint.checkout_own(idle, t0).unwrap();
        assert_eq!(conn.buffered_capacity(), 0, "idle: given back");

        // And it still serves the next request.
        assert_eq!(exchange(&mut conn).await, http::StatusCode::NO_CONTENT);
    }
}
