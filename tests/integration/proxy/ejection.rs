//! Endpoint ejection: an endpoint that accepts connections and resets or
//! hangs leaves the rotation as one that refuses them does; the keep-alive
//! race is no failure of the endpoint; a request whose pooled connection
//! died goes to another endpoint when its own is gone; with every endpoint
//! ejected a request makes one connect attempt.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::Request;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// Long ejections: no check below races an ejection's end.
const LONG_EJECTIONS: &str = "[upstream]\neject_base = \"60s\"\neject_max = \"120s\"\n";

/// The health `/status` gives the endpoint `addr` of the first version.
fn health(gw: &Gateway, addr: SocketAddr) -> String {
    let control = gw.running.as_ref().unwrap().control.clone();
    let status = control.status();
    let endpoints = &status.versions[0].endpoints;
    let found = endpoints.iter().find(|e| e.address == addr.to_string());
    found.map(|e| e.health.to_owned()).unwrap_or_default()
}

/// How a test request goes to the gateway; gives the status it got.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A GET on a new client connection: the own server and client.
    OwnClient,
    /// A chunked upload declaring trailers: hyper's server and client.
    HyperClient,
}

impl Via {
    async fn send(self, gw: SocketAddr) -> u16 {
        match self {
            Via::OwnClient => get(gw, "/", &[]).await.status.as_u16(),
            Via::HyperClient => {
                let mut stream = tokio::net::TcpStream::connect(gw).await.unwrap();
                let request = b"POST /upload HTTP/1.1\r\nhost: h\r\ntrailer: x-t\r\n\
                    transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                stream.write_all(request).await.unwrap();
                let mut buf = Vec::new();
                let response = crate::recorder::read_response(&mut stream, &mut buf, false).await;
                response.map_or(0, |r| r.status)
            }
        }
    }
}

/// An upstream that reads each request head and holds the connection
/// without ever answering (a deadlocked application whose socket accepts).
async fn hangs_before_the_head() -> (SocketAddr, ServerTask) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = serve_connections(listener, |mut stream| async move {
        let mut buf = Vec::new();
        if read_head(&mut stream, &mut buf).await.is_some() {
            std::future::pending::<()>().await;
        }
    });
    (addr, task)
}

/// A version `name` of `bad` and a good endpoint, requests sent `via`: the
/// bad endpoint fails `eject_after_failures` (3) requests, is ejected, and
/// from then on every request is answered by the good one;
/// `canary_endpoints_healthy` drops to 1.
async fn a_failing_endpoint_is_ejected(name: &'static str, bad: SocketAddr, via: Via) {
    let good = Upstream::start(name).await;
    let extra = LONG_EJECTIONS.to_owned() + "[timeouts]\nupstream_response = \"300ms\"\n";
    let gw = Gateway::start(&config_endpoints(
        &extra,
        &[(name, 1, vec![bad, good.addr])],
    ))
    .await;
    let mut failed = 0;
    for _ in 0..100 {
        if via.send(gw.addr).await != 200 {
            failed += 1;
        }
        if health(&gw, bad) == "ejected" {
            break;
        }
    }
    assert_eq!(health(&gw, bad), "ejected", "{name}: {failed} failures");
    assert_eq!(failed, 3, "{name}");
    for i in 0..30 {
        assert_eq!(
            via.send(gw.addr).await,
            200,
            "{name}: request {i} after the ejection"
        );
    }
    assert_eq!(health(&gw, good.addr), "healthy", "{name}");
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    let healthy = metric_value(&text, "canary_endpoints_healthy", &[("version", name)]);
    assert_eq!(healthy, 1.0, "{name}");
    gw.shutdown().await;
}

/// An endpoint that accepts connections and closes them without an answer
/// (a sidecar accepting for a crashed application) is ejected: before, only
/// connect failures counted and it failed its share of requests for ever.
#[tokio::test]
async fn an_endpoint_that_closes_without_answering_is_ejected() {
    for (name, via) in [
        ("closes-own", Via::OwnClient),
        ("closes-hyper", Via::HyperClient),
    ] {
        let bad = FixedUpstream::scripted(|_| None).await;
        a_failing_endpoint_is_ejected(name, bad.addr, via).await;
    }
}

/// An endpoint that accepts connections and never answers (a JVM in a GC
/// spiral, a deadlocked application) is ejected after its timeouts.
#[tokio::test]
async fn an_endpoint_that_hangs_before_the_head_is_ejected() {
    for (name, via) in [
        ("hangs-own", Via::OwnClient),
        ("hangs-hyper", Via::HyperClient),
    ] {
        let (bad, _task) = hangs_before_the_head().await;
        a_failing_endpoint_is_ejected(name, bad, via).await;
    }
}

/// The keep-alive race (an upstream closing an idle pooled connection as a
/// request goes out on it) is the gateway's race, not the endpoint's
/// failure: a request that cannot be retried fails (502), but the endpoint
/// is not ejected, even after one failure with `eject_after_failures = 1`.
#[tokio::test]
async fn the_keep_alive_race_is_no_failure_of_the_endpoint() {
    // Answers the first request of each connection and closes on the next.
    let upstream = FixedUpstream::scripted(|n| {
        (n == 0).then_some((
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            false,
        ))
    })
    .await;
    let extra = LONG_EJECTIONS.to_owned() + "eject_after_failures = 1\n";
    let gw = Gateway::start(&config_endpoints(
        &extra,
        &[("racy", 1, vec![upstream.addr])],
    ))
    .await;
    let mut client = Client::connect(gw.addr).await;
    for i in 0..3 {
        // Retried on a new connection: answered.
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200, "GET {i}");
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200, "GET {i}");
        // Never sent twice: 502, on the pooled connection the GET left.
        let post = Request::post("/")
            .header("host", "h")
            .body(body(Bytes::new()))
            .unwrap();
        assert_eq!(client.send(post).await.unwrap().status, 502, "POST {i}");
        assert_eq!(health(&gw, upstream.addr), "healthy", "after POST {i}");
    }
    gw.shutdown().await;
}

/// An upstream that stops as an ECS task does: once `stop` is set it has
/// closed its listener (new connects are refused), and each kept-alive
/// connection closes without an answer when its next request arrives.
struct StoppingUpstream {
    addr: SocketAddr,
    listener: Option<ServerTask>,
    stopped: Arc<AtomicBool>,
    /// Requests that arrived on a connection after the stop.
    refused: Arc<AtomicU64>,
}

impl StoppingUpstream {
    async fn start() -> StoppingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let (stop, count) = (stopped.clone(), refused.clone());
        // Connections live on tasks of their own: they outlive the listener.
        let task = serve_connections(listener, move |mut stream| {
            let (stop, count) = (stop.clone(), count.clone());
            async move {
                let mut buf = Vec::new();
                while read_head(&mut stream, &mut buf).await.is_some() {
                    if stop.load(Ordering::SeqCst) {
                        count.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nstopping";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        });
        StoppingUpstream {
            addr,
            listener: Some(task),
            stopped,
            refused,
        }
    }

    fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Dropping the accept loop's task closes the listener.
        self.listener = None;
    }
}

/// A task stopping closes its listener and its kept-alive connections: a
/// request whose pooled connection to it closed as it was sent (safe to
/// send again) is retried on another endpoint when the new connect to the
/// stopping one is refused, not answered 502 while the version has a
/// healthy endpoint. For a GET (no body) and a PUT (a body small enough to
/// send again).
#[tokio::test]
async fn a_retry_goes_to_another_endpoint_when_its_own_is_gone() {
    let put = || {
        Request::put("/")
            .header("host", "h")
            .body(body(Bytes::from_static(b"small body")))
            .unwrap()
    };
    let get = || {
        Request::get("/")
            .header("host", "h")
            .body(body(Bytes::new()))
            .unwrap()
    };
    for (name, request) in [("stopping-get", get as fn() -> _), ("stopping-put", put)] {
        let mut stopping = StoppingUpstream::start().await;
        let good = Upstream::start(name).await;
        let gw = Gateway::start(&config_endpoints(
            LONG_EJECTIONS,
            &[(name, 1, vec![stopping.addr, good.addr])],
        ))
        .await;
        // One client connection: each request leaves its upstream
        // connection in the pool, the stopping upstream's included.
        let mut client = Client::connect(gw.addr).await;
        let mut answered_by_stopping = false;
        for _ in 0..100 {
            let reply = client.send(get()).await.unwrap();
            assert_eq!(reply.status, 200);
            answered_by_stopping |= reply.text() == "stopping";
            if answered_by_stopping {
                break;
            }
        }
        assert!(answered_by_stopping, "{name}: no connection to pool");
        stopping.stop();
        for i in 0..40 {
            let reply = client.send(request()).await.unwrap();
            assert_eq!(
                reply.status, 200,
                "{name}: request {i}: {:?}",
                reply.headers
            );
            assert_eq!(reply.text(), name, "{name}: request {i}");
            if stopping.refused.load(Ordering::SeqCst) > 0 {
                break;
            }
        }
        let refused = stopping.refused.load(Ordering::SeqCst);
        assert_eq!(refused, 1, "{name}: the pooled connection was never tried");
        gw.shutdown().await;
    }
}

/// With every endpoint of a version ejected, a request makes one connect
/// attempt, not one per endpoint: with endpoints that drop SYNs (ECS tasks
/// gone with their network interface) each would wait `upstream_connect`
/// twice before its 502. Refused ports here: the attempts are counted in
/// `canary_upstream_errors_total{kind="connect"}`.
#[tokio::test]
async fn with_every_endpoint_ejected_a_request_makes_one_connect_attempt() {
    let name = "all-ejected";
    let dead = vec![dead_addr().await, dead_addr().await];
    let gw = Gateway::start(&config_endpoints(
        LONG_EJECTIONS,
        &[(name, 1, dead.clone())],
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 502);
        if dead.iter().all(|&d| health(&gw, d) == "ejected") {
            break;
        }
    }
    assert!(dead.iter().all(|&d| health(&gw, d) == "ejected"));
    let connects = async || {
        let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
        let labels = [("version", name), ("kind", "connect")];
        metric_value(&text, "canary_upstream_errors_total", &labels)
    };
    let before = connects().await;
    for _ in 0..10 {
        let reply = get(gw.addr, "/", &[]).await;
        assert_eq!(reply.status, 502);
        assert_eq!(reply.header("x-canary-error"), Some("upstream-unreachable"));
    }
    assert_eq!(connects().await - before, 10.0);
    gw.shutdown().await;
}

/// An HTTP/1.0 request without Host goes up with its endpoint's address as
/// Host: when its pooled connection died and the retry goes to another
/// endpoint (its own refuses connects), with that endpoint's address, not
/// the first one's.
#[tokio::test]
async fn a_host_less_http10_request_moved_to_another_endpoint_gets_its_host() {
    let mut stopping = StoppingUpstream::start().await;
    let good = Upstream::start("good").await;
    let gw = Gateway::start(&config_endpoints(
        LONG_EJECTIONS,
        &[("moved", 1, vec![stopping.addr, good.addr])],
    ))
    .await;
    // One request per client connection (HTTP/1.0 closes it); the upstream
    // connections stay pooled.
    let get10 = async || {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(b"GET /headers HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut reply)
            .await
            .unwrap();
        String::from_utf8_lossy(&reply).into_owned()
    };
    let mut pooled = false;
    for _ in 0..100 {
        pooled = get10().await.ends_with("stopping");
        if pooled {
            break;
        }
    }
    assert!(pooled, "no connection to pool");
    stopping.stop();
    let good_host = format!("host: {}", good.addr);
    for i in 0..40 {
        let reply = get10().await;
        assert!(reply.contains(" 200 OK\r\n"), "request {i}: {reply}");
        assert!(
            reply.lines().any(|l| l == good_host),
            "request {i}: not {good_host}: {reply}"
        );
        if stopping.refused.load(Ordering::SeqCst) > 0 {
            break;
        }
    }
    let refused = stopping.refused.load(Ordering::SeqCst);
    assert_eq!(refused, 1, "the pooled connection was never tried");
    gw.shutdown().await;
}
