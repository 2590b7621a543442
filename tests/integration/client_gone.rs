//! The own HTTP/1.1 server notices a client that goes away while the
//! upstream still thinks: the request is abandoned (no status class,
//! `canary_client_errors_total{kind="aborted"}`) and its upstream
//! connection closed, not pooled; a pipelined request is no close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// What the upstream of these tests saw.
#[derive(Default)]
struct Seen {
    /// Connections accepted.
    connections: AtomicU64,
    /// Request heads read.
    heads: AtomicU64,
    /// Connections closed by the gateway while a request on them waited
    /// for its answer.
    dropped: AtomicU64,
}

/// An upstream that answers `/slow` 3 s after its head came (unless the
/// gateway closes the connection first: counted in `dropped`) and anything
/// else at once, keeping its connections alive. The body is the path.
async fn slow_upstream() -> (SocketAddr, Arc<Seen>, ServerTask) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let task = serve_connections(listener, move |mut stream| {
        let seen = counts.clone();
        async move {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut stream, &mut buf).await {
                seen.heads.fetch_add(1, Ordering::SeqCst);
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                // A POST's small body came with its head.
                let length = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok())
                    .unwrap_or(0usize);
                while buf.len() < length {
                    let mut more = [0u8; 1024];
                    match stream.read(&mut more).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&more[..n]),
                        _ => return,
                    }
                }
                buf.drain(..length);
                if path.starts_with("/slow") {
                    let mut more = [0u8; 1024];
                    let waited =
                        tokio::time::timeout(Duration::from_secs(3), stream.read(&mut more));
                    match waited.await {
                        Err(_) => {}
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&more[..n]),
                        Ok(_) => {
                            seen.dropped.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                    path.len()
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (addr, seen, task)
}

async fn metrics(gw: &Gateway) -> String {
    admin(gw.admin, "GET", "/metrics", None, "").await.text()
}

/// Waits for `n` request heads at the upstream.
async fn heads_reach(seen: &Seen, n: u64) {
    let arrived = eventually(Duration::from_secs(10), async || {
        seen.heads.load(Ordering::SeqCst) >= n
    });
    assert!(
        arrived.await,
        "{} of {n} heads",
        seen.heads.load(Ordering::SeqCst)
    );
}

/// Reads one response whose body is its request's path.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, path: &str) {
    let head = read_head(stream, buf).await.expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    while buf.len() < path.len() {
        let mut more = [0u8; 1024];
        let n = stream.read(&mut more).await.unwrap();
        assert!(n > 0, "closed in the body");
        buf.extend_from_slice(&more[..n]);
    }
    let body: Vec<u8> = buf.drain(..path.len()).collect();
    assert_eq!(body, path.as_bytes());
}

/// A client of the own server (a plain GET, a POST with a small body)
/// that closes its connection (FIN), resets it (RST) or only shuts its
/// sending side while the upstream thinks: the request counts as aborted
/// and in no status class, its upstream connection is closed (not put back
/// in the pool mid-request), and the next request is served as usual.
#[tokio::test]
async fn a_client_gone_while_the_upstream_thinks_is_an_aborted_request() {
    let (addr, seen, _upstream) = slow_upstream().await;
    let gw = Gateway::start(&config("", &[("thinker", 1, addr)])).await;
    let aborted = [("kind", "aborted")];
    let aborted_before = metric_value(&metrics(&gw).await, "canary_client_errors_total", &aborted);
    let thinker = [("version", "thinker")];
    let requests: [&[u8]; 4] = [
        b"GET /slow?fin HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /slow?rst HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /slow?half HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /slow?post HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for (i, request) in requests.into_iter().enumerate() {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        heads_reach(&seen, i as u64 + 1).await;
        match i {
            1 => {
                stream.set_zero_linger().unwrap();
                drop(stream);
            }
            2 => {
                // Half-closed: still reading, as nginx it is an abort.
                stream.shutdown().await.unwrap();
                let answer = read_to_close(&mut stream, Duration::from_secs(10)).await;
                assert_eq!(answer.as_deref(), Some(&b""[..]), "no answer after a FIN");
            }
            _ => drop(stream),
        }
        // Ended one way or the other: aborted, or (before the fix) answered
        // by the upstream after its 3 s.
        let ended = eventually(Duration::from_secs(10), async || {
            let text = metrics(&gw).await;
            metric_value(&text, "canary_client_errors_total", &aborted)
                >= aborted_before + i as f64 + 1.0
                || metric_value(&text, "canary_requests_total", &thinker) > 0.0
        });
        assert!(ended.await, "{}", metrics(&gw).await);
        let text = metrics(&gw).await;
        assert_eq!(
            metric_value(&text, "canary_requests_total", &thinker),
            0.0,
            "request {i} was counted as answered: {text}"
        );
    }
    // Each upstream connection was closed mid-request, none reused.
    let closed = eventually(Duration::from_secs(10), async || {
        seen.dropped.load(Ordering::SeqCst) >= 4
    });
    assert!(
        closed.await,
        "{} closed",
        seen.dropped.load(Ordering::SeqCst)
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 4);
    // The next request is served as usual, on a new upstream connection.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /fast HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut stream, &mut Vec::new(), "/fast").await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 5);
    gw.shutdown().await;
}

/// A request pipelined while the one before it waits for the upstream is
/// no close: both are answered, in order, on the same connection.
#[tokio::test]
async fn a_request_pipelined_while_the_upstream_thinks_is_no_abort() {
    let (addr, seen, _upstream) = slow_upstream().await;
    let gw = Gateway::start(&config("", &[("pipelined", 1, addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    heads_reach(&seen, 1).await;
    // The second request arrives while the first waits its 3 s.
    stream
        .write_all(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_answer(&mut stream, &mut buf, "/slow").await;
    read_answer(&mut stream, &mut buf, "/next").await;
    let twos = [("version", "pipelined"), ("status", "2xx")];
    let counted = eventually(Duration::from_secs(10), async || {
        metric_value(&metrics(&gw).await, "canary_requests_total", &twos) >= 2.0
    });
    assert!(counted.await, "{}", metrics(&gw).await);
    gw.shutdown().await;
}

/// A listener on 127.0.0.1 whose accept queue is full and never drained:
/// the kernel drops further SYNs, so a connect to it hangs (as to an ECS
/// task whose network interface is gone). Dropped with what it returns.
async fn syn_drop() -> (SocketAddr, Vec<TcpStream>, TcpListener) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(0).unwrap();
    let mut queued = Vec::new();
    // Each connect completes while the queue has room; the first one the
    // kernel refuses to complete is left hanging (and dropped).
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            _ => break,
        }
    }
    (addr, queued, listener)
}

/// Sends `request` to a gateway whose one upstream's connect hangs,
/// closes the connection 300 ms later and asserts that the request was
/// counted as aborted, not as the version's answer or upstream failure.
/// `what` names the case in failures.
async fn gone_while_connecting(what: &str, request: &[u8]) {
    let (gw, before, _endpoint) = hanging_connect_gateway().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    assert_aborted_not_failed(what, &gw, before).await;
    gw.shutdown().await;
}

/// A client that only shuts its sending side after its whole upload, on
/// hyper's server (chunked, asking for trailers), while the upstream's connect
/// hangs: counted as gone (as on the own server: see docs/operations.md)
/// and given no answer. Before, it read a 400 (`bad-request-body`) for a
/// body that was whole, while the access log said 499.
#[tokio::test]
async fn a_half_closed_upload_on_hyper_while_the_connect_hangs_gets_no_answer() {
    let (gw, before, _endpoint) = hanging_connect_gateway().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request: &[u8] = b"POST /x HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: TE\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    stream.write_all(request).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    assert!(read.await.is_ok(), "the connection stayed open");
    assert_eq!(String::from_utf8_lossy(&answer), "", "answered");
    assert_aborted_not_failed("half-closed", &gw, before).await;
    gw.shutdown().await;
}

/// A gateway whose one version (`unreachable`) has an endpoint whose
/// connects hang ([`syn_drop`]; `upstream_connect` 2 s), the aborted count
/// before any request, and what keeps that endpoint's queue full (held for
/// the test).
async fn hanging_connect_gateway() -> (Gateway, f64, (Vec<TcpStream>, TcpListener)) {
    let (addr, queued, listener) = syn_drop().await;
    let gw = Gateway::start(&config(
        "[timeouts]\nupstream_connect = \"2s\"\n",
        &[("unreachable", 1, addr)],
    ))
    .await;
    let before = aborted_count(&gw).await;
    (gw, before, (queued, listener))
}

/// `canary_client_errors_total{kind="aborted"}` (of every test's gateway).
async fn aborted_count(gw: &Gateway) -> f64 {
    let text = metrics(gw).await;
    metric_value(&text, "canary_client_errors_total", &[("kind", "aborted")])
}

/// Waits for the one request sent to `gw` to end (the aborted count over
/// `before`, or the version's count up), then asserts that it was not
/// counted in version `unreachable`'s requests nor in its upstream errors.
async fn assert_aborted_not_failed(what: &str, gw: &Gateway, before: f64) {
    let unreachable = [("version", "unreachable")];
    let ended = eventually(Duration::from_secs(10), async || {
        let text = metrics(gw).await;
        metric_value(&text, "canary_client_errors_total", &[("kind", "aborted")]) > before
            || metric_value(&text, "canary_requests_total", &unreachable) > 0.0
    });
    assert!(ended.await, "{what}: {}", metrics(gw).await);
    let text = metrics(gw).await;
    for name in ["canary_requests_total", "canary_upstream_errors_total"] {
        assert_eq!(
            metric_value(&text, name, &unreachable),
            0.0,
            "{what}: counted as the version's failure: {text}"
        );
    }
}

/// A client that leaves while the gateway still connects to the upstream
/// (a connect that hangs, up to `upstream_connect`) is gone, as while the
/// upstream thinks: counted as aborted, never as the version's 5xx (the
/// rollout analysis reads those), and logged 499.
#[tokio::test]
async fn a_client_gone_while_the_upstream_connect_hangs_is_an_aborted_request() {
    gone_while_connecting("GET", b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
}

/// The same for an upload, on the own server and on hyper's (HTTP/1.0,
/// chunked with trailers): its body came whole before its client left (the
/// body's bytes wait in the socket before its end), or in part, or not at
/// all (the client waits for `100 Continue`). hyper's server reads a body
/// only while it is wanted, so it does not see the client leave during the
/// connect of an upload whose body is not whole or awaits `100 Continue`.
#[tokio::test]
async fn a_client_gone_while_the_upstream_connect_of_an_upload_hangs_is_an_aborted_request() {
    let cases: [(&str, &[u8]); 6] = [
        (
            "hyper, HTTP/1.0, part of the body",
            b"POST /x HTTP/1.0\r\nHost: h\r\nContent-Length: 100000\r\n\r\nhello",
        ),
        (
            "hyper, trailers, 100-continue",
            b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\nExpect: 100-continue\r\n\r\n",
        ),
        (
            "own server, Content-Length",
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "own server, 100-continue",
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        ),
        (
            "hyper, HTTP/1.0",
            b"POST /x HTTP/1.0\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "hyper, trailers",
            b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        gone_while_connecting(what, request).await;
    }
}

/// Over HTTP/2, an upload whose connection closes while the upstream's
/// connect hangs.
#[tokio::test]
async fn an_h2_upload_whose_connection_closes_while_the_upstream_connect_hangs_is_aborted() {
    let (gw, before, _endpoint) = hanging_connect_gateway().await;
    let (mut sender, conn) = h2c_connection_for(gw.addr).await;
    let req = http::Request::post(format!("http://{}/x", gw.addr))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"hello",
        )))
        .unwrap();
    let sent = tokio::spawn(async move { sender.send_request(req).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.abort();
    sent.abort();
    assert_aborted_not_failed("h2", &gw, before).await;
    gw.shutdown().await;
}
