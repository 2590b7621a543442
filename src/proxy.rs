//! Data path: listener -> pick a version -> upstream pool -> response.
//!
//! [`Proxy::handle`] loads the current [`Snapshot`] once, picks the version
//! (override header, sticky key or weighted sequence), picks an endpoint
//! (power of two choices), forwards the request over a pooled HTTP/1.1
//! connection and streams the response back. It takes no lock on the request
//! path but the endpoint's idle-connection stack.
//!
//! HTTP/1.1 requests without a body or with a Content-Length one (most of
//! them) are read by [`h1`], the gateway's own HTTP/1.1 server, and served
//! by [`Proxy::serve_simple`]; any other request hands its connection to
//! hyper's server and [`Proxy::handle`]. They go upstream through
//! [`upstream_client`], the gateway's own HTTP/1.1 client, driven in the
//! request's task, as do bodiless requests from hyper's server; other
//! requests with a body (chunked, HTTP/2) or an upgrade go through hyper's
//! client. [`error_response`] turns what fails into the client's answer.

/// `impl AsyncRead` for a wrapper `$t<T>` of a socket that changes only
/// how it is written: its reads go straight to its `inner`.
macro_rules! reads_through {
    ($t:ident) => {
        impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for $t<T> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
            }
        }
    };
}

pub mod body;
pub mod clock;
pub mod error_response;
pub mod h1;
pub mod headers;
pub mod log_limit;
pub mod random;
pub mod relay;
pub mod server;
pub mod upstream;
pub mod upstream_client;

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use metrics::Gauge;

use crate::config::Timeouts;
use crate::metrics as names;
use crate::snapshot::{ProxySettings, Snapshot, Version, split};
use body::{Completion, Logged, ProxyBody, RequestBody, UpstreamField};
use error_response::{ClientError, ProxyError};
use h1::request::SimpleRequest;
use h1::response::{ClientFraming, SendError};
use headers::Forwarding;
use server::ConnState;
use tokio::io::AsyncWrite;
use upstream::{ConnectError, Endpoint, Outstanding, Pooled, Sender};
use upstream_client::HeadRead;
use upstream_client::body::ResponseBody;
use upstream_client::upload::{Upload, UploadError};

/// Gauges the data path keeps up to date.
pub struct Telemetry {
    pub in_flight: Gauge,
    pub open_connections: Gauge,
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry {
            in_flight: metrics::gauge!(names::IN_FLIGHT_REQUESTS),
            open_connections: metrics::gauge!(names::OPEN_CONNECTIONS),
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// The proxy service shared by every connection of one listener.
pub struct Proxy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    pub telemetry: Telemetry,
    /// The listener's port, for X-Forwarded-Port.
    port: HeaderValue,
    /// TLS termination, when the listener has `[listener.tls]`.
    pub tls: Option<Arc<crate::tls::ListenerTls>>,
}

/// Decrements the in-flight gauge when a request's handling ends.
struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The version chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The version's index in the snapshot's versions.
    pub index: usize,
    /// The override header named the version: the request is served and
    /// counted in the version's metrics, but it is no evidence for the
    /// rollout analysis, which judges a version on the traffic the split
    /// sent it (see [`Completion::forced`]). A sticky key's choice follows
    /// the weights: not forced.
    pub forced: bool,
}

/// The hash of a request's sticky key, given the values of its
/// fields named `name` (the sticky header); `None`: no key. The key is the
/// first field's value, but for `cookie` it is every field's value joined
/// with `"; "`, as [`headers::join_cookies`] joins them for the upstream: an
/// HTTP/2 client may split its cookies into several fields (RFC 9113,
/// 8.2.3) where an HTTP/1.1 client sends one line, and a user's requests
/// must land on one version over both (several Cookie lines over HTTP/1.1,
/// which RFC 6265 5.4 forbids, are joined the same way). An empty (or
/// blank) key is no key: hashed, every such request would land on one
/// version, all flipping together.
#[inline]
fn sticky_hash<'h>(
    name: &http::HeaderName,
    mut values: impl Iterator<Item = &'h [u8]>,
) -> Option<u64> {
    let first = values.next()?;
    if name == http::header::COOKIE
        && let Some(second) = values.next()
    {
        // The joined text holds "; ": never blank.
        let all = [first, second].into_iter().chain(values);
        return Some(split::sticky_hash_joined(all, b"; "));
    }
    (!first.trim_ascii().is_empty()).then(|| split::sticky_hash(first))
}

impl Proxy {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, listener_port: u16) -> Proxy {
        Proxy {
            snapshot,
            telemetry: Telemetry::new(),
            port: HeaderValue::from(listener_port),
            tls: None,
        }
    }

    /// The proxy terminating TLS with `tls`.
    pub fn with_tls(mut self, tls: Option<Arc<crate::tls::ListenerTls>>) -> Proxy {
        self.tls = tls;
        self
    }

    /// The timeouts of the current snapshot (for new connections).
    pub fn current_timeouts(&self) -> Timeouts {
        self.snapshot.load().settings.timeouts
    }

    /// Chooses the version for a request: the override header when it names a
    /// version (the request is then [`Choice::forced`]), else the sticky
    /// key's rendezvous choice (a key that is empty or blank counts as none), else the
    /// next position of the weighted sequence. An override naming no version
    /// is ignored (the request is split as usual; the response header shows
    /// where it went).
    #[inline]
    pub fn choose(snapshot: &Snapshot, headers: &http::HeaderMap) -> Choice {
        Self::choose_by(snapshot, |name| {
            headers.get_all(name).iter().map(HeaderValue::as_bytes)
        })
    }

    /// [`Proxy::choose`] with the values of the request's fields named
    /// `name` given by `fields(name)`, in their order (only the first is
    /// read but for a `cookie` sticky header: see `sticky_hash`).
    #[inline]
    pub fn choose_by<'s, 'h, I: Iterator<Item = &'h [u8]>>(
        snapshot: &'s Snapshot,
        fields: impl Fn(&'s http::HeaderName) -> I,
    ) -> Choice {
        let settings = &snapshot.settings;
        if let Some(name) = &settings.override_header
            && let Some(value) = fields(name).next()
            && let Some(index) = snapshot.version_named(value)
        {
            return Choice {
                index,
                forced: true,
            };
        }
        let key = settings
            .sticky_header
            .as_ref()
            .and_then(|name| sticky_hash(name, fields(name)));
        let chosen = match key {
            Some(hash) => snapshot.split.sticky(hash),
            None => snapshot.split.at(split::next_position()),
        };
        Choice {
            index: chosen.unwrap_or(snapshot.stable),
            forced: false,
        }
    }

    /// A request's [`Completion`], its version chosen by `choose` on the
    /// current snapshot; `path` (without the query) for the access log.
    fn start_request(
        &self,
        start: Instant,
        conn: Arc<ConnState>,
        method: http::Method,
        path: &[u8],
        choose: impl FnOnce(&Snapshot) -> Choice,
    ) -> Completion {
        let snapshot = self.snapshot.load();
        let logged = snapshot.settings.access_log.then(|| {
            Box::new(Logged {
                path: String::from_utf8_lossy(path).into_owned(),
                request_id: None,
                upstream: None,
            })
        });
        let choice = choose(&snapshot);
        Completion {
            start,
            version: snapshot.versions[choice.index].clone(),
            forced: choice.forced,
            status: http::StatusCode::OK,
            settings: snapshot.settings.clone(),
            conn,
            upstream: None,
            finished: false,
            method,
            watch: None,
            body_broken: false,
            upload: None,
            answered: None,
            client_failed: false,
            logged,
        }
    }

    /// Serves one request of the own HTTP/1.1 server ([`h1`]): forwards it
    /// with the own client and writes the response to `client`; the
    /// connection closes after it when the request asked, or when `drain`
    /// began by the time the response head is written and no next request
    /// has arrived (a drain that began while the upstream thought still says
    /// `Connection: close`, so the client sends no next request into a
    /// closing socket; one it sent already is served, and says it). `body`: the part of the request's
    /// body read with its head (the rest is read from `client`), and where
    /// bytes read past its end go. Gives back whether the connection closes
    /// (also when the body was not read whole). An error means the response
    /// did not go out whole and the client connection is unusable.
    pub async fn serve_simple<C: h1::ClientIo>(
        &self,
        req: &SimpleRequest<'_>,
        body: h1::BodyAtHand<'_>,
        conn: &Arc<ConnState>,
        client: &mut C,
        out: &mut Vec<u8>,
        drain: &server::Drain,
    ) -> Result<bool, SendError> {
        let start = Instant::now();
        conn.request_started(false);
        self.telemetry.in_flight.increment(1.0);
        let _in_flight = InFlight(&self.telemetry.in_flight);
        // Origin form: the path is the target up to its query.
        let path = req
            .target
            .split(|&b| b == b'?')
            .next()
            .unwrap_or(req.target);
        let mut completion =
            self.start_request(start, conn.clone(), req.method.clone(), path, |s| {
                Self::choose_by(s, |name| req.headers(name))
            });
        let (version, settings) = (&completion.version, &completion.settings);
        let fwd = Forwarding {
            peer_ip: &conn.peer_ip,
            proto: conn.proto,
            port: &self.port,
            trust_forwarded_headers: settings.trust_forwarded_headers,
            drop_underscored: req.underscored && !settings.allow_underscores_in_headers,
            drop_expect: req.expect_continue,
            chunked: req.chunked,
        };
        let encode = |head: &mut Vec<u8>, _: Option<SocketAddr>| {
            let method = req.method.as_str().as_bytes();
            let fields = || req.field_bytes();
            upstream_client::head::encode_fields(head, method, req.target, None, fields, &fwd);
        };
        // The own server's requests always carry one Host.
        let sent = SentTo {
            noted: &mut completion.logged,
            endpoint_host: false,
        };
        let response_header = version_field(settings, version);
        let h1::BodyAtHand {
            buffered,
            read_past,
            next_at_hand,
        } = body;
        let mut side = if req.streamed {
            ClientSide::Upload(Upload::chunked(buffered, &mut *client, req.expect_continue))
        } else if req.body > 0 {
            let rest = req.body - buffered.len() as u64;
            ClientSide::Upload(Upload::new(
                buffered,
                &mut *client,
                rest,
                req.expect_continue,
            ))
        } else {
            ClientSide::Bodiless(client.tcp())
        };
        let method = &req.method;
        let forwarded = forward_own(
            version,
            settings,
            method,
            encode,
            sent,
            start,
            &mut side,
            HeadRead::InPlace,
        )
        .await;
        // An upstream's answer is logged with its endpoint and id, noted
        // as its head went up (`encode`).
        if let Err(failed) = &forwarded {
            failed.note(&mut completion.logged);
        }
        if let Err(failed) = &forwarded
            && matches!(failed.error, ProxyError::Client(ClientError::Gone))
        {
            // The client went away while the upstream thought: never
            // answered (counted as abandoned when `completion` drops), the
            // upstream connection already closed; the connection ends.
            return Err(SendError::Client(
                std::io::ErrorKind::ConnectionAborted.into(),
            ));
        }
        conn.upstream_answered();
        completion.answered = Some(Instant::now());
        // A body not read to its end leaves the connection unusable; what
        // was read past its end is the next request's.
        let close = side.end(read_past)
            || req.close
            || (drain.is_draining()
                && !next_at_hand
                && read_past.is_empty()
                && !client.unread_arrived());
        let (raw, upstream, outstanding) = match forwarded {
            Ok(forwarded) => forwarded,
            Err(failed) => {
                send_error(failed, &mut completion, client, out, close).await?;
                return Ok(close);
            }
        };
        completion.status = raw.status;
        let (framing, keep_alive) = (raw.framing, raw.keep_alive);
        let to_client = ClientFraming::of(framing);
        if raw.facts.connection_names_headers {
            // Rare: the general rewrite, through a header map.
            let at = outstanding.endpoint().addr();
            match mapped_head(raw, &upstream, at, http::HeaderMap::new()) {
                Ok(head) => {
                    let mut resp = head.response;
                    // The own server never serves a request asking for
                    // trailers (it leaves those to hyper's).
                    headers::prepare_response(&mut resp, response_header, false);
                    let (status, fields) = (resp.status(), resp.headers());
                    let reason = h1::response::reason_of(&resp);
                    h1::response::map_head(out, status, reason, fields, to_client, close);
                }
                Err(e) => {
                    send_error(e, &mut completion, client, out, close).await?;
                    return Ok(close);
                }
            }
        } else {
            let spans = upstream.spans();
            h1::response::upstream_head(out, &raw, spans, response_header, to_client, close);
        }
        completion.upstream = Some((outstanding, None));
        let mut body = ResponseBody::new(upstream, framing, keep_alive);
        let sent = h1::response::send(client, out, &mut body, to_client).await;
        if let Err(e) = sent {
            if matches!(e, h1::response::SendError::Upstream(_)) {
                completion.body_broken();
            }
            return Err(e);
        }
        completion.finished = true;
        if let Some((_, slot)) = completion.upstream.as_mut() {
            *slot = body.take_reusable().map(Pooled::Own);
        }
        Ok(close)
    }

    /// Serves one request. Never fails: errors become 502/503/504 responses.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: Arc<ConnState>,
    ) -> Response<ProxyBody> {
        // The gateway tunnels nothing: CONNECT (and HTTP/2's extended
        // CONNECT) gets a 501 of its own, never goes upstream.
        if req.method() == http::Method::CONNECT {
            conn.closing();
            return reject(ClientError::NotImplemented("CONNECT"), req.version());
        }
        if let Some(reason) = headers::head_problem(&req) {
            conn.closing();
            return reject(ClientError::BadHead(reason), req.version());
        }
        let start = Instant::now();
        let http2 = req.version() == http::Version::HTTP_2;
        conn.request_started(http2);
        self.telemetry.in_flight.increment(1.0);
        let _in_flight = InFlight(&self.telemetry.in_flight);

        let path = req.uri().path().as_bytes();
        let mut completion = self.start_request(start, conn, req.method().clone(), path, |s| {
            Self::choose(s, req.headers())
        });
        if let Some(logged) = completion.logged.as_mut() {
            // The id is made here, not as the head is written: a request
            // whose future is dropped (its client gone) is logged with it.
            logged.request_id = Some(headers::ensure_request_id(req.headers_mut()));
        }
        let upgrading = headers::is_upgrade_request(&req);
        let trailers_asked = headers::asks_trailers(req.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        // No body to stream up: the gateway's own client, in this task.
        let own_client = !upgrading && req.body().is_end_stream();
        // An HTTP/2 request body's progress, for its stream's stall watch.
        let mut upload = None;
        let (version, settings) = (&completion.version, &completion.settings);
        let fwd = Forwarding {
            peer_ip: &completion.conn.peer_ip,
            proto: completion.conn.proto,
            port: &self.port,
            trust_forwarded_headers: settings.trust_forwarded_headers,
            drop_underscored: !settings.allow_underscores_in_headers,
            drop_expect: false,
            chunked: false,
        };
        if http2 {
            // RFC 9113, 8.2.3: HTTP/2 clients may split the cookie into
            // several fields; an HTTP/1.1 upstream expects one.
            headers::join_cookies(req.headers_mut());
        }
        // The own client writes the upstream's head straight from the
        // client's request, unless the Connection header names headers to
        // drop: then (and for hyper's client) the request is rewritten first.
        let rewrite = !own_client || headers::connection_names_headers(req.headers());
        // An HTTP/1.0 request may come without Host (and without a target's
        // authority to stand for it): the upstream gets an HTTP/1.1 request,
        // which must carry one (RFC 9112, 3.2): its endpoint's address, as
        // hyper's client path (`forward`) does.
        let host_missing =
            req.uri().authority().is_none() && !req.headers().contains_key(http::header::HOST);
        if rewrite {
            headers::prepare_request(&mut req, upgrading, &fwd);
        }
        let outcome = if own_client {
            let (mut parts, _) = req.into_parts();
            let mut map = http::HeaderMap::new();
            let encode = |out: &mut Vec<u8>, endpoint: Option<SocketAddr>| {
                if let Some(endpoint) = endpoint
                    && host_missing
                {
                    headers::insert_endpoint_host(&mut parts.headers, endpoint);
                }
                if rewrite {
                    upstream_client::head::encode(out, &parts);
                } else {
                    upstream_client::head::encode_forwarded(out, &parts, &fwd);
                }
                // Nothing may keep pointing into the client connection's read
                // buffer while the upstream answers, or hyper cannot reuse
                // that buffer for the next request and allocates a new one:
                // the request's header values and URI go now, and the header
                // map's allocation carries the response's.
                map = std::mem::take(&mut parts.headers);
                map.clear();
                parts.uri = http::Uri::default();
            };
            // hyper's server reads the client: not watched here (hyper
            // drops this future when its client goes).
            let mut client = ClientSide::Bodiless(None);
            // The id was noted above.
            let sent = SentTo {
                noted: &mut completion.logged,
                endpoint_host: host_missing,
            };
            let forwarded = forward_own(
                version,
                settings,
                &completion.method,
                encode,
                sent,
                start,
                &mut client,
                HeadRead::Sized,
            );
            match forwarded.await {
                Ok((raw, conn, outstanding)) => {
                    let at = outstanding.endpoint().addr();
                    mapped_head(raw, &conn, at, map).map(|head| {
                        let (parts, ()) = head.response.into_parts();
                        let body = ResponseBody::new(conn, head.framing, head.keep_alive);
                        (
                            Response::from_parts(parts, Upstream::Own(body)),
                            outstanding,
                        )
                    })
                }
                Err(e) => Err(e),
            }
        } else {
            let (mut parts, incoming) = req.into_parts();
            if !upgrading {
                // hyper's client drops a body of unknown length on GET, HEAD
                // and CONNECT unless the request says it is chunked.
                headers::frame_request_body(&mut parts.headers, incoming.is_end_stream());
            }
            let h1_conn = (!http2).then_some(&completion.conn);
            let (body, body_progress) = RequestBody::new(incoming, h1_conn);
            if http2 {
                upload.clone_from(&body_progress);
            }
            completion.upload.clone_from(&body_progress);
            let req = Request::from_parts(parts, body);
            // Boxed: this path's state (hyper's handshake and send
            // futures) would otherwise make every request's future
            // larger, and hyper moves that future into place per request.
            let noted = &mut completion.logged;
            let client = completion.conn.client_fd();
            Box::pin(forward(
                version,
                settings,
                req,
                body_progress,
                noted,
                client,
            ))
            .await
            .and_then(|(resp, outstanding, sender, request_id)| {
                let e = if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS && !upgrading {
                    Some("101 to a request that asked no upgrade")
                } else if !resp.body().is_end_stream() && headers::transfer_coded(resp.headers()) {
                    Some(upstream_client::OTHER_CODING)
                } else {
                    None
                };
                if let Some(e) = e {
                    return Err(Failed {
                        error: ProxyError::Reset(e.into()),
                        request_id,
                        upstream: Some(outstanding.endpoint().addr()),
                    });
                }
                Ok((resp.map(|b| Upstream::Hyper(b, sender)), outstanding))
            })
        };
        completion.conn.upstream_answered();
        completion.answered = Some(Instant::now());
        match outcome {
            Ok((mut resp, outstanding)) => {
                completion.status = resp.status();
                // Length and chunked at once (RFC 9112 6.3): the connection
                // is never reused; equal repeated lengths go out as one.
                let reusable = !matches!(resp.body(), Upstream::Hyper(..))
                    || headers::fix_response_length(resp.headers_mut());
                // The gateway answers in its own protocol version, never the
                // upstream's (an HTTP/1.0 upstream's response would make
                // hyper's server end the body by closing the connection).
                *resp.version_mut() = http::Version::HTTP_11;
                let response_header = version_field(settings, version);
                headers::prepare_response(&mut resp, response_header, trailers_asked);
                let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                if upgraded
                    && matches!(resp.body(), Upstream::Hyper(..))
                    && let Some(client) = client_upgrade
                {
                    tunnel(
                        client,
                        hyper::upgrade::on(&mut resp),
                        completion.conn.clone(),
                    );
                }
                let (parts, body) = resp.into_parts();
                // An HTTP/2 stream's response body is timed for stalls on
                // its own (an HTTP/1 connection's by its watchdog).
                if http2 && !body.is_end_stream() {
                    completion.watch = server::StreamWatch::arm_current(upload);
                }
                let body = match body {
                    Upstream::Own(mut inner) => {
                        // A response without a body is complete already:
                        // hyper never polls its body, so its connection goes
                        // back to the pool now.
                        completion.finished = inner.is_end_stream();
                        let pooled = inner.take_reusable().map(Pooled::Own);
                        completion.upstream = Some((outstanding, pooled));
                        ProxyBody::Own {
                            inner,
                            completion: Some(completion),
                        }
                    }
                    Upstream::Hyper(inner, sender) => {
                        // Same for hyper: 204, 304, HEAD, length 0.
                        completion.finished = inner.is_end_stream();
                        if upgraded || !reusable {
                            completion.upstream = Some((outstanding, None));
                        } else {
                            completion.upstream = Some((outstanding, Some(Pooled::Hyper(sender))));
                        }
                        ProxyBody::Upstream {
                            inner,
                            completion: Some(completion),
                        }
                    }
                };
                Response::from_parts(parts, body)
            }
            Err(failed) if matches!(failed.error, ProxyError::Client(ClientError::Gone)) => {
                // The client went away while a connection was made (only
                // hyper's HTTP/1 server sees it: see `forward`): never
                // answered, as on the own server (499 and `aborted` when
                // `completion` drops, which the body does once hyper's
                // write fails); the socket is shut first, so that a client
                // that only half-closed reads no answer either.
                failed.note(&mut completion.logged);
                completion.answered = None;
                completion.conn.closing();
                completion.conn.shut_client();
                let mut resp = failed.error.to_response(failed.request_id.as_ref(), None);
                let close = HeaderValue::from_static("close");
                resp.headers_mut().insert(http::header::CONNECTION, close);
                resp.map(|b| b.with_completion(completion))
            }
            Err(failed)
                if http2 && matches!(failed.error, ProxyError::Client(ClientError::Aborted)) =>
            {
                // An HTTP/2 client gone mid-body (its stream reset, its
                // connection closed): there is no stream left to answer on.
                // Abandoned as when it goes while the upstream thinks (499
                // and `aborted` when `completion` drops, which hyper does
                // with this answer it cannot send; no status class), not a
                // 400 never delivered; the connection serves on.
                failed.note(&mut completion.logged);
                completion.answered = None;
                let resp = failed.error.to_response(failed.request_id.as_ref(), None);
                resp.map(|b| b.with_completion(completion))
            }
            Err(failed) => {
                failed.note(&mut completion.logged);
                record_error(version, &failed);
                let response_header = version_field(settings, version);
                let resp = failed
                    .error
                    .to_response(failed.request_id.as_ref(), response_header);
                completion.status = resp.status();
                completion.client_failed = matches!(failed.error, ProxyError::Client(_));
                resp.map(|b| b.with_completion(completion))
            }
        }
    }
}

/// The answer to a request rejected before it was routed: counted as the
/// client's error, never a version's, and in no access log line (no
/// version served it); an HTTP/1 connection closes after it (an HTTP/2
/// one serves on: the stream ends with the answer).
fn reject(e: ClientError, version: http::Version) -> Response<ProxyBody> {
    e.count();
    let mut resp = ProxyError::Client(e).to_response(None, None);
    if version < http::Version::HTTP_2 {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Where the own client's request went, kept as its head goes up and
/// again when a retry moves it to another endpoint ([`reopen`]).
struct SentTo<'a> {
    /// The access log's note ([`Logged::sent`]): a request dropped while
    /// the upstream thinks (its client gone, cut at shutdown) is logged
    /// with the endpoint its head went to last.
    noted: &'a mut Option<Box<Logged>>,
    /// The head's Host is the endpoint's address, written by the gateway
    /// (an HTTP/1.0 request without Host): rewritten for another endpoint.
    endpoint_host: bool,
}

impl SentTo<'_> {
    /// The request's head, `head`, went (or moved) to `endpoint`.
    fn went(&mut self, head: &mut Vec<u8>, endpoint: SocketAddr, moved: bool) {
        if moved && self.endpoint_host {
            upstream_client::head::replace_host(head, endpoint.to_string().as_bytes());
        }
        Logged::sent(self.noted, endpoint, || id_in_head(head));
    }
}

/// The client's side of a request the own client forwards.
enum ClientSide<'a> {
    /// A body, read from the client's connection and sent up.
    Upload(Upload<'a>),
    /// No body: the client's socket (`None`: not watched), watched for the
    /// client going away while the upstream thinks
    /// ([`h1::client_gone`]).
    Bodiless(Option<&'a tokio::net::TcpStream>),
}

impl ClientSide<'_> {
    /// Whether part of the body is still in the client's socket (see
    /// [`Upload::end`]); bytes read past its end go to `next`.
    fn end(self, next: &mut Vec<u8>) -> bool {
        match self {
            ClientSide::Upload(upload) => upload.end(next),
            ClientSide::Bodiless(_) => false,
        }
    }
}

/// A request that could not be forwarded: the error, the request's id as
/// the upstream got it (or would have), for the log and the client, and
/// the endpoint that failed, for the log: with several tasks behind a
/// version, the one that hangs or resets must be found.
struct Failed {
    error: ProxyError,
    request_id: Option<HeaderValue>,
    /// The endpoint of the attempt that failed (the last one when the
    /// request was retried); `None`: none was tried (no endpoints).
    upstream: Option<SocketAddr>,
}

impl Failed {
    /// `error`, for the request whose upstream head is `head`, sent to
    /// `at`; a connect error names the endpoint it failed on itself.
    fn in_head(error: ProxyError, head: &[u8], at: Option<SocketAddr>) -> Failed {
        let request_id = id_in_head(head);
        Failed::at(error, request_id, at)
    }

    /// `error` for the request with id `request_id`, sent to `at` (see
    /// [`Failed::in_head`]).
    fn at(error: ProxyError, request_id: Option<HeaderValue>, at: Option<SocketAddr>) -> Failed {
        let upstream = match &error {
            ProxyError::Connect(e) => Some(e.addr()),
            _ => at,
        };
        Failed {
            error,
            request_id,
            upstream,
        }
    }

    /// Notes the endpoint that failed, and the id when it was not noted
    /// yet (a connect that failed), for the access log line.
    fn note(&self, slot: &mut Option<Box<Logged>>) {
        if let Some(logged) = slot {
            logged.upstream = self.upstream;
            if logged.request_id.is_none() {
                logged.request_id.clone_from(&self.request_id);
            }
        }
    }
}

/// The `response_header` field naming `version`, when one is configured:
/// on its answers and on the gateway's own for it.
fn version_field<'a>(
    settings: &'a ProxySettings,
    version: &'a Version,
) -> Option<(&'a http::HeaderName, &'a HeaderValue)> {
    settings
        .response_header
        .as_ref()
        .map(|name| (name, &version.header_value))
}

/// The `x-request-id` of an upstream request head.
fn id_in_head(head: &[u8]) -> Option<HeaderValue> {
    upstream_client::head::request_id(head).and_then(|id| HeaderValue::from_bytes(id).ok())
}

/// The own client's response head with its fields in `map` (see
/// [`upstream_client::RawHead::into_head`]). A head whose fields do not make a map
/// fails the request (at endpoint `at`).
fn mapped_head(
    raw: upstream_client::RawHead,
    conn: &upstream_client::Conn,
    at: SocketAddr,
    map: http::HeaderMap,
) -> Result<upstream_client::Head, Failed> {
    raw.into_head(conn.spans(), map).map_err(|e| {
        let error = ProxyError::Reset(e.into());
        Failed::in_head(error, conn.request_head_sent(), Some(at))
    })
}

/// Answers a request of the own server that failed upstream with the
/// gateway's error response (502/503/504), naming its version as a
/// response would (`[split] response_header`).
async fn send_error<W: AsyncWrite + Unpin>(
    failed: Failed,
    completion: &mut Completion,
    client: &mut W,
    out: &mut Vec<u8>,
    close: bool,
) -> Result<(), SendError> {
    record_error(&completion.version, &failed);
    let response_header = version_field(&completion.settings, &completion.version);
    let id = failed.request_id.as_ref();
    let text = h1::response::error_head(out, &failed.error, id, response_header, close);
    completion.status = failed.error.status();
    completion.client_failed = matches!(failed.error, ProxyError::Client(_));
    h1::response::send_full(client, out, text).await?;
    completion.finished = true;
    Ok(())
}

/// Counts a failed request: an upstream's failure in its version's
/// metrics, a client's in `canary_client_errors_total` only. The detail
/// (the error, the endpoint that failed) goes to the log, under the
/// request id the client got.
fn record_error(version: &Version, failed: &Failed) {
    let e = &failed.error;
    let request_id = &*body::logged_id(failed.request_id.as_ref());
    let upstream = UpstreamField(failed.upstream);
    if let ProxyError::Client(c) = e {
        c.count();
        tracing::debug!(version = %version.name, request_id, %upstream, error = %e, "client error");
        return;
    }
    // Connect failures are counted per attempt, in `open`.
    if let (false, Some(kind)) = (matches!(e, ProxyError::Connect(_)), e.kind_index()) {
        version.metrics.errors[kind].increment(1);
    }
    // An outage fails every request: one warn line a second per version
    // at most (it says how many it stands for), each request's detail at
    // debug.
    match version.metrics.failure_log.allow(clock::now_ms(), 1000) {
        Some(held_back) => tracing::warn!(
            version = %version.name,
            request_id,
            %upstream,
            error = %e,
            held_back,
            "request failed (at most one such line a second per version; held_back: its failures logged at debug since the last)"
        ),
        None => {
            tracing::debug!(version = %version.name, request_id, %upstream, error = %e, "request failed");
        }
    }
}

/// The upstream response's body, before it becomes a [`ProxyBody`].
enum Upstream {
    Own(ResponseBody),
    Hyper(Incoming, Sender),
}

impl Upstream {
    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Own(body) => body.is_end_stream(),
            Upstream::Hyper(body, _) => body.is_end_stream(),
        }
    }
}

/// Sends a request with the gateway's own client (its body, if any, from
/// `upload`: see [`exchange_upload`]): a pooled connection when one is
/// idle, else a new one (a failed connect is retried once on another
/// endpoint of the version). A pooled connection that the upstream closed
/// as the request went out (nothing came back) is replaced by a fresh one
/// once, when the request is safe to repeat (to another endpoint if its
/// own refuses it: see [`open_again`]). A response head makes the endpoint
/// healthy; a gateway failure ([`upstream::Failure`]) counts toward its
/// ejection. `how`: see [`HeadRead`]. `encode` writes the request head for
/// the endpoint connected to, just before it goes up (noted in `sent`); with
/// `None` no connect succeeded, and the head is only read for the id the
/// upstream would have got. A failure names the endpoint last tried.
#[expect(clippy::too_many_arguments, reason = "one call per server")]
async fn forward_own(
    version: &Version,
    settings: &ProxySettings,
    method: &http::Method,
    encode: impl FnOnce(&mut Vec<u8>, Option<SocketAddr>),
    mut sent: SentTo<'_>,
    start: Instant,
    client: &mut ClientSide<'_>,
    how: HeadRead,
) -> Result<(upstream_client::RawHead, upstream_client::Conn, Outstanding), Failed> {
    let connect = pick_and_connect(version, |e| own_conn_for(version, e, settings, start));
    let connected = match client {
        // A client that goes away while a new connection is made (up to
        // `upstream_connect`, twice) is gone, as while the upstream thinks:
        // a 499, not the version's 502, and nothing goes up.
        ClientSide::Bodiless(socket) => {
            unless_client_gone(connect, h1::client_gone::client_gone(*socket)).await
        }
        // An upload's client too (its body waits in the socket: watched
        // for the end of its stream past those bytes).
        ClientSide::Upload(body) => {
            let socket = body.client_socket().map(AsFd::as_fd);
            unless_client_gone(connect, h1::client_gone::client_closed(socket)).await
        }
    };
    let (endpoint, (mut conn, mut pooled)) = match connected {
        Ok(connected) => connected,
        Err(error) => {
            // Error path: the head the upstream would have got, for its id.
            let mut head = Vec::new();
            encode(&mut head, None);
            return Err(Failed::in_head(error, &head, None));
        }
    };
    // Counted until dropped, whichever way the request ends (also when its
    // future is dropped: a client gone, an h2 stream reset).
    let mut outstanding = Outstanding::new(endpoint);
    let addr = outstanding.endpoint().addr();
    encode(conn.request_head(), Some(addr));
    sent.went(conn.request_head(), addr, false);
    let outcome = match client {
        ClientSide::Upload(body) => {
            let (out, sent) = (&mut outstanding, &mut sent);
            exchange_upload(
                &mut conn, pooled, body, version, out, settings, method, sent,
            )
            .await
        }
        ClientSide::Bodiless(socket) => {
            let socket = *socket;
            // Timed from the head's write (configuration.md): a pooled
            // connection's is as good as the request's start (no clock
            // read), a new one's comes after its connect and handshake.
            let from = match pooled {
                true => tokio::time::Instant::from_std(start),
                false => tokio::time::Instant::now(),
            };
            let deadline = from + settings.timeouts.upstream_response;
            let mut timer = conn.timer(deadline);
            let attempt = async {
                loop {
                    match conn.exchange(method, how).await {
                        Ok(head) => return Ok(head),
                        Err(e)
                            if pooled
                                && e.nothing_received()
                                && (e.unsent() || upstream_client::retry_safe(method)) =>
                        {
                            pooled = false;
                            let out = &mut outstanding;
                            reopen(&mut conn, &e, version, out, settings, &mut sent).await?;
                        }
                        Err(e) => {
                            let endpoint = outstanding.endpoint();
                            return Err(exchange_failed(e, pooled, endpoint, settings));
                        }
                    }
                }
            };
            let outcome = tokio::select! {
                biased;
                outcome = attempt => outcome,
                () = &mut timer => Err(ProxyError::Timeout),
                () = h1::client_gone::client_gone(socket) => Err(ProxyError::Client(ClientError::Gone)),
            };
            conn.keep_timer(timer);
            outcome
        }
    };
    // A response head (any status) is the endpoint's health; no head in
    // time its gateway failure (see `upstream::Failure`).
    match outcome {
        Ok(head) => {
            outstanding.endpoint().answered();
            Ok((head, conn, outstanding))
        }
        Err(error) => {
            let endpoint = outstanding.endpoint();
            if let ProxyError::Timeout = error {
                endpoint.failed(&settings.upstream, upstream::Failure::Timeout);
            }
            let at = Some(endpoint.addr());
            Err(Failed::in_head(error, conn.request_head_sent(), at))
        }
    }
}

/// Sends a request with a body (see [`Upload`]) and reads the response
/// head, which is timed from the body's end. A pooled connection that
/// failed is replaced once, like a bodiless request's, but only while the
/// whole body can be sent again.
#[expect(clippy::too_many_arguments, reason = "forward_own's parts, one call")]
async fn exchange_upload(
    conn: &mut upstream_client::Conn,
    mut pooled: bool,
    body: &mut Upload<'_>,
    version: &Version,
    outstanding: &mut Outstanding,
    settings: &ProxySettings,
    method: &http::Method,
    sent: &mut SentTo<'_>,
) -> Result<upstream_client::RawHead, ProxyError> {
    let timeouts = &settings.timeouts;
    loop {
        let error = match conn.send_upload(body, timeouts).await {
            // The body went up whole: the client is watched while the
            // upstream thinks, as a bodiless request's.
            Ok(()) => {
                let head = tokio::select! {
                    biased;
                    head = response_head_in_time(conn, method, timeouts) => head,
                    () = h1::client_gone::client_gone(body.client_socket()) => {
                        return Err(ProxyError::Client(ClientError::Gone));
                    }
                };
                match head {
                    None => return Err(ProxyError::Timeout),
                    Some(Ok(head)) => return Ok(head),
                    Some(Err(e)) if e.nothing_received() && upstream_client::retry_safe(method) => {
                        e
                    }
                    Some(Err(e)) => {
                        return Err(exchange_failed(e, pooled, outstanding.endpoint(), settings));
                    }
                }
            }
            Err(UploadError::Upstream(e)) => {
                // An upstream may answer before it has read the whole body
                // (a 413, a 401) and close: that answer is the request's.
                if let Some(head) = early_answer(conn, method, timeouts).await {
                    return Ok(head);
                }
                e
            }
            // The upstream answered while the body was still going up (the
            // client's connection closes after the answer: the rest of the
            // body is never read).
            Err(e @ UploadError::Answered) => {
                return early_answer(conn, method, timeouts)
                    .await
                    .ok_or_else(|| ProxyError::Reset(e.into()));
            }
            Err(UploadError::Client(e)) => return Err(ProxyError::Client(e)),
            Err(UploadError::UpstreamStalled) => return Err(ProxyError::Timeout),
        };
        if !(pooled && body.replayable()) {
            let endpoint = outstanding.endpoint();
            return Err(exchange_failed(error, pooled, endpoint, settings));
        }
        pooled = false;
        reopen(conn, &error, version, outstanding, settings, sent).await?;
    }
}

/// The response head an upstream sent before it stopped taking the request
/// body, if one came whole; the connection is not reused after it (the
/// upstream never got the whole request).
async fn early_answer(
    conn: &mut upstream_client::Conn,
    method: &http::Method,
    timeouts: &Timeouts,
) -> Option<upstream_client::RawHead> {
    let mut head = response_head_in_time(conn, method, timeouts).await?.ok()?;
    head.keep_alive = false;
    Some(head)
}

/// Reads a response head within `upstream_response` from now (after a
/// request body went up, or stopped going up); `None`: none came in time.
async fn response_head_in_time(
    conn: &mut upstream_client::Conn,
    method: &http::Method,
    timeouts: &Timeouts,
) -> Option<Result<upstream_client::RawHead, upstream_client::ExchangeError>> {
    let mut timer = conn.timer(tokio::time::Instant::now() + timeouts.upstream_response);
    let read = tokio::select! {
        biased;
        read = conn.response_head(method, HeadRead::InPlace) => Some(read),
        () = &mut timer => None,
    };
    conn.keep_timer(timer);
    read
}

/// Replaces a pooled connection that failed with `error` before anything
/// came back by a new one (see [`open_again`]), the request head moved
/// over (with the new endpoint's Host, and noted in `sent`, when it went
/// to another endpoint).
async fn reopen(
    conn: &mut upstream_client::Conn,
    error: &upstream_client::ExchangeError,
    version: &Version,
    outstanding: &mut Outstanding,
    settings: &ProxySettings,
    sent: &mut SentTo<'_>,
) -> Result<(), ProxyError> {
    let tried = outstanding.endpoint().addr();
    tracing::debug!(upstream = %tried, error = %error, "pooled connection failed; retrying on a new one");
    let stream = open_again(version, outstanding, settings).await?;
    let mut fresh = upstream_client::Conn::new(stream);
    std::mem::swap(fresh.request_head(), conn.request_head());
    *conn = fresh;
    let addr = outstanding.endpoint().addr();
    if addr != tried {
        sent.went(conn.request_head(), addr, true);
    }
    Ok(())
}

/// A new connection for a request whose pooled connection failed before
/// anything came back (the request is safe to send again): to the same
/// endpoint, or, when that connect fails, to another endpoint of the
/// version that is not ejected, as [`pick_and_connect`] retries a first
/// connect's failure: a task stopping closes its pooled connections and
/// its listener, and its requests go to the others. `outstanding` moves to
/// the endpoint connected to (callers write the Host of an HTTP/1.0
/// request without one, and the access log's endpoint, for it).
async fn open_again(
    version: &Version,
    outstanding: &mut Outstanding,
    settings: &ProxySettings,
) -> Result<crate::tls::Stream, ConnectError> {
    let tried = outstanding.endpoint();
    let error = match Box::pin(open(version, tried, settings)).await {
        Ok(stream) => return Ok(stream),
        Err(e) => e,
    };
    let Some(other) = upstream::pick_other(&version.endpoints, tried) else {
        return Err(error);
    };
    tracing::debug!(upstream = %tried.addr(), error = %error, other = %other.addr(), "retrying on another endpoint");
    let stream = Box::pin(open(version, other, settings)).await?;
    *outstanding = Outstanding::new(other.clone());
    Ok(stream)
}

/// `e`, a failure of the own client's exchange, as the request's error; a
/// new connection (`pooled` false) closed or reset before any byte of a
/// response counts toward the endpoint's ejection. On a pooled connection
/// the same may be the keep-alive race (the upstream closed it while idle,
/// as the request went out): not the endpoint's failure.
fn exchange_failed(
    e: upstream_client::ExchangeError,
    pooled: bool,
    endpoint: &Endpoint,
    settings: &ProxySettings,
) -> ProxyError {
    if !pooled && e.nothing_received() {
        endpoint.failed(&settings.upstream, upstream::Failure::Reset);
    }
    ProxyError::Reset(e.into())
}

/// `connect`'s outcome, unless `gone` (the client went away:
/// [`h1::client_gone::client_gone`], [`h1::client_gone::client_closed`])
/// resolves first: then the client's [`ClientError::Gone`] (the request is
/// abandoned: a 499, counted as `aborted`, neither the version's failure
/// nor the endpoint's). Biased: a connect ready at once (a pooled
/// connection) never polls the watch.
async fn unless_client_gone<T, E: Into<ProxyError>>(
    connect: impl Future<Output = Result<T, E>>,
    gone: impl Future<Output = ()>,
) -> Result<T, ProxyError> {
    tokio::select! {
        biased;
        connected = connect => connected.map_err(Into::into),
        () = gone => Err(ProxyError::Client(ClientError::Gone)),
    }
}

/// An endpoint of `version` (power of two choices) and a connection to it
/// made by `connect`; a failed connect is retried once on another endpoint
/// not ejected (none when every endpoint is: see [`upstream::pick`]):
/// nothing reached an upstream, so this is safe for any request.
async fn pick_and_connect<'a, T, F>(
    version: &'a Version,
    connect: impl Fn(&'a Endpoint) -> F,
) -> Result<(Arc<Endpoint>, T), ProxyError>
where
    F: Future<Output = Result<T, ConnectError>>,
{
    let first = upstream::pick(&version.endpoints)
        .ok_or_else(|| ProxyError::NoEndpoints(version.name.clone()))?;
    match connect(first).await {
        Ok(conn) => Ok((first.clone(), conn)),
        Err(e) => match upstream::pick_other(&version.endpoints, first) {
            Some(second) => Ok((second.clone(), connect(second).await?)),
            None => Err(e.into()),
        },
    }
}

/// A connection of the own client to `endpoint`, pooled if possible, and
/// whether it was pooled.
async fn own_conn_for(
    version: &Version,
    endpoint: &Endpoint,
    settings: &ProxySettings,
    start: Instant,
) -> Result<(upstream_client::Conn, bool), ConnectError> {
    if let Some(conn) = endpoint.checkout_own(settings.upstream.pool_idle_timeout, start) {
        return Ok((conn, true));
    }
    // Boxed, as connecting is the rare case (see `Proxy::handle`).
    let stream = Box::pin(open(version, endpoint, settings)).await?;
    Ok((upstream_client::Conn::new(stream), false))
}

/// Opens a connection to `endpoint` (TCP, then TLS when the version has
/// `tls = true`), counting a failure in the version's metrics.
async fn open(
    version: &Version,
    endpoint: &Endpoint,
    settings: &ProxySettings,
) -> Result<crate::tls::Stream, ConnectError> {
    // `upstream_connect` bounds the whole connect, the TLS handshake
    // included: one deadline, not a timeout for each step.
    let deadline = tokio::time::Instant::now() + settings.timeouts.upstream_connect;
    let result = match endpoint.open(deadline).await {
        Ok(tcp) => match &version.tls {
            None => Ok(tcp.into()),
            Some(tls) => (tls.connect(tcp, endpoint.addr(), deadline).await)
                .map_err(|e| ConnectError::Tls(endpoint.addr(), e)),
        },
        Err(e) => Err(e),
    };
    // A failed handshake counts like a failed connect: an endpoint with a
    // bad certificate is ejected, not picked again and again.
    endpoint.connected(&result, &settings.upstream);
    if result.is_err() {
        version.metrics.errors[0].increment(1);
    }
    result
}

/// Sends the request to an endpoint of `version`: a pooled connection when one
/// is idle, else a new one. A failed connect is retried once on another
/// endpoint of the version, and a request that a dead pooled connection
/// returned unsent is retried once on a fresh connection (to another
/// endpoint if its own refuses it: see [`open_again`]): in both cases
/// nothing reached the upstream, so the retry is safe for any method. The
/// endpoint's health is kept as in [`forward_own`]. The endpoint is noted
/// in `noted` (see [`Logged::sent`]) once connected; a failure names the
/// endpoint last tried. `client`: the client's socket on hyper's HTTP/1
/// server, watched while a connection is made (hyper's server reads
/// nothing of the client's then: see [`ConnState::client_fd`]).
async fn forward(
    version: &Version,
    settings: &ProxySettings,
    req: Request<RequestBody>,
    body_progress: Option<Arc<body::BodyProgress>>,
    noted: &mut Option<Box<Logged>>,
    client: Option<BorrowedFd<'_>>,
) -> Result<(Response<Incoming>, Outstanding, Sender, Option<HeaderValue>), Failed> {
    let request_id = req.headers().get(&headers::X_REQUEST_ID).cloned();
    let failed_at =
        |error: ProxyError, at: Option<SocketAddr>| Failed::at(error, request_id.clone(), at);
    let connect = pick_and_connect(version, |e| sender_for(version, e, settings));
    let closed = h1::client_gone::client_closed(client);
    let (endpoint, (mut sender, pooled)) = unless_client_gone(connect, closed)
        .await
        .map_err(|e| failed_at(e, None))?;
    // Whether a failure there is the endpoint's (see `exchange_failed`).
    let mut fresh = !pooled;
    let mut outstanding = Outstanding::new(endpoint);
    let endpoint = outstanding.endpoint();
    // The id, when logged, is noted already (`Proxy::handle`).
    Logged::sent(noted, endpoint.addr(), || None);
    // The response timeout starts once the request body has been sent in
    // full; a body that stops moving ends the request sooner, as the
    // client's error when the client stopped sending it.
    let timeouts = settings.timeouts;
    let progress = body_progress.clone();
    let deadline = async move {
        if let Some(progress) = body_progress
            && let Some(stalled) = progress.ended_or_stalled(&timeouts).await
        {
            return stalled;
        }
        tokio::time::sleep(timeouts.upstream_response).await;
        ProxyError::Timeout
    };
    tokio::pin!(deadline);
    let mut req = req;
    // An HTTP/1.0 request without Host (see `Proxy::handle`): its
    // endpoint's address, rewritten when a retry moves it.
    let endpoint_host = !req.headers().contains_key(http::header::HOST);
    if endpoint_host {
        headers::insert_endpoint_host(req.headers_mut(), endpoint.addr());
    }
    let mut retried = false;
    loop {
        sender.sending(progress.clone());
        let outcome = tokio::select! {
            outcome = sender.try_send_request(req) => outcome,
            error = &mut deadline => {
                if let ProxyError::Timeout = error {
                    let endpoint = outstanding.endpoint();
                    endpoint.failed(&settings.upstream, upstream::Failure::Timeout);
                }
                return Err(failed_at(error, Some(outstanding.endpoint().addr())));
            }
        };
        match outcome {
            Ok(resp) => {
                outstanding.endpoint().answered();
                return Ok((resp, outstanding, sender, request_id));
            }
            Err(mut e) => {
                // The client's body failed (bad framing, the client gone):
                // the client's error, never the upstream's; the upstream
                // connection that got half of it is dropped with `sender`.
                if let Some(client) = progress.as_ref().and_then(|p| p.client_failure()) {
                    let at = Some(outstanding.endpoint().addr());
                    return Err(failed_at(client.into(), at));
                }
                match e.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        req = unsent;
                        let reopened = open_again(version, &mut outstanding, settings);
                        let closed = h1::client_gone::client_closed(client);
                        let stream = unless_client_gone(reopened, closed)
                            .await
                            .map_err(|e| failed_at(e, None))?;
                        let endpoint = outstanding.endpoint();
                        if endpoint_host {
                            headers::insert_endpoint_host(req.headers_mut(), endpoint.addr());
                        }
                        Logged::sent(noted, endpoint.addr(), || None);
                        sender = endpoint
                            .handshake(stream)
                            .await
                            .map_err(|e| failed_at(e.into(), Some(endpoint.addr())))?;
                        fresh = true;
                    }
                    _ => {
                        let e = e.into_error();
                        if fresh && closed_early(&e) {
                            let endpoint = outstanding.endpoint();
                            endpoint.failed(&settings.upstream, upstream::Failure::Reset);
                        }
                        let at = Some(outstanding.endpoint().addr());
                        return Err(failed_at(ProxyError::Reset(e.into()), at));
                    }
                }
            }
        }
    }
}

/// Whether hyper's client failed because the upstream closed or reset the
/// connection before a response head came whole (not a head it could not
/// parse, nor a misuse).
fn closed_early(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    e.is_incomplete_message() || e.source().is_some_and(|s| s.is::<std::io::Error>())
}

/// A ready connection to `endpoint`: pooled if possible, and whether it
/// was pooled.
async fn sender_for(
    version: &Version,
    endpoint: &Endpoint,
    settings: &ProxySettings,
) -> Result<(Sender, bool), ConnectError> {
    while let Some(mut sender) = endpoint.checkout(settings.upstream.pool_idle_timeout) {
        if sender.ready().await.is_ok() {
            return Ok((sender, true));
        }
    }
    Ok((connect_to(version, endpoint, settings).await?, false))
}

async fn connect_to(
    version: &Version,
    endpoint: &Endpoint,
    settings: &ProxySettings,
) -> Result<Sender, ConnectError> {
    let stream = open(version, endpoint, settings).await?;
    endpoint.handshake(stream).await
}

/// Joins the client's and the upstream's upgraded connections (WebSocket).
/// The tunnel holds the connection's state: it counts as an open
/// connection (for the drain and `canary_open_connections`) until it ends,
/// and it runs through the shutdown's grace period, then is cut.
fn tunnel(client: OnUpgrade, upstream: OnUpgrade, conn: Arc<ConnState>) {
    tokio::spawn(async move {
        tokio::select! {
            () = joined(client, upstream) => {}
            () = conn.drain().cut_off() => {
                tracing::debug!("upgraded connection cut at the end of the shutdown grace period");
            }
        }
    });
}

/// The tunnel itself: bytes both ways until either side ends.
async fn joined(client: OnUpgrade, upstream: OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let ended = match upstream::unwrap_upgraded(upstream) {
                // The upstream's socket itself: in a tunnel a write the
                // upstream refused ends it, as any other error.
                Ok((mut upstream, early)) => {
                    async {
                        tokio::io::AsyncWriteExt::write_all(&mut client, &early).await?;
                        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    }
                    .await
                }
                Err(upstream) => {
                    let mut upstream = TokioIo::new(upstream);
                    tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::HeaderMap;

    use super::*;
    use crate::config::Config;
    use crate::snapshot::SnapshotInput;

    /// A snapshot of stable `v1` and `v2` at weight `canary` (of 100), with
    /// `sticky` as the sticky header and `x-canary-version` as the
    /// override header.
    fn snapshot(sticky: &str, canary: u32) -> Snapshot {
        let text = format!(
            "[listener]\naddress = \"127.0.0.1:9080\"\n[split]\nstable = \"v1\"\nsticky_header = \"{sticky}\"\noverride_header = \"x-canary-version\"\n[[versions]]\nname = \"v1\"\nweight = 100\nendpoints = [\"127.0.0.1:9001\"]\n[[versions]]\nname = \"v2\"\nweight = 0\nendpoints = [\"127.0.0.1:9002\"]\n"
        );
        let config = Config::parse(&text, "test").unwrap();
        let weights: BTreeMap<String, u32> =
            [("v1".into(), 100 - canary), ("v2".into(), canary)].into();
        Snapshot::build(SnapshotInput {
            versions: &config.version_names(),
            stable: "v1",
            weights: &weights,
            endpoints: &BTreeMap::new(),
            generation: 1,
            settings: Arc::new(ProxySettings::from_config(&config)),
            windows: &Default::default(),
        })
        .unwrap()
    }

    fn headers(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_the_override_header_forces_a_version() {
        let snap = snapshot("x-user", 0);
        let choose = |fields| Proxy::choose(&snap, &headers(fields));
        let (v1, v2) = (0, 1);
        let forced = |index| Choice {
            index,
            forced: true,
        };
        let split = |index| Choice {
            index,
            forced: false,
        };
        // Named, even at weight 0: forced (no evidence for the analysis).
        assert_eq!(choose(&[("x-canary-version", "v2")]), forced(v2));
        assert_eq!(choose(&[("x-canary-version", "v1")]), forced(v1));
        // A sticky key follows the weights; an unknown name is ignored.
        assert_eq!(choose(&[("x-user", "alice")]), split(v1));
        assert_eq!(choose(&[("x-canary-version", "v3")]), split(v1));
        assert_eq!(choose(&[]), split(v1));
    }

    #[test]
    fn a_cookie_sticky_key_is_every_cookie_field_joined() {
        let snap = snapshot("cookie", 50);
        let choose = |fields: &[(&'static str, &str)]| Proxy::choose(&snap, &headers(fields));
        let mut on_v2 = 0;
        for i in 0..200 {
            let session = format!("session=s-{i}");
            let line = format!("{session}; theme=dark");
            let one = choose(&[("cookie", &line)]);
            // As an HTTP/2 client splits them.
            let two = choose(&[("cookie", &session), ("cookie", "theme=dark")]);
            assert_eq!(one, two, "{line}");
            on_v2 += one.index;
        }
        assert!((50..=150).contains(&on_v2), "{on_v2} of 200 on v2");
        // Another sticky header's key is its first field.
        let snap = snapshot("x-user", 50);
        for i in 0..50 {
            let user = format!("user-{i}");
            let first = Proxy::choose(&snap, &headers(&[("x-user", &user)]));
            let both = headers(&[("x-user", &user), ("x-user", "other")]);
            assert_eq!(Proxy::choose(&snap, &both), first, "{user}");
        }
    }
}
