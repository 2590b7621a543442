//! Test support: tagged upstreams, an in-process gateway, a small HTTP client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use canary_gateway::config::Config;
use canary_gateway::gateway::{self, Dependencies, Listeners, Running};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// An upstream that names itself in every answer (body `name`, header
/// `x-upstream: name`) and offers a few test routes:
/// - `/headers`: the request's headers as `name: value` lines;
/// - `/upload`: reads the body, answers `<bytes> <xxh3 hex>`;
/// - `/download?bytes=N`: streams N bytes in 64 KiB chunks (no length: chunked);
/// - `/trailers`: a chunked body followed by a `x-checksum` trailer;
/// - `/sleep?ms=N`: answers after N ms;
/// - `/status/NNN`: answers with that status;
/// - `/ws`: `101 Switching Protocols`, then echoes bytes on the upgraded stream.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::serve(name, listener)
    }

    pub fn serve(name: &'static str, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        answer(name, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            name,
            addr,
            hits,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).boxed()
}

fn query_number(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let mut resp = match path.as_str() {
        "/headers" => {
            let mut out = String::new();
            out.push_str(&format!("uri: {}\n", req.uri()));
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(out))
        }
        "/upload" => {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            let mut total = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                    hasher.update(&data);
                }
            }
            Response::new(full(format!("{total} {:016x}", hasher.digest())))
        }
        "/count" => {
            // Counts the body's bytes without looking at them (fast for huge uploads).
            let mut total = 0u64;
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                }
            }
            Response::new(full(total.to_string()))
        }
        "/request-trailers" => {
            let collected = req.into_body().collect().await.ok();
            let trailers = collected
                .as_ref()
                .and_then(|c| c.trailers())
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            Response::new(full(format!("trailers: {trailers}")))
        }
        "/download" => {
            let n = query_number(&req, "bytes");
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len() as u64) as usize;
                    if tx
                        .send(Ok(http_body::Frame::data(chunk.slice(..take))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    left -= take as u64;
                }
            });
            Response::new(ChannelBody(rx).boxed())
        }
        "/trailers" => {
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for part in ["one,", "two,", "three"] {
                    let _ = tx.send(Ok(http_body::Frame::data(Bytes::from(part)))).await;
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", http::HeaderValue::from_static("abc123"));
                let _ = tx.send(Ok(http_body::Frame::trailers(trailers))).await;
            });
            // hyper only sends the trailer fields the Trailer header declares.
            let mut resp = Response::new(ChannelBody(rx).boxed());
            resp.headers_mut()
                .insert("trailer", http::HeaderValue::from_static("x-checksum"));
            resp
        }
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(query_number(&req, "ms"))).await;
            Response::new(full(name))
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut resp = Response::new(full(""));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("upgrade", http::HeaderValue::from_static("websocket"));
            resp.headers_mut()
                .insert("connection", http::HeaderValue::from_static("upgrade"));
            resp
        }
        p if p.starts_with("/status/") => {
            let code = p[8..].parse().unwrap_or(500);
            let mut resp = Response::new(full(name));
            *resp.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            resp
        }
        _ => Response::new(full(name)),
    };
    resp.headers_mut()
        .insert("x-upstream", http::HeaderValue::from_static(name));
    Ok(resp)
}

/// A body fed by a channel (streamed, no length: sent chunked).
pub struct ChannelBody(
    pub tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, Infallible>>,
);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

/// A gateway started in this process on 127.0.0.1:0.
pub struct Gateway {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway from config text; `{listen}` and `{admin}` default to
    /// 127.0.0.1:0 when the text has no [listener]/[admin] tables.
    pub async fn start(config_text: &str) -> Gateway {
        Gateway::start_with(config_text, Dependencies::default()).await
    }

    pub async fn start_with(config_text: &str, deps: Dependencies) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config_text).unwrap();
        let config = Config::load(&path).unwrap();
        let listeners = Listeners {
            proxy: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let running = gateway::start(config, listeners, deps).await.unwrap();
        Gateway {
            addr: running.proxy_addr,
            admin: running.admin_addr,
            running: Some(running),
            dir,
        }
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// A config with the given versions `(name, weight, upstream)` and extra
/// `[split]` lines.
pub fn config(split_extra: &str, versions: &[(&str, u32, SocketAddr)]) -> String {
    let mut text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[split]\nstable = \"{}\"\n{split_extra}\n",
        versions[0].0
    );
    for (name, weight, addr) in versions {
        text.push_str(&format!(
            "\n[[versions]]\nname = \"{name}\"\nweight = {weight}\nendpoints = [\"{addr}\"]\n"
        ));
    }
    text
}

/// A gateway with [`config`]'s versions (and `x-canary-version` as the
/// response header) whose admin token `token` is read from a file; keep the
/// returned directory while the gateway runs.
pub async fn gateway_with_token(
    versions: &[(&str, u32, SocketAddr)],
    token: &str,
) -> (Gateway, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let text = config("response_header = \"x-canary-version\"", versions).replace(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"{}\"\n", token_file.display()),
    );
    (Gateway::start(&text).await, secrets)
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
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
    addr: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Client { sender, addr }
    }

    /// Sends a request; `Err` only when the connection failed.
    pub async fn send(&mut self, req: Request<TestBody>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        read_reply(resp).await
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
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Client::connect(addr)
        .await
        .send(req.body(full(body)).unwrap())
        .await
        .unwrap()
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

/// Counts which upstream answered `n` requests sent over `clients` keep-alive connections.
pub async fn split_counts(
    addr: SocketAddr,
    n: usize,
    headers: &[(&str, &str)],
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    let mut client = Client::connect(addr).await;
    for _ in 0..n {
        let reply = client.get("/", headers).await.unwrap();
        *counts.entry(reply.text()).or_insert(0) += 1;
    }
    counts
}

/// Admin request with the token `token` (if any).
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    send(addr, method, path, &headers, body.to_string()).await
}

// ---- Data-path test helpers (tests/integration/proxy.rs) ----

/// Like [`config`], but each version may list several endpoints (or none is
/// not allowed by the config: give at least one).
pub fn config_endpoints(split_extra: &str, versions: &[(&str, u32, Vec<SocketAddr>)]) -> String {
    let mut text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[split]\nstable = \"{}\"\n{split_extra}\n",
        versions[0].0
    );
    for (name, weight, addrs) in versions {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        text.push_str(&format!(
            "\n[[versions]]\nname = \"{name}\"\nweight = {weight}\nendpoints = [{}]\n",
            list.join(", ")
        ));
    }
    text
}

/// Counts which upstream answered `n` GETs of `/`, sent over `conns`
/// keep-alive connections at once.
pub async fn split_counts_concurrent(
    addr: SocketAddr,
    n: usize,
    conns: usize,
    headers: &[(&str, &str)],
) -> std::collections::BTreeMap<String, usize> {
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
    let mut total = std::collections::BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

/// An address nothing listens on (a port bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A raw HTTP/1.1 upstream for requests without bodies: it answers each
/// request with 200, the extra header lines `extra_headers` (each ending in
/// `\r\n`) and the request head exactly as received as its body.
pub struct EchoHeadUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoHeadUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoHeadUpstream {
    pub async fn start(extra_headers: &'static str) -> EchoHeadUpstream {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(head) = read_head(&mut stream, &mut buf).await else {
                            return;
                        };
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra_headers}\r\n",
                            head.len()
                        );
                        if stream.write_all(resp.as_bytes()).await.is_err()
                            || stream.write_all(head.as_bytes()).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        EchoHeadUpstream { addr, task }
    }
}

/// Reads one message head (through the blank line) from `stream`; `buf`
/// keeps bytes read past it. `None` on EOF or error before a full head.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads from `stream` until EOF (or a reset); `None` if `limit` passed first.
pub async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(out)
}

/// The status code of a raw HTTP/1.x response (`HTTP/1.1 NNN ...`).
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// A raw HTTP/1.1 upstream that answers every request head (requests without
/// bodies) with the same bytes, e.g. a chunked response with trailers.
pub struct FixedUpstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
    /// Connections the gateway closed (or that this upstream closed).
    pub closed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FixedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`FixedUpstream::scripted`] upstream does with the n-th request
/// (from 0) of a connection: answer with these bytes and keep the connection
/// open (`false`) or close it after the answer (`true`); `None` closes the
/// connection without answering.
pub type Script = fn(usize) -> Option<(&'static [u8], bool)>;

type Answers = Arc<dyn Fn(usize) -> Option<(&'static [u8], bool)> + Send + Sync>;

impl FixedUpstream {
    pub async fn start(response: &'static [u8]) -> FixedUpstream {
        Self::serve(Arc::new(move |_| Some((response, false)))).await
    }

    pub async fn scripted(script: Script) -> FixedUpstream {
        Self::serve(Arc::new(script)).await
    }

    async fn serve(script: Answers) -> FixedUpstream {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = connections.clone();
        let closed = Arc::new(AtomicU64::new(0));
        let ended = closed.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                let ended = ended.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut n = 0;
                    while read_head(&mut stream, &mut buf).await.is_some() {
                        let Some((response, close)) = script(n) else {
                            break;
                        };
                        n += 1;
                        if stream.write_all(response).await.is_err() || close {
                            break;
                        }
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        FixedUpstream {
            addr,
            connections,
            closed,
            task,
        }
    }
}
