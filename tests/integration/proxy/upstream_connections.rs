//! Upstream connections: reuse, `Connection: close`, retries of dropped pooled connections, pool idle timeout, ejected endpoints that answer again.

use std::time::Duration;

use bytes::Bytes;
use http::Request;

use crate::recorder::{Path, exchange};
use crate::support::*;

#[tokio::test]
async fn upstream_connections_are_reused_including_after_bodiless_responses() {
    for response in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
    ] {
        let upstream = FixedUpstream::start(response).await;
        let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
        let mut client = Client::connect(gw.addr).await;
        for _ in 0..10 {
            let reply = client.get("/", &[]).await.unwrap();
            assert!(reply.status.is_success() || reply.status == 304);
        }
        let head = Request::head("/")
            .header("host", "h")
            .body(body(Bytes::new()))
            .unwrap();
        assert!(client.send(head).await.unwrap().body.is_empty());
        let connections = upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            connections,
            1,
            "{} opened {connections} upstream connections for 11 sequential requests",
            String::from_utf8_lossy(&response[..response.len().min(40)])
        );
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn upstream_connection_close_is_honoured_without_errors() {
    let upstream = FixedUpstream::start(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    for i in 0..20 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.headers);
        assert_eq!(reply.text(), "ok");
        assert!(reply.header("connection").is_none(), "{:?}", reply.headers);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_drops_is_retried_only_when_safe() {
    // Answers the first request of each connection and hangs up on the next
    // one: the keep-alive race (an upstream closing an idle connection just
    // as a request goes out on it), made certain.
    let upstream = FixedUpstream::scripted(|n| {
        (n == 0).then_some((
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            false,
        ))
    })
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    for i in 0..5 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "GET {i}: {:?}", reply.headers);
        assert_eq!(reply.text(), "ok");
    }
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        5
    );
    // A POST may have been processed before the connection dropped: it is
    // never sent twice.
    let post = Request::post("/")
        .header("host", "h")
        .body(body(Bytes::new()))
        .unwrap();
    let reply = client.send(post).await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-canary-error"), Some("upstream-reset"));
    let connections = || {
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(connections(), 5);
    // A PUT is safe to repeat, and its body, small enough to have come with
    // its head, can be sent again: retried.
    let mut client = Client::connect(gw.addr).await;
    let put = |bytes: usize| {
        Request::put("/")
            .header("host", "h")
            .body(body(Bytes::from(vec![b'x'; bytes])))
            .unwrap()
    };
    assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    let reply = client.send(put(100)).await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.headers);
    assert_eq!(connections(), 7);
    // A body read from the client's socket as it went up is gone: 502.
    let mut client = Client::connect(gw.addr).await;
    assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    let reply = client.send(put(1 << 20)).await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-canary-error"), Some("upstream-reset"));
    assert_eq!(connections(), 8);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_pool_idle_timeout() {
    let upstream = FixedUpstream::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let extra = "[upstream]\npool_idle_timeout = \"300ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, upstream.addr)])).await;
    assert_eq!(get(gw.addr, "/", &[]).await.text(), "ok");
    // Nothing else goes to this upstream: the pool must still let go of the
    // connection once it has been idle for the timeout.
    let closed = eventually(Duration::from_secs(5), async || {
        upstream.closed.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert!(closed, "the idle upstream connection was never closed");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_ejected_endpoint_that_answers_again_is_healthy_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let gw = Gateway::start(&config_endpoints(
        "[upstream]\neject_base = \"60s\"\neject_max = \"120s\"",
        &[("v1", 1, vec![addr])],
    ))
    .await;
    let control = gw.running.as_ref().unwrap().control.clone();
    let health = || control.status().versions[0].endpoints[0].health;
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 502);
    }
    assert_eq!(health(), "ejected");
    // The only endpoint is still tried while ejected; once it answers, the
    // ejection ends (no waiting out its period).
    let _up = Upstream::serve("v1", tokio::net::TcpListener::bind(addr).await.unwrap());
    assert_eq!(get(gw.addr, "/", &[]).await.text(), "v1");
    assert_eq!(health(), "healthy");
    gw.shutdown().await;
}

/// Requests in one batch: more than the 256 idle connections per endpoint
/// the pool kept before (it kept 256 and closed the rest after each burst).
const BURST: usize = 300;

/// Raises this process's open-file limit to its hard limit: a burst holds
/// four sockets per request here (client, gateway's side, upstream
/// connection, upstream's side), past a default soft limit of 1,024.
#[cfg(target_os = "linux")]
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = 4 * BURST as u64 + 512;
    assert!(
        now >= needed,
        "this test needs an open-file limit of {needed} (ulimit -Hn is {now})"
    );
}

#[cfg(not(target_os = "linux"))]
fn raise_open_file_limit() {}

/// A burst of concurrent requests to one endpoint leaves its connections in
/// the pool, and the next burst reuses every one of them: under load no
/// request opens a connection and closes another (CPU, and a socket in
/// TIME_WAIT each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_requests_keeps_its_upstream_connections() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncWriteExt;

    raise_open_file_limit();
    // Holds each request until its whole burst has arrived, so the gateway
    // needs BURST upstream connections at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let (arrived, _) = tokio::sync::watch::channel(0usize);
    let arrived = Arc::new(arrived);
    let counter = accepted.clone();
    let upstream = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_head(&mut socket, &mut buf).await.is_some() {
                    let mut count = 0;
                    arrived.send_modify(|c| {
                        *c += 1;
                        count = *c;
                    });
                    let batch_end = count.div_ceil(BURST) * BURST;
                    let mut seen = arrived.subscribe();
                    if seen.wait_for(|c| *c >= batch_end).await.is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&config("", &[("v1", 1, addr)])).await;
    let request: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    for burst in 0..2 {
        let requests: Vec<_> = (0..BURST)
            .map(|_| tokio::spawn(exchange(gw.addr, Path::Own, request)))
            .collect();
        for request in requests {
            let response = request.await.unwrap();
            assert_eq!(response.map(|r| r.status), Some(200), "burst {burst}");
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        BURST as u64,
        "the second burst opened connections of its own"
    );
    upstream.abort();
    gw.shutdown().await;
}

/// Chunked uploads (hyper's server and client) reuse their upstream
/// connection as plain requests do: an upstream connection goes back to
/// the pool once both its request body and its response have ended.
#[tokio::test]
async fn chunked_uploads_reuse_their_upstream_connection() {
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicU64::new(0));
    let counted = opened.clone();
    let _upstream = serve_connections(listener, move |stream| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            // Answers with the length of the body it read.
            let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                let body = req.into_body().collect().await?.to_bytes();
                let len = Bytes::from(body.len().to_string());
                Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(len)))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    });
    let gw = Gateway::start(&config("", &[("v1", 1, addr)])).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..5 {
        stream.write_all(CHUNKED_HELLO_WORLD).await.unwrap();
        let reply = crate::recorder::read_response(&mut stream, &mut buf, false).await;
        let reply = reply.map(|r| (r.status, r.text()));
        assert_eq!(reply, Some((200, "11".to_owned())));
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}
