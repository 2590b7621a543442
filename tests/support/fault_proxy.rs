//! A loopback HTTP proxy in front of moto that answers the first N matching
//! requests with an injected error instead of forwarding them, for testing
//! retries (moto itself never answers ConflictException).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// An injected error: status, `x-amzn-errortype`, message.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub error_type: &'static str,
    pub message: &'static str,
}

/// Counters shared with the proxy task.
#[derive(Debug, Default)]
struct Counters {
    /// Faults still to inject.
    remaining: AtomicUsize,
    /// Matching requests seen (injected or forwarded).
    matched: AtomicUsize,
    /// Every request seen, by its `x-amz-target` (the AWS operation of JSON
    /// protocols; `-` when absent).
    by_target: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
}

/// Which requests get the fault, and whether they reach the service first.
#[derive(Debug, Clone, Copy)]
struct Matching {
    method: &'static Method,
    path_part: &'static str,
    /// Only calls whose `x-amz-target` contains this.
    target_part: Option<&'static str>,
    /// Forward the call, then answer the fault: a call applied whose
    /// answer was lost.
    lose_answer: bool,
    /// How long every call waits before it is forwarded (AWS's latency).
    delay: std::time::Duration,
}

/// The running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies to `upstream`; the first `count` requests with `method` whose
    /// path contains `path_part` get `fault`.
    pub async fn start(
        upstream: SocketAddr,
        method: Method,
        path_part: &'static str,
        fault: Fault,
        count: usize,
    ) -> FaultProxy {
        let method: &'static Method = Box::leak(Box::new(method));
        let matching = Matching {
            method,
            path_part,
            target_part: None,
            lose_answer: false,
            delay: std::time::Duration::ZERO,
        };
        FaultProxy::start_matching(upstream, matching, fault, count).await
    }

    /// In front of an AWS emulator at `upstream`: every call is forwarded
    /// `delay` after it arrived, as slow as AWS (moto answers in a few ms).
    pub async fn latency(upstream: SocketAddr, delay: std::time::Duration) -> FaultProxy {
        let matching = Matching {
            method: &Method::POST,
            path_part: "/",
            target_part: None,
            lose_answer: false,
            delay,
        };
        let unused = Fault {
            status: 500,
            error_type: "InternalServerError",
            message: "never injected",
        };
        FaultProxy::start_matching(upstream, matching, unused, 0).await
    }

    /// In front of an AWS emulator: the first `count` JSON calls whose
    /// operation (`x-amz-target`) contains `target_part` reach the emulator
    /// (and take effect), but their answer is replaced by `fault`: a call
    /// applied whose answer was lost.
    pub async fn lost_answers(
        upstream: SocketAddr,
        target_part: &'static str,
        fault: Fault,
        count: usize,
    ) -> FaultProxy {
        let matching = Matching {
            method: &Method::POST,
            path_part: "/",
            target_part: Some(target_part),
            lose_answer: true,
            delay: std::time::Duration::ZERO,
        };
        FaultProxy::start_matching(upstream, matching, fault, count).await
    }

    async fn start_matching(
        upstream: SocketAddr,
        matching: Matching,
        fault: Fault,
        count: usize,
    ) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters {
            remaining: AtomicUsize::new(count),
            matched: AtomicUsize::new(0),
            by_target: Default::default(),
        });
        let shared = counters.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counters = shared.clone();
                let fault = fault.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let counters = counters.clone();
                        let fault = fault.clone();
                        async move {
                            let target = req
                                .headers()
                                .get("x-amz-target")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string();
                            *counters
                                .by_target
                                .lock()
                                .unwrap()
                                .entry(target.clone())
                                .or_insert(0) += 1;
                            let matches = req.method() == matching.method
                                && req.uri().path().contains(matching.path_part)
                                && matching.target_part.is_none_or(|t| target.contains(t));
                            if matches {
                                counters.matched.fetch_add(1, Ordering::SeqCst);
                                let take = counters
                                    .remaining
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok();
                                if take {
                                    if matching.lose_answer {
                                        let _ = forward(upstream, req).await;
                                    }
                                    return Ok::<_, hyper::Error>(injected(&fault));
                                }
                            }
                            tokio::time::sleep(matching.delay).await;
                            forward(upstream, req).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            addr,
            counters,
            task,
        }
    }

    /// In front of an AWS emulator at `upstream`: the first `count` calls
    /// (every AWS JSON call is a POST) get a 500 `InternalServerError`, as
    /// if the service were down; 0 makes a plain counting relay.
    pub async fn outage(upstream: SocketAddr, count: usize) -> FaultProxy {
        let fault = Fault {
            status: 500,
            error_type: "InternalServerError",
            message: "injected: the service is down",
        };
        FaultProxy::start(upstream, Method::POST, "/", fault, count).await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on the next `count` matching requests get the fault (0: the
    /// service behind is back; `usize::MAX`: down until told otherwise).
    pub fn set_faults(&self, count: usize) {
        self.counters.remaining.store(count, Ordering::SeqCst);
    }

    /// Requests seen so far by AWS operation (`x-amz-target`).
    pub fn by_target(&self) -> std::collections::BTreeMap<String, usize> {
        self.counters.by_target.lock().unwrap().clone()
    }

    /// Matching requests seen so far.
    pub fn matched(&self) -> usize {
        self.counters.matched.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn injected(fault: &Fault) -> Response<Full<Bytes>> {
    let body = format!(r#"{{"message":"{}"}}"#, fault.message);
    Response::builder()
        .status(fault.status)
        .header("content-type", "application/json")
        .header("x-amzn-errortype", fault.error_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn forward(
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let stream = TcpStream::connect(upstream).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(bytes)))
}
