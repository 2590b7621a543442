//! A small HTTP/1.1 client for tests: keep-alive connections, whole replies,
//! admin calls, split counting and polling.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The request body type of [`Client::send`].
pub type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A whole body of `data`.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).boxed()
}

/// Wraps a body for [`Client::send`].
pub fn body(data: impl Into<Bytes>) -> TestBody {
    full(data)
}

/// Boxes any body for [`Client::send`].
pub fn boxed<B>(b: B) -> TestBody
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    b.boxed()
}

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; panics with the text when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
    addr: SocketAddr,
    /// When set, an exchange (or the connect) that takes longer panics.
    limit: Option<Duration>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Client {
            sender,
            addr,
            limit: None,
        }
    }

    /// Like [`Client::connect`], but the connect and every exchange panic
    /// when they take longer than `limit`.
    pub async fn connect_within(addr: SocketAddr, limit: Duration) -> Client {
        let mut client = tokio::time::timeout(limit, Client::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"));
        client.limit = Some(limit);
        client
    }

    /// The address this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a request; `Err` only when the connection failed.
    pub async fn send(&mut self, req: Request<TestBody>) -> Result<Reply, hyper::Error> {
        let what = format!("{} {} on {}", req.method(), req.uri(), self.addr);
        let exchange = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            read_reply(resp).await
        };
        match self.limit {
            None => exchange.await,
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .unwrap_or_else(|_| panic!("{what}: no answer in {limit:?}")),
        }
    }

    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, hyper::Error> {
        let mut req = Request::get(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(full(Bytes::new())).unwrap()).await
    }
}

pub async fn read_reply(resp: Response<Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::connect(addr)
        .await
        .get(path, headers)
        .await
        .unwrap()
}

/// A request with a body, on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    Client::connect(addr)
        .await
        .send(request(addr, method, path, headers, body))
        .await
        .unwrap()
}

/// A request for `addr` (its Host) with the extra `headers` and `body`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<TestBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(full(body)).unwrap()
}

/// An admin request: a JSON `body`, with the bearer `token` (if any).
pub fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Request<TestBody> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    request(addr, method, path, &headers, body.to_string())
}

/// Admin request with the token `token` (if any), on a fresh connection.
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    Client::connect(addr)
        .await
        .send(admin_request(addr, method, path, token, body))
        .await
        .unwrap()
}

/// Polls `check` every 20 ms until it is true, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` GETs of `/` over `client`; counts the answers by body. With
/// `require_ok`, panics on any status but 200.
pub async fn count_split(
    client: &mut Client,
    n: usize,
    headers: &[(&str, &str)],
    require_ok: bool,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = client.get("/", headers).await.unwrap();
        if require_ok {
            assert_eq!(reply.status, 200, "proxied GET /: {}", reply.text());
        }
        *counts.entry(reply.text()).or_insert(0) += 1;
    }
    counts
}

/// Counts which upstream answered `n` GETs of `/` sent over one keep-alive
/// connection (any status counts).
pub async fn split_counts(
    addr: SocketAddr,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    count_split(&mut Client::connect(addr).await, n, headers, false).await
}

/// Counts which upstream answered `n` GETs of `/`, sent over `conns`
/// keep-alive connections at once.
pub async fn split_counts_concurrent(
    addr: SocketAddr,
    n: usize,
    conns: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let share = n / conns + usize::from(c < n % conns);
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            split_counts(addr, share, &h).await
        }));
    }
    let mut total = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}
