//! Test support for the framing tests: a strict recording upstream (every
//! request as it arrived: method, target, fields in order, body bytes) and
//! a raw HTTP/1.1 client that reads any response framing.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{ServerTask, eventually, serve_connections};

/// One request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Header fields in order, names as sent.
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
    pub trailers: Vec<(String, String)>,
}

impl Recorded {
    /// The values of the fields named `name` (any letter case).
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The fields but those a proxy adds or rewrites (forwarding headers,
    /// request id, framing fields), names lower-cased.
    pub fn end_to_end_fields(&self) -> Vec<(String, String)> {
        self.fields
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "x-forwarded-for"
                        | "x-forwarded-proto"
                        | "x-forwarded-port"
                        | "x-request-id"
                        | "content-length"
                        | "transfer-encoding"
                )
            })
            .collect()
    }
}

/// What the upstream answers to a request (the whole response's bytes) and
/// whether it closes the connection after it.
pub type Respond = Arc<dyn Fn(&Recorded) -> (Vec<u8>, bool) + Send + Sync>;

/// A raw HTTP/1.1 upstream that parses requests strictly (a request with
/// both Content-Length and Transfer-Encoding, or a malformed chunk, is
/// answered 400 and the connection closed) and records each one.
pub struct Recorder {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// Connections that ended in the middle of a request (head or body).
    pub cut: Arc<AtomicU64>,
    task: ServerTask,
}

/// The recorder's answer to a request that broke the framing rules.
const REJECTED: &[u8] = b"HTTP/1.1 400 Bad Request\r\nx-upstream: recorder-rejected\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The default answer: 200 with `<METHOD> <body bytes>` as its body (the
/// length only, for HEAD).
pub fn describe(req: &Recorded) -> (Vec<u8>, bool) {
    let body = format!("{} {}", req.method, req.body.len());
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-upstream: recorder\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    (out, false)
}

impl Recorder {
    pub async fn start() -> Recorder {
        Recorder::responding(Arc::new(describe)).await
    }

    pub async fn responding(respond: Respond) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(0));
        let (log, accepted, cuts) = (requests.clone(), connections.clone(), cut.clone());
        let task = serve_connections(listener, move |mut stream| {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (log, cuts, respond) = (log.clone(), cuts.clone(), respond.clone());
            async move {
                let mut buf = Vec::new();
                loop {
                    match read_request(&mut stream, &mut buf).await {
                        Ok(Some(req)) => {
                            let (answer, close) = respond(&req);
                            log.lock().unwrap().push(req);
                            if stream.write_all(&answer).await.is_err() || close {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(Cut::Closed) => {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Err(Cut::Invalid) => {
                            let _ = stream.write_all(REJECTED).await;
                            return;
                        }
                    }
                }
            }
        });
        Recorder {
            addr,
            requests,
            connections,
            cut,
            task,
        }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests received, once there are at least `n` (within 10 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        eventually(Duration::from_secs(10), async || self.requests().len() >= n).await;
        self.requests()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

pub enum Cut {
    /// The peer closed (or reset) in the middle of a request.
    Closed,
    /// The request broke the framing rules.
    Invalid,
}

/// Reads more bytes into `buf`; `Cut::Closed` on EOF or error.
async fn fill<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>) -> Result<(), Cut> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(Cut::Closed),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// Reads one CRLF-terminated line from the front of `buf` (without CRLF).
async fn line<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>) -> Result<Vec<u8>, Cut> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..i + 2).take(i).collect();
            if line.contains(&b'\n') || line.contains(&b'\r') {
                return Err(Cut::Invalid);
            }
            return Ok(line);
        }
        if buf.len() > 64 * 1024 {
            return Err(Cut::Invalid);
        }
        fill(stream, buf).await?;
    }
}

/// Reads `n` bytes from the front of `buf`.
async fn exactly<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<Vec<u8>, Cut> {
    while buf.len() < n {
        fill(stream, buf).await?;
    }
    Ok(buf.drain(..n).collect())
}

/// Reads one request; `Ok(None)` when the connection closed between requests.
pub async fn read_request<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Recorded>, Cut> {
    // The head as httparse reads it (bare LF line ends accepted, as RFC
    // 9112 allows a recipient to).
    let head_end = loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        match httparse::Request::new(&mut slots).parse(buf) {
            Ok(httparse::Status::Complete(n)) => break n,
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            _ => return Err(Cut::Invalid),
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Err(Cut::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head: Vec<u8> = buf.drain(..head_end).collect();
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut slots);
    if !matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Err(Cut::Invalid);
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let fields: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_string(), text(h.value)))
        .collect();
    let mut req = Recorded {
        method: parsed.method.unwrap_or_default().to_string(),
        target: parsed.path.unwrap_or_default().to_string(),
        fields,
        body: Vec::new(),
        chunked: false,
        trailers: Vec::new(),
    };
    let lengths = req.values("content-length");
    // Empty list elements are allowed (RFC 9110, 5.6.1).
    let codings: Vec<&str> = req
        .values("transfer-encoding")
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => {}
        ([n], []) => {
            let n: usize = n.parse().map_err(|_| Cut::Invalid)?;
            req.body = exactly(stream, buf, n).await?;
        }
        ([], [chunked]) if chunked.eq_ignore_ascii_case("chunked") => {
            req.chunked = true;
            loop {
                let size_line = line(stream, buf).await?;
                let size = size_line.split(|&b| b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size).map_err(|_| Cut::Invalid)?;
                let size = usize::from_str_radix(size, 16).map_err(|_| Cut::Invalid)?;
                if size == 0 {
                    break;
                }
                let data = exactly(stream, buf, size + 2).await?;
                if !data.ends_with(b"\r\n") {
                    return Err(Cut::Invalid);
                }
                req.body.extend_from_slice(&data[..size]);
            }
            loop {
                let trailer = line(stream, buf).await?;
                if trailer.is_empty() {
                    break;
                }
                let (name, value) = trailer
                    .split_at_checked(
                        trailer
                            .iter()
                            .position(|&b| b == b':')
                            .ok_or(Cut::Invalid)?,
                    )
                    .ok_or(Cut::Invalid)?;
                req.trailers
                    .push((text(name), text(&value[1..]).trim().to_string()));
            }
        }
        _ => return Err(Cut::Invalid),
    }
    Ok(Some(req))
}

/// A response as a raw client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    /// Header fields in order, names lower-cased.
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
    pub trailers: Vec<(String, String)>,
}

impl RawResponse {
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (1xx but 101 skipped) from `stream`; `buf` keeps bytes
/// read past it. `None` when the connection closed first (or within 10 s
/// nothing whole arrived).
pub async fn read_response<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Option<RawResponse> {
    read_response_within(stream, buf, head_request, Duration::from_secs(10)).await
}

/// [`read_response`], waiting at most `limit`.
pub async fn read_response_within<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
    limit: Duration,
) -> Option<RawResponse> {
    let read = async {
        loop {
            let response = read_one(stream, buf, head_request).await?;
            if !(100..200).contains(&response.status) || response.status == 101 {
                return Some(response);
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?
}

async fn read_one<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Option<RawResponse> {
    // The head as httparse reads it (bare LF line ends accepted).
    let (status, fields) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let fields: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).trim().to_string();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                let status = parsed.code?;
                buf.drain(..n);
                break (status, fields);
            }
            Ok(httparse::Status::Partial) => fill(stream, buf).await.ok()?,
            Err(_) => return None,
        }
    };
    let mut response = RawResponse {
        status,
        fields,
        body: Vec::new(),
        chunked: false,
        trailers: Vec::new(),
    };
    if head_request || matches!(status, 100..=199 | 204 | 304) {
        return Some(response);
    }
    let length = response
        .values("content-length")
        .first()
        .map(|v| v.parse::<usize>());
    // RFC 9112, 6.3: chunked when it is the final coding, else until close
    // (empty list elements do not count: RFC 9110, 5.6.1).
    let codings = response.values("transfer-encoding").join(",");
    let last = codings.split(',').map(str::trim).rfind(|c| !c.is_empty());
    if last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
        response.chunked = true;
        loop {
            let size_line = line(stream, buf).await.ok()?;
            let size = usize::from_str_radix(std::str::from_utf8(&size_line).ok()?, 16).ok()?;
            if size == 0 {
                break;
            }
            let data = exactly(stream, buf, size + 2).await.ok()?;
            response.body.extend_from_slice(&data[..size]);
        }
        loop {
            let trailer = String::from_utf8(line(stream, buf).await.ok()?).ok()?;
            if trailer.is_empty() {
                break;
            }
            let (n, v) = trailer.split_once(':')?;
            response
                .trailers
                .push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
    } else if let Some(length) = length.filter(|_| codings.is_empty()) {
        response.body = exactly(stream, buf, length.ok()?).await.ok()?;
    } else {
        response.body = std::mem::take(buf);
        stream.read_to_end(&mut response.body).await.ok()?;
    }
    Some(response)
}

/// Which server of the gateway a raw connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The gateway's own HTTP/1.1 server (a fresh connection).
    Own,
    /// hyper's server: the connection was handed over by a first request
    /// the own server leaves to it (`TE: trailers`).
    Hyper,
}

pub const PATHS: [Path; 2] = [Path::Own, Path::Hyper];

/// The target of the request that hands a connection to hyper's server.
pub const HAND_OFF: &str = "/hand-off";

/// A raw connection to `addr` on `path`, with its read buffer.
pub async fn connect(addr: SocketAddr, path: Path) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    if path == Path::Hyper {
        let first = format!("GET {HAND_OFF} HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n");
        stream.write_all(first.as_bytes()).await.unwrap();
        let response = read_response(&mut stream, &mut buf, false).await;
        assert!(response.is_some(), "no response to the hand-off request");
    }
    (stream, buf)
}

/// Sends `request` on a fresh connection on `path` and reads the response
/// (`None`: the connection closed without one).
pub async fn exchange(addr: SocketAddr, path: Path, request: &[u8]) -> Option<RawResponse> {
    let (mut stream, mut buf) = connect(addr, path).await;
    stream.write_all(request).await.ok()?;
    read_response(&mut stream, &mut buf, request.starts_with(b"HEAD ")).await
}

/// The requests `recorder` got but the hand-off requests.
pub fn forwarded(recorder: &Recorder) -> Vec<Recorded> {
    recorder
        .requests()
        .into_iter()
        .filter(|r| r.target != HAND_OFF)
        .collect()
}
