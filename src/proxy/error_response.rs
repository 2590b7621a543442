//! Data path: error responses, the one place where proxy errors become the
//! responses the client gets (502 unreachable or reset, 503 no endpoints,
//! 504 timeout; 400/408 for a client's own broken or late request, 501 for
//! a CONNECT).
//!
//! The client gets a short fixed text, the `x-canary-error` kind and the
//! request id; the detail (addresses, the upstream's error) goes to the log
//! only, under the same request id.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use super::headers::X_REQUEST_ID;
use super::upstream::ConnectError;

/// The response header that names why the gateway answered itself.
pub const ERROR_HEADER: &str = "x-canary-error";

/// What went wrong between the gateway and the upstream, or on the client's
/// side of the request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("version `{0}` has no endpoints")]
    NoEndpoints(String),
    #[error("upstream unreachable: {0}")]
    Connect(#[from] ConnectError),
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("upstream connection failed: {0}")]
    Reset(super::body::BoxError),
    /// The client's fault: never counted against the version.
    #[error("client error: {0}")]
    Client(#[from] ClientError),
}

/// A failure of the client's side of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("invalid request head: {0}")]
    BadHead(&'static str),
    /// A method the gateway does not serve: CONNECT (it tunnels nothing),
    /// answered 501 (RFC 9110, 9.3.6 and 15.6.2). Counted as a `bad_head`.
    #[error("method not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("invalid request body framing")]
    BadBody,
    #[error("the client went away in the middle of the request body")]
    Aborted,
    #[error("the request body made no progress for the body-stall timeout")]
    BodyStall,
    /// A request head that had begun (at least one byte of it) did not
    /// arrive whole within `request_header` (slowloris): the connection's
    /// watchdog closes it; the own server answers 408 first.
    #[error("the request head did not arrive whole within the request-header timeout")]
    HeadTimeout,
    /// The client closed or reset its connection while the upstream was
    /// still thinking, or while its upstream connection was being made
    /// (the watches of [`crate::proxy::h1::client_gone`]):
    /// the request is abandoned, never answered; counted as `aborted` when
    /// its [`crate::proxy::body::Completion`] drops.
    #[error("the client went away before any answer")]
    Gone,
}

impl ClientError {
    /// The `kind` label of `canary_client_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            ClientError::BadHead(_) | ClientError::NotImplemented(_) => "bad_head",
            ClientError::BadBody => "bad_body",
            ClientError::Aborted | ClientError::Gone => "aborted",
            ClientError::BodyStall => "body_stall",
            ClientError::HeadTimeout => "head_timeout",
        }
    }

    /// Counts the error in `canary_client_errors_total` (error paths only).
    pub fn count(self) {
        metrics::counter!(crate::metrics::CLIENT_ERRORS_TOTAL, "kind" => self.kind()).increment(1);
    }
}

impl ProxyError {
    /// The upstream error's metric label (see `snapshot::ERROR_KINDS`) as an
    /// index; `None` for a client error, which is no upstream's.
    pub fn kind_index(&self) -> Option<usize> {
        match self {
            ProxyError::Connect(_) => Some(0),
            ProxyError::Timeout => Some(crate::snapshot::TIMEOUT_KIND),
            ProxyError::Reset(_) => Some(crate::snapshot::RESET_KIND),
            ProxyError::NoEndpoints(_) => Some(3),
            ProxyError::Client(_) => None,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        self.status_reason_text().0
    }

    /// Status, `x-canary-error` kind and the fixed text the client gets.
    fn status_reason_text(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ProxyError::NoEndpoints(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no-endpoints",
                "503 no upstream endpoints\n",
            ),
            ProxyError::Connect(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream-unreachable",
                "502 upstream unreachable\n",
            ),
            ProxyError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "504 upstream did not answer in time\n",
            ),
            ProxyError::Reset(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream-reset",
                "502 upstream connection failed\n",
            ),
            ProxyError::Client(ClientError::BodyStall) => (
                StatusCode::REQUEST_TIMEOUT,
                "client-body-stall",
                "408 request body stalled\n",
            ),
            ProxyError::Client(ClientError::HeadTimeout) => (
                StatusCode::REQUEST_TIMEOUT,
                "client-head-timeout",
                "408 request head not received in time\n",
            ),
            ProxyError::Client(ClientError::NotImplemented(_)) => (
                StatusCode::NOT_IMPLEMENTED,
                "not-implemented",
                "501 not implemented\n",
            ),
            ProxyError::Client(ClientError::BadHead(_)) => {
                (StatusCode::BAD_REQUEST, "bad-request", "400 bad request\n")
            }
            ProxyError::Client(_) => (
                StatusCode::BAD_REQUEST,
                "bad-request-body",
                "400 bad request body\n",
            ),
        }
    }

    /// The response the client gets (`request_id`: the request's id, if
    /// known, for the client to quote; `version_header`: `[split]
    /// response_header` naming the version the request was sent to, when
    /// one was chosen).
    pub fn to_response(
        &self,
        request_id: Option<&HeaderValue>,
        version_header: Option<(&HeaderName, &HeaderValue)>,
    ) -> Response<ProxyBody> {
        let (status, headers, body) = self.parts(request_id, version_header);
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// The status, headers and body of the response the client gets (see
    /// [`ProxyError::to_response`]).
    pub fn parts(
        &self,
        request_id: Option<&HeaderValue>,
        version_header: Option<(&HeaderName, &HeaderValue)>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let (status, reason, text) = self.status_reason_text();
        let mut h = HeaderMap::with_capacity(4);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
        if let Some(id) = request_id {
            h.insert(X_REQUEST_ID.clone(), id.clone());
        }
        if let Some((name, value)) = version_header {
            h.insert(name.clone(), value.clone());
        }
        (status, h, Bytes::from_static(text.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn client_texts_never_carry_the_detail() {
        let addr: SocketAddr = "10.0.3.7:8080".parse().unwrap();
        let errors = [
            ProxyError::NoEndpoints("v2".into()),
            ProxyError::Connect(ConnectError::Timeout(addr)),
            ProxyError::Connect(ConnectError::Io(addr, std::io::ErrorKind::Other.into())),
            ProxyError::Timeout,
            ProxyError::Reset(format!("reset by {addr}").into()),
            ProxyError::Client(ClientError::BadBody),
        ];
        for e in errors {
            let (_, _, text) = e.parts(None, None);
            let text = String::from_utf8_lossy(&text);
            assert!(!text.contains("10.0.3.7") && !text.contains("v2"), "{text}");
        }
    }
}
