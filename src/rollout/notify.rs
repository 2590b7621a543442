//! Rollout: the webhook and the gate, small JSON POSTs.
//!
//! `http://` goes over hyper's client connection on a plain TCP stream;
//! `https://` over tokio-rustls (ring provider) with the system's trust store
//! (rustls-native-certs). Every call has a timeout; webhook events are sent
//! from a task of their own with a few retries, so a failing webhook is
//! logged and never blocks or stalls the rollout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long one webhook or gate call may take, connect to response head.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Webhook attempts per event.
pub const WEBHOOK_ATTEMPTS: u32 = 3;
/// The pause before the second attempt; doubles after each.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// At most this much of a response body is read (and dropped).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Where a webhook or gate call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    tls: bool,
    host: String,
    port: u16,
    uri: Uri,
}

impl Target {
    /// An `http://` or `https://` URL with a host, without credentials: a
    /// `user:password@` would go out as part of the Host header, never as
    /// Basic auth, so it is refused (the message does not repeat it).
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(
                "credentials in the URL (user:password@host) are not supported: \
                 no Basic auth is sent; pass a secret in the path or query instead"
                    .into(),
            );
        }
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("`{url}` must start with http:// or https://")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("`{url}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            tls,
            host,
            port,
            uri,
        })
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Target(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// POSTs `body` as JSON to `url`; the answer's status.
pub async fn post_json(
    url: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<StatusCode, CallError> {
    let target = Target::parse(url).map_err(CallError::Target)?;
    let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    match tokio::time::timeout(timeout, call(&target, body)).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Timeout(timeout)),
    }
}

async fn call(target: &Target, body: Bytes) -> Result<StatusCode, CallError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(CallError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if target.tls {
        let name = rustls_pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| CallError::Tls(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| CallError::Tls(e.to_string()))?;
        exchange(stream, target, body).await
    } else {
        exchange(tcp, target, body).await
    }
}

async fn exchange<S>(stream: S, target: &Target, body: Bytes) -> Result<StatusCode, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let path = target
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let authority = target
        .uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or(&target.host);
    let req = Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(
            header::USER_AGENT,
            concat!("canary-gateway/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| CallError::Target(e.to_string()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    // Read a little of the body so the peer is not reset mid-answer.
    let mut body = resp.into_body();
    let mut read = 0;
    while read < MAX_RESPONSE_BODY {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map(|d| d.len()).unwrap_or(0),
            _ => break,
        }
    }
    driver.abort();
    Ok(status)
}

/// The client TLS config: ring provider, the system's roots, loaded once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, CallError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's trust store");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no trusted root certificates found: https webhooks and gates will fail"
                );
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(CallError::Tls)
}

/// Sends a webhook event from a task of its own: up to [`WEBHOOK_ATTEMPTS`]
/// attempts (a non-2xx answer counts as a failure), then a log line.
pub fn send_event(url: Option<&str>, event: serde_json::Value) {
    let Some(url) = url.map(str::to_string) else {
        return;
    };
    tokio::spawn(async move {
        let mut pause = RETRY_BASE;
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            match post_json(&url, &event, CALL_TIMEOUT).await {
                Ok(status) if status.is_success() => return,
                Ok(status) => {
                    tracing::warn!(%url, attempt, %status, "rollout webhook refused the event")
                }
                Err(e) => tracing::warn!(%url, attempt, error = %e, "rollout webhook failed"),
            }
            if attempt < WEBHOOK_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        tracing::error!(%url, event = %event.get("event").and_then(|e| e.as_str()).unwrap_or("?"), "rollout webhook event dropped after {WEBHOOK_ATTEMPTS} attempts");
    });
}

/// Asks the gate whether the next step may go: `Ok(())` on a 2xx answer,
/// else why not.
pub async fn ask_gate(
    url: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(), String> {
    match post_json(url, body, timeout).await {
        Ok(status) if status.is_success() => Ok(()),
        Ok(status) => Err(format!("the gate answered {}", status.as_u16())),
        Err(e) => Err(format!("the gate could not be asked: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("https://ci.example/approve?x=1").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("ci.example", 443));
        let t = Target::parse("http://127.0.0.1:8080/hook").unwrap();
        assert_eq!((t.tls, t.port), (false, 8080));
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("/relative").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_and_tls_to_a_plain_socket_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let body = serde_json::json!({"event": "test"});
        let e = post_json(
            &format!("http://{addr}/"),
            &body,
            Duration::from_millis(200),
        )
        .await;
        assert!(matches!(e, Err(CallError::Timeout(_))), "{e:?}");
        let e = post_json(
            &format!("https://{addr}/"),
            &body,
            Duration::from_millis(200),
        )
        .await;
        assert!(e.is_err());
        accept.abort();
    }
}
