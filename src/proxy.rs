//! Data path: listener -> pick a version -> upstream pool -> response.
//!
//! [`Proxy::handle`] loads the current [`Snapshot`] once, picks the version
//! (override header, sticky key or weighted sequence), picks an endpoint
//! (power of two choices), forwards the request over a pooled HTTP/1.1
//! connection and streams the response back. It takes no lock on the request
//! path but the endpoint's idle-connection stack.

pub mod body;
pub mod headers;
pub mod rescue;
pub mod server;
pub mod upstream;

use std::net::SocketAddr;
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
use body::{Completion, ProxyBody, RequestBody};
use headers::Forwarding;
use rescue::ProxyError;
use server::ConnState;
use upstream::{ConnectError, Endpoint, Sender};

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
}

/// Decrements the in-flight gauge when a request's handling ends.
struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Proxy {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, listener_port: u16) -> Proxy {
        Proxy {
            snapshot,
            telemetry: Telemetry::new(),
            port: HeaderValue::from(listener_port),
        }
    }

    /// The timeouts of the current snapshot (for new connections).
    pub fn current_timeouts(&self) -> Timeouts {
        self.snapshot.load().settings.timeouts
    }

    /// Chooses the version for a request: the override header when it names a
    /// version, else the sticky key's position, else the next position of the
    /// weighted sequence. An override naming no version is ignored (the
    /// request is split as usual; the response header shows where it went).
    #[inline]
    pub fn choose(snapshot: &Snapshot, headers: &http::HeaderMap) -> usize {
        let settings = &snapshot.settings;
        if let Some(name) = &settings.override_header
            && let Some(value) = headers.get(name)
            && let Some(i) = snapshot.version_named(value.as_bytes())
        {
            return i;
        }
        let position = match settings.sticky_header.as_ref().and_then(|h| headers.get(h)) {
            Some(key) => split::sticky_position(key.as_bytes()),
            None => split::next_position(),
        };
        snapshot.split.at(position).unwrap_or(snapshot.stable)
    }

    /// Serves one request. Never fails: errors become 502/503/504 responses.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        conn: Arc<ConnState>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        conn.request_started(req.version() == http::Version::HTTP_2);
        self.telemetry.in_flight.increment(1.0);
        let _in_flight = InFlight(&self.telemetry.in_flight);

        let snapshot = self.snapshot.load_full();
        let version = snapshot.versions[Self::choose(&snapshot, req.headers())].clone();
        let settings = snapshot.settings.clone();
        drop(snapshot);

        let upgrading = headers::is_upgrade_request(&req);
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        headers::prepare_request(
            &mut req,
            upgrading,
            &Forwarding {
                peer,
                port: &self.port,
                trust_forwarded_headers: settings.trust_forwarded_headers,
            },
        );
        let method = req.method().clone();

        let mut completion = Completion {
            start,
            version,
            status: http::StatusCode::OK,
            settings,
            conn,
            upstream: None,
            finished: false,
            method,
        };
        let (parts, incoming) = req.into_parts();
        let (body, body_progress) = RequestBody::new(incoming);
        let req = Request::from_parts(parts, body);
        let outcome = forward(
            &completion.version,
            &completion.settings,
            req,
            body_progress,
        )
        .await;
        let (version, settings) = (&completion.version, &completion.settings);
        match outcome {
            Ok((mut resp, endpoint, sender)) => {
                completion.status = resp.status();
                // A response without a body (204, 304, HEAD, length 0) is
                // complete already: hyper never polls its body, so it would
                // never be marked finished and its connection never pooled.
                completion.finished = resp.body().is_end_stream();
                let response_header = settings
                    .response_header
                    .as_ref()
                    .map(|name| (name, &version.header_value));
                headers::prepare_response(&mut resp, response_header);
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client) = client_upgrade {
                        tunnel(client, hyper::upgrade::on(&mut resp));
                    }
                    completion.upstream = Some((endpoint, None));
                } else {
                    completion.upstream = Some((endpoint, Some(sender)));
                }
                resp.map(|inner| ProxyBody::Upstream {
                    inner,
                    completion: Some(completion),
                })
            }
            Err(e) => {
                if !matches!(e, ProxyError::Connect(_)) {
                    // Connect failures are counted per attempt, in `connect_to`.
                    version.metrics.errors[e.kind_index()].increment(1);
                }
                tracing::debug!(version = %version.name, error = %e, "request failed");
                let resp = e.to_response();
                completion.status = resp.status();
                resp.map(|b| b.with_completion(completion))
            }
        }
    }
}

/// Sends the request to an endpoint of `version`: a pooled connection when one
/// is idle, else a new one. A failed connect is retried once on another
/// endpoint of the version, and a request that a dead pooled connection
/// returned unsent is retried once on a fresh connection: in both cases
/// nothing reached the upstream, so the retry is safe for any method.
async fn forward(
    version: &Version,
    settings: &ProxySettings,
    req: Request<RequestBody>,
    body_progress: Option<Arc<body::BodyProgress>>,
) -> Result<(Response<Incoming>, Arc<Endpoint>, Sender), ProxyError> {
    let first = upstream::pick(&version.endpoints, None)
        .ok_or_else(|| ProxyError::NoEndpoints(version.name.clone()))?;
    let (endpoint, mut sender) = match sender_for(version, first, settings).await {
        Ok(sender) => (first.clone(), sender),
        Err(e) => match upstream::pick(&version.endpoints, Some(first)) {
            Some(second) => (second.clone(), sender_for(version, second, settings).await?),
            None => return Err(e.into()),
        },
    };
    endpoint.begin_request();
    // The response timeout starts once the request body has been sent in full.
    let timeout = settings.timeouts.upstream_response;
    let deadline = async move {
        if let Some(progress) = body_progress
            && !progress.ended_or_stalled(timeout).await
        {
            return;
        }
        tokio::time::sleep(timeout).await;
    };
    tokio::pin!(deadline);
    let mut req = req;
    let mut retried = false;
    loop {
        let outcome = tokio::select! {
            outcome = sender.try_send_request(req) => outcome,
            () = &mut deadline => {
                endpoint.end_request();
                return Err(ProxyError::Timeout);
            }
        };
        match outcome {
            Ok(resp) => return Ok((resp, endpoint, sender)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if !retried => {
                    retried = true;
                    req = unsent;
                    sender = match connect_to(version, &endpoint, settings).await {
                        Ok(sender) => sender,
                        Err(e) => {
                            endpoint.end_request();
                            return Err(e.into());
                        }
                    };
                }
                _ => {
                    endpoint.end_request();
                    return Err(ProxyError::Reset(e.into_error()));
                }
            },
        }
    }
}

/// A ready connection to `endpoint`: pooled if possible.
async fn sender_for(
    version: &Version,
    endpoint: &Endpoint,
    settings: &ProxySettings,
) -> Result<Sender, ConnectError> {
    while let Some(mut sender) = endpoint.checkout(settings.upstream.pool_idle_timeout) {
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    connect_to(version, endpoint, settings).await
}

async fn connect_to(
    version: &Version,
    endpoint: &Endpoint,
    settings: &ProxySettings,
) -> Result<Sender, ConnectError> {
    let result = endpoint
        .connect(settings.timeouts.upstream_connect, &settings.upstream)
        .await;
    if result.is_err() {
        version.metrics.errors[0].increment(1);
    }
    result
}

/// Joins the client's and the upstream's upgraded connections (WebSocket).
fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}
