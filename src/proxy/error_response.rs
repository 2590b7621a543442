//! Data path: error responses, the one place where proxy errors become the
//! responses the client gets (502 unreachable or reset, 503 no endpoints,
//! 504 timeout).

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use super::upstream::ConnectError;

/// The response header that names why the gateway answered itself.
pub const ERROR_HEADER: &str = "x-canary-error";

/// What went wrong between the gateway and the upstream.
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
}

impl ProxyError {
    /// The metric label (see `snapshot::ERROR_KINDS`) as an index.
    pub fn kind_index(&self) -> usize {
        match self {
            ProxyError::Connect(_) => 0,
            ProxyError::Timeout => 1,
            ProxyError::Reset(_) => 2,
            ProxyError::NoEndpoints(_) => 3,
        }
    }

    fn status_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoEndpoints(_) => (StatusCode::SERVICE_UNAVAILABLE, "no-endpoints"),
            ProxyError::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream-unreachable"),
            ProxyError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
            ProxyError::Reset(_) => (StatusCode::BAD_GATEWAY, "upstream-reset"),
        }
    }

    /// The response the client gets.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let (status, headers, body) = self.parts();
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// The status, headers and body of the response the client gets.
    pub fn parts(&self) -> (StatusCode, HeaderMap, String) {
        let (status, reason) = self.status_and_reason();
        let mut h = HeaderMap::with_capacity(2);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
        (status, h, format!("{}: {self}\n", status.as_u16()))
    }
}
