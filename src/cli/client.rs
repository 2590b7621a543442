//! A small HTTP/1.1 client for the admin API (plain HTTP, as the admin
//! listener speaks), one connection per call, with the bearer token.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::CliError;

/// The admin API of one gateway task.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// As given, for messages.
    pub url: String,
    host: String,
    port: u16,
    /// A path prefix from the URL, without the trailing slash.
    prefix: String,
    token: Option<String>,
    timeout: Duration,
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl AdminClient {
    pub fn new(
        url: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<AdminClient, CliError> {
        let bad = |why: &str| CliError::Usage(format!("--admin `{url}`: {why}"));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(bad(&format!("the admin API speaks http, not {other}"))),
            None => return Err(bad("give a URL such as http://127.0.0.1:9901")),
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // `Uri::port` is `None` both without a port and for one out of
        // range: a typo such as 99901 must not send the token to port 80.
        let authority = uri.authority().map_or("", |a| a.as_str());
        let after_host = authority.rsplit(']').next().unwrap_or(authority);
        let port = match after_host.rsplit_once(':') {
            None => 80,
            Some((_, text)) => text
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad(&format!("`{text}` is not a port (1-65535)")))?,
        };
        let token = token.filter(|t| !t.trim().is_empty());
        if let Some(t) = &token
            && http::HeaderValue::try_from(format!("Bearer {}", t.trim())).is_err()
        {
            return Err(CliError::Usage(
                "CANARY_ADMIN_TOKEN holds a character an HTTP header cannot carry (a control character, such as a newline inside it): give the token as the gateway has it"
                    .into(),
            ));
        }
        Ok(AdminClient {
            url: url.to_string(),
            host,
            port,
            prefix: uri.path().trim_end_matches('/').to_string(),
            token,
            timeout,
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, CliError> {
        let unreachable = |reason: String| CliError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let authority = if self.host.contains(':') {
                format!("[{}]:{}", self.host, self.port)
            } else {
                format!("{}:{}", self.host, self.port)
            };
            let mut req = Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.prefix))
                .header(header::HOST, authority);
            if let Some(token) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
            }
            let bytes = match body {
                Some(b) => {
                    req = req.header(header::CONTENT_TYPE, "application/json");
                    Bytes::from(serde_json::to_vec(b).unwrap_or_default())
                }
                None => Bytes::new(),
            };
            let req = req
                .body(Full::new(bytes))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(unreachable(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// [`AdminClient::call`] for a JSON answer; a non-2xx answer becomes the
    /// error of its kind.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, CliError> {
        let answer = self.call(method, path, body).await?;
        answer.into_json()
    }
}

impl Answer {
    /// The `error` field of a JSON answer, else the text.
    pub fn message(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| self.body.trim().to_string())
    }

    pub fn into_json(self) -> Result<serde_json::Value, CliError> {
        let (status, message) = (self.status, self.message());
        match status {
            200..=299 => serde_json::from_str(&self.body).map_err(|e| {
                CliError::Failed(format!("the admin API answered {status} with no JSON: {e}"))
            }),
            401 | 403 => Err(CliError::Unauthorized { status, message }),
            400..=499 => Err(CliError::Refused { status, message }),
            _ => Err(CliError::Gateway { status, message }),
        }
    }
}
