//! Tagged upstreams on 127.0.0.1:0: each names itself in every answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::client::{TestBody, full};
use super::server_task::{ServerTask, serve_connections};

/// An upstream that names itself in every answer (body `name`, header
/// `x-upstream: name`) and offers a few test routes:
/// - `/headers`: the request's headers as `name: value` lines;
/// - `/upload`: reads the body, answers `<bytes> <xxh3 hex>`;
/// - `/download?bytes=N`: streams N bytes in 64 KiB chunks (no length:
///   chunked; with `&length=1`, framed by a Content-Length);
/// - `/trailers`: a chunked body followed by a `x-checksum` trailer;
/// - `/sleep?ms=N`: answers after N ms;
/// - `/status/NNN`: answers with that status;
/// - `/ws`: `101 Switching Protocols`, then echoes bytes on the upgraded stream.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: ServerTask,
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
        let task = serve_connections(listener, move |stream| {
            let counter = counter.clone();
            async move {
                let service = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    answer(name, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            }
        });
        Upstream {
            name,
            addr,
            hits,
            task,
        }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// The upstream tests against the real binary call by this name.
pub type TaggedUpstream = Upstream;

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
            let mut response = Response::new(ChannelBody(rx).boxed());
            if query_number(&req, "length") == 1 {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, n.into());
            }
            response
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

/// An address nothing listens on (a port bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}
