//! Control path: the admin API (health, readiness, metrics, weights, status).
//!
//! `/healthz`, `/readyz`, `/ready` (answered like Envoy's) and `/metrics` are open
//! (and `/stats/prometheus`, Envoy's name for the metrics); everything else needs
//! `Authorization: Bearer <token>` when a token is configured (the gateway
//! refuses to start with a non-loopback admin address and no token). Every
//! answer is JSON except the metrics text; bad input gets a 4xx with
//! `{"error": "..."}` and changes nothing.
//!
//! A request that changes state (any method but GET and HEAD) from a web
//! page of another site gets 403, token or not: an `Origin` other than the
//! admin's own, or `Sec-Fetch-Site: cross-site`/`same-site`. Without a
//! token, any request to an endpoint the token would guard (reads too)
//! whose Host is neither an IP address nor `localhost` gets 403 (DNS
//! rebinding). See [`auth::cross_site`] and [`auth::rebound`].
//!
//! The dashboard ([`ui`], `GET /ui`): its page and assets are open, its data
//! and every action it takes need the token.

pub mod auth;
pub mod json;
pub mod request;
pub mod rollout;
pub mod ui;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::control::{Control, ControlError};
use crate::reload::Reload;
use request::Rejection;

/// What the admin API works on.
pub struct Admin {
    pub control: Arc<Control>,
    pub token: Option<String>,
    pub metrics: crate::telemetry::MetricsHandle,
    pub reloader: Option<Arc<dyn Reload>>,
    /// The listener's TLS, for `tls` in `/status`.
    pub tls: Option<Arc<crate::tls::ListenerTls>>,
}

type AdminResponse = Response<Full<Bytes>>;

fn json<T: Serialize>(status: StatusCode, value: &T) -> AdminResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> AdminResponse {
    json(status, &serde_json::json!({ "error": message.into() }))
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> AdminResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn rejected(r: Rejection) -> AdminResponse {
    error(r.status, r.message)
}

fn control_error(e: ControlError) -> AdminResponse {
    if let ControlError::Conflict(current) = &e {
        // A lost race: the current decision, for a pipeline that retries.
        let body = serde_json::json!({ "error": e.to_string(), "current": current });
        return json(StatusCode::CONFLICT, &body);
    }
    let status = match &e {
        ControlError::UnknownVersion(_) | ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::RolloutRunning(_) => StatusCode::CONFLICT,
        // The store's state: no retry helps until the operator resets it.
        ControlError::GenerationLimit(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ControlError::Store(_) | ControlError::StoreLoad(_) | ControlError::Conflict(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    error(status, e.short())
}

/// The answer to `PUT /weights` and `POST /promote`: the decision in force
/// (the fields of `GET /weights`) and, when it gives weight to a version
/// that has no endpoints here, a `warning` saying so (the field `POST
/// /rollback` answers with). Applied all the same: an operator may set the
/// weights before the canary's tasks register.
fn change_answer(control: &Control, view: crate::control::status::WeightsView) -> AdminResponse {
    let warning = control.weight_without_endpoints(&view);
    let mut answer = serde_json::to_value(&view).unwrap_or_else(|_| serde_json::json!({}));
    if let (Some(warning), Some(fields)) = (warning, answer.as_object_mut()) {
        fields.insert("warning".into(), warning.into());
    }
    json(StatusCode::OK, &answer)
}

fn method_not_allowed(allow: &'static str) -> AdminResponse {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

impl Admin {
    /// The 401 answer when a token is configured and `headers` do not carry it.
    fn refuse_unauthorized(&self, headers: &http::HeaderMap) -> Option<AdminResponse> {
        let token = self.token.as_ref()?;
        if auth::authorized(headers.get(header::AUTHORIZATION), token) {
            return None;
        }
        let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"canary-gateway\""),
        );
        Some(resp)
    }

    /// Answers one admin request (usable without a socket, for tests).
    pub async fn handle<B>(&self, req: Request<B>) -> AdminResponse
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Envoy's admin paths (App Mesh's virtual gateway on 9901), so that
        // migrated target-group health checks and scrapers keep working.
        let path = match req.uri().path() {
            "/stats/prometheus" => "/metrics".to_string(),
            other => other.to_string(),
        };
        let method = req.method().clone();
        if path == "/ui" || path.starts_with("/ui/") {
            return ui::handle(self, &req);
        }
        let allow = match path.as_str() {
            "/healthz" | "/readyz" | "/ready" | "/metrics" | "/status" => "GET",
            "/weights" => "GET, PUT",
            "/promote" | "/rollback" | "/reload" => "POST",
            p => match rollout::allow(p) {
                Some(allow) => allow,
                None => return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
            },
        };
        let allowed = allow.split(", ").any(|m| m == method.as_str())
            || (method == Method::HEAD && allow.contains("GET"));
        if !allowed {
            return method_not_allowed(allow);
        }
        match path.as_str() {
            "/healthz" => return text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8"),
            "/readyz" => {
                return match self.control.readiness() {
                    Ok(()) => text(StatusCode::OK, "ready\n", "text/plain; charset=utf-8"),
                    Err(why) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                        "text/plain; charset=utf-8",
                    ),
                };
            }
            "/ready" => return self.envoy_ready(),
            "/metrics" => {
                self.control.publish_gauges();
                // Only the versions in the config: a removed one's series
                // go stale (see `MetricsHandle::render`).
                let snapshot = self.control.snapshot_cell().load_full();
                let known = |v: &str| snapshot.version_named(v.as_bytes()).is_some();
                return text(
                    StatusCode::OK,
                    self.metrics.render(known),
                    "text/plain; version=0.0.4; charset=utf-8",
                );
            }
            _ => {}
        }
        let host = req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}"))
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        // A change from another site's page (a CORS simple request needs no
        // preflight): refused, token or not. Without a token, a rebound
        // name is refused for reads too.
        let refused = if matches!(method, Method::GET | Method::HEAD) {
            self.token.is_none().then(|| auth::rebound(host)).flatten()
        } else {
            auth::cross_site(req.headers(), host, self.token.is_some())
        };
        if let Some(why) = refused {
            return error(StatusCode::FORBIDDEN, why);
        }
        if let Some(refused) = self.refuse_unauthorized(req.headers()) {
            return refused;
        }
        let body = match request::read_body(req.into_body()).await {
            Ok(b) => b,
            Err(r) => return rejected(r),
        };
        match (method.clone(), path.as_str()) {
            (Method::GET | Method::HEAD, "/weights") => {
                json(StatusCode::OK, &self.control.weights())
            }
            (Method::GET | Method::HEAD, "/status") => json(
                StatusCode::OK,
                &crate::tls::listener::with_status(self.control.status(), self.tls.as_deref()),
            ),
            (_, p) if rollout::allow(p).is_some() => {
                rollout::handle(&self.control, &method, p, &body).await
            }
            (Method::PUT, "/weights") => match request::weights(&body) {
                Err(r) => rejected(r),
                Ok(w) => match self.control.set_weights(w, "admin").await {
                    Ok(view) => change_answer(&self.control, view),
                    Err(ControlError::RolloutRunning(r)) => {
                        rollout::refused_while_running(&r, "PUT /weights")
                    }
                    Err(e) => control_error(e),
                },
            },
            (Method::POST, "/promote") => match request::promote(&body) {
                Err(r) => rejected(r),
                Ok(v) => match self.control.promote(&v, "admin").await {
                    Ok(view) => change_answer(&self.control, view),
                    Err(ControlError::RolloutRunning(r)) => {
                        rollout::refused_while_running(&r, "POST /promote")
                    }
                    Err(e) => control_error(e),
                },
            },
            (Method::POST, "/rollback") => match request::no_fields(&body) {
                Err(r) => rejected(r),
                Ok(()) => rollout::rollback(&self.control).await,
            },
            (Method::POST, "/reload") => match &self.reloader {
                _ if let Err(r) = request::no_fields(&body) => rejected(r),
                None => error(
                    StatusCode::CONFLICT,
                    "this gateway was not started from a config file",
                ),
                Some(r) => {
                    let status = r.reload("admin").await;
                    let code = if status.ok {
                        StatusCode::OK
                    } else {
                        StatusCode::UNPROCESSABLE_ENTITY
                    };
                    json(code, &status)
                }
            },
            _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        }
    }
}

impl Admin {
    /// `/ready`, answered like Envoy's admin endpoint (what App Mesh virtual
    /// gateway health checks used): 200 `LIVE`, else 503 `DRAINING` or
    /// `PRE_INITIALIZING`. Same readiness as `/readyz`.
    fn envoy_ready(&self) -> AdminResponse {
        let plain = "text/plain; charset=utf-8";
        match self.control.readiness() {
            Ok(()) => text(StatusCode::OK, "LIVE\n", plain),
            Err(_) if self.control.is_draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n", plain)
            }
            Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n", plain),
        }
    }
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let admin = admin.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(req).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(30));
                    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
}

#[cfg(test)]
mod tests;
